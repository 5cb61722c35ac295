"""``vmcluster lab node crash|start|isolate|rejoin NODE``: rehearse failures."""

from __future__ import annotations

import json

import click

from vmcluster.cli.common import lab_option
from vmcluster.lab.faults import crash_node, cut_between, isolate_node, rejoin_node, start_nodes
from vmcluster.lab.lab import resolve_lab

__all__ = ["node"]

_NAME = lab_option("name")
_JSON = click.option("--json", "as_json", is_flag=True, help="print one JSON object")


@click.group("node")
def node() -> None:
    """Crash, start, isolate or rejoin a lab node."""


def _out(as_json: bool, data: dict[str, object], text: str) -> None:
    click.echo(json.dumps(data) if as_json else text)


@node.command("crash")
@click.argument("node_name", metavar="NODE")
@_NAME
@_JSON
def crash(node_name: str, name: str | None, as_json: bool) -> None:
    """SIGKILL every process of NODE (agent, etcd member, heartbeats, manager, QEMUs)."""
    pids = crash_node(resolve_lab(name), node_name)
    _out(as_json, {"node": node_name, "killed": pids},
         f"{node_name}: crashed ({len(pids)} processes killed)")


@node.command("start")
@click.argument("node_names", metavar="NODE...", nargs=-1, required=True)
@_NAME
@_JSON
def start(node_names: tuple[str, ...], name: str | None, as_json: bool) -> None:
    """Boot NODE again after a crash (agent, etcd member, heartbeats, manager candidate);
    several at once after a power cut (each waits for a majority of etcd members)."""
    start_nodes(resolve_lab(name), node_names)
    for node_name in node_names:
        _out(as_json, {"node": node_name, "state": "started"}, f"{node_name}: started")


@node.command("isolate")
@click.argument("node_name", metavar="NODE")
@_NAME
@_JSON
def isolate(node_name: str, name: str | None, as_json: bool) -> None:
    """Take every cluster interface of NODE down (it stops its VMs; the majority
    restarts them)."""
    nets = isolate_node(resolve_lab(name), node_name)
    _out(as_json, {"node": node_name, "down": nets}, f"{node_name}: {', '.join(nets)} down")


@node.command("rejoin")
@click.argument("node_name", metavar="NODE")
@_NAME
@_JSON
def rejoin(node_name: str, name: str | None, as_json: bool) -> None:
    """Bring every cluster interface of NODE up again."""
    nets = rejoin_node(resolve_lab(name), node_name)
    _out(as_json, {"node": node_name, "up": nets}, f"{node_name}: {', '.join(nets)} up")


@node.command("cut")
@click.argument("node_a", metavar="NODE")
@click.argument("node_b", metavar="OTHER")
@click.option("--mend", is_flag=True, help="Restore the paths instead.")
@click.option("--one-way", is_flag=True, help="Only NODE loses its paths to OTHER (OTHER's "
              "packets still reach NODE): a one-way partition.")
@_NAME
@_JSON
def cut(node_a: str, node_b: str, mend: bool, one_way: bool, name: str | None,
        as_json: bool) -> None:
    """Cut every cluster-network path between NODE and OTHER only (both still reach the
    other hosts, the witness among them): the split a witness must break."""
    done = cut_between(resolve_lab(name), node_a, node_b, not mend, one_way)
    _out(as_json, {"between": [node_a, node_b], "cut": not mend, "routes": done},
         f"{node_a} <-> {node_b}: {'mended' if mend else 'cut'} ({len(done)} addresses)")
