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
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any, Literal

import numpy as np
import numpy.typing as npt

from vmcluster.control.migration import known_health
from vmcluster.errors import InputError, PolicyError, UsageError
from vmcluster.model import ClusterSpec
from vmcluster.policy.failover import move_refusal
from vmcluster.policy.networks import Health
from vmcluster.policy.power.detection import HISTORY
from vmcluster.policy.power.models import HP_ML110_G4, HP_ML110_G5, SpecPowerModel
from vmcluster.policy.power.plan import Migrate, PowerOn, Snapshot
from vmcluster.policy.power.registry import make_policy
from vmcluster.policy.prediction import DEFAULT_BANDWIDTH_MBPS, predict
from vmcluster.substrate.protocol import Substrate

__all__ = [
    "ConsolidationPlan",
    "LoadHistory",
    "NodeChange",
    "NodeView",
    "Observation",
    "PlannedMigration",
    "PowerGuard",
    "make_plan",
    "observation",
    "observe",
    "plan",
]

MIPS_PER_CORE = 1000.0
RUNNING_FLOOR = 0.005
POWER_MODELS: dict[str, SpecPowerModel] = {"ml110-g4": HP_ML110_G4, "ml110-g5": HP_ML110_G5}
DEFAULT_POWER_MODEL = "ml110-g5"  # two cores, like the lab's nodes


@dataclass(frozen=True)
class NodeView:
    name: str
    state: Literal["up", "off"]
    cores: int
    memory_mib: int
    util: float
    vms: tuple[str, ...]
    power_model: str
    power_model_assumed: bool


@dataclass(frozen=True)
class Observation:
    """Nodes that are up or off (down nodes are left out), running VMs' CPU (of their vCPUs)."""

    nodes: tuple[NodeView, ...]
    vm_cpu: Mapping[str, float]
    health: Health
    down: tuple[str, ...] = ()


@dataclass(frozen=True)
class PlannedMigration:
    vm: str
    source: str
    target: str
    network: str
    fallbacks: tuple[str, ...]
    predicted_s: float
    predicted_downtime_ms: float
    predicted_mib: float
    converges: bool

    def to_json(self) -> dict[str, object]:
        return _flat(self)


@dataclass(frozen=True)
class NodeChange:
    """A node before and after the plan; watts from its power model (0 when off)."""

    node: str
    power_model: str  # a key of POWER_MODELS
    power_model_assumed: bool  # the spec names none: DEFAULT_POWER_MODEL
    state_before: str
    state_after: str
    util_before: float
    util_after: float
    watts_before: float
    watts_after: float
    vms_before: tuple[str, ...]
    vms_after: tuple[str, ...]

    def to_json(self) -> dict[str, object]:
        return _flat(self)


@dataclass(frozen=True)
class ConsolidationPlan:
    policy: str
    migrations: tuple[PlannedMigration, ...]
    power_on: tuple[str, ...]
    power_off: tuple[tuple[str, str], ...]  # (node, why)
    skipped: tuple[tuple[str, str], ...]  # (vm, why) moves the policy wanted but cannot happen
    overloaded: tuple[str, ...]
    nodes: tuple[NodeChange, ...]
    horizon_s: float = 3600.0
    kept_on: tuple[tuple[str, str], ...] = ()  # (node, why) empty, but the guard keeps it on

    @property
    def watts_before(self) -> float:
        return sum(n.watts_before for n in self.nodes)

    @property
    def watts_after(self) -> float:
        return sum(n.watts_after for n in self.nodes)

    @property
    def empty(self) -> bool:
        return not (self.migrations or self.power_on or self.power_off)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ConsolidationPlan:
        """A plan from its JSON (``to_json``; an API body or answer): what applying it
        needs (migrations, power-ons, power-offs) and, when given, the rest to show it.
        A bad one is one InputError line."""
        try:
            migrations = tuple(PlannedMigration(
                vm=str(m["vm"]), source=str(m["source"]), target=str(m["target"]),
                network=str(m["network"]), fallbacks=tuple(str(f) for f in m.get("fallbacks", ())),
                predicted_s=float(m.get("predicted_s", 0.0)),
                predicted_downtime_ms=float(m.get("predicted_downtime_ms", 0.0)),
                predicted_mib=float(m.get("predicted_mib", 0.0)),
                converges=bool(m.get("converges", True))) for m in data.get("migrations", []))
            power_on = tuple(str(n) for n in data.get("power_on", []))
            power_off = tuple((str(o["node"]), str(o.get("reason", "")))
                              for o in data.get("power_off", []))
            skipped = tuple((str(o["vm"]), str(o.get("reason", "")))
                            for o in data.get("skipped", []))
            kept_on = tuple((str(o["node"]), str(o.get("reason", "")))
                            for o in data.get("kept_on", []))
            nodes = tuple(NodeChange(
                node=str(n["node"]), power_model=str(n["power_model"]),
                power_model_assumed=bool(n.get("power_model_assumed", False)),
                state_before=str(n["state_before"]), state_after=str(n["state_after"]),
                util_before=float(n["util_before"]), util_after=float(n["util_after"]),
                watts_before=float(n["watts_before"]), watts_after=float(n["watts_after"]),
                vms_before=tuple(str(v) for v in n.get("vms_before", ())),
                vms_after=tuple(str(v) for v in n.get("vms_after", ())))
                for n in data.get("nodes", []))
            return cls(str(data.get("policy", "")), migrations, power_on, power_off, skipped,
                       tuple(str(n) for n in data.get("overloaded", [])), nodes,
                       float(data.get("horizon_s", 3600.0)), kept_on)
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise InputError(f"plan: not a consolidation plan as `vmcluster consolidate --json` "
                             f"prints one ({type(exc).__name__}: {exc})") from exc

    def to_json(self) -> dict[str, object]:
        hours = self.horizon_s / 3600.0
        return {
            "policy": self.policy,
            "migrations": [m.to_json() for m in self.migrations],
            "power_on": list(self.power_on),
            "power_off": [{"node": n, "reason": r} for n, r in self.power_off],
            "skipped": [{"vm": v, "reason": r} for v, r in self.skipped],
            "kept_on": [{"node": n, "reason": r} for n, r in self.kept_on],
            "overloaded": list(self.overloaded),
            "nodes": [n.to_json() for n in self.nodes],
            "predicted_total_s": round(sum(m.predicted_s for m in self.migrations), 3),
            "watts_before": round(self.watts_before, 2),
            "watts_after": round(self.watts_after, 2),
            "horizon_s": self.horizon_s,
            "energy_before_wh": round(self.watts_before * hours, 2),
            "energy_after_wh": round(self.watts_after * hours, 2),
        }


def _flat(obj: PlannedMigration | NodeChange) -> dict[str, object]:
    """A flat dataclass as JSON: tuples as lists, floats to 4 decimals."""
    out: dict[str, object] = {}
    for k, v in asdict(obj).items():
        out[k] = list(v) if isinstance(v, tuple) else round(v, 4) if isinstance(v, float) else v
    return out


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
    """An observation from what was read, wherever from: each node's state ("up", "off";
    any other is left out as down), the VMs running on each, each node's CPU load (of
    its cores) and, where measured, each VM's (of its vCPUs)."""
    nodes, cpu, down = [], {}, []
    for sn in spec.nodes:
        state = states.get(sn.name, "down")
        if state not in ("up", "off"):
            down.append(sn.name)
            continue
        vms = tuple(on_node.get(sn.name, ()) if state == "up" else ())
        u = float(util.get(sn.name, 0.0)) if state == "up" else 0.0
        vcpus = sum(spec.vm(v).vcpus for v in vms)
        for name in vms:  # the node's load shared by vCPUs, unless measured per VM
            share = min(1.0, u * sn.cores / vcpus) if vcpus else 0.0
            cpu[name] = float(vm_cpu[name]) if vm_cpu is not None and name in vm_cpu else share
        model, assumed = _power_model(spec, sn.name)
        nodes.append(NodeView(sn.name, "up" if state == "up" else "off", sn.cores,
                              sn.memory_mib, min(max(u, 0.0), 1.0), vms, model, assumed))
    return Observation(tuple(nodes), cpu, health, tuple(down))


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
              timed: Callable[[float], None] | None = None) -> ConsolidationPlan:
    """What ``policy`` would do with the observed cluster (nothing is changed); ``guard``
    says which nodes must stay on. ``history``: each VM's earlier CPU loads, latest
    first (the detectors that regress or take quantiles need some; without, they fall
    back to a threshold). ``max_moves``: the plan moves at most that many VMs (the rest
    are skipped, and their hosts stay on). ``timed`` is told the wall seconds the policy's
    own decision took."""
    decide = make_policy(policy)
    if decide is None:
        raise UsageError(f"policy {policy!r} never moves VMs; pick ours, lr-mmt-1.2 or thr-mmt-0.8")
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
                p = predict(spec, health, vm, target, source=source)
            except PolicyError as exc:
                why = str(exc)
        if why is not None:
            skipped.append((vm, why))
            intended[vm] = source
            continue
        free[source] += mem
        free[target] -= mem
        where[vm] = target
        moves.append(PlannedMigration(vm, source, target, p.network, p.fallbacks,
                                      p.result.total_s, p.result.downtime_ms, p.result.sent_mib,
                                      p.result.converged))
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
            horizon_s: float, guard: PowerGuard = PowerGuard()) -> ConsolidationPlan:
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
    for n in obs.nodes:
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
        on_after = (n.state == "up" or n.name in power_on) and n.name not in off_after
        u_after = min(max(n.util + delta[n.name] / n.cores, 0.0), 1.0) if on_after else 0.0
        changes.append(NodeChange(
            n.name, n.power_model, n.power_model_assumed, n.state, "up" if on_after else "off",
            n.util, u_after,
            float(table.power(n.util)) if n.state == "up" else 0.0,
            float(table.power(u_after)) if on_after else 0.0, n.vms, tuple(after[n.name])))
    return ConsolidationPlan(policy, tuple(moves), tuple(power_on), tuple(power_off),
                             tuple(skipped), overloaded, tuple(changes), horizon_s, tuple(kept))


def plan(substrate: Substrate, spec: ClusterSpec, policy: str = "ours", seed: int = 0,
         vm_cpu: Mapping[str, float] | None = None,
         guard: PowerGuard = PowerGuard()) -> ConsolidationPlan:
    """Observe ``substrate`` and plan (nothing is changed)."""
    return make_plan(observe(substrate, spec, vm_cpu), spec, policy, seed, guard=guard)


# -- apply ---------------------------------------------------------------------------------
