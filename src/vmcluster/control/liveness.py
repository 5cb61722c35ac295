"""What the manager concludes from the nodes' reports: who is dead, who is isolated.

Every node publishes, about twice a second, a **report**: its heartbeat route
view (``"peer/network": up``), the VMs its QEMUs run, and whether it thinks
itself isolated. The manager cannot compare clocks with the nodes, so it
judges freshness by its own clock: a report whose store revision has not
changed for ``stale_s`` is stale (its node stopped writing: crashed, cut off
from the store's majority, or frozen).

* ``P`` is **dead** when at least one other node has a fresh report, and every
  fresh report of another node says that no route to ``P`` is up. ``P``'s own
  report does not count: a node cut off from the others may still think well
  of itself.
* ``P`` is **heard** when some other node's fresh report hears it on some
  network. Only that brings a dead node back: when no verdict can be made
  (every report stale while the store elects a leader) nothing changes.
* A node is **healthy** (may be given VMs to run again) when its own report is
  fresh and says it is not isolated.
* ``P`` is **split off** from the manager's node ``M`` when both report freshly but no
  chain of nodes that hear each other joins them: a third party (the witness) still
  hears both, so neither is dead, yet they cannot work together (no heartbeat, CSV or
  migration path). Exactly one side keeps the VMs: ``M``'s (:func:`split_off`).
* The **witness** reports like a node (its routes count as an observer's), but is never
  dead or healthy: it runs no VM.

:class:`ReportTracker` is the only stateful part (revision -> first seen);
everything else is a pure function of its snapshot.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from vmcluster.heartbeat.detector import Route, health_from_views, network_states, view_from_json
from vmcluster.model import ClusterSpec
from vmcluster.policy.networks import Health, routes

__all__ = ["LISTED_S", "Assessment", "NodeReport", "ReportTracker", "assess", "split_off"]

#: A report's VM list is current when its agent listed them at most this long ago.
LISTED_S = 1.5


@dataclass(frozen=True)
class NodeReport:
    """One node's report as the manager read it."""

    node: str
    routes: Mapping[Route, bool]
    vms: tuple[str, ...] = ()  # VMs whose QEMU runs there as the running copy
    # VMs whose QEMU there migrated out (paused after the copy: never the running VM)
    migrated: tuple[str, ...] = ()
    incoming: tuple[str, ...] = ()  # VMs whose QEMU there is a migration's target
    # Seconds since the host's agent last listed its VMs (None: the report does not say):
    # an agent that does not answer leaves the last list standing.
    vms_age_s: float | None = None
    isolated: bool = False
    fresh: bool = True
    leaving: bool = False  # its last words: shut down on purpose (powered off), not failed

    @classmethod
    def from_json(cls, node: str, data: Mapping[str, Any], fresh: bool = True) -> NodeReport:
        return cls(
            node=node,
            routes=view_from_json(data.get("routes", {})),
            vms=tuple(sorted(str(v) for v in data.get("vms", []))),
            migrated=tuple(sorted(str(v) for v in data.get("migrated", []))),
            incoming=tuple(sorted(str(v) for v in data.get("incoming", []))),
            vms_age_s=(float(data["vms_age_s"]) if isinstance(data.get("vms_age_s"), int | float)
                       else None),
            isolated=bool(data.get("isolated", False)),
            fresh=fresh,
            leaving=bool(data.get("leaving", False)),
        )


@dataclass(frozen=True)
class Assessment:
    dead: frozenset[str]
    heard: frozenset[str]  # some other node's fresh report hears it on some network
    healthy: frozenset[str]
    health: Health
    network_states: Mapping[str, str]
    cluster_network: str | None
    running: Mapping[str, frozenset[str]] = field(default_factory=dict)  # vm -> nodes
    running_fresh: Mapping[str, frozenset[str]] = field(default_factory=dict)  # fresh reports
    # vm -> nodes whose fresh reports hold a copy that migrated out (see NodeReport)
    migrated_fresh: Mapping[str, frozenset[str]] = field(default_factory=dict)
    # vm -> nodes whose fresh reports hold a migration's target copy
    incoming_fresh: Mapping[str, frozenset[str]] = field(default_factory=dict)
    # as running_fresh, from reports whose VM list is current (their agent answered
    # within LISTED_S): what placements may follow
    running_now: Mapping[str, frozenset[str]] = field(default_factory=dict)


def assess(spec: ClusterSpec, reports: Mapping[str, NodeReport]) -> Assessment:
    """Dead and healthy nodes, interface health and network states from fresh reports."""
    fresh = {n: r for n, r in reports.items() if r.fresh}
    dead, heard_by_someone = set(), set()
    for node in spec.nodes:
        observers = [r for n, r in fresh.items() if n != node.name]
        heard = [
            up for r in observers for (peer, _), up in r.routes.items() if peer == node.name
        ]
        if observers and heard and not any(heard):
            dead.add(node.name)
        if any(heard):
            heard_by_someone.add(node.name)
    names = {n.name for n in spec.nodes}  # the witness reports, but is never a VM host
    healthy = {n for n, r in fresh.items() if not r.isolated and n not in dead and n in names}
    views = {n: r.routes for n, r in fresh.items()}
    health = health_from_views(spec, views)
    nstates = network_states(spec, health) if views else {}
    running: dict[str, set[str]] = {}
    running_fresh: dict[str, set[str]] = {}
    migrated: dict[str, set[str]] = {}
    incoming: dict[str, set[str]] = {}
    now: dict[str, set[str]] = {}
    for n, r in reports.items():  # stale reports too: a VM may still run there
        if n in dead:
            continue
        current = r.fresh and (r.vms_age_s is None or r.vms_age_s <= LISTED_S)
        for vm in r.vms:
            running.setdefault(vm, set()).add(n)
            if r.fresh:
                running_fresh.setdefault(vm, set()).add(n)
            if current:
                now.setdefault(vm, set()).add(n)
        for vm in r.migrated if r.fresh else ():
            migrated.setdefault(vm, set()).add(n)
        for vm in r.incoming if r.fresh else ():
            incoming.setdefault(vm, set()).add(n)
    return Assessment(
        dead=frozenset(dead),
        heard=frozenset(heard_by_someone),
        healthy=frozenset(healthy),
        health=health,
        network_states=nstates,
        cluster_network=routes(spec, health).cluster if views else None,
        running={vm: frozenset(ns) for vm, ns in running.items()},
        running_fresh={vm: frozenset(ns) for vm, ns in running_fresh.items()},
        migrated_fresh={vm: frozenset(ns) for vm, ns in migrated.items()},
        incoming_fresh={vm: frozenset(ns) for vm, ns in incoming.items()},
        running_now={vm: frozenset(ns) for vm, ns in now.items()},
    )


def split_off(spec: ClusterSpec, reports: Mapping[str, NodeReport], anchor: str
              ) -> frozenset[str]:
    """The nodes with fresh reports that no chain of nodes hearing each other (in either
    direction) joins to ``anchor`` (the manager's node); none when ``anchor``'s own
    report is not fresh (the manager does not know where it stands)."""
    names = {n.name for n in spec.nodes}
    fresh = {n: r for n, r in reports.items() if r.fresh and n in names}
    if anchor not in fresh:
        return frozenset()

    def hears(a: str, b: str) -> bool:
        return any(up for (peer, _), up in fresh[a].routes.items() if peer == b)

    side, todo = {anchor}, [anchor]
    while todo:
        a = todo.pop()
        for b in fresh:
            if b not in side and (hears(a, b) or hears(b, a)):
                side.add(b)
                todo.append(b)
    return frozenset(set(fresh) - side)


class ReportTracker:
    """Freshness of each node's report, by the revision it was last written at."""

    def __init__(self, stale_s: float) -> None:
        self.stale_s = stale_s
        self._seen: dict[str, tuple[int, float]] = {}

    def update(self, node: str, revision: int, now: float) -> bool:
        """Record that ``node``'s report is at ``revision`` at ``now``; is it fresh?"""
        last = self._seen.get(node)
        if last is None or last[0] != revision:
            # A report seen for the first time counts as written now: a manager that just
            # took over cannot know how old it is, and treating it as fresh only delays.
            self._seen[node] = (revision, now)
            return True
        return now - last[1] <= self.stale_s

    def changed_at(self, node: str) -> float | None:
        """When (this tracker's clock) ``node``'s report last changed, or None."""
        last = self._seen.get(node)
        return None if last is None else last[1]
