"""The substrate contract: the only code that touches a clock, a socket or a process.

Two implementations exist, method for method: ``sim`` (virtual time, a
discrete-event model at datacenter scale) and ``qemu`` (network namespaces,
QEMU processes over QMP, NBD, etcd). The contract suite in
``tests/contract/`` runs against both; this docstring is the contract.

Time
    ``clock.now()`` is seconds since the substrate started (virtual in sim,
    monotonic wall time in qemu). ``clock.sleep(s)`` lets ``s`` seconds pass:
    the sim runs its events up to ``now + s``; qemu sleeps. Nothing above the
    substrate reads a clock any other way.

VM lifecycle
    ``start_vm(vm, node)`` boots a VM of the spec on ``node`` (state
    ``running``); ``stop_vm`` stops it (``stopped``, it is no longer on any
    node); ``pause_vm``/``resume_vm`` toggle ``paused``/``running``. Each
    raises ``UsageError`` for an unknown VM or node and ``SubstrateError``
    when the action is impossible (node down, VM already running elsewhere).
    Each is idempotent: starting a running VM on its node, stopping a
    stopped VM, do nothing.

Live migration, a phased protocol (as Ganeti's KVM driver)
    ``prepare_migration(vm, target, network)`` readies the target to receive
    over ``network`` (qemu: an incoming QEMU listening on the target's address
    on that network) and returns a :class:`MigrationHandle`. It raises
    ``MigrationError`` for migration to the VM's own node, a down target, or a
    network the pair cannot use; ``mode`` is the mode chosen (a target readied for
    post-copy takes capabilities it must have before it listens).
    ``start_migration(handle, params)`` starts iterative pre-copy.
    ``poll_migration(handle)`` returns a
    :class:`MigrationProgress` (pass, sent, remaining, dirty rate, expected
    downtime, status). ``finalize_migration(handle, success)`` ends it: with
    ``success`` and a completed copy the VM runs on the target (announced
    with ARP), the source is released, ownership moves in one step; otherwise
    it rolls back: the target is cleaned up and the VM runs on the source.
    ``finalize`` returns a :class:`MigrationResult` and never loses the VM.
    Every phase is idempotent: preparing the same VM, target and network again
    returns the same handle (another target while one is live raises
    ``MigrationError``), starting twice starts once, finalizing twice returns
    the first result. A network that goes down under a migration makes ``poll``
    report ``failed`` (at once in sim; in qemu once no bytes moved for
    ``stall_s``). ``sent`` counts bytes on the wire, which in qemu is less than
    the VM's memory (an untouched page costs a few bytes).

Power
    ``set_power(node, on)`` powers an empty host off or on (``SubstrateError``
    if VMs still run there, or when the substrate has no way to power a host on).

Faults (a separate :class:`FaultInjector`, held by the simulator and the lab,
never by production code)
    ``set_link(network, node, up)`` takes one node's interface on a network
    down or up; ``set_node(node, up)`` crashes a node (its VMs die with it) or
    starts it again; ``set_storage_path(node, up)`` cuts or restores a node's
    path to shared storage.

Observation
    ``status()`` returns a :class:`SubstrateStatus`: every node's state and
    every VM's node and state. ``utilisation()`` maps each powered node to its
    CPU utilisation in [0, 1].
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol, cast, runtime_checkable

from vmcluster.policy.migration_mode import MigrationProfile

__all__ = [
    "Clock",
    "FaultInjector",
    "MigrationHandle",
    "MigrationParams",
    "MigrationProfile",
    "MigrationProgress",
    "MigrationResult",
    "NoConvergenceAction",
    "NodeStatus",
    "Substrate",
    "SubstrateStatus",
    "Switchover",
    "VmStatus",
]

# "unknown": what a host whose agent does not answer (while its peers hear it) runs, and
# the host itself; shown as such, never guessed as stopped or down.
VmState = Literal["running", "paused", "stopped", "migrating", "unknown"]
NodeState = Literal["up", "down", "off", "unknown"]
MigrationStatus = Literal["setup", "active", "completed", "failed", "cancelled"]
NoConvergenceAction = Literal["force", "throttle", "abort"]


class Clock(Protocol):
    """Time as the substrate sees it (virtual or wall)."""

    def now(self) -> float: ...

    def sleep(self, seconds: float) -> None: ...


@dataclass(frozen=True)
class VmStatus:
    name: str
    node: str | None
    state: VmState


@dataclass(frozen=True)
class NodeStatus:
    name: str
    state: NodeState
    storage_path: bool = True
    links_down: tuple[str, ...] = ()


@dataclass(frozen=True)
class SubstrateStatus:
    nodes: tuple[NodeStatus, ...]
    vms: tuple[VmStatus, ...]

    def vm(self, name: str) -> VmStatus:
        return next(v for v in self.vms if v.name == name)

    def node(self, name: str) -> NodeStatus:
        return next(n for n in self.nodes if n.name == name)

    def to_json(self) -> dict[str, object]:
        return {
            "nodes": [
                {
                    "name": n.name,
                    "state": n.state,
                    "storage_path": n.storage_path,
                    "links_down": list(n.links_down),
                }
                for n in self.nodes
            ],
            "vms": [{"name": v.name, "node": v.node, "state": v.state} for v in self.vms],
        }


@dataclass(frozen=True)
class MigrationParams:
    """Downtime budget, bandwidth cap, pass bound, and the action if it will not converge:
    ``throttle`` (the default: slow the guest's vCPUs, auto-converge, and if it still does
    not fit the budget give up, the VM staying on its source), ``abort`` (give up at the
    pass bound) or ``force`` (pause for as long as the copy needs: the user's choice only)."""

    downtime_ms: float = 100.0
    bandwidth_mibps: float | None = None
    max_passes: int = 30
    on_no_convergence: NoConvergenceAction = "throttle"
    # The mode chosen before it started (vmcluster.policy.migration_mode): "precopy",
    # "auto-converge" or "postcopy" (the switch to post-copy after the first pass).
    mode: str = "precopy"
    # The model's total for it, when it was chosen on one: a migration still converging
    # is not given up at the pass bound before twice this (QEMU counts more, shorter
    # passes than the model near the end).
    predicted_s: float | None = None
    # How the chosen mode is carried out (ModeChoice): the downtime the hypervisor aims at
    # (at most ``downtime_ms``, which stays the budget a result is judged on), auto-converge's
    # first throttle step (0..1) and the share of what a window sent that, dirtied, counts
    # towards a step (QEMU's throttle-trigger-threshold), and the MiB pre-copy sends before
    # the switch to post-copy (None: the hypervisor's defaults; post-copy: after the first
    # pass).
    aim_ms: float | None = None
    throttle_initial: float | None = None
    postcopy_after_mib: float | None = None
    throttle_trigger: float | None = None
    # re-sent pages go as deltas against a cache of this many MiB on the source (QEMU's
    # XBZRLE), where the model said that converges sooner; None: whole pages
    delta_cache_mib: float | None = None

    @classmethod
    def asked(cls, vm_budget_ms: float, downtime_ms: float | None = None,
              on_no_convergence: str | None = None,
              vm_action: str | None = None) -> MigrationParams:
        """What a user asked for (the CLI, an API body, an intent's arguments) over the
        VM's own budget and action (``vm_action``), the default where neither says."""
        action = on_no_convergence or vm_action or cls.on_no_convergence
        if action not in ("throttle", "abort", "force"):
            raise ValueError(f"on_no_convergence {action!r}: throttle, abort or force")
        return cls(downtime_ms=float(downtime_ms or vm_budget_ms),
                   on_no_convergence=cast(NoConvergenceAction, action))


@dataclass(frozen=True)
class MigrationHandle:
    """Identifies one migration attempt across its phases."""

    vm: str
    source: str
    target: str
    network: str
    id: str


@dataclass(frozen=True)
class MigrationProgress:
    """One poll of a running migration."""

    status: MigrationStatus
    pass_no: int = 0
    sent_mib: float = 0.0
    remaining_mib: float = 0.0
    dirty_mibps: float = 0.0
    expected_downtime_ms: float | None = None
    error: str | None = None
    # How long this poll already waited for the migration to move on (a hypervisor's poll
    # may block until its end): the driver's own pause before the next poll is shorter by
    # that much, so an end is never left waiting on the driver's sleep.
    waited_s: float = 0.0


@dataclass(frozen=True)
class MigrationResult:
    """How a migration ended. ``ok`` False means the VM is (still) on ``source``, unless
    ``unsettled``: the end was refused (the migration's record was no longer the caller's
    to end), neither copy was run, and whoever holds the record settles it."""

    vm: str
    source: str
    target: str
    network: str
    ok: bool
    passes: int = 0
    sent_mib: float = 0.0
    total_s: float = 0.0
    downtime_ms: float | None = None
    error: str | None = None
    extra: Mapping[str, object] = field(default_factory=dict)
    unsettled: bool = False

    def to_json(self) -> dict[str, object]:
        return {
            "vm": self.vm,
            "source": self.source,
            "target": self.target,
            "network": self.network,
            "ok": self.ok,
            "passes": self.passes,
            "sent_mib": round(self.sent_mib, 3),
            "total_s": round(self.total_s, 4),
            "downtime_ms": None if self.downtime_ms is None else round(self.downtime_ms, 3),
            "error": self.error,
            "unsettled": self.unsettled,
            **dict(self.extra),
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> MigrationResult:
        """A result as ``to_json`` wrote it (its extra keys kept in ``extra``)."""
        known = {"vm", "source", "target", "network", "ok", "passes", "sent_mib", "total_s",
                 "downtime_ms", "error", "unsettled"}
        down = data.get("downtime_ms")
        return cls(str(data["vm"]), str(data["source"]), str(data["target"]),
                   str(data["network"]), bool(data["ok"]), int(data.get("passes", 0)),
                   float(data.get("sent_mib", 0.0)), float(data.get("total_s", 0.0)),
                   None if down is None else float(down),
                   None if data.get("error") is None else str(data["error"]),
                   {k: v for k, v in data.items() if k not in known},
                   bool(data.get("unsettled", False)))


class Switchover(Protocol):
    """Who may decide a migration's end, asked by ``finalize_migration`` at the moment it
    matters: ``commit`` before the target may run (ownership moves to the target), ``abort``
    before the source may run again (the attempt is given up). Each raises a
    :class:`~vmcluster.errors.VmclusterError` when the caller may not (the migration's
    record in the store was taken over, or its fencing token is stale); the substrate then
    runs neither copy and leaves both as they are, for whoever holds the record now."""

    def commit(self) -> None: ...

    def abort(self) -> None: ...


@runtime_checkable
class Substrate(Protocol):
    """See the module docstring for the contract every method keeps."""

    @property
    def clock(self) -> Clock: ...

    def status(self) -> SubstrateStatus: ...

    def utilisation(self) -> Mapping[str, float]: ...

    def start_vm(self, vm: str, node: str) -> None: ...

    def stop_vm(self, vm: str) -> None: ...

    def pause_vm(self, vm: str) -> None: ...

    def resume_vm(self, vm: str) -> None: ...

    def migration_profile(self, vm: str, target: str) -> MigrationProfile: ...

    def prepare_migration(self, vm: str, target: str, network: str,
                          mode: str = "precopy") -> MigrationHandle: ...

    def start_migration(self, handle: MigrationHandle, params: MigrationParams) -> None: ...

    def poll_migration(self, handle: MigrationHandle) -> MigrationProgress: ...

    def finalize_migration(self, handle: MigrationHandle, success: bool,
                           switchover: Switchover | None = None) -> MigrationResult: ...

    def set_power(self, node: str, on: bool) -> None: ...


class FaultInjector(Protocol):
    """What a rehearsal does to hosts (see the module docstring): the simulator's and the
    lab's, never the product's; the manager only ever sees what follows from it."""

    def set_link(self, network: str, node: str, up: bool) -> None: ...

    def set_node(self, node: str, up: bool) -> None: ...

    def set_storage_path(self, node: str, up: bool) -> None: ...
