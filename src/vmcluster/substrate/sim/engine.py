"""Live migrations in the simulator: the pre-copy model pass by pass over shared links.

Each pass is a flow of its volume over the chosen network; its rate changes
whenever other flows come and go, and the pass ends when its bytes are sent.
After each pass :func:`~vmcluster.policy.migration_model.after_pass` decides
(with the bandwidth the flow has at that moment) whether to stop and copy,
go on, or apply the non-convergence action. At most
``cluster.max_concurrent_migrations`` run per node (as source or target);
the rest wait in a FIFO queue.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

from vmcluster.errors import MigrationError
from vmcluster.policy.migration_mode import postcopy_left
from vmcluster.policy.migration_model import (
    TRIGGER,
    Pass,
    PrecopyInput,
    after_pass,
    auto_converge,
    throttled_rate,
)
from vmcluster.substrate.protocol import (
    MigrationHandle,
    MigrationParams,
    MigrationProgress,
    MigrationResult,
)
from vmcluster.substrate.sim.kernel import Kernel
from vmcluster.substrate.sim.network import Fabric
from vmcluster.substrate.sim.state import FlowRec, MigRec, NodeRec, VmRec

__all__ = ["Engine", "World"]


class World(Protocol):
    """What the migration engine needs of the simulated world that owns it (a
    :class:`~vmcluster.substrate.sim.substrate.SimSubstrate`): its event kernel and
    fabric, its nodes' and VMs' records, and its trace."""

    kernel: Kernel
    fabric: Fabric
    state_mib: float

    def now(self) -> float: ...

    def emit(self, kind: str, **fields: Any) -> None: ...

    def node_rec(self, name: str) -> NodeRec: ...

    def vm_rec(self, name: str) -> VmRec: ...

    def lose_vm(self, vm: str, why: str) -> None: ...


class Engine:
    """Migrations of one :class:`SimSubstrate` (which owns nodes, VMs and the fabric)."""

    def __init__(self, sub: World, limit: int) -> None:
        self.sub = sub
        self.limit = limit
        self.migs: dict[str, MigRec] = {}
        self._live: dict[str, MigRec] = {}  # setup or active, in start order
        self.queue: list[MigRec] = []
        self.on_end: Callable[[MigrationHandle], None] | None = None
        self._seq = 0
        sub.fabric.on_rate = self._rate_changed

    def new_id(self) -> str:
        self._seq += 1
        return f"m{self._seq}"

    def get(self, handle: MigrationHandle) -> MigRec:
        m = self.migs.get(handle.id)
        if m is None or m.handle != handle:
            raise MigrationError(f"unknown migration {handle.id!r} of {handle.vm}")
        return m

    def add(self, m: MigRec) -> None:
        self.migs[m.handle.id] = self._live[m.handle.id] = m

    def live(self) -> list[MigRec]:
        return list(self._live.values())

    # -- phases -------------------------------------------------------------

    def start(self, m: MigRec, params: MigrationParams) -> None:
        if m.phase != "prepared":
            return  # idempotent
        vm = self.sub.vm_rec(m.handle.vm).spec
        m.params = params
        m.inp = PrecopyInput(
            memory_mib=float(vm.memory_mib), dirty_mibps=vm.dirty_mibps,
            wws_mib=vm.working_set_mib, bandwidth_mibps=1.0, downtime_ms=params.downtime_ms,
            aim_ms=params.aim_ms,  # what the mode aims at
            max_passes=params.max_passes, state_mib=self.sub.state_mib,
            on_no_convergence=params.on_no_convergence,
            throttle_initial=params.throttle_initial or 0.2,
            trigger=params.throttle_trigger or TRIGGER,
        )
        m.phase = "queued"
        self.queue.append(m)
        self.sub.emit("migration-queued", vm=m.handle.vm, id=m.handle.id)
        self.dequeue()

    def dequeue(self) -> None:
        waiting, self.queue = self.queue, []
        for m in waiting:
            src, dst = self.sub.node_rec(m.handle.source), self.sub.node_rec(m.handle.target)
            if m.status != "setup":
                continue
            if src.migrations < self.limit and dst.migrations < self.limit:
                src.migrations += 1
                dst.migrations += 1
                m.holds_slot = True
                self._begin(m)
            else:
                self.queue.append(m)

    def _begin(self, m: MigRec) -> None:
        sub = self.sub
        rec = sub.vm_rec(m.handle.vm)
        rec.state = "migrating"
        m.status, m.phase, m.started = "active", "pass", sub.now()
        cap = m.params.bandwidth_mibps if m.params and m.params.bandwidth_mibps else float("inf")
        m.flow = sub.fabric.add(
            "live-migration", m.handle.network, m.handle.source, m.handle.target, cap
        )
        m.flow.mig = m
        sub.emit("migration-start", vm=m.handle.vm, id=m.handle.id, source=m.handle.source,
                 target=m.handle.target, network=m.handle.network)
        first = float(rec.spec.memory_mib)
        if m.params is not None and m.params.mode == "postcopy" and \
                m.params.postcopy_after_mib is not None:
            first = min(first, m.params.postcopy_after_mib)  # then the switch
        self._transfer(m, first)
        sub.fabric.reallocate()

    def _transfer(self, m: MigRec, volume: float) -> None:
        now = self.sub.now()
        m.volume = m.remaining = volume
        m.pass_start = m.last = now
        self._schedule(m)

    def _schedule(self, m: MigRec) -> None:
        kernel = self.sub.kernel
        kernel.cancel(m.timer)
        m.timer = None
        if m.remaining <= 0:
            m.timer = kernel.after(0.0, lambda: self._transfer_done(m))
        elif m.rate > 0:
            m.timer = kernel.after(m.remaining / m.rate, lambda: self._transfer_done(m))

    def _rate_changed(self, flow: FlowRec, old: float) -> None:
        m = flow.mig
        if m is None or m.phase not in ("pass", "stopcopy", "postcopy"):
            return
        now = self.sub.now()
        m.remaining = max(0.0, m.remaining - old * (now - m.last))
        m.last, m.rate = now, flow.rate
        self._schedule(m)

    def _dirty_rate(self, m: MigRec) -> float:
        vm = self.sub.vm_rec(m.handle.vm)
        paused = m.prior_state == "paused"
        if paused or m.inp is None:
            return 0.0
        return throttled_rate(m.inp, m.throttle, vm.spec.dirty_mibps)

    def _transfer_done(self, m: MigRec) -> None:
        sub, inp = self.sub, m.inp
        assert inp is not None
        now = sub.now()
        m.timer, m.remaining, m.last = None, 0.0, now
        seconds = now - m.pass_start
        m.sent += m.volume
        if m.phase == "stopcopy" and m.after > 0:  # post-copy: the guest runs on the
            m.downtime_ms = seconds * 1000.0      # target while its pages follow
            m.phase = "postcopy"
            after, m.after = m.after, 0.0
            self._transfer(m, after)
            return
        if m.phase in ("stopcopy", "postcopy"):
            if m.phase == "stopcopy":
                m.downtime_ms = seconds * 1000.0
            self._end(m, "completed", None)
            return
        rate = self._dirty_rate(m)
        m.passes.append(Pass(m.volume, seconds, rate))
        bandwidth = m.rate if m.rate > 0 else 1e-9
        decision, dirty = after_pass(inp, m.pass_no, m.volume, seconds, rate, bandwidth)
        sub.emit("migration-pass", vm=m.handle.vm, id=m.handle.id, pass_no=m.pass_no,
                 sent_mib=round(m.volume, 6), seconds=round(seconds, 6),
                 bandwidth_mibps=round(m.rate, 6), decision=decision)
        if m.params is not None and m.params.mode == "postcopy" and (
                decision != "stop" or m.volume < inp.memory_mib):
            # After what pre-copy was to send: the device state moves, the guest runs on
            # the target, and what is left follows (vmcluster.policy.migration_mode).
            left = postcopy_left(inp, m.volume, seconds, rate) if m.pass_no == 0 else dirty
            m.outcome, m.after = "postcopy", max(left, 1e-9)
            m.phase, m.stop_start = "stopcopy", now
            self._transfer(m, inp.state_mib)
            return
        if decision == "continue" or (decision == "stuck" and inp.on_no_convergence ==
                                      "throttle" and m.pass_no + 1 < inp.max_passes):
            m.ac = auto_converge(inp, m.ac, seconds, m.volume, dirty)
            m.pass_no += 1
            self._transfer(m, dirty)
            return
        if decision == "stuck" and inp.on_no_convergence in ("abort", "throttle"):
            m.outcome = "aborted"
            self._end(m, "failed", "did not converge; aborted (the VM stays on the source)")
            return
        m.outcome = "forced" if decision == "stuck" else (
            "throttled" if m.throttle > 0 else "converged"
        )
        m.phase, m.stop_start = "stopcopy", now
        self._transfer(m, dirty + inp.state_mib)

    def _end(self, m: MigRec, status: str, error: str | None) -> None:
        sub = self.sub
        sub.kernel.cancel(m.timer)
        m.timer = None
        if m.flow is not None:
            sub.fabric.remove(m.flow)
            m.flow = None
            sub.fabric.reallocate()
        lost = status != "completed" and m.phase == "postcopy"
        m.status, m.phase, m.error, m.ended = status, "done", error, sub.now()
        self._live.pop(m.handle.id, None)
        if m in self.queue:
            self.queue.remove(m)
        rec = sub.vm_rec(m.handle.vm)
        if lost:  # post-copy's one risk: neither side has the whole guest any more
            sub.lose_vm(m.handle.vm, f"post-copy of {m.handle.vm} broke: {error}")
        elif status != "completed" and rec.state == "migrating":
            rec.state = m.prior_state  # the guest goes on running on the source
        if m.holds_slot:
            m.holds_slot = False
            sub.node_rec(m.handle.source).migrations -= 1
            sub.node_rec(m.handle.target).migrations -= 1
        sub.emit("migration-end", vm=m.handle.vm, id=m.handle.id, status=status,
                 outcome=m.outcome or status, passes=len(m.passes), sent_mib=round(m.sent, 6),
                 downtime_ms=None if m.downtime_ms is None else round(m.downtime_ms, 6),
                 error=error)
        if m.params is not None and self.on_end is not None:
            self.on_end(m.handle)
        self.dequeue()

    def fail(self, m: MigRec, error: str) -> None:
        if m.status in ("setup", "active"):
            self._end(m, "failed", error)

    # -- observation and the end ---------------------------------------------

    def progress(self, m: MigRec) -> MigrationProgress:
        now = self.sub.now()
        moving = m.phase in ("pass", "stopcopy", "postcopy")
        remaining = m.remaining_now(now) if moving else 0.0
        dirty_rate = self._dirty_rate(m) if m.inp else 0.0
        expected = None
        if m.phase == "pass" and m.rate > 0 and m.inp is not None:
            dirty = min(m.inp.effective_wws_mib, dirty_rate * (now - m.pass_start))
            expected = dirty / m.rate * 1000.0
        return MigrationProgress(
            status=m.status,  # type: ignore[arg-type]
            pass_no=m.pass_no,
            sent_mib=m.sent + (m.volume - remaining if moving else 0.0),
            remaining_mib=remaining,
            dirty_mibps=dirty_rate,
            expected_downtime_ms=m.downtime_ms if m.status == "completed" else expected,
            error=m.error,
        )

    def result(self, m: MigRec, ok: bool) -> MigrationResult:
        h = m.handle
        total = (m.ended or self.sub.now()) - m.started if m.started is not None else 0.0
        return MigrationResult(
            vm=h.vm, source=h.source, target=h.target, network=h.network, ok=ok,
            passes=len(m.passes), sent_mib=m.sent, total_s=total,
            downtime_ms=m.downtime_ms if ok else None, error=None if ok else m.error,
            extra={
                "id": h.id,
                "outcome": m.outcome if ok else (m.outcome or "failed"),
                "throttle": round(m.throttle, 4),
                "mode": m.params.mode if m.params is not None else None,
                "started_s": None if m.started is None else round(m.started, 6),
                "pass_seconds": [round(p.seconds, 6) for p in m.passes],
            },
        )
