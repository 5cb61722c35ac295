"""Run a scenario on the simulation substrate and report what happened.

Scenario events (faults, operator migrations and drains) are applied when due;
every policy interval the scenario's consolidation policy (a name the policy
registry knows: ``lr-mmt-1.2``, ``ours``, ...) plans as ``lab consolidate`` does,
with each VM's load history, and its moves and power changes are carried out;
migrations take the network the plan predicted for each node pair and fall back
along the policy's order. Faults are met by the cluster's own manager
(:class:`~vmcluster.control.manager.Manager`), run in virtual time over the
hosts' reports and an in-memory store (:mod:`vmcluster.control.simhosts`): it
finds a crashed node dead from the others' heartbeat views and restarts its VMs
by :func:`failover_plan` (quorum, priorities, preferred owners, anti-affinity,
room) once the isolated side has had time to stop them. A drain's targets come
from :func:`drain_plan`. The trace carries the manager's events in the store's
own words and names the policy of each restart, drain and consolidation move.
Energy comes from a linear power model.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from vmcluster.control.consolidate import LoadHistory, make_plan, observe
from vmcluster.control.faults import inject
from vmcluster.control.manager import quorate
from vmcluster.control.migration import carried_out, choose
from vmcluster.control.scenario import PolicyParams, PowerParams, Scenario
from vmcluster.control.simhosts import SimHosts
from vmcluster.errors import MigrationError, SubstrateError
from vmcluster.model import ClusterSpec
from vmcluster.model.faults import Drain, LinkDown, LinkUp, MoveVm, NodeDown, NodeUp, ScenarioEvent
from vmcluster.policy.failover import (
    CLUSTER_FAILOVER,
    CannotPlace,
    Migrate,
    drain_plan,
    restart_not_before,
)
from vmcluster.policy.networks import live_migration_order, routes
from vmcluster.policy.power.detection import HISTORY
from vmcluster.substrate.protocol import MigrationHandle, MigrationParams, MigrationResult
from vmcluster.substrate.sim import SimSubstrate
from vmcluster.substrate.sim.workload import constant

__all__ = ["CrashPrediction", "Report", "predict_crash", "run_scenario"]

Trace = Callable[[dict[str, Any]], None]


@dataclass
class Report:
    """Everything a run produced; ``to_json`` is deterministic for a given scenario and seed."""

    scenario: Scenario
    migrations: list[dict[str, Any]] = field(default_factory=list)
    failures: list[dict[str, Any]] = field(default_factory=list)
    samples: list[tuple[float, int, float, float, int]] = field(default_factory=list)
    traffic: list[dict[str, Any]] = field(default_factory=list)
    traffic_totals: list[dict[str, Any]] = field(default_factory=list)
    hosts: list[dict[str, Any]] = field(default_factory=list)
    energy_kwh: float = 0.0
    events: int = 0
    # Wall seconds spent planning consolidation (observe, the policy, the mapping); not in
    # to_json, which stays the same for a scenario and seed.
    planning_s: float = field(default=0.0, compare=False)
    policy_s: float = field(default=0.0, compare=False)  # of which the policy's decide()

    def to_json(self) -> dict[str, Any]:
        s = self.scenario
        ok = [m for m in self.migrations if m["ok"]]
        by_net: dict[str, int] = {}
        for m in ok:
            by_net[m["network"]] = by_net.get(m["network"], 0) + 1
        return {
            "scenario": s.name, "seed": s.seed, "duration_s": s.duration_s,
            "hosts": len(s.spec.nodes), "vms": len(s.spec.vms), "events_processed": self.events,
            "migration_summary": {
                "count": len(self.migrations), "ok": len(ok),
                "failed": len(self.migrations) - len(ok), "by_network": by_net,
                "mean_total_s": _r(sum(m["total_s"] for m in ok) / len(ok)) if ok else None,
                "max_downtime_ms": max((m["downtime_ms"] or 0 for m in ok), default=None),
            },
            "migrations": self.migrations,
            "failures": self.failures,
            "traffic": {"bin_s": s.bin_s, "totals_mib": self.traffic_totals,
                        "series": self.traffic},
            "energy_kwh": _r(self.energy_kwh),
            "series": {
                "t": [x[0] for x in self.samples], "active_hosts": [x[1] for x in self.samples],
                "mean_util": [x[2] for x in self.samples], "power_w": [x[3] for x in self.samples],
                "migrations_running": [x[4] for x in self.samples],
            },
            "per_host": self.hosts,
        }


def _r(x: float) -> float:
    return round(x, 6)


@dataclass
class _Crash:
    """A crash's line in the report (``entry``), completed as the manager's restarts and
    refusals come in."""

    entry: dict[str, Any]
    lost: list[str]
    placed: list[str] = field(default_factory=list)
    unplaced: list[str] = field(default_factory=list)


class _Runner:
    def __init__(self, scn: Scenario, trace: Trace | None,
                 progress: Callable[[float], None] | None) -> None:
        self.scn, self.spec, self.progress = scn, scn.spec, progress
        self.sub = SimSubstrate(scn.spec, workload=scn.workload, io_mibps=scn.io_mibps,
                                trace=trace)
        self.report = Report(scn)
        self.vm_names = [v.name for v in self.spec.vms]
        self.vm_mem = np.array([v.memory_mib for v in self.spec.vms], dtype=np.float64)
        self.node_names = [n.name for n in self.spec.nodes]
        self.cores = np.array([n.cores for n in self.spec.nodes], dtype=np.float64)
        self.moving: dict[str, tuple[list[str], str]] = {}  # handle id -> (fallbacks, reason)
        self.busy: set[str] = set()  # VMs in flight (lookups only; never iterated)
        n = len(self.node_names)
        self.energy_j = np.zeros(n)
        self.util_s = np.zeros(n)
        self.up_s = np.zeros(n)
        self.last_t = 0.0
        self.sub.engine.on_end = self._ended
        self.sub.on_tick.append(self._tick)
        self.next_policy = 0.0
        self.decisions = 0
        # Each VM's loads, latest first: what the policies' detectors regress on.
        self.history = LoadHistory({n: i for i, n in enumerate(self.vm_names)},
                                   np.zeros((len(self.vm_names), HISTORY)),
                                   np.zeros(len(self.vm_names), dtype=np.int64))
        # The cluster's own manager, on an in-memory store in virtual time.
        self.hosts = SimHosts(self.sub, self.spec,
                              lambda vm, to: self._migrate(vm, to, "manager: drain"))
        self.hosts.on_event.append(self._manager_event)
        self.crashes: dict[str, _Crash] = {}  # by node: what its crash cost, as it settles

    # -- the run ----------------------------------------------------------------

    def run(self) -> Report:
        for vm in self.spec.vms:
            try:
                self.sub.start_vm(vm.name, vm.owner)
            except SubstrateError as err:
                self._failure(f"start {vm.name}", f"not started: {err}")
        self.hosts.place_all()
        for ev in self.scn.events:
            self.sub.at(ev.at, self._applier(ev), priority=2)
        self.sub.kernel.run_until(self.scn.duration_s)
        self._account()
        self._finish()
        return self.report

    def _applier(self, ev: ScenarioEvent) -> Callable[[], None]:
        return lambda: self._apply(ev)

    def _account(self) -> None:
        now = self.sub.now()
        dt = now - self.last_t
        if dt <= 0:
            return
        util = self.sub.utilisation_array()
        up = np.array([n.state == "up" for n in self.sub.nodes.values()], dtype=np.float64)
        p = self.scn.power
        self.energy_j += up * (p.idle_w + (p.max_w - p.idle_w) * util) * dt
        self.util_s += util * up * dt
        self.up_s += up * dt
        self.last_t = now

    def _tick(self, step: int) -> None:
        self._account()
        if self.progress is not None:
            self.progress(self.sub.now())
        h = self.history
        h.loads[:, 1:] = h.loads[:, :-1]
        h.loads[:, 0] = self.sub.vm_util
        np.minimum(h.counts + 1, HISTORY, out=h.counts)
        if self.sub.now() + 1e-9 >= self.next_policy:
            self.next_policy = self.sub.now() + self.scn.policy.interval_s
            if self.scn.policy.kind != "none":
                self._consolidate()
        util = self.sub.utilisation_array()
        up = np.array([n.state == "up" for n in self.sub.nodes.values()])
        active = int(up.sum())
        mean = float(util[up].mean()) if active else 0.0
        p = self.scn.power
        power = float((up * (p.idle_w + (p.max_w - p.idle_w) * util)).sum())
        running = len(self.sub.engine.live())
        self.report.samples.append((_r(self.sub.now()), active, _r(mean), _r(power), running))
        self.sub.emit("sample", active_hosts=active, mean_util=_r(mean), power_w=_r(power))

    # -- events -------------------------------------------------------------------

    def _apply(self, ev: ScenarioEvent) -> None:
        sub = self.sub
        if isinstance(ev, MoveVm):
            self._migrate(ev.vm, ev.to, "operator")
            return
        if isinstance(ev, Drain):
            self._drain(ev.node)
            return
        lost = ([v.spec.name for v in sub.vms.values() if v.node == ev.node]
                if isinstance(ev, NodeDown) else [])
        changed = inject(ev, sub, self.spec)
        if changed:
            self.hosts.fault(*changed)  # the manager finds out, and fails over
        if isinstance(ev, (LinkDown, LinkUp)):
            self._failure(str(ev), self._routing())
        elif isinstance(ev, NodeDown):
            self.crashes[ev.node] = _Crash(self._failure(str(ev), ""), lost)
            self._crash_handled(ev.node)
        elif isinstance(ev, NodeUp):
            self._failure(str(ev), "node back; it takes VMs again")
        else:
            what = "; ".join(f"I/O of {src} redirected to {dst} over {net}"
                             for net, src, dst in sub.redirects())
            self._failure(str(ev), what or "direct I/O everywhere")

    def _routing(self) -> str:
        if len(self.spec.nodes) > 64:
            return "routes recomputed"
        r = routes(self.spec, self.sub.health())
        lm = sorted({order[0] for order in r.live_migration.values() if order})
        return (f"heartbeats and CSV on {r.cluster or 'no network'};"
                f" live migration on {', '.join(lm) or 'no network'}")

    def _failure(self, event: str, handled: str) -> dict[str, Any]:
        """Report ``event`` and how it was handled; the entry, for a later word on it."""
        entry: dict[str, Any] = {"t": _r(self.sub.now()), "event": event, "handled": handled}
        self.report.failures.append(entry)
        return entry

    def _node_states(self) -> tuple[set[str], set[str], set[str]]:
        """(up, down, off) nodes now."""
        nodes = self.sub.nodes.values()
        up = {n.name for n in nodes if n.state == "up"}
        down = {n.name for n in nodes if n.state == "down"}
        return up, down, {n.name for n in nodes} - up - down

    def _manager_event(self, rec: dict[str, Any]) -> None:
        """What the manager recorded, into the trace in the store's own words; a restart
        also as the decision of the policy that chose its node."""
        kind = str(rec["kind"])
        self.sub.emit(kind, **{k: v for k, v in rec.items() if k not in ("kind", "at")})
        if kind == "vm_restarted":
            self.sub.emit("decision", policy="failover_plan", action="restart",
                          vm=rec["vm"], node=rec["node"], from_node=rec["from_node"])
            crash = self.crashes.get(str(rec["from_node"]))
            if crash is not None:
                crash.placed.append(f"{rec['vm']}->{rec['node']}")
                self._crash_handled(str(rec["from_node"]))
        elif kind == "vm_cannot_place":
            for node, crash in self.crashes.items():
                if rec["vm"] in crash.lost:
                    crash.unplaced.append(f"{rec['vm']} ({rec['reason']})")
                    self._crash_handled(node)

    def _crash_handled(self, node: str) -> None:
        crash = self.crashes[node]
        lost, placed, unplaced = crash.lost, crash.placed, crash.unplaced
        up, _down, _off = self._node_states()
        quorum = quorate(self.spec, len(up), self.spec.witness is not None)  # the manager's rule
        crash.entry["handled"] = (
            f"{len(lost)} VMs lost; restarted {', '.join(placed) or 'none'}"
            + (f"; cannot place {', '.join(unplaced)}" if unplaced else "")
            + ("" if quorum or placed else
               f"; no quorum ({len(up)} of {len(self.spec.nodes)} nodes up)"))

    def _drain(self, node: str) -> None:
        """Move every VM off ``node`` to the targets :func:`drain_plan` gives."""
        _up, down, off = self._node_states()
        placements = {name: v.node for name, v in self.sub.vms.items()}
        for action in drain_plan(self.spec, placements, node, down, CLUSTER_FAILOVER,
                                 excluded=off).actions:
            if isinstance(action, CannotPlace):
                self._failure(f"drain {node}", f"cannot place {action.vm} ({action.reason}); "
                              "it stays")
            elif isinstance(action, Migrate):
                self.sub.emit("decision", policy="drain_plan", action="migrate", vm=action.vm,
                              node=action.target, from_node=node)
                self._migrate(action.vm, action.target, f"drain {node}")

    # -- migrations ---------------------------------------------------------------

    def _migrate(self, vm: str, target: str, reason: str, order: list[str] | None = None) -> None:
        rec = self.sub.vms[vm]
        if rec.node is None or rec.node == target or vm in self.busy:
            return
        if order is None:
            order = live_migration_order(self.spec, self.sub.health(), rec.spec, rec.node, target)
        if not order:
            return
        # The mode, as the cluster chooses it (control.migration.migrate): on the first
        # network, before anything starts; a refusal starts nothing.
        params = MigrationParams.asked(rec.spec.max_downtime_ms,
                                       on_no_convergence=self.scn.policy.on_no_convergence,
                                       vm_action=rec.spec.on_no_convergence)
        choice, _ = choose(self.sub, self.spec, vm, target, order[0], params)
        if choice.mode == "refuse":
            self._record_failed(vm, rec.node, target, order[0], reason,
                                f"refused before it started: {choice.reason}")
            return
        params = carried_out(params, choice)
        while order:
            net, order = order[0], order[1:]
            try:
                handle = self.sub.prepare_migration(vm, target, net, choice.mode)
            except MigrationError as err:
                self._record_failed(vm, rec.node, target, net, reason, str(err))
                continue
            self.sub.start_migration(handle, params)
            self.moving[handle.id] = (order, reason)
            self.busy.add(vm)
            return

    def _record_failed(self, vm: str, src: str, dst: str, net: str, why: str, err: str) -> None:
        self._record(MigrationResult(vm, src, dst, net, ok=False, error=err), why)

    def _record(self, result: MigrationResult, reason: str) -> None:
        self.report.migrations.append({**result.to_json(), "reason": reason})

    def _ended(self, handle: MigrationHandle) -> None:
        # Finalize outside the engine's own callback, at the same virtual time.
        self.sub.at(self.sub.now(), lambda: self._finalize(handle), priority=0)

    def _finalize(self, handle: MigrationHandle) -> None:
        progress = self.sub.poll_migration(handle)
        result = self.sub.finalize_migration(handle, progress.status == "completed")
        fallbacks, reason = self.moving.pop(handle.id)
        self.busy.discard(handle.vm)
        self._record(result, reason)
        if result.ok:
            self.hosts.moved(handle.vm, handle.target)
        if not result.ok and fallbacks and self.sub.vms[handle.vm].node == handle.source:
            self._migrate(handle.vm, handle.target, reason + " (retry)", fallbacks)

    # -- consolidation: the scenario's policy, planned as `lab consolidate` plans ---------

    def _timed(self, seconds: float) -> None:
        self.report.policy_s += seconds

    def _consolidate(self) -> None:
        """One decision of the scenario's consolidation policy (a name the policy registry
        knows), planned by :func:`~vmcluster.control.consolidate.make_plan` from what the
        substrate shows now, as ``vmcluster lab consolidate`` plans: hosts it needs are
        powered on, at most ``max_migrations`` of its moves start (VMs already in flight
        stay), and hosts left empty are powered off once their last VM has gone."""
        pol, sub = self.scn.policy, self.sub
        cpu = dict(zip(self.vm_names, sub.vm_util.tolist(), strict=True))
        self.decisions += 1
        t0 = time.perf_counter()
        plan = make_plan(observe(sub, self.spec, vm_cpu=cpu), self.spec, pol.kind,
                         seed=self.scn.seed + self.decisions, history=self.history,
                         max_moves=pol.max_migrations, timed=self._timed)
        self.report.planning_s += time.perf_counter() - t0
        for node in plan.power_on:
            self.sub.emit("decision", policy=pol.kind, action="power-on", node=node)
            sub.set_power(node, True)
        for m in plan.migrations:
            if m.vm in self.busy:
                continue  # still moving from the last round
            self.sub.emit("decision", policy=pol.kind, action="migrate", vm=m.vm,
                          node=m.target, from_node=m.source)
            self._migrate(m.vm, m.target, pol.kind, [m.network, *m.fallbacks])
        if pol.power_off:
            for n in sub.nodes.values():
                if n.state == "up" and n.used_mib == 0 and n.migrations == 0:
                    sub.set_power(n.name, False)

    # -- the report -------------------------------------------------------------------

    def _finish(self) -> None:
        rep, sub = self.report, self.sub
        rep.events = sub.kernel.processed
        rep.energy_kwh = float(self.energy_j.sum()) / 3.6e6
        rep.hosts = [
            {"name": n.name, "state": n.state,
             "mean_util": _r(float(self.util_s[n.index] / self.up_s[n.index]))
             if self.up_s[n.index] else 0.0,
             "up_s": _r(float(self.up_s[n.index])),
             "energy_kwh": _r(float(self.energy_j[n.index]) / 3.6e6)}
            for n in sub.nodes.values()
        ]
        rep.traffic_totals = [
            {"class": c, "network": net, "mib": _r(mib)}
            for (c, net), mib in sorted(sub.fabric.totals().items())
        ]
        rep.traffic = _bin_traffic(sub.fabric.series, self.scn.bin_s, self.scn.duration_s)


def _bin_traffic(series: list[tuple[float, str, str, float]], bin_s: float,
                 end: float) -> list[dict[str, Any]]:
    """MiB per (bin, class, network) from the step series of rates."""
    out: dict[tuple[int, str, str], float] = {}
    current: dict[tuple[str, str], tuple[float, float]] = {}  # key -> (since, rate)

    def flush(key: tuple[str, str], since: float, until: float, rate: float) -> None:
        t = since
        while t < until and rate > 0:
            b = int(t // bin_s)
            step = min(until, (b + 1) * bin_s) - t
            out[(b, *key)] = out.get((b, *key), 0.0) + rate * step
            t += step

    for t, cls, net, rate in series:
        key = (cls, net)
        if key in current:
            since, old = current[key]
            flush(key, since, min(t, end), old)
        current[key] = (t, rate)
    for key, (since, rate) in current.items():
        flush(key, since, end, rate)
    return [{"t": b * bin_s, "class": c, "network": n, "mib": _r(v)}
            for (b, c, n), v in sorted(out.items())]


@dataclass(frozen=True)
class CrashPrediction:
    """What the simulator says the cluster does when ``node`` crashes: where each of its
    VMs restarts (None: nowhere) and how long after the crash the restarts are issued."""

    node: str
    restarts: dict[str, str | None]
    after_s: float | None


def predict_crash(spec: ClusterSpec, placements: Mapping[str, str | None],
                  node: str) -> CrashPrediction:
    """Simulate ``node`` crashing with the VMs where ``placements`` puts them (those placed
    nowhere are left out): the cluster's manager itself decides, in virtual time."""
    vms = tuple(replace(v, owner=str(placements[v.name])) for v in spec.vms
                if placements.get(v.name))
    crash_at = 1.0
    wait = restart_not_before(crash_at, spec.cluster, CLUSTER_FAILOVER) - crash_at
    scn = Scenario(name=f"crash of {node}", spec=replace(spec, vms=vms),
                   workload=constant(len(vms), 0.1), io_mibps=0.0,
                   events=(NodeDown(crash_at, node),),
                   policy=PolicyParams(), power=PowerParams(),
                   duration_s=crash_at + wait + 5.0, seed=0, bin_s=60.0, source="<crash>")
    decided: list[dict[str, Any]] = []
    run_scenario(scn, trace=lambda e: decided.append(e) if e["kind"] == "decision" else None)
    lost = [v.name for v in vms if v.owner == node]
    restarts: dict[str, str | None] = dict.fromkeys(lost)
    restarts.update({str(d["vm"]): str(d["node"]) for d in decided if d["action"] == "restart"})
    after = min((float(d["t"]) for d in decided), default=None)
    return CrashPrediction(node, restarts, None if after is None else after - crash_at)


def run_scenario(scn: Scenario, *, trace: Trace | None = None,
                 progress: Callable[[float], None] | None = None) -> Report:
    """Simulate ``scn`` to its end; ``trace`` receives every event, ``progress`` virtual time."""
    return _Runner(scn, trace, progress).run()
