"""``vmcluster cluster ...``: a cluster as its API sees it (``--cluster URL`` or
``$VMCLUSTER_URL``; ``--lab NAME`` for a lab's)."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click
from rich.table import Table

from vmcluster.cli.apiclient import api_request, resolve_access
from vmcluster.cli.common import console, emit_json, json_option
from vmcluster.node.bootstrap import init_cluster, join_cluster
from vmcluster.node.config import DEFAULT_CONFIG

__all__ = ["cluster", "cluster_option"]

F = TypeVar("F", bound=Callable[..., Any])


def cluster_option(func: F) -> F:
    """``--cluster URL`` and ``--lab NAME``: which cluster a command talks to."""
    func = click.option("--lab", "lab_name", default=None, metavar="LAB",
                        help="A lab's cluster, reached from its admin namespace.")(func)
    return click.option("--cluster", "cluster_url", default=None, metavar="URL",
                        envvar="VMCLUSTER_URL", show_envvar=True,
                        help="The cluster's API, https://HOST:8443.")(func)


_START = click.Choice(["auto", "systemd", "detach", "none"])


def _config_option(func: F) -> F:
    return click.option("--config", "config", type=click.Path(dir_okay=False, path_type=Path),
                        default=DEFAULT_CONFIG, show_default=True,
                        help="This host's vmclusterd.toml (read if present, then written).")(
                            func)


def _start_option(func: F) -> F:
    return click.option("--start", "start", type=_START, default="auto", show_default=True,
                        help="How to start vmclusterd: systemd (systemctl enable --now), "
                        "detach (a process of its own), none (you start it); auto: "
                        "systemd when it runs this host.")(func)


@click.group()
def cluster() -> None:
    """The cluster: create and join it, its hosts, etcd members and manager."""


@cluster.command("init")
@click.option("--spec", "spec_path", required=True,
              type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="The cluster's spec (networks, nodes, VMs); it goes into etcd.")
@click.option("--node", required=True, help="This host's name in the spec.")
@click.option("--name", default=None, help="The cluster's name (default: the spec's).")
@click.option("--credentials", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Where the admin's credentials go (default "
              "~/.config/vmcluster/credentials.json).")
@click.option("--token-ttl", "ttl_h", type=click.FloatRange(min=0.01), default=24.0,
              show_default=True, help="Hours the printed join token stays valid.")
@_config_option
@_start_option
@json_option
def init(spec_path: Path, node: str, name: str | None, credentials: Path | None,
         ttl_h: float, config: Path, start: str, as_json: bool) -> None:
    """Create the cluster on this host: its CA, this host's certificate, a one-member
    etcd with the spec, the admin's credentials; prints the join command."""

    say = (lambda _m: None) if as_json else (lambda m: console.print(m, highlight=False))
    got = init_cluster(spec_path, node, config, name=name, start=start,
                       credentials=credentials, token_ttl_s=ttl_h * 3600, say=say)
    if as_json:
        emit_json(got.to_json())
        return
    console.print(f"cluster {got.cluster} is up on {got.node}; its API: {got.api_url}",
                  highlight=False)
    console.print(f"the admin's credentials: {got.credentials} (export VMCLUSTER_URL="
                  f"{got.api_url})", highlight=False)
    console.print(f"on each other host, within {ttl_h:g} h:\n  {got.join_command()}",
                  highlight=False, soft_wrap=True)


@cluster.command("join")
@click.argument("url")
@click.option("--token", required=True, help="A join token (`cluster token create`).")
@click.option("--ca-hash", "ca_hash", required=True,
              help="sha256:... of the cluster CA, as `cluster init` printed it.")
@click.option("--node", required=True, help="This host's name in the spec.")
@click.option("--witness", is_flag=True,
              help="Join as the spec's witness ([cluster] witness): an etcd member and a "
                   "heartbeat peer that runs no VM and breaks ties.")
@_config_option
@_start_option
@json_option
def join(url: str, token: str, ca_hash: str, node: str, witness: bool, config: Path,
         start: str, as_json: bool) -> None:
    """Join the cluster whose member answers at URL (https://HOST:8443)."""

    say = (lambda _m: None) if as_json else (lambda m: console.print(m, highlight=False))
    got = join_cluster(url, token, ca_hash, node, config, start=start, say=say,
                       witness=witness)
    if as_json:
        emit_json(got)
        return
    if got["role"] == "witness":
        console.print(f"{got['node']} joined cluster {got['cluster']} as its witness (etcd: "
                      f"{got['etcd']}): heartbeats and a vote, no VM", highlight=False)
        return
    console.print(f"{got['node']} joined cluster {got['cluster']} (etcd: {got['etcd']}); "
                  f"its API: {got['api_url']}", highlight=False)


@cluster.group("token")
def token() -> None:
    """Join tokens."""


@token.command("create")
@click.option("--ttl", "ttl_h", type=click.FloatRange(min=0.01, max=720), default=24.0,
              show_default=True, help="Hours the token stays valid.")
@cluster_option
@json_option
def token_create(ttl_h: float, cluster_url: str | None, lab_name: str | None,
                 as_json: bool) -> None:
    """A new join token, and the join command that uses it."""
    got = api_request(resolve_access(cluster_url, lab_name), "POST",
                      "/api/v1/cluster/join-tokens", {"ttl_s": ttl_h * 3600})
    if as_json:
        emit_json(got)
        return
    until = time.strftime("%Y-%m-%d %H:%M", time.localtime(float(got["expires"])))
    console.print(f"join token valid until {until}:\n  {got['join_command']}",
                  highlight=False, soft_wrap=True)


@cluster.command("leave")
@click.argument("node")
@cluster_option
@json_option
def leave(node: str, cluster_url: str | None, lab_name: str | None, as_json: bool) -> None:
    """Remove NODE from the cluster: its certificate is revoked, its etcd member removed
    (refused while it owns VMs: drain it first)."""
    got = api_request(resolve_access(cluster_url, lab_name), "POST",
                      f"/api/v1/nodes/{node}/leave")
    if as_json:
        emit_json(got)
        return
    console.print(f"{node} left the cluster: certificate revoked"
                  + (", etcd member removed" if got["etcd_member_removed"] else "")
                  + f"; on {node}: `systemctl disable --now vmclusterd`, then remove "
                  "/etc/vmcluster and /var/lib/vmcluster", highlight=False)


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
    w = got.get("witness")
    if w:
        hears = ", ".join(f"{p} ({'/'.join(n)})" for p, n in w["hears"].items()) or "nobody"
        console.print(f"witness {w['name']}: " + (f"reporting, hears {hears}" if w["report"]
                      ["fresh"] else "SILENT: the nodes keep running, a split cannot be broken"),
                      highlight=False)
