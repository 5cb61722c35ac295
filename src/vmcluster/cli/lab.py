"""``vmcluster lab``: several hosts on one machine (up, down, status, net, storage)."""

from __future__ import annotations

import contextlib
import json
from dataclasses import replace
from pathlib import Path
from typing import Any, cast

import click

from vmcluster.cli.common import lab_option
from vmcluster.errors import UsageError, VmclusterError
from vmcluster.lab.faults import blip_net
from vmcluster.lab.lab import lab_down, lab_up, resolve_lab, set_net
from vmcluster.lab.services import lab_spec, leader_summary
from vmcluster.lab.substrate import LabSubstrate
from vmcluster.lab.watch import silent_hosts
from vmcluster.substrate.protocol import SubstrateStatus

__all__ = ["lab"]

_NAME = lab_option("name")


@click.group()
def lab() -> None:
    """Build, inspect and tear down the lab (network namespaces + QEMU)."""


@lab.command("up")
@click.option("--spec", "spec_path", type=click.Path(dir_okay=False, path_type=Path),
              default=Path("examples/lab.toml"), show_default=True)
@lab_option("name", "the spec's cluster name")
@click.option("--qemu", "qemus", multiple=True, metavar="NODE=NAME",
              help="give NODE another QEMU than the installed one: debian-7.2 (Debian 12 "
                   "main's, extracted into a cache), as in a cluster being upgraded host by host")
@click.option("--json", "as_json", is_flag=True, help="print the final status as JSON")
def up(spec_path: Path, name: str | None, qemus: tuple[str, ...], as_json: bool) -> None:
    """Create namespaces, links, agents and boot the spec's VMs."""
    say = (lambda m: click.echo(m, err=True)) if as_json else click.echo
    chosen: dict[str, str] = {}
    for item in qemus:
        node, sep, which = item.partition("=")
        if not sep or not node or not which:
            raise UsageError(f"--qemu {item!r} is not NODE=NAME (e.g. --qemu node3=debian-7.2)")
        chosen[node] = which
    sub = lab_up(spec_path, name, say=say, qemu=chosen)
    _show(sub.status(), as_json, sub)


@lab.command("down")
@_NAME
@click.option("--json", "as_json", is_flag=True)
def down(name: str | None, as_json: bool) -> None:
    """Remove every namespace, process and file of the lab (safe to repeat)."""
    layout = resolve_lab(name)
    summary = lab_down(layout, say=None if as_json else click.echo)
    if as_json:
        click.echo(json.dumps(summary))


@lab.command("status")
@_NAME
@click.option("--json", "as_json", is_flag=True)
def status(name: str | None, as_json: bool) -> None:
    """Nodes (agent up or down, links down) and VMs (owner and state)."""

    layout = resolve_lab(name)
    sub = LabSubstrate(layout, lab_spec(layout))  # with the VMs defined since `lab up`
    _show(sub.status(), as_json, sub)


def _unknown(st: SubstrateStatus, silent: dict[str, dict[str, Any]]) -> SubstrateStatus:
    """A host whose agent does not answer while its peers still hear it is not down: its
    state is unknown, and so are its VMs (the store's last report says which ran, and how
    long ago), rather than a guess of down and stopped."""
    if not silent:
        return st
    nodes = tuple(replace(n, state="unknown") if n.name in silent else n for n in st.nodes)
    vms = tuple(replace(v, state="unknown") if v.node in silent else v for v in st.vms)
    return replace(st, nodes=nodes, vms=vms)


def _show(st: SubstrateStatus, as_json: bool, sub: LabSubstrate) -> None:
    silent = silent_hosts(sub.layout, [n.name for n in st.nodes if n.state == "down"])
    st = _unknown(st, silent)
    lead = leader_summary(sub.layout)
    qemu = {}
    for n in st.nodes:
        if n.state != "up":
            continue  # its agent did not answer the list: it would not answer this either
        with contextlib.suppress(VmclusterError):
            qemu[n.name] = sub.facts(n.name).version
    machines = {v.name: sub.machine(v.name) for v in st.vms}
    if as_json:
        base = st.to_json()
        nodes = [{**n, "qemu_version": qemu.get(n["name"])}
                 for n in cast(list[dict[str, Any]], base["nodes"])]
        vms = [{**v, "machine": machines.get(v["name"]),
                **({"last_report": silent[v["node"]]} if v["node"] in silent else {})}
               for v in cast(list[dict[str, Any]], base["vms"])]
        click.echo(json.dumps({"lab": sub.layout.name, "nodes": nodes, "vms": vms,
                               "leader": lead}))
        return
    click.echo(f"lab {sub.layout.name} ({sub.layout.state_dir})")
    click.echo("  manager: " + (f"{lead['manager']} leads (fencing token {lead['token']})"
                                if lead else "no leader (store unreachable or electing)"))
    for n in st.nodes:
        links = f"  links down: {', '.join(n.links_down)}" if n.links_down else ""
        version = f"QEMU {qemu[n.name]}" if n.name in qemu else "QEMU ?"
        note = "  (its agent does not answer; its peers hear it)" if n.name in silent else ""
        click.echo(f"  node {n.name:<10} {n.state:<7} {version:<12}{links}{note}")
    for v in st.vms:
        addr = sub.spec.vm(v.name).address
        host = silent.get(v.node or "")
        note = "" if host is None else (
            f"  (its host last reported it running{_ago(host['age_s'])})"
            if v.name in host["vms"] else "  (not in its host's last report)")
        click.echo(f"  vm   {v.name:<10} {v.state:<9} on {v.node or '-':<8} {addr}  "
                   f"{machines[v.name]}{note}")


def _ago(age_s: float | None) -> str:
    return "" if age_s is None else f" {age_s:g} s ago"


@lab.group("net")
def net() -> None:
    """Take a cluster network (or one node's interface on it) down or up."""


def _net(target: str, name: str | None, up: bool) -> None:
    sub = LabSubstrate(resolve_lab(name))
    changed = set_net(sub, target, up)
    for network, node in changed:
        click.echo(f"{network}@{node}: {'up' if up else 'down'}")


@net.command("down")
@click.argument("target", metavar="NETWORK[@NODE]")
@_NAME
def net_down(target: str, name: str | None) -> None:
    _net(target, name, False)


@net.command("up")
@click.argument("target", metavar="NETWORK[@NODE]")
@_NAME
def net_up(target: str, name: str | None) -> None:
    _net(target, name, True)


@net.command("blip")
@click.argument("target", metavar="NETWORK[@NODE]")
@click.option("--for", "seconds", type=float, default=1.0, show_default=True,
              help="seconds down each time")
@click.option("--times", type=int, default=1, show_default=True)
@click.option("--gap", "gap_s", type=float, default=2.0, show_default=True,
              help="seconds up between blips")
@_NAME
def net_blip(target: str, seconds: float, times: int, gap_s: float, name: str | None) -> None:
    """Take NETWORK (or one node's interface on it) down for --for seconds, --times
    times: blips shorter than the failure threshold must change nothing."""
    sub = LabSubstrate(resolve_lab(name))
    set_net(sub, target, True)  # a bad target fails here, before anything goes down
    done = blip_net(lambda up: set_net(sub, target, up), seconds, times, gap_s)
    click.echo(f"{target}: {done} blip(s) of {seconds:g} s, up again")


@lab.group("storage")
def storage() -> None:
    """Cut or restore one node's path to the SAN (its storage interface)."""


def _storage(node: str, name: str | None, up: bool, as_json: bool) -> None:
    sub = LabSubstrate(resolve_lab(name))
    sub.set_storage_path(node, up)
    if as_json:
        click.echo(json.dumps({"node": node, "storage_path": up, "switched": sub.last_switches}))
        return
    click.echo(f"{node}: storage path {'up' if up else 'down'}")
    for sw in sub.last_switches:
        click.echo(f"  {sw['vm']}: disk {sw['from']} -> {sw['to']} ({sw['ms']:.0f} ms"
                   f"{', resumed after an I/O error' if sw['resumed'] else ''})")


@storage.command("down")
@click.argument("node", metavar="NODE")
@_NAME
@click.option("--json", "as_json", is_flag=True)
def storage_down(node: str, name: str | None, as_json: bool) -> None:
    """Cut NODE's storage path; its VMs' disks are redirected through another node."""
    _storage(node, name, False, as_json)


@storage.command("up")
@click.argument("node", metavar="NODE")
@_NAME
@click.option("--json", "as_json", is_flag=True)
def storage_up(node: str, name: str | None, as_json: bool) -> None:
    """Restore NODE's storage path; its VMs' disks go back to direct I/O."""
    _storage(node, name, True, as_json)
