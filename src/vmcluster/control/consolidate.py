"""Power-aware consolidation of a running cluster: observe, plan with a power policy, apply.

Substrate-agnostic (sim or qemu). :func:`observe` reads ``status()`` and
``utilisation()``; :func:`make_plan` turns that into a power
:class:`~vmcluster.policy.power.plan.Snapshot` (one host per powered or switched-off
node, ``MIPS_PER_CORE`` per core; one VM per running VM, its CPU request its
measured load), calls a consolidation policy (``ours`` by default, or any
name :func:`~vmcluster.policy.power.registry.make_policy` knows, e.g. ``lr-mmt-1.2``,
``thr-mmt-0.8``) and maps the decision back to names, with each migration's
network, predicted time and downtime (:func:`~vmcluster.policy.prediction.predict`)
and watts before/after from each node's power model. Applying a plan
lives in :mod:`vmcluster.control.consolidate_apply`.

Why the mapping does a little more than translate:

* The protocol reports CPU per node, not per VM; a node's load is shared
  among its VMs by vCPUs unless the caller passes ``vm_cpu``.
* The power policies read "host utilisation 0" as "switched off", so a
  running VM counts at least ``RUNNING_FLOOR`` of its vCPUs.
* The paper's placement does not check memory (CloudSim's VMs ask for none
  once created); a move that would overfill its target's memory is dropped
  here (``skipped``), and then its source is not powered off.
* The paper's policies may move a VM twice in one decision (CloudSim does);
  here it moves once, to where the policy left it.
* The paper's policies know no HA rules: a move that would break one (a node outside
  the VM's allowed_nodes, sharing a node with its anti_affinity class, away from its
  affinity group: :func:`~vmcluster.policy.failover.move_refusal`) is skipped, and
  says which rule.
* A node that is up and already empty is powered off too (the policies see it
  as off already), but never the last node that is up.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Literal, cast

import numpy as np
import numpy.typing as npt

from vmcluster.control.liveness import Assessment
from vmcluster.control.migration import known_health
from vmcluster.control.plans import ClusterPlan, NodeChange, PlannedMigration
from vmcluster.errors import PolicyError, UsageError
from vmcluster.model import ClusterSpec
from vmcluster.policy.failover import CannotPlace, FailoverParams, move_refusal
from vmcluster.policy.failover import Migrate as FailoverMigrate
from vmcluster.policy.failover import drain_plan as failover_drain_plan
from vmcluster.policy.migration_mode import MigrationProfile
from vmcluster.policy.migration_model import Costs
from vmcluster.policy.networks import Health
from vmcluster.policy.power.detection import HISTORY
from vmcluster.policy.power.models import HP_ML110_G4, HP_ML110_G5, SpecPowerModel
from vmcluster.policy.power.plan import Migrate, PowerOn, Snapshot
from vmcluster.policy.power.registry import make_policy
from vmcluster.policy.prediction import DEFAULT_BANDWIDTH_MBPS, predict
from vmcluster.store.state import Placement
from vmcluster.substrate.protocol import Substrate

__all__ = [
    "LoadHistory",
    "NodeView",
    "Observation",
    "PowerGuard",
    "drain_plan",
    "make_plan",
    "observation",
    "observe",
    "plan",
    "recorded",
]

NodeState = Literal["up", "off", "draining", "quarantined"]
SERVING: tuple[str, ...] = ("draining", "quarantined")  # on, but out of placement

MIPS_PER_CORE = 1000.0
RUNNING_FLOOR = 0.005
POWER_MODELS: dict[str, SpecPowerModel] = {"ml110-g4": HP_ML110_G4, "ml110-g5": HP_ML110_G5}
DEFAULT_POWER_MODEL = "ml110-g5"  # two cores, like the lab's nodes


@dataclass(frozen=True)
class NodeView:
    name: str
    state: NodeState  # up, off; draining or quarantined: on and running VMs, not a target
    cores: int
    memory_mib: int
    util: float
    vms: tuple[str, ...]
    power_model: str
    power_model_assumed: bool


@dataclass(frozen=True)
class Observation:
    """Nodes that are up, off, draining or quarantined (down nodes are left out), running
    VMs' CPU (of their vCPUs)."""

    nodes: tuple[NodeView, ...]
    vm_cpu: Mapping[str, float]
    health: Health
    down: tuple[str, ...] = ()
    # what the substrate adds to each migration (its fitted costs, its setup time)
    costs: Costs = field(default_factory=Costs)


def planned_move(obs: Observation, spec: ClusterSpec, health: Health, vm: str, source: str,
                 target: str, broke: tuple[str, ...] = ()) -> PlannedMigration:
    """One move as a plan shows it: the network, the mode and the prediction the
    migration itself would make on the VM's spec profile and the substrate's costs.
    PolicyError when no network joins the two."""
    s = spec.vm(vm)
    p = predict(spec, health, vm, target, source=source, profile=MigrationProfile(
        s.dirty_mibps, s.working_set_mib, "the spec's", costs=obs.costs))
    return PlannedMigration(vm, source, target, p.network, p.fallbacks, p.result.total_s,
                            p.result.downtime_ms, p.result.sent_mib, p.result.converged,
                            broke, p.choice.mode if p.choice is not None else "precopy",
                            obs.costs.setup_s)


# -- observe -------------------------------------------------------------------------------

def _power_model(spec: ClusterSpec, node: str) -> tuple[str, bool]:
    name = spec.node(node).power_model
    if name is None:
        return DEFAULT_POWER_MODEL, True
    if name not in POWER_MODELS:
        raise UsageError(f"node {node}: unknown power_model {name!r}; known: "
                         f"{', '.join(POWER_MODELS)} (or leave it out for {DEFAULT_POWER_MODEL})")
    return name, False


def observe(substrate: Substrate, spec: ClusterSpec,
            vm_cpu: Mapping[str, float] | None = None) -> Observation:
    """Read the substrate once: node states, VM placement, CPU per node (and per VM)."""
    status = substrate.status()
    util = substrate.utilisation()
    on_node: dict[str, list[str]] = {}
    for v in status.vms:
        if v.node is not None and v.state != "stopped":
            on_node.setdefault(v.node, []).append(v.name)
    return observation(spec, {n.name: n.state for n in status.nodes}, on_node, util,
                       vm_cpu, known_health(spec, status))


def observation(spec: ClusterSpec, states: Mapping[str, str],
                on_node: Mapping[str, Sequence[str]], util: Mapping[str, float],
                vm_cpu: Mapping[str, float] | None, health: Health) -> Observation:
    """An observation from what was read, wherever from: each node's state ("up", "off",
    "draining", "quarantined"; any other is left out as down), the VMs running on each,
    each node's CPU load (of its cores) and, where measured, each VM's (of its vCPUs)."""
    nodes, cpu, down = [], {}, []
    for sn in spec.nodes:
        state = states.get(sn.name, "down")
        if state not in ("up", "off", *SERVING):
            down.append(sn.name)
            continue
        vms = tuple(on_node.get(sn.name, ()) if state != "off" else ())
        u = float(util.get(sn.name, 0.0)) if state != "off" else 0.0
        vcpus = sum(spec.vm(v).vcpus for v in vms)
        for name in vms:  # the node's load shared by vCPUs, unless measured per VM
            share = min(1.0, u * sn.cores / vcpus) if vcpus else 0.0
            cpu[name] = float(vm_cpu[name]) if vm_cpu is not None and name in vm_cpu else share
        model, assumed = _power_model(spec, sn.name)
        nodes.append(NodeView(sn.name, cast(NodeState, state), sn.cores,
                              sn.memory_mib, min(max(u, 0.0), 1.0), vms, model, assumed))
    return Observation(tuple(nodes), cpu, health, tuple(down))


def recorded(spec: ClusterSpec, records: Mapping[str, Mapping[str, Any]],
             placements: Mapping[str, Placement], seen: Assessment,
             busy: Mapping[str, float] | None = None) -> Observation:
    """The cluster as the store records it: each node's recorded state (one never
    recorded: up while its report is healthy; one the reports find dead: down unless
    recorded off), the VMs placed and running on it, and
    ``busy``, each VM's measured cores; a VM not measured (its host silent, or just
    started) counts as fully busy, so that no plan packs VMs whose load nobody knows."""
    states = {n.name: str(records.get(n.name, {}).get(
        "state", "up" if n.name in seen.healthy else "down")) for n in spec.nodes}
    for name in seen.dead:  # declared dead by the reports, not yet recorded as down
        if states.get(name) != "off":
            states[name] = "down"
    on_node: dict[str, list[str]] = {}
    defined = {v.name for v in spec.vms}
    for vm, p in sorted(placements.items()):
        if p.node is not None and p.state in ("running", "paused") and vm in defined:
            on_node.setdefault(p.node, []).append(vm)
    busy = busy or {}
    cores = {v: busy.get(v, float(spec.vm(v).vcpus)) for vs in on_node.values() for v in vs}
    util = {n.name: min(1.0, sum(cores[v] for v in on_node.get(n.name, ())) / n.cores)
            for n in spec.nodes}
    vm_cpu = {v: min(1.0, c / spec.vm(v).vcpus) for v, c in cores.items()}
    return observation(spec, states, on_node, util, vm_cpu, seen.health)


# -- plan ----------------------------------------------------------------------------------

@dataclass(frozen=True)
class LoadHistory:
    """Each VM's earlier CPU loads: row ``index[vm]`` of ``loads``, latest first, the first
    ``counts[row]`` of them recorded."""

    index: Mapping[str, int]
    loads: npt.NDArray[np.float64]  # VMs x HISTORY
    counts: npt.NDArray[np.int64]


def _snapshot(obs: Observation, spec: ClusterSpec,
              history: LoadHistory | None = None) -> tuple[Snapshot, list[str]]:
    hosts = [n.name for n in obs.nodes]
    vms = [v for n in obs.nodes for v in n.vms]
    vm_index = {v: i for i, v in enumerate(vms)}
    cores = np.array([n.cores for n in obs.nodes], dtype=np.float64)
    vcpus = np.array([spec.vm(v).vcpus for v in vms], dtype=np.float64)
    cpu = np.array([max(RUNNING_FLOOR, min(1.0, obs.vm_cpu.get(v, 0.0))) for v in vms])
    vm_host = np.array([h for h, n in enumerate(obs.nodes) for _ in n.vms], dtype=np.int64)
    req = cpu * vcpus * MIPS_PER_CORE
    host_mips = cores * MIPS_PER_CORE
    host_util = np.bincount(vm_host, req, len(hosts)) / host_mips if vms else np.zeros(len(hosts))
    if history is not None and vms:
        rows = np.array([history.index[v] for v in vms], dtype=np.int64)
        hist = np.clip(history.loads[rows, :HISTORY], 0.0, 1.0)
        count = np.clip(history.counts[rows], 1, HISTORY)
    else:
        hist = np.zeros((len(vms), HISTORY))
        count = np.ones(len(vms), dtype=np.int64)
    hist[:, 0] = cpu
    bw = [max((spec.network(net).bandwidth_mbps or DEFAULT_BANDWIDTH_MBPS)
              for net in spec.node(h).interfaces) if spec.node(h).interfaces
          else DEFAULT_BANDWIDTH_MBPS for h in hosts]
    snap = Snapshot(
        host_pe_mips=host_mips.copy(),  # a VM may use every core of its host (unlike CloudSim)
        host_mips=host_mips,
        host_ram=np.array([n.memory_mib for n in obs.nodes], dtype=np.float64),
        host_bw=np.array(bw, dtype=np.float64),
        power_table=np.array([POWER_MODELS[n.power_model].watts for n in obs.nodes]),
        vm_mips=vcpus * MIPS_PER_CORE,
        vm_ram=np.array([spec.vm(v).memory_mib for v in vms], dtype=np.float64),
        vm_bw=np.zeros(len(vms)),
        vm_host=vm_host,
        host_vms=tuple(tuple(vm_index[v] for v in n.vms) for n in obs.nodes),
        vm_req=req,
        vm_hist=hist,
        vm_hist_count=count,
        host_util=host_util,
    )
    return snap, vms


@dataclass(frozen=True)
class PowerGuard:
    """What stays on whatever power a plan would save: a majority of the cluster's etcd
    voters (powering off one more would lose the store's quorum, and with it every
    failover), and the node of the elected manager (it carries the plan out)."""

    voters: frozenset[str] = frozenset()
    manager: str | None = None

    def refuses(self, node: str, off: set[str]) -> str | None:
        """Why ``node`` must stay on while the nodes ``off`` are off, or None."""
        if node == self.manager:
            return "it runs the cluster's elected manager"
        if node in self.voters:
            left = len(self.voters - off - {node})
            if left <= len(self.voters) // 2:
                return (f"its etcd member is needed for quorum ({left} of "
                        f"{len(self.voters)} voters would be left on)")
        return None


def make_plan(obs: Observation, spec: ClusterSpec, policy: str = "ours", seed: int = 0,
              horizon_s: float = 3600.0, guard: PowerGuard = PowerGuard(),
              history: LoadHistory | None = None, max_moves: int | None = None,
              timed: Callable[[float], None] | None = None) -> ClusterPlan:
    """What ``policy`` would do with the observed cluster (nothing is changed); ``guard``
    says which nodes must stay on. ``history``: each VM's earlier CPU loads, latest
    first (the detectors that regress or take quantiles need some; without, they fall
    back to a threshold). ``max_moves``: the plan moves at most that many VMs (the rest
    are skipped, and their hosts stay on). ``timed`` is told the wall seconds the policy's
    own decision took."""
    decide = make_policy(policy)
    if decide is None:
        raise UsageError(f"policy {policy!r} never moves VMs; pick ours, lr-mmt-1.2 or thr-mmt-0.8")
    # A draining or quarantined node is out of placement: the policy neither fills nor
    # empties it (its drain does), so to the policy it is as if down.
    obs = replace(obs, nodes=tuple(n for n in obs.nodes if n.state in ("up", "off")),
                  down=(*obs.down, *(n.name for n in obs.nodes if n.state in SERVING)))
    hosts = [n.name for n in obs.nodes]
    views = {n.name: n for n in obs.nodes}
    decision = None
    vms: list[str] = []
    if any(n.vms for n in obs.nodes):
        snap, vms = _snapshot(obs, spec, history)
        t0 = time.perf_counter()
        decision = decide(snap, seed)
        if timed is not None:
            timed(time.perf_counter() - t0)
    where = {v: n.name for n in obs.nodes for v in n.vms}
    free = {n.name: n.memory_mib - sum(spec.vm(v).memory_mib for v in n.vms) for n in obs.nodes}
    power_on = sorted({hosts[a.host] for a in (decision.actions if decision else ())
                       if isinstance(a, PowerOn) and views[hosts[a.host]].state == "off"})
    moves: list[PlannedMigration] = []
    skipped: list[tuple[str, str]] = []
    final: dict[int, int] = {}  # a VM the policy moves twice goes straight to the last target
    for a in decision.actions if decision else ():
        if isinstance(a, Migrate):
            final[a.vm] = a.target
    # Where every VM will be if each move is made; a move skipped puts its VM back.
    intended: dict[str, str | None] = {**where, **{vms[v]: hosts[h] for v, h in final.items()}}
    for vm_i, host_i in final.items():
        vm, target = vms[vm_i], hosts[host_i]
        source, mem = where[vm], spec.vm(vm).memory_mib
        if source == target:
            continue
        why = move_refusal(spec.vm(vm), target, intended, spec)
        if why is None and max_moves is not None and len(moves) >= max_moves:
            why = f"over this round's limit of {max_moves} moves"
        if why is None and free[target] < mem:
            why = f"{target} has {free[target]} MiB free, {vm} needs {mem} MiB"
        if why is None:
            health = obs.health if views[target].state == "up" \
                else _powered(obs.health, target)
            try:
                planned = planned_move(obs, spec, health, vm, source, target)
            except PolicyError as exc:
                why = str(exc)
        if why is not None:
            skipped.append((vm, why))
            intended[vm] = source
            continue
        free[source] += mem
        free[target] -= mem
        where[vm] = target
        moves.append(planned)
    # A move was checked against the others as the policy meant them; one skipped later
    # (its memory, its network, the move limit) may leave an accepted one breaking a rule:
    # check every accepted move against where the VMs do end, until none is dropped.
    dropped = True
    while dropped:
        dropped = False
        for m in list(moves):
            why = move_refusal(spec.vm(m.vm), m.target, where, spec)
            if why is not None:
                moves.remove(m)
                skipped.append((m.vm, why))
                where[m.vm] = m.source
                free[m.source] -= spec.vm(m.vm).memory_mib
                free[m.target] += spec.vm(m.vm).memory_mib
                dropped = True
    overloaded = tuple(hosts[h] for h in decision.overloaded) if decision else ()
    return _finish(obs, spec, policy, moves, power_on, skipped, overloaded, horizon_s, guard)


def _powered(health: Health, node: str) -> Health:
    """Health as it will be once ``node`` is powered on (its interfaces come up)."""
    return Health(frozenset(d for d in health.down if d[1] != node))


def _finish(obs: Observation, spec: ClusterSpec, policy: str, moves: list[PlannedMigration],
            power_on: list[str], skipped: list[tuple[str, str]], overloaded: tuple[str, ...],
            horizon_s: float, guard: PowerGuard = PowerGuard(), kind: str = "consolidation",
            state_after: Mapping[str, str] | None = None) -> ClusterPlan:
    """The plan of ``moves``: every node before and after, and (a consolidation only) the
    nodes the moves empty powered off, as far as ``guard`` allows."""
    load = {v: obs.vm_cpu.get(v, 0.0) * spec.vm(v).vcpus for v in obs.vm_cpu}  # in cores
    after = {n.name: list(n.vms) for n in obs.nodes}
    delta = {n.name: 0.0 for n in obs.nodes}
    for m in moves:
        after[m.source].remove(m.vm)
        after[m.target].append(m.vm)
        delta[m.source] -= load[m.vm]
        delta[m.target] += load[m.vm]
    power_on = [n for n in power_on if after[n]]
    targets = {m.target for m in moves}
    up_after = sum(1 for n in obs.nodes if n.state == "up" or n.name in power_on)
    power_off: list[tuple[str, str]] = []
    kept: list[tuple[str, str]] = []
    off = {n.name for n in obs.nodes if n.state != "up" and n.name not in power_on}
    for n in obs.nodes if kind == "consolidation" else ():  # a drain powers nothing off
        if n.state != "up" or after[n.name] or n.name in targets or up_after <= 1:
            continue
        why = guard.refuses(n.name, off)
        if why is not None:
            kept.append((n.name, why))
            continue
        power_off.append((n.name, "emptied by the plan" if n.vms else "already empty"))
        off.add(n.name)
        up_after -= 1
    off_after = {name for name, _ in power_off}
    changes = []
    for n in obs.nodes:
        table = POWER_MODELS[n.power_model]
        on_after = (n.state != "off" or n.name in power_on) and n.name not in off_after
        u_after = min(max(n.util + delta[n.name] / n.cores, 0.0), 1.0) if on_after else 0.0
        after_state = (state_after or {}).get(n.name) or (
            ("up" if n.state == "off" else n.state) if on_after else "off")
        changes.append(NodeChange(
            n.name, n.power_model, n.power_model_assumed, n.state, after_state,
            n.util, u_after,
            float(table.power(n.util)) if n.state != "off" else 0.0,
            float(table.power(u_after)) if on_after else 0.0, n.vms, tuple(after[n.name])))
    return ClusterPlan(policy, tuple(moves), tuple(power_on), tuple(power_off),
                       tuple(skipped), overloaded, tuple(changes), horizon_s, tuple(kept), kind)


def drain_plan(obs: Observation, spec: ClusterSpec, node: str,
               params: FailoverParams | None = None, horizon_s: float = 3600.0,
               excluded: Collection[str] = ()) -> ClusterPlan:
    """Where a drain of ``node`` moves each of its VMs: the failover policy's placement
    (:func:`~vmcluster.policy.failover.drain_plan`: HA rules, priority, room), never onto
    a node that is off, draining, quarantined or in ``excluded``; each move with its
    network and predicted time; a VM that cannot move is ``skipped`` with the reason.
    The drained node is ``draining`` after it; nothing is powered off."""
    views = {n.name: n for n in obs.nodes}
    spec.node(node)
    if node not in views or views[node].state == "off":
        raise UsageError(f"{node} is {'off' if node in views else 'down'}; there is "
                         "nothing to drain (a down node's VMs fail over)")
    owners: dict[str, str | None] = {v: n.name for n in obs.nodes for v in n.vms}
    down = [*obs.down, *(n.name for n in obs.nodes if n.state == "off")]
    out = {*excluded, *(n.name for n in obs.nodes if n.state in SERVING)} - {node}
    moves: list[PlannedMigration] = []
    skipped: list[tuple[str, str]] = []
    for a in failover_drain_plan(spec, owners, node, down, params or FailoverParams(),
                                 out).actions:
        if isinstance(a, CannotPlace):
            skipped.append((a.vm, a.reason))
        elif isinstance(a, FailoverMigrate):
            try:
                moves.append(planned_move(obs, spec, obs.health, a.vm, node, a.target,
                                          a.broke))
            except PolicyError as exc:
                skipped.append((a.vm, str(exc)))
    return _finish(obs, spec, f"drain:{node}", moves, [], skipped, (), horizon_s,
                   kind="drain", state_after={node: "draining"})


def plan(substrate: Substrate, spec: ClusterSpec, policy: str = "ours", seed: int = 0,
         vm_cpu: Mapping[str, float] | None = None,
         guard: PowerGuard = PowerGuard()) -> ClusterPlan:
    """Observe ``substrate`` and plan (nothing is changed)."""
    return make_plan(observe(substrate, spec, vm_cpu), spec, policy, seed, guard=guard)


# -- apply ---------------------------------------------------------------------------------
