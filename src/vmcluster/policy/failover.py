"""Failover: where the VMs of dead nodes restart, who may decide, and who must stop.

Pure functions of the spec, the current placements and what is down.

* **Placement** (restart, start and drain alike): VMs in order of restart
  priority (higher first, then name); for each, the up nodes it is allowed on
  (``allowed_nodes``: strict node affinity) with room for its memory and vCPUs
  (``cores * cpu_overcommit``, counting what is already placed and what this
  plan placed before it) ranked by the non-strict rules: no VM of the same
  anti-affinity class there (keep apart), a VM of its affinity group there (keep
  together), its preferred owners in the order given; then most free memory,
  most free cores, name. A placement that breaks a non-strict rule names it
  (``broke``). No such node: :class:`CannotPlace` with the reason.
* **Quorum**: a side of a partition may restart VMs only with a strict
  majority of the votes: one per node, plus the witness when the spec has one.
  The witness's vote is exclusive: the manager (one, elected in the store) counts it
  while the witness reports; a node counts it for itself only while it hears the
  witness and reaches the store, and stops its VMs when the manager declares it down
  (:func:`stop_reason`).
* **Isolation**: a node that has lost every cluster network (or quorum) knows
  it after one detection window (``delay * threshold``) and stops its VMs;
  the majority restarts a dead node's VMs only after ``last heard + window +
  delay + stop budget``, so the isolated node has stopped them first and a VM
  never runs twice.
* **Flapping**: a node with ``limit`` failures (3) within ``window_s`` (an
  hour) is quarantined: drained and kept out of placement.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, replace

from vmcluster.model import ClusterSettings, ClusterSpec, Vm

__all__ = [
    "CLUSTER_FAILOVER",
    "STORE_GRACE_S",
    "CannotPlace",
    "FailoverParams",
    "FailoverPlan",
    "Migrate",
    "Restart",
    "drain_plan",
    "failover_plan",
    "free_room",
    "has_quorum",
    "move_refusal",
    "must_stop_vms",
    "quarantined",
    "restart_not_before",
    "start_plan",
    "stop_reason",
]


@dataclass(frozen=True)
class Restart:
    vm: str
    node: str
    from_node: str
    broke: tuple[str, ...] = ()  # the non-strict rules this placement had to break, and why


@dataclass(frozen=True)
class Migrate:
    vm: str
    source: str
    target: str
    broke: tuple[str, ...] = ()


@dataclass(frozen=True)
class CannotPlace:
    vm: str
    reason: str


@dataclass(frozen=True)
class FailoverParams:
    """``cpu_overcommit`` vCPUs per core (None: the spec's ``cluster.vcpus_per_core``);
    memory is never overcommitted; ``reserve_memory_mib`` is kept free on every host."""

    cpu_overcommit: float | None = None
    reserve_memory_mib: int = 0
    stop_budget_s: float = 1.0
    # A host's vmclusterd pets its watchdog only while its heartbeats go out: its last pet
    # is at most ``pet_slack_s`` after the last heartbeat it sent; a fired watchdog's
    # SIGKILL of the host's QEMUs takes at most ``kill_budget_s``.
    pet_slack_s: float = 1.25
    kill_budget_s: float = 0.5


# What the cluster's manager decides with (and so the simulator, to predict it): a
# cut-off node gets 2 s to stop its VMs before the majority restarts them.
CLUSTER_FAILOVER = FailoverParams(stop_budget_s=2.0)


@dataclass(frozen=True)
class FailoverPlan:
    """Actions in the order they were decided (priority order)."""

    actions: tuple[Restart | Migrate | CannotPlace, ...]

    def to_json(self) -> list[dict[str, object]]:
        return [{"action": type(a).__name__, **{k: list(v) if isinstance(v, tuple) else v
                                                for k, v in asdict(a).items()}}
                for a in self.actions]


class _Loads:
    """Memory and vCPUs in use per node, as a plan is being built."""

    def __init__(
        self, spec: ClusterSpec, placements: Mapping[str, str | None], params: FailoverParams
    ) -> None:
        self.spec, self.params = spec, params
        self.mem = {n.name: 0 for n in spec.nodes}
        self.cpu = {n.name: 0 for n in spec.nodes}
        self.here: dict[str, list[Vm]] = {n.name: [] for n in spec.nodes}
        for vm in spec.vms:
            node = placements.get(vm.name)
            if node in self.mem:
                self.add(vm, node)

    def add(self, vm: Vm, node: str) -> None:
        self.mem[node] += vm.memory_mib
        self.cpu[node] += vm.vcpus
        self.here[node].append(vm)

    def group_nodes(self, vm: Vm) -> set[str]:
        """The nodes where other VMs of ``vm``'s affinity group (keep together) are."""
        return {n for n, vms in self.here.items()
                if any(o.affinity == vm.affinity and o.name != vm.name for o in vms)}

    def free_mem(self, node: str) -> int:
        n = self.spec.node(node)
        return n.memory_mib - self.params.reserve_memory_mib - self.mem[node]

    def free_cpu(self, node: str) -> float:
        ratio = self.params.cpu_overcommit or self.spec.cluster.vcpus_per_core
        return self.spec.node(node).cores * ratio - self.cpu[node]

    def fits(self, vm: Vm, node: str) -> bool:
        return vm.memory_mib <= self.free_mem(node) and vm.vcpus <= self.free_cpu(node)

    def apart_from(self, vm: Vm, node: str) -> list[str]:
        """The VMs on ``node`` that ``vm``'s anti-affinity class keeps it apart from."""
        if vm.anti_affinity is None:
            return []
        return [o.name for o in self.here[node]
                if o.anti_affinity == vm.anti_affinity and o.name != vm.name]

    def conflicts(self, vm: Vm, node: str) -> bool:
        return bool(self.apart_from(vm, node))


def free_room(spec: ClusterSpec, placements: Mapping[str, str | None], nodes: Iterable[str],
              params: FailoverParams = FailoverParams()) -> dict[str, tuple[int, float]]:
    """Each of ``nodes``' free memory (MiB) and vCPUs with ``placements`` running, as a
    failover plan counts them (the reserve kept, vCPUs overcommitted as allowed)."""
    loads = _Loads(spec, placements, params)
    return {n: (loads.free_mem(n), loads.free_cpu(n)) for n in nodes}


@dataclass(frozen=True)
class _Choice:
    node: str
    broke: tuple[str, ...]


def _choose(vm: Vm, candidates: Iterable[str], loads: _Loads) -> _Choice | CannotPlace:
    """The node for ``vm``. Strict rules filter (up, allowed_nodes, room); the non-strict
    ones rank, in this order: keep apart (anti_affinity), keep together (affinity), the
    preferred owners in order; then most free memory, most free cores, name. The rules
    the chosen node breaks are named in the choice."""
    nodes = list(candidates)
    if not nodes:
        return CannotPlace(vm.name, "no node is up")
    if vm.allowed_nodes is not None:
        nodes = [n for n in nodes if n in vm.allowed_nodes]
        if not nodes:
            return CannotPlace(vm.name, "none of its allowed_nodes "
                               f"({', '.join(vm.allowed_nodes)}) can take VMs")
    room = [n for n in nodes if loads.fits(vm, n)]
    if not room:
        return CannotPlace(
            vm.name,
            f"no node has {vm.memory_mib} MiB and {vm.vcpus} vCPU free "
            f"(most free: {max(loads.free_mem(n) for n in nodes)} MiB)",
        )
    prefs = {name: i for i, name in enumerate(vm.preferred_owners)}
    group = loads.group_nodes(vm) if vm.affinity is not None else set()

    def rank(n: str) -> tuple[bool, bool, int, int, float, str]:
        return (
            loads.conflicts(vm, n),
            bool(group) and n not in group,
            prefs.get(n, len(prefs)),
            -loads.free_mem(n),
            -loads.free_cpu(n),
            n,
        )

    best = min(room, key=rank)
    broke = []
    if loads.conflicts(vm, best):
        broke.append(f"anti_affinity {vm.anti_affinity}: shares {best} with "
                     f"{', '.join(loads.apart_from(vm, best))} (every node with room has one)")
    if group and best not in group:
        broke.append(f"affinity {vm.affinity}: apart from its group on "
                     f"{', '.join(sorted(group))} (no room there)")
    if prefs and best not in prefs:
        broke.append(f"preferred_owners: none of {', '.join(vm.preferred_owners)} could "
                     "take it")
    return _Choice(best, tuple(broke))


def move_refusal(vm: Vm, target: str, placed: Mapping[str, str | None],
                 spec: ClusterSpec) -> str | None:
    """Why a move that nothing forces (a consolidation's) must not be made, in one line;
    None when it keeps every rule. ``placed``: where the other VMs will be. Such a move
    keeps the non-strict rules too: apart from its anti_affinity class, with its affinity
    group. (Failover and drain must place a VM somewhere; they may break a non-strict
    rule, and say so.) Preferred owners do not stop it: they rank failover's choices."""
    if vm.allowed_nodes is not None and target not in vm.allowed_nodes:
        return f"{target} is not among its allowed_nodes ({', '.join(vm.allowed_nodes)})"
    defined = {v.name for v in spec.vms}
    others = [spec.vm(name) for name, node in placed.items()
              if node is not None and name != vm.name and name in defined]
    if vm.anti_affinity is not None:
        apart = sorted(o.name for o in others
                       if o.anti_affinity == vm.anti_affinity and placed[o.name] == target)
        if apart:
            return (f"anti_affinity {vm.anti_affinity}: {target} would hold "
                    f"{', '.join(apart)} too")
    if vm.affinity is not None:
        group = {str(placed[o.name]) for o in others if o.affinity == vm.affinity}
        if group and target not in group:
            return f"affinity {vm.affinity}: its group is on {', '.join(sorted(group))}"
    return None


def _by_priority(vms: Iterable[Vm]) -> list[Vm]:
    return sorted(vms, key=lambda v: (-v.priority, v.name))


def failover_plan(
    spec: ClusterSpec,
    placements: Mapping[str, str | None],
    down: Iterable[str],
    params: FailoverParams = FailoverParams(),
    excluded: Iterable[str] = (),
) -> FailoverPlan:
    """Restart every VM placed on a ``down`` node on an up node not ``excluded``
    (quarantined, draining); one action per VM, in priority order."""
    dead = set(down)
    barred = dead | set(excluded)
    loads = _Loads(spec, placements, params)
    up = [n.name for n in spec.nodes if n.name not in barred]
    actions: list[Restart | Migrate | CannotPlace] = []
    victims = [vm for vm in spec.vms if placements.get(vm.name) in dead]
    for vm in _by_priority(victims):  # (a dead node's load never matters: it takes none)
        got = _choose(vm, up, loads)
        if isinstance(got, CannotPlace):
            actions.append(got)
        else:
            loads.add(vm, got.node)
            actions.append(Restart(vm.name, got.node, str(placements[vm.name]), got.broke))
    return FailoverPlan(tuple(actions))


def start_plan(
    spec: ClusterSpec,
    placements: Mapping[str, str | None],
    vms: Iterable[str],
    down: Iterable[str] = (),
    params: FailoverParams = FailoverParams(),
    excluded: Iterable[str] = (),
    homed: bool = True,
) -> FailoverPlan:
    """Where to start each of ``vms`` (stopped, or never started): its owner first, then its
    preferred owners, by the rules a restart follows (room, anti-affinity); one action
    per VM, in priority order (``Restart`` with ``from_node`` ""). ``homed`` False: the
    owner is no choice of the user's (a plan for a VM not defined yet), only the
    preferred owners rank."""
    barred = set(down) | set(excluded)
    loads = _Loads(spec, placements, params)
    up = [n.name for n in spec.nodes if n.name not in barred]
    actions: list[Restart | Migrate | CannotPlace] = []
    for vm in _by_priority(spec.vm(v) for v in vms):
        ranked = replace(vm, preferred_owners=(vm.owner, *(
            n for n in vm.preferred_owners if n != vm.owner))) if homed else vm
        got = _choose(ranked, up, loads)
        if isinstance(got, CannotPlace):
            actions.append(got)
        else:
            loads.add(vm, got.node)
            actions.append(Restart(vm.name, got.node, "", got.broke))
    return FailoverPlan(tuple(actions))


def drain_plan(
    spec: ClusterSpec,
    placements: Mapping[str, str | None],
    node: str,
    down: Iterable[str] = (),
    params: FailoverParams = FailoverParams(),
    excluded: Iterable[str] = (),
) -> FailoverPlan:
    """Live-migrate every VM off ``node`` (it keeps running until each has moved, so
    its load counts on the source until then), choosing targets by the same rules."""
    barred = {node, *down, *excluded}
    loads = _Loads(spec, placements, params)
    up = [n.name for n in spec.nodes if n.name not in barred]
    actions: list[Restart | Migrate | CannotPlace] = []
    for vm in _by_priority(v for v in spec.vms if placements.get(v.name) == node):
        got = _choose(vm, up, loads)
        if isinstance(got, CannotPlace):
            actions.append(got)
        else:
            loads.add(vm, got.node)
            actions.append(Migrate(vm.name, node, got.node, got.broke))
    return FailoverPlan(tuple(actions))


def has_quorum(total_nodes: int, reachable_nodes: int, witness: bool, sees_witness: bool) -> bool:
    """Does a side that reaches ``reachable_nodes`` (itself included) hold a strict majority?"""
    votes = total_nodes + (1 if witness else 0)
    mine = reachable_nodes + (1 if witness and sees_witness else 0)
    return 2 * mine > votes


def must_stop_vms(
    total_nodes: int, reachable_nodes: int, settings: ClusterSettings, sees_witness: bool
) -> bool:
    """A node that lost quorum (isolated: it reaches only itself) stops its VMs; call it
    once the detection window has passed without hearing the others."""
    return not has_quorum(total_nodes, reachable_nodes, settings.witness is not None,
                          sees_witness)


# A node that keeps quorum only through the witness's vote holds that vote only while it
# reaches the store (where the manager, and its verdicts, live): etcd elects a leader in
# one to two election timeouts (1 s each), so a store silent this long is not a blip.
STORE_GRACE_S = 4.0


def stop_reason(total_nodes: int, reachable_nodes: int, settings: ClusterSettings,
                sees_witness: bool, store_silent_s: float, declared_down: bool,
                grace_s: float = STORE_GRACE_S) -> str | None:
    """Why a node must stop every VM it runs now, or None. ``reachable_nodes`` counts the
    nodes (itself included, the witness not) it hears; ``store_silent_s``: since its last
    write to the store succeeded; ``declared_down``: the store says the manager declared
    it failed (its VMs are to restart elsewhere).

    * Declared down: the verdict holds even if this node still hears a peer or the
      witness (a split where both halves reach the witness: exactly one side keeps the
      VMs, the manager's).
    * No quorum even with the witness (if it hears it): isolated.
    * Quorum only with the witness's vote, and the store silent past ``grace_s``: the
      vote is exclusive, and this node cannot learn whether the other side holds it.
    """
    if declared_down:
        return "the manager declared this node down; its VMs restart elsewhere"
    witness = settings.witness is not None
    if not has_quorum(total_nodes, reachable_nodes, witness, sees_witness):
        return (f"isolated: it reaches {reachable_nodes} of {total_nodes} nodes"
                + (" and not the witness" if witness else ""))
    if witness and not has_quorum(total_nodes, reachable_nodes, True, False) \
            and store_silent_s > grace_s:
        return (f"it holds quorum only with the witness's vote, and has not reached the "
                f"store for {store_silent_s:.1f} s")
    return None


def restart_not_before(
    last_heard: float, settings: ClusterSettings, params: FailoverParams = FailoverParams()
) -> float:
    """Earliest time the majority may restart the VMs of a node last heard at ``last_heard``.

    Whichever way the node went, its VMs are stopped by then:

    * cut off: it last heard the majority at most one ``delay`` after that, knows it is
      isolated one window later, and then has ``stop_budget_s`` to stop its VMs;
    * its daemon hung or died: its watchdog, last petted at most ``pet_slack_s`` after
      its last heartbeat, kills its QEMUs ``fence_window_s`` later, within
      ``kill_budget_s``.
    """
    delay = settings.same_subnet_delay_ms / 1000.0
    window = delay * settings.same_subnet_threshold
    isolated = window + delay + params.stop_budget_s
    fenced = settings.fence_window_s + params.pet_slack_s + params.kill_budget_s
    return last_heard + max(isolated, fenced)


def quarantined(
    failures: Sequence[float], now: float, limit: int = 3, window_s: float = 3600.0
) -> bool:
    """Has the node failed ``limit`` times within the last ``window_s`` seconds?"""
    return sum(1 for t in failures if now - window_s < t <= now) >= limit
