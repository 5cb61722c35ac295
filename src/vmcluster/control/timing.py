"""When migrations that run at the same time end: the simulator's answer.

Several migrations over one network share its bandwidth (max-min fair, a migration
that ends gives its share to the others), so each takes longer than the model of one
migration alone says. :func:`concurrent` runs them in the simulator, each with the mode
:func:`~vmcluster.control.migration.choose` picks for it (the same code the cluster runs)
and starting when it started (or will), and says when each ends.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from vmcluster.control.migration import carried_out, choose
from vmcluster.errors import MigrationError
from vmcluster.model import ClusterSpec
from vmcluster.policy.networks import Health, live_migration_order
from vmcluster.substrate.protocol import MigrationHandle, MigrationParams, MigrationResult
from vmcluster.substrate.sim import SimSubstrate

__all__ = ["Move", "Timed", "concurrent"]

STEP_S = 0.01  # the simulator is looked at this often (virtual time)
HORIZON_S = 3600.0  # no migration is waited for longer than this (virtual time)


@dataclass(frozen=True)
class Move:
    """One migration: ``vm`` (from where the spec places it) to ``target``, starting
    ``start_s`` after the first, with its VM's downtime budget and action."""

    vm: str
    target: str
    start_s: float = 0.0


@dataclass(frozen=True)
class Timed:
    """A simulated migration: its mode, network, when it started and ended (seconds from
    the first start) and the simulator's result."""

    move: Move
    mode: str
    network: str
    end_s: float
    result: MigrationResult

    @property
    def total_s(self) -> float:
        return self.end_s - self.move.start_s


def concurrent(spec: ClusterSpec, moves: Sequence[Move],
               health: Health | None = None) -> list[Timed]:
    """Simulate ``moves`` together on ``spec`` (its VMs where their ``owner`` says, with
    the spec's dirty profiles) and return when each ends, in the order given. A move the
    mode refuses, or that cannot start, raises MigrationError naming it."""
    health = health or Health()
    sub = SimSubstrate(spec)
    for vm in spec.vms:
        if vm.owner is not None:
            sub.start_vm(vm.name, vm.owner)
    started: dict[int, tuple[MigrationHandle, str, str]] = {}
    errors: list[str] = []

    def begin(i: int, mv: Move) -> None:
        vm = spec.vm(mv.vm)
        source = sub.status().vm(mv.vm).node
        order = live_migration_order(spec, health, vm, source or "", mv.target)
        if source is None or not order:
            errors.append(f"{mv.vm}: no live-migration network to {mv.target}")
            return
        params = MigrationParams.asked(vm.max_downtime_ms, vm_action=vm.on_no_convergence)
        choice, _ = choose(sub, spec, mv.vm, mv.target, order[0], params)
        if choice.mode == "refuse":
            errors.append(f"{mv.vm}: {choice.reason}")
            return
        params = carried_out(params, choice)
        try:
            handle = sub.prepare_migration(mv.vm, mv.target, order[0], choice.mode)
            sub.start_migration(handle, params)
        except MigrationError as exc:
            errors.append(f"{mv.vm}: {exc}")
            return
        started[i] = (handle, choice.mode, order[0])

    t0 = sub.now()
    for i, mv in enumerate(moves):
        sub.at(t0 + max(0.0, mv.start_s), lambda i=i, mv=mv: begin(i, mv))  # type: ignore[misc]
    ended: dict[int, Timed] = {}
    while len(ended) + len(errors) < len(moves) and sub.now() - t0 < HORIZON_S:
        sub.clock.sleep(STEP_S)
        for i, (handle, mode, net) in started.items():
            if i in ended or sub.poll_migration(handle).status in ("setup", "active"):
                continue
            result = sub.finalize_migration(handle, True)
            began = result.extra.get("started_s")  # a queued one starts when a slot frees
            began_s = float(began) - t0 if isinstance(began, float) else moves[i].start_s
            ended[i] = Timed(moves[i], mode, net, began_s + result.total_s, result)
    if errors:
        raise MigrationError("cannot simulate " + "; ".join(errors))
    missing = [mv.vm for i, mv in enumerate(moves) if i not in ended]
    if missing:
        raise MigrationError(f"{', '.join(missing)} did not end within {HORIZON_S:g} s "
                             "(simulated)")
    return [ended[i] for i in range(len(moves))]
