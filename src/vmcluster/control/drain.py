"""Drain a node: live-migrate every VM off it, one at a time, with progress and cancel.

The node is first marked ``draining`` in the store (the manager keeps it out of
placement from then on); targets come from :func:`drain_plan` over the
store's placements. Each VM moves with :func:`control.migration.migrate`
(whose ``finalize`` rolls a failed or interrupted migration back to the
source); after each switchover the VM's placement moves to the target by
compare-and-set. An interrupt (Ctrl-C) cancels: the VM in flight stays on the
source, the ones already moved stay moved, and the node is ``up`` again.
``node resume`` (an intent the manager carries out) ends a drain or a quarantine.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from vmcluster.control.events import MigrationDone, VmCannotPlace
from vmcluster.control.ledger import StoreLedger
from vmcluster.control.migration import (
    MigrationRequest,
    Migrator,
    ProgressCallback,
    migrate_here,
)
from vmcluster.errors import MigrationCancelled, UsageError
from vmcluster.model import ClusterSpec
from vmcluster.policy.failover import CannotPlace, FailoverParams, Migrate, drain_plan
from vmcluster.store.errors import StoreConflict
from vmcluster.store.state import ClusterState
from vmcluster.substrate.protocol import MigrationResult, Substrate

__all__ = ["DrainResult", "drain"]

@dataclass(frozen=True)
class DrainResult:
    node: str
    moved: tuple[MigrationResult, ...] = ()
    failed: tuple[MigrationResult, ...] = ()
    unplaced: tuple[CannotPlace, ...] = ()
    cancelled: bool = False
    state: str = "draining"

    def to_json(self) -> dict[str, object]:
        return {
            "node": self.node, "state": self.state, "cancelled": self.cancelled,
            "moved": [{"vm": r.vm, "target": r.target, "network": r.network,
                       "downtime_ms": r.downtime_ms, "total_s": r.total_s} for r in self.moved],
            "failed": [{"vm": r.vm, "error": r.error} for r in self.failed],
            "unplaced": [{"vm": c.vm, "reason": c.reason} for c in self.unplaced],
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
    on_plan: Callable[[list[Migrate | CannotPlace]], None] = lambda _p: None,
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
    (this process, or the VM's source host)."""
    spec.node(node)
    nodes = store(state.node_states)
    assert isinstance(nodes, dict)
    if nodes.get(node, {}).get("state") == "down":
        raise UsageError(f"{node} is down; its VMs fail over, there is nothing to drain")
    placements = store(state.placements)
    assert isinstance(placements, dict)
    owners = {vm: p.node for vm, p in placements.items()}
    down = [n for n, s in nodes.items() if s.get("state") == "down"]
    excluded = [n for n, s in nodes.items()
                if s.get("state") in ("draining", "quarantined") and n != node]
    plan = drain_plan(spec, owners, node, down, FailoverParams(), excluded)
    store(state.set_node_state, node, "draining")
    actions = [a for a in plan.actions if isinstance(a, Migrate | CannotPlace)]
    on_plan(actions)
    run = _Run()
    unplaced = tuple(a for a in actions if isinstance(a, CannotPlace))
    for c in unplaced:
        store(state.append_event, VmCannotPlace(wall(), node, c.vm, c.reason).to_json())
    try:
        for action in actions:
            if not isinstance(action, Migrate):
                continue
            if cancelled():
                raise MigrationCancelled(f"the drain of {node} was cancelled")
            result = migrator(substrate, spec, MigrationRequest(action.vm, action.target),
                              on_progress, ledger() if ledger is not None else None)
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
        return DrainResult(node, tuple(run.moved), tuple(run.failed), unplaced, True, "up")
    return DrainResult(node, tuple(run.moved), tuple(run.failed), unplaced, False, "draining")


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
