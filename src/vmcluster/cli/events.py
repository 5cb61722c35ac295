"""``vmcluster events [--follow] [--json]``: the cluster's event log, from the store."""

from __future__ import annotations

import json
import threading
import time
from typing import Any

import click

from vmcluster.cli.common import lab_option
from vmcluster.control.events import event_from_json
from vmcluster.lab.lab import resolve_lab
from vmcluster.lab.services import lab_store

__all__ = ["events"]


def _line(seq: int, rec: dict[str, Any]) -> str:
    at = float(rec.get("at", 0.0))
    stamp = time.strftime("%H:%M:%S", time.localtime(at)) + f".{int(at % 1 * 1000):03d}"
    try:
        text = event_from_json(rec).describe()
    except ValueError:
        text = f"{rec.get('kind', '?')}: {json.dumps(rec, sort_keys=True)}"
    return f"{seq:>6}  {stamp}  {text}"


@click.command("events")
@lab_option()
@click.option("--follow", "-f", is_flag=True, help="keep printing new events (Ctrl-C ends)")
@click.option("--after", type=int, default=0, show_default=True, help="only events after SEQ")
@click.option("--last", type=int, default=None, help="only the last N past events")
@click.option("--timeout", "timeout_s", type=float, default=3600.0, show_default=True,
              help="with --follow: stop after this many seconds")
@click.option("--json", "as_json", is_flag=True,
              help="one JSON object: {events: [...]}; with --follow, one object per line")
def events(lab_name: str | None, follow: bool, after: int, last: int | None, timeout_s: float,
           as_json: bool) -> None:
    """Show the event log: routes and networks down/up, nodes down, VMs restarted,
    migrations done, leaders elected."""
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
