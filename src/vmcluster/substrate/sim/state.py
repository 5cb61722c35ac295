"""The simulator's mutable records: nodes, VMs, flows and migrations in flight."""

from __future__ import annotations

from collections.abc import Hashable
from dataclasses import dataclass, field

from vmcluster.model import Vm
from vmcluster.policy.migration_model import Pass, PrecopyInput, Throttling
from vmcluster.substrate.protocol import (
    MigrationHandle,
    MigrationParams,
    MigrationResult,
    NodeState,
    VmState,
)
from vmcluster.substrate.sim.kernel import Timer

__all__ = ["FlowRec", "MigRec", "NodeRec", "VmRec"]


@dataclass(eq=False)
class NodeRec:
    name: str
    index: int
    cores: int
    memory_mib: int
    interfaces: tuple[str, ...]
    state: NodeState = "up"
    storage_path: bool = True
    links_down: list[str] = field(default_factory=list)
    used_mib: int = 0
    migrations: int = 0  # migrations holding a slot here (as source or target)


@dataclass(eq=False)
class VmRec:
    spec: Vm
    index: int
    node: str | None = None
    state: VmState = "stopped"


@dataclass(eq=False)
class FlowRec:
    id: int
    cls: str  # "live-migration" | "csv-redirect"
    network: str
    links: tuple[Hashable, ...]
    demand: float
    rate: float = 0.0
    mig: MigRec | None = None


@dataclass(eq=False)
class MigRec:
    handle: MigrationHandle
    prior_state: VmState
    params: MigrationParams | None = None
    inp: PrecopyInput | None = None
    status: str = "setup"  # setup | active | completed | failed | cancelled
    phase: str = "prepared"  # prepared | queued | pass | stopcopy | postcopy | done
    pass_no: int = 0
    volume: float = 0.0
    remaining: float = 0.0
    rate: float = 0.0
    last: float = 0.0
    pass_start: float = 0.0
    stop_start: float = 0.0
    sent: float = 0.0
    ac: Throttling = field(default_factory=Throttling)  # auto-converge so far

    @property
    def throttle(self) -> float:
        return self.ac.throttle
    after: float = 0.0  # post-copy: what follows the switch, the guest on the target
    passes: list[Pass] = field(default_factory=list)
    timer: Timer | None = None
    flow: FlowRec | None = None
    started: float | None = None
    ended: float | None = None
    downtime_ms: float | None = None
    outcome: str = ""
    error: str | None = None
    holds_slot: bool = False
    result: MigrationResult | None = None

    def remaining_now(self, now: float) -> float:
        return max(0.0, self.remaining - self.rate * (now - self.last))
