"""Drive a live migration through the substrate's phased protocol.

The network comes from the policy (the VM's ordered list, else the
second-lowest metric for that node pair). If a migration fails, the next
network of that order is tried; the VM is never lost because the
substrate's ``finalize_migration(success=False)`` rolls back to the source.
With a ``ledger`` (:class:`~vmcluster.control.ledger.StoreLedger`) each attempt is
a record in the store, and its end is decided there by compare-and-set: see
:mod:`vmcluster.control.ledger`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

from vmcluster.errors import (
    MigrationCancelled,
    MigrationError,
    MigrationRefused,
    PolicyError,
    VmclusterError,
)
from vmcluster.model import ClusterSpec
from vmcluster.policy.migration_mode import ModeChoice, choose_mode
from vmcluster.policy.migration_model import PrecopyInput
from vmcluster.policy.networks import Health, live_migration_order
from vmcluster.policy.prediction import delta_ratio_for, network_mibps
from vmcluster.substrate.protocol import (
    MigrationHandle,
    MigrationParams,
    MigrationProfile,
    MigrationProgress,
    MigrationResult,
    Substrate,
    SubstrateStatus,
)

if TYPE_CHECKING:
    from vmcluster.control.ledger import StoreLedger

__all__ = ["MigrationRequest", "Migrator", "ProgressCallback", "choose", "health_for",
           "known_health", "migrate", "migrate_here"]

ProgressCallback = Callable[[MigrationHandle, MigrationProgress], None]


def known_health(spec: ClusterSpec, status: SubstrateStatus) -> Health:
    """Interfaces down as the substrate reports them; a node that is not up has none up."""
    down = {(net, n.name) for n in status.nodes for net in n.links_down}
    for n in status.nodes:
        if n.state != "up":
            down.update((net, n.name) for net in spec.node(n.name).interfaces)
    return Health(frozenset(down))


def _down_text(health: Health, nodes: tuple[str, ...]) -> str:
    down = sorted(f"{net}@{node}" for net, node in health.down if node in nodes)
    return ", ".join(down) or "none"


# A host's links come from its agent's own answer (QemuSubstrate.status); an agent that
# does not answer for a moment (busy, restarting) makes its host look down, and the policy
# then sees none of that host's links up: look again for a few seconds.
LINKS_SETTLE_S = 4.0


def health_for(substrate: Substrate, spec: ClusterSpec, vm: str, target: str,
               settle_s: float = LINKS_SETTLE_S) -> Health:
    """The links' health for moving ``vm`` to ``target``, as the substrate reports it now;
    when the policy finds no network at all between the two, it looks again (every
    0.5 s, for at most ``settle_s``) before the caller gives up."""
    deadline = substrate.clock.now() + settle_s
    while True:
        status = substrate.status()
        health = known_health(spec, status)
        source = status.vm(vm).node
        if source is None or source == target or substrate.clock.now() >= deadline or \
                live_migration_order(spec, health, spec.vm(vm), source, target):
            return health
        substrate.clock.sleep(0.5)


@dataclass(frozen=True)
class MigrationRequest:
    vm: str
    target: str
    params: MigrationParams | None = None  # None: from the VM's spec
    poll_s: float = 0.1
    timeout_s: float = 600.0


# Who carries out a migration: :func:`migrate_here`, in this process, or a stand-in that
# has another process drive it (the source host's agent: vmcluster.node.driver) and
# returns what that driver's ``migrate`` returned. Whoever drives reads the links'
# health itself, when it begins.
Migrator = Callable[
    [Substrate, ClusterSpec, "MigrationRequest", ProgressCallback | None,
     "StoreLedger | None"], MigrationResult]


def migrate_here(substrate: Substrate, spec: ClusterSpec, req: MigrationRequest,
                 on_progress: ProgressCallback | None = None,
                 ledger: StoreLedger | None = None) -> MigrationResult:
    """:func:`migrate` in this process, over the links as the substrate reports them now."""
    return migrate(substrate, spec, health_for(substrate, spec, req.vm, req.target), req,
                   on_progress, ledger)


def migrate(
    substrate: Substrate,
    spec: ClusterSpec,
    health: Health,
    req: MigrationRequest,
    on_progress: ProgressCallback | None = None,
    ledger: StoreLedger | None = None,
) -> MigrationResult:
    """Migrate ``req.vm`` to ``req.target``, trying each network of the policy's order.

    Returns the last attempt's result; raises MigrationError when no network
    can be tried at all. A failed result (``ok`` False) leaves the VM running
    on its source.
    """
    vm = spec.vm(req.vm)
    spec.node(req.target)
    source = substrate.status().vm(vm.name).node
    if source is None:
        raise MigrationError(f"{vm.name} is not running; start it before migrating")
    if source == req.target:
        raise MigrationError(f"{vm.name} already runs on {req.target}; pick another node")
    order = live_migration_order(spec, health, vm, source, req.target)
    if not order:
        raise PolicyError(
            f"no live-migration network is available between {source} and {req.target}"
            f" for {vm.name} (interfaces down: {_down_text(health, (source, req.target))});"
            " bring one up or change its live_migration_networks"
        )
    params = req.params or MigrationParams.asked(vm.max_downtime_ms,
                                                 vm_action=vm.on_no_convergence)
    choice, profile = choose(substrate, spec, vm.name, req.target, order[0], params)
    if choice.mode == "refuse":
        raise MigrationRefused(f"cannot migrate {vm.name}: {choice.reason}")
    params = carried_out(params, choice)
    chosen = {**choice.to_json(),
              "predicted_total_s": round(choice.result.total_s, 3),
              "predicted_downtime_ms": round(choice.result.downtime_ms, 1),
              "profile": profile.to_json()}
    result: MigrationResult | None = None
    tried: list[dict[str, object]] = []  # the networks that failed before the last one
    for network in order:
        result = _attempt(substrate, vm.name, req, network, params, on_progress, ledger)
        # unsettled: not ours to try again; no convergence: the VM's own pace, not the
        # network's fault (another network would give up the same way, passes later)
        # switched: the VM is the target's now, whatever became of it: no other network
        # source gone: its QEMU ended; nothing is left to move over another network
        if (result.ok or result.unsettled or result.extra.get("no_convergence")
                or result.extra.get("switched") or result.extra.get("source_gone")):
            break
        tried.append({"network": network, "error": result.error})
    assert result is not None
    if tried and tried[-1]["network"] == result.network and not result.ok:
        tried.pop()  # the last attempt is the result itself
    return replace(result, extra={**result.extra, **chosen, **({"tried": tried} if tried
                                                              else {})})


def carried_out(params: MigrationParams, choice: ModeChoice) -> MigrationParams:
    """``params`` with how ``choice`` is carried out: its mode, the model's total, the
    downtime the hypervisor aims at, auto-converge's first step and trigger, post-copy's
    switch, the delta cache."""
    return replace(params, mode=choice.mode, predicted_s=choice.result.total_s,
                   aim_ms=choice.aim_ms, throttle_initial=choice.throttle_initial,
                   throttle_trigger=choice.throttle_trigger,
                   postcopy_after_mib=choice.postcopy_after_mib,
                   delta_cache_mib=choice.delta_cache_mib)


def choose(substrate: Substrate, spec: ClusterSpec, vm: str, target: str, network: str,
           params: MigrationParams) -> tuple[ModeChoice, MigrationProfile]:
    """The mode for moving ``vm`` to ``target`` over ``network`` now: the pre-copy model
    on the guest's dirty profile as the substrate knows it (its QEMU's page sampling;
    the simulator's spec), the network's bandwidth (or the cap asked for) and the
    budget and action asked for."""
    profile = substrate.migration_profile(vm, target)
    spec_vm = spec.vm(vm)
    bandwidth = params.bandwidth_mibps or network_mibps(spec.network(network))
    inp = profile.applied(PrecopyInput(
        memory_mib=float(spec_vm.memory_mib), dirty_mibps=0.0, wws_mib=0.0,
        bandwidth_mibps=bandwidth, downtime_ms=params.downtime_ms,
        max_passes=params.max_passes, on_no_convergence=params.on_no_convergence))
    return choose_mode(inp, allow_postcopy=spec_vm.allow_postcopy,
                       blocker=profile.postcopy_blocker,
                       delta_ratio=delta_ratio_for(spec, spec_vm, profile)), profile


def _attempt(
    substrate: Substrate,
    vm: str,
    req: MigrationRequest,
    network: str,
    params: MigrationParams,
    on_progress: ProgressCallback | None,
    ledger: StoreLedger | None = None,
) -> MigrationResult:
    try:
        handle = substrate.prepare_migration(vm, req.target, network, params.mode)
    except MigrationRefused:
        raise  # no other network changes this: one line, before anything started
    except MigrationError as err:
        source = substrate.status().vm(vm).node or "?"
        return MigrationResult(vm, source, req.target, network, ok=False, error=str(err))
    if ledger is not None:
        try:
            ledger.begin(handle)
        except VmclusterError as err:
            failed = substrate.finalize_migration(handle, False)  # the prepared target goes
            return MigrationResult(vm, handle.source, req.target, network, ok=False,
                                   error=f"{err}" + (f"; {failed.error}" if failed.error
                                                     and not failed.ok else ""))
    success = cancelled = False
    try:
        substrate.start_migration(handle, params)
        deadline = substrate.clock.now() + req.timeout_s
        while substrate.clock.now() <= deadline:
            if ledger is not None:
                ledger.renew()
            progress = substrate.poll_migration(handle)
            if on_progress is not None:
                on_progress(handle, progress)
            if progress.status != "active" and progress.status != "setup":
                success = progress.status == "completed"
                break
            substrate.clock.sleep(max(0.0, req.poll_s - progress.waited_s))
    except MigrationCancelled:
        cancelled = True
    except VmclusterError:
        success = False
    finally:
        # Runs on errors and interrupts too: finalize owns rollback, so the VM
        # is left running on exactly one node whatever happened above.
        try:
            result = substrate.finalize_migration(handle, success, ledger)
        finally:
            if ledger is not None:
                ledger.stop_keeping()
    if cancelled and not result.ok:  # rolled back: the cancel goes on to the caller
        raise MigrationCancelled(f"the migration of {vm} was cancelled; it stays on "
                                 f"{result.source}" + (f" ({result.error})"
                                                       if result.error else ""))
    return result
