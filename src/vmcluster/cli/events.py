"""``vmcluster events [--follow] [--json]``: the cluster's event log, from the store."""

from __future__ import annotations

import contextlib
import json
import threading
import time
from typing import Any

import click

from vmcluster.cli.apiclient import ClusterAccess, api_request, resolve_access
from vmcluster.cli.common import lab_option
from vmcluster.control.events import event_from_json
from vmcluster.lab.lab import resolve_lab
from vmcluster.lab.services import lab_store

__all__ = ["events"]

_WAIT_S = 10.0  # one long poll of the API's event log


def _from_api(access: ClusterAccess, follow: bool, after: int, last: int | None,
              timeout_s: float, as_json: bool) -> None:
    """The event log through the cluster's API; ``--follow`` long-polls it until
    ``timeout_s`` has passed (or Ctrl-C)."""
    got = api_request(access, "GET", f"/api/v1/events?after={after}&limit=100000")
    past = list(got["events"])
    if not follow:
        if last is not None:
            past = past[-last:] if last > 0 else []
        if as_json:
            click.echo(json.dumps({"cluster": access.urls[0], "events": past}))
        else:
            for rec in past:
                click.echo(_line(int(rec.pop("seq")), rec))
        return
    deadline = time.monotonic() + timeout_s
    seq = int(got["last"])

    def show(recs: list[dict[str, Any]]) -> None:
        for rec in recs:
            click.echo(json.dumps(rec) if as_json else _line(int(rec.pop("seq")), rec))

    show(past)
    with contextlib.suppress(KeyboardInterrupt):
        while (left := deadline - time.monotonic()) > 0:  # bounded by --timeout
            wait = min(_WAIT_S, max(0.0, left))
            got = api_request(access, "GET", f"/api/v1/events?after={seq}&wait_s={wait:.1f}",
                              timeout_s=wait + 15)
            show(list(got["events"]))
            seq = int(got["last"])


def _line(seq: int, rec: dict[str, Any]) -> str:
    at = float(rec.get("at", 0.0))
    stamp = time.strftime("%H:%M:%S", time.localtime(at)) + f".{int(at % 1 * 1000):03d}"
    try:
        text = event_from_json(rec).describe()
    except ValueError:
        text = f"{rec.get('kind', '?')}: {json.dumps(rec, sort_keys=True)}"
    return f"{seq:>6}  {stamp}  {text}"


@click.command("events")
@click.option("--cluster", "cluster_url", default=None, metavar="URL", envvar="VMCLUSTER_URL",
              show_envvar=True, help="The cluster's API, https://HOST:8443 (else the lab's "
              "store).")
@lab_option()
@click.option("--follow", "-f", is_flag=True, help="keep printing new events (Ctrl-C ends)")
@click.option("--after", type=int, default=0, show_default=True, help="only events after SEQ")
@click.option("--last", type=int, default=None, help="only the last N past events")
@click.option("--timeout", "timeout_s", type=float, default=3600.0, show_default=True,
              help="with --follow: stop after this many seconds")
@click.option("--json", "as_json", is_flag=True,
              help="one JSON object: {events: [...]}; with --follow, one object per line")
def events(cluster_url: str | None, lab_name: str | None, follow: bool, after: int,
           last: int | None, timeout_s: float, as_json: bool) -> None:
    """Show the event log: routes and networks down/up, nodes down, VMs restarted,
    migrations done, leaders elected."""
    if cluster_url is not None and lab_name is None:
        _from_api(resolve_access(cluster_url), follow, after, last, timeout_s, as_json)
        return
    layout = resolve_lab(lab_name)
    with lab_store(layout) as store:
        if not follow:
            got, _rev = store.call(store.state.events, after)
            if last is not None:
                got = got[-last:] if last > 0 else []
            if as_json:
                click.echo(json.dumps({"lab": layout.name,
                                       "events": [{"seq": s, **r} for s, r in got]}))
            else:
                for seq, rec in got:
                    click.echo(_line(seq, rec))
            return
        done = threading.Event()

        def pump() -> None:
            for seq, rec in store.state.follow(after, timeout=timeout_s, stop=done.is_set):
                click.echo(json.dumps({"seq": seq, **rec}) if as_json else _line(seq, rec))

        try:
            store.call(pump, timeout=timeout_s + 30)
        except KeyboardInterrupt:
            done.set()
