"""Drain a node: live-migrate every VM off it, one at a time, with progress and cancel.

The node is first marked ``draining`` in the store (the manager keeps it out of
placement from then on); the moves are a :class:`~vmcluster.control.plans.ClusterPlan`
from :func:`~vmcluster.control.consolidate.drain_plan` (the failover policy's targets,
each move's network and prediction, the nodes' watts before and after), the same plan
``GET /api/v1/plans/drain`` shows. Each VM moves with :func:`control.migration.migrate`
(whose ``finalize`` rolls a failed or interrupted migration back to the
source); after each switchover the VM's placement moves to the target by
compare-and-set. An interrupt (Ctrl-C) cancels: the VM in flight stays on the
source, the ones already moved stay moved, and the node is ``up`` again.
``node resume`` (an intent the manager carries out) ends a drain or a quarantine.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from vmcluster.control.consolidate import drain_plan, observe
from vmcluster.control.events import MigrationDone, VmCannotPlace
from vmcluster.control.ledger import StoreLedger
from vmcluster.control.migration import (
    MigrationRequest,
    Migrator,
    ProgressCallback,
    migrate_here,
)
from vmcluster.control.plans import ClusterPlan
from vmcluster.errors import MigrationCancelled, UsageError, VmclusterError
from vmcluster.model import ClusterSpec
from vmcluster.store.errors import StoreConflict
from vmcluster.store.state import ClusterState
from vmcluster.substrate.protocol import MigrationResult, Substrate

__all__ = ["DrainResult", "drain"]

@dataclass(frozen=True)
class DrainResult:
    node: str
    moved: tuple[MigrationResult, ...] = ()
    failed: tuple[MigrationResult, ...] = ()
    cancelled: bool = False
    state: str = "draining"
    plan: ClusterPlan | None = None

    @property
    def unplaced(self) -> tuple[tuple[str, str], ...]:
        """(vm, why) of the VMs the plan could not move."""
        return () if self.plan is None else self.plan.skipped

    def to_json(self) -> dict[str, object]:
        return {
            "node": self.node, "state": self.state, "cancelled": self.cancelled,
            "moved": [{"vm": r.vm, "target": r.target, "network": r.network,
                       "downtime_ms": r.downtime_ms, "total_s": r.total_s} for r in self.moved],
            "failed": [{"vm": r.vm, "error": r.error} for r in self.failed],
            "unplaced": [{"vm": vm, "reason": why} for vm, why in self.unplaced],
            "plan": None if self.plan is None else self.plan.to_json(),
        }


@dataclass
class _Run:
    moved: list[MigrationResult] = field(default_factory=list)
    failed: list[MigrationResult] = field(default_factory=list)


def drain(
    substrate: Substrate,
    spec: ClusterSpec,
    state: ClusterState,
    node: str,
    *,
    store: Callable[..., object] = lambda fn, *a: fn(*a),
    wall: Callable[[], float],
    on_plan: Callable[[ClusterPlan], None] = lambda _p: None,
    on_progress: ProgressCallback | None = None,
    on_result: Callable[[MigrationResult], None] = lambda _r: None,
    ledger: Callable[[], StoreLedger | None] | None = None,
    cancelled: Callable[[], bool] = lambda: False,
    migrator: Migrator = migrate_here,
) -> DrainResult:
    """Drain ``node`` (see module docstring); ``store(fn, *args)`` runs each store call
    (the CLI runs them from inside the lab's namespace). ``ledger()``: a migration ledger
    per VM (the manager's, under its token: each switchover then moves the placement);
    ``cancelled()`` is asked before each VM (and the ``on_progress`` callback may raise
    MigrationCancelled for the one in flight); ``migrator``: who drives each migration
    (this process, or the VM's source host). The plan sees the cluster as ``substrate``
    reports it, with the store's draining, quarantined and down nodes as no targets."""
    spec.node(node)
    nodes = store(state.node_states)
    assert isinstance(nodes, dict)
    if nodes.get(node, {}).get("state") == "down":
        raise UsageError(f"{node} is down; its VMs fail over, there is nothing to drain")
    excluded = [n for n, s in nodes.items()
                if s.get("state") in ("draining", "quarantined", "down") and n != node]
    plan = drain_plan(observe(substrate, spec), spec, node, excluded=excluded)
    store(state.set_node_state, node, "draining")
    on_plan(plan)
    run = _Run()
    for vm, why in plan.skipped:
        store(state.append_event, VmCannotPlace(wall(), node, vm, why).to_json())
    try:
        for action in plan.migrations:
            if cancelled():
                raise MigrationCancelled(f"the drain of {node} was cancelled")
            try:
                result = migrator(substrate, spec, MigrationRequest(action.vm, action.target),
                                  on_progress, ledger() if ledger is not None else None)
            except VmclusterError as exc:
                if isinstance(exc, MigrationCancelled):
                    raise
                # This VM stays where it is (its target died mid-drain, say): said, and the
                # drain goes on with the others.
                result = MigrationResult(action.vm, node, action.target, "-", ok=False,
                                         error=str(exc))
            on_result(result)
            store(state.append_event, MigrationDone(
                wall(), node, result.vm, result.source, result.target, result.network,
                result.ok, result.downtime_ms).to_json())
            if not result.ok:
                run.failed.append(result)
                continue
            run.moved.append(result)
            if ledger is None:  # with a ledger, the switchover moved the placement
                store(_move_placement, state, result.vm, result.target)
    except (KeyboardInterrupt, MigrationCancelled):
        store(state.set_node_state, node, "up")
        return DrainResult(node, tuple(run.moved), tuple(run.failed), True, "up", plan)
    return DrainResult(node, tuple(run.moved), tuple(run.failed), False, "draining", plan)


def _move_placement(state: ClusterState, vm: str, target: str) -> None:
    """Owner of ``vm`` -> ``target`` by compare-and-set (a few tries under contention)."""
    for _ in range(5):
        current = state.placement(vm)
        try:
            state.place(vm, target, expect=current.revision, token=None)
            return
        except StoreConflict:
            continue
    raise StoreConflict(f"could not record {vm} on {target}: its placement kept changing")
