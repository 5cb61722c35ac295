"""``vmcluster cluster ...``: a cluster as its API sees it (``--cluster URL`` or
``$VMCLUSTER_URL``; ``--lab NAME`` for a lab's)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import click
from rich.table import Table

from vmcluster.cli.apiclient import api_request, resolve_access
from vmcluster.cli.common import console, emit_json, json_option

__all__ = ["cluster", "cluster_option"]

F = TypeVar("F", bound=Callable[..., Any])


def cluster_option(func: F) -> F:
    """``--cluster URL`` and ``--lab NAME``: which cluster a command talks to."""
    func = click.option("--lab", "lab_name", default=None, metavar="LAB",
                        help="A lab's cluster, reached from its admin namespace.")(func)
    return click.option("--cluster", "cluster_url", default=None, metavar="URL",
                        envvar="VMCLUSTER_URL", show_envvar=True,
                        help="The cluster's API, https://HOST:8443.")(func)


@click.group()
def cluster() -> None:
    """The cluster: its hosts, etcd members and manager, through the API."""


@cluster.command("status")
@cluster_option
@json_option
def status(cluster_url: str | None, lab_name: str | None, as_json: bool) -> None:
    """Nodes and their daemons, etcd members and leader, the manager and its fencing token."""
    got = api_request(resolve_access(cluster_url, lab_name), "GET", "/api/v1/cluster/status")
    if as_json:
        emit_json(got)
        return
    mgr = got["manager"]
    console.print(f"cluster {got['cluster']}: manager {mgr['node'] or '-'} "
                  f"(fencing token {mgr['token'] if mgr['token'] is not None else '-'}), "
                  f"etcd leader {got['etcd']['leader'] or '-'}")
    table = Table("node", "state", "vmcluster", "QEMU", "API", "daemon seen", box=None)
    for n in got["nodes"]:
        seen = n.get("daemon_seen_s_ago")
        table.add_row(n["name"], n["state"], n.get("version") or "-",
                      n.get("qemu_version") or "-", n.get("api_url") or "-",
                      "-" if seen is None else f"{seen:.0f} s ago")
    console.print(table)
    members = ", ".join(m["name"] + (" (learner)" if m.get("learner") else "")
                        for m in got["etcd"]["members"])
    console.print(f"etcd members: {members}")
