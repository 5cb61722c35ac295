"""The coordinator of each volume: who it is, electing a new one, and calling it.

One node per volume owns the metadata (the allocation table on the LUN) and
serves create/delete/resize/owner changes to the others through its agent.
The role is recorded in the lab state (``volumes.<name>.coordinator``). When
the recorded coordinator is down, or has lost its own storage path, the next
one is elected deterministically (:func:`~vmcluster.csv.paths.elect_coordinator`:
the lowest-named live node with a path) under the state file's lock, so any
number of agents and commands electing at once agree.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from vmcluster.csv.paths import Access, access_modes, elect_coordinator
from vmcluster.errors import SubstrateError
from vmcluster.lab import netns
from vmcluster.lab.client import AgentClient, AgentDown
from vmcluster.lab.layout import LabLayout
from vmcluster.lab.state import read_state, update_state
from vmcluster.model import ClusterSpec
from vmcluster.policy.networks import Health

__all__ = ["LabView", "coordinator", "coordinator_call", "observe", "volume_access"]

Say = Callable[[str], None]


@dataclass(frozen=True)
class LabView:
    """What the CSV decisions need from the live lab."""

    health: Health
    up: frozenset[str]
    links_up: frozenset[tuple[str, str]]  # (network, node)
    storage_flag: frozenset[str]  # nodes whose storage path is not cut in the state

    def has_path(self, network: str | None) -> frozenset[str]:
        if network is None:
            return frozenset()
        return frozenset(n for (net, n) in self.links_up
                         if net == network and n in self.storage_flag)


def observe(layout: LabLayout, spec: ClusterSpec, skip_ping: str | None = None) -> LabView:
    """Links (``ip link``), live agents (ping) and the state's storage flags, now.

    ``skip_ping``: a node known to be up (an agent asking about its own lab).
    """
    state = read_state(layout)
    down: set[tuple[str, str]] = set()
    ups: set[tuple[str, str]] = set()
    for node in spec.nodes:
        for net in node.interfaces:
            (ups if netns.link_is_up(layout, net, node.name) else down).add((net, node.name))
    alive = set()
    for node in spec.nodes:
        rec = state.get("nodes", {}).get(node.name, {})
        if rec.get("state") == "off":
            continue
        if node.name == skip_ping or AgentClient(layout, node.name).alive():
            alive.add(node.name)
    flag = frozenset(n.name for n in spec.nodes
                     if state.get("nodes", {}).get(n.name, {}).get("storage_path", True))
    return LabView(Health(frozenset(down)), frozenset(alive), frozenset(ups), flag)


def _network(spec: ClusterSpec, volume: str) -> str | None:
    for vol in spec.volumes:
        if vol.name == volume:
            return vol.network
    raise SubstrateError(f"unknown volume {volume!r}; known: {[v.name for v in spec.volumes]}")


def coordinator(layout: LabLayout, spec: ClusterSpec, volume: str, view: LabView | None = None,
                say: Say | None = None) -> str | None:
    """The volume's coordinator, electing (and recording) a new one if the old cannot serve."""
    net = _network(spec, volume)
    view = view or observe(layout, spec)
    able = view.up & view.has_path(net)
    current = read_state(layout).get("volumes", {}).get(volume, {}).get("coordinator")
    if current in able:
        return str(current)
    with update_state(layout) as st:
        rec = st.setdefault("volumes", {}).setdefault(volume, {})
        current = rec.get("coordinator")
        if current in able:  # someone else re-elected meanwhile
            return str(current)
        new = elect_coordinator([n.name for n in spec.nodes], view.up, view.has_path(net))
        rec["coordinator"] = new
        rec["epoch"] = int(rec.get("epoch", 0)) + 1
    if say is not None and new != current:
        why = "is down" if current not in view.up else "lost its storage path"
        say(f"{volume}: coordinator {current or '-'} {why}; {new or 'nobody'} takes the role")
    return new


def coordinator_call(layout: LabLayout, spec: ClusterSpec, volume: str, op: str,
                     timeout_s: float = 30.0, say: Say | None = None,
                     **args: Any) -> dict[str, Any]:
    """Send a metadata op to the volume's coordinator; re-elect once if it is gone."""
    for attempt in range(3):
        node = coordinator(layout, spec, volume, say=say)
        if node is None:
            raise SubstrateError(f"volume {volume} has no coordinator: no live node has a "
                                 "storage path; restore one with `vmcluster lab storage up`")
        try:
            return AgentClient(layout, node).call(op, timeout_s=timeout_s, volume=volume, **args)
        except AgentDown:
            if attempt == 2:
                raise
    raise AssertionError("unreachable")


def volume_access(layout: LabLayout, spec: ClusterSpec, volume: str,
                  view: LabView | None = None) -> tuple[str | None, dict[str, Access]]:
    """The coordinator and every node's access mode to ``volume``."""
    view = view or observe(layout, spec)
    coord = coordinator(layout, spec, volume, view)
    net = _network(spec, volume)
    return coord, access_modes(spec, view.health, view.up, view.has_path(net), coord, net)
