"""Apply a consolidation plan: power-ons, then each migration, then power-offs.

Power-ons come first, then each migration through
:func:`~vmcluster.control.migration.migrate` one at a time, then power-offs of
the nodes left empty. A failed migration leaves its VM where it is, and the
node it was to empty stays on. The elected manager applies a plan the API was given
(an intent), each migration on its ledger under its fencing token; a cancel stops
before the next migration (the one in flight ends where it is), and no node is then
powered off.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

from vmcluster.control.consolidate import PowerGuard
from vmcluster.control.ledger import StoreLedger
from vmcluster.control.migration import MigrationRequest, Migrator, migrate_here
from vmcluster.control.plans import ClusterPlan, PlannedMigration
from vmcluster.errors import MigrationCancelled, VmclusterError
from vmcluster.model import ClusterSpec
from vmcluster.store.election import current_leader
from vmcluster.store.state import ClusterState
from vmcluster.substrate.protocol import (
    MigrationHandle,
    MigrationProgress,
    MigrationResult,
    Substrate,
    VmStatus,
)

__all__ = ["ApplyReport", "OnStep", "Step", "apply", "store_guard"]

StepKind = Literal["power-on", "power-off", "keep-on", "migrate", "progress", "migrated",
                   "migration-failed", "skip"]


@dataclass(frozen=True)
class Step:
    """One thing :func:`apply` did or is doing, for progress output."""

    kind: StepKind
    subject: str
    message: str
    progress: MigrationProgress | None = None


@dataclass(frozen=True)
class ApplyReport:
    migrations: tuple[MigrationResult, ...] = ()
    powered_on: tuple[str, ...] = ()
    powered_off: tuple[str, ...] = ()
    kept_on: tuple[tuple[str, str], ...] = ()
    errors: tuple[str, ...] = ()
    cancelled: bool = False

    @property
    def ok(self) -> bool:
        return not self.errors

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ApplyReport:
        """A report as ``to_json`` wrote it (e.g. the manager's, read back from its intent)."""
        return cls(tuple(MigrationResult.from_json(r) for r in data.get("migrations", [])),
                   tuple(data.get("powered_on", [])), tuple(data.get("powered_off", [])),
                   tuple((k["node"], k["reason"]) for k in data.get("kept_on", [])),
                   tuple(data.get("errors", [])), bool(data.get("cancelled", False)))

    def to_json(self) -> dict[str, object]:
        return {"ok": self.ok, "migrations": [r.to_json() for r in self.migrations],
                "powered_on": list(self.powered_on), "powered_off": list(self.powered_off),
                "kept_on": [{"node": n, "reason": r} for n, r in self.kept_on],
                "errors": list(self.errors), "cancelled": self.cancelled}


OnStep = Callable[[Step], None]


@dataclass
class _Run:
    on_step: OnStep | None
    ledger: Callable[[], StoreLedger | None]
    migrator: Migrator
    results: list[MigrationResult] = field(default_factory=list)
    on: list[str] = field(default_factory=list)
    off: list[str] = field(default_factory=list)
    kept: list[tuple[str, str]] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    def say(self, kind: StepKind, subject: str, message: str,
            progress: MigrationProgress | None = None) -> None:
        if self.on_step is not None:
            self.on_step(Step(kind, subject, message, progress))


def apply(substrate: Substrate, spec: ClusterSpec, the_plan: ClusterPlan,
          on_step: OnStep | None = None, poll_s: float = 0.2,
          timeout_s: float = 600.0, ledger: Callable[[], StoreLedger | None] = lambda: None,
          cancelled: Callable[[], bool] = lambda: False,
          guard: Callable[[], PowerGuard] = PowerGuard,
          migrator: Migrator = migrate_here) -> ApplyReport:
    """Perform ``the_plan``: power-ons, then each migration, then power-offs of emptied
    nodes. ``ledger()``: a migration ledger per VM (the manager's, under its token);
    ``cancelled()`` is asked before each migration; ``guard()`` is asked, as things are
    then, before each power-off (a plan may be older than the cluster's quorum);
    ``migrator``: who drives each migration (this process, or the VM's source host)."""
    run = _Run(on_step, ledger, migrator)
    failed_on: set[str] = set()
    for node in the_plan.power_on:
        run.say("power-on", node, f"powering {node} on"
                + ("" if the_plan.policy == "operator" else ": load needs it"))
        try:
            substrate.set_power(node, True)
            run.on.append(node)
        except VmclusterError as exc:
            failed_on.add(node)
            run.errors.append(f"powering {node} on failed: {exc}")
            run.say("skip", node, f"could not power {node} on: {exc}")
    stay_on: dict[str, str] = {}
    for m in the_plan.migrations:
        if cancelled():
            run.say("skip", m.vm, "cancelled: no further migration, no node powered off")
            return ApplyReport(tuple(run.results), tuple(run.on), (), tuple(run.kept),
                               tuple(run.errors), cancelled=True)
        now = substrate.status().vm(m.vm)
        if now.node == m.target and now.state in ("running", "paused"):
            # Moved already: by this plan's earlier run (a manager that ran it lost office).
            run.say("skip", m.vm, f"{m.vm} is on {m.target} already")
            continue
        why = _cannot_start(now, m, failed_on)
        if why is None:
            res = _migrate_one(substrate, spec, m, run, poll_s, timeout_s)
            if res.ok:
                continue
            why = f"{m.vm} could not move to {m.target} ({res.error}); it stays on {m.source}"
        run.errors.append(why)
        run.say("migration-failed", m.vm, why)
        stay_on.setdefault(m.source, why)
    for node, _reason in the_plan.power_off:
        off = {n.name for n in substrate.status().nodes if n.state != "up"} | set(run.off)
        why = stay_on.get(node) or _still_busy(substrate, node) or guard().refuses(node, off)
        if why is None:
            try:
                substrate.set_power(node, False)
                run.off.append(node)
                run.say("power-off", node, f"{node} powered off")
                continue
            except VmclusterError as exc:
                why = f"powering {node} off failed: {exc}"
                run.errors.append(why)
        run.kept.append((node, why))
        run.say("keep-on", node, f"{node} stays on: {why}")
    return ApplyReport(tuple(run.results), tuple(run.on), tuple(run.off), tuple(run.kept),
                       tuple(run.errors))


def _cannot_start(now: VmStatus, m: PlannedMigration, failed_on: set[str]) -> str | None:
    if m.target in failed_on:
        return f"{m.vm} not moved: its target {m.target} could not be powered on"
    if now.node != m.source or now.state not in ("running", "paused"):
        return f"{m.vm} not moved: it is {now.state} on {now.node or 'no node'}, not on {m.source}"
    return None


def _migrate_one(substrate: Substrate, spec: ClusterSpec, m: PlannedMigration, run: _Run,
                 poll_s: float, timeout_s: float) -> MigrationResult:
    run.say("migrate", m.vm, f"{m.vm}: {m.source} -> {m.target} via {m.network} "
            f"(predicted {m.predicted_s:.1f} s, downtime {m.predicted_downtime_ms:.0f} ms)")

    def progress(h: MigrationHandle, p: MigrationProgress) -> None:
        run.say("progress", h.vm, f"{h.vm} {h.source}->{h.target} via {h.network}: {p.status} "
                f"pass {p.pass_no} sent {p.sent_mib:.1f} MiB remaining {p.remaining_mib:.1f} MiB",
                p)

    req = MigrationRequest(vm=m.vm, target=m.target, poll_s=poll_s, timeout_s=timeout_s)
    try:
        res = run.migrator(substrate, spec, req, progress, run.ledger())
    except MigrationCancelled:
        raise
    except VmclusterError as exc:  # no network could even be tried; nothing moved
        res = MigrationResult(m.vm, m.source, m.target, m.network, ok=False, error=str(exc))
    run.results.append(res)
    if res.ok:
        down = "-" if res.downtime_ms is None else f"{res.downtime_ms:.0f} ms"
        run.say("migrated", m.vm, f"{m.vm} now on {m.target} via {res.network}: "
                f"{res.total_s:.2f} s, downtime {down}")
    return res


def _still_busy(substrate: Substrate, node: str) -> str | None:
    left = [v.name for v in substrate.status().vms if v.node == node and v.state != "stopped"]
    return f"VMs still there: {', '.join(left)}" if left else None


def store_guard(state: ClusterState) -> PowerGuard:
    """The power guard of the cluster in ``state``: its etcd voters (by member name) and the
    node of its elected manager."""
    voters = frozenset(str(m["name"]) for m in state.etcd.member_list()
                       if m.get("name") and not m.get("isLearner"))
    held = current_leader(state.client, state.cluster)
    return PowerGuard(voters, held.name if held else None)
