"""The migration phases of the qemu substrate (see :mod:`vmcluster.substrate.qemu.substrate`).

``prepare`` starts an incoming QEMU on the target listening on the target's
address on the chosen network, ``start`` migrates the source to it with the
downtime budget and bandwidth cap, ``poll`` reads ``query-migrate`` (and
calls a migration that moves no bytes for ``stall_s`` failed: a cut network
never makes QEMU give up on its own), and ``finalize`` either hands the VM to
the target (``cont``, ``announce-self``, ownership, source quits) or rolls
back (cancel, resume on the source, target removed). Every phase is
idempotent. A per-node limit on concurrent migrations is kept in the records' slots
(leased keys in etcd, or ``flock`` files in a lab without a store), so it holds across
processes and frees itself when a process dies.
"""

from __future__ import annotations

import contextlib
import time
import uuid
from dataclasses import dataclass, field, replace
from typing import Any, Protocol

from vmcluster.errors import (
    MigrationError,
    MigrationRefused,
    SubstrateError,
    UsageError,
    VmclusterError,
)
from vmcluster.model import MIB, ClusterSpec
from vmcluster.policy.migration_model import TRIGGER
from vmcluster.policy.networks import Health, live_migration_order
from vmcluster.substrate.host.client import AgentClient, AgentDown, AgentError
from vmcluster.substrate.protocol import (
    Clock,
    MigrationHandle,
    MigrationParams,
    MigrationProgress,
    MigrationResult,
    MigrationStatus,
    Switchover,
)
from vmcluster.substrate.qemu.facts import QemuFacts
from vmcluster.substrate.qemu.records import Slot, SubstrateRecords

__all__ = ["Agents", "QemuMigrations"]

WAIT_S = 0.5  # a poll waits this long at the source for the migration to end
TAKEOVER_WAIT_S = 20.0  # a target whose agent restarts is asked to take over this long
_STATUS: dict[str, MigrationStatus] = {
    "setup": "setup", "completed": "completed", "failed": "failed", "cancelled": "cancelled",
    "cancelling": "cancelled",
}
_ACTIVE = ("active", "device", "pre-switchover", "wait-unplug")
# Post-copy: the target has the device state and may run; the source still holds pages.
_POSTCOPY = ("postcopy-active", "postcopy-paused", "postcopy-recover",
             "postcopy-recover-setup")
POSTCOPY_DONE_S = 120.0  # the longest a post-copy's remaining pages may take to follow
POSTCOPY_RECOVERIES = 5  # a broken post-copy stream is resumed at most this often


class Agents(Protocol):
    """What a migration needs of the substrate that drives it (a :class:`QemuSubstrate`):
    the cluster's spec and records, a clock, the hosts' agents and a few of its answers."""

    spec: ClusterSpec
    records: SubstrateRecords
    queue_timeout_s: float
    stall_s: float

    @property
    def clock(self) -> Clock: ...

    def agent(self, node: str) -> AgentClient: ...

    def say(self, msg: str) -> None: ...

    def owner(self, vm: str) -> str | None: ...

    def machine(self, vm: str) -> str: ...

    def migration_refusal(self, vm: str, source: str, target: str) -> str | None: ...

    def links_down(self, node: str) -> tuple[str, ...] | None: ...

    def postcopy_caps(self, source: str, target: str) -> dict[str, bool]: ...

    def facts(self, node: str) -> QemuFacts: ...


@dataclass
class _Attempt:
    """What this process knows about one migration attempt (by handle id)."""

    uri: str
    slots: list[Slot]
    t0: float
    params: MigrationParams | None = None
    last_bytes: int = -1
    last_change: float = 0.0
    error: str | None = None
    forced: bool = False
    gave_up: bool = False  # it did not fit the downtime budget and was not to be forced
    last_info: dict[str, Any] = field(default_factory=dict)
    handle: MigrationHandle | None = None
    wall0: float = field(default_factory=time.time)
    postcopy: bool = False  # migrate-start-postcopy was sent
    bandwidth_mibps: float = 0.0  # the cap QEMU was given
    recoveries: int = 0  # times a broken post-copy stream was resumed
    # auto-converge's steps as polls saw them: [seconds since the start, pass, throttle %]
    throttle_steps: list[list[float]] = field(default_factory=list)


class QemuMigrations:
    """The migration attempts this process drives on a :class:`QemuSubstrate`."""

    def __init__(self, sub: Agents) -> None:
        self.sub = sub
        self._attempts: dict[str, _Attempt] = {}
        self._results: dict[str, MigrationResult] = {}  # finalized attempts, by handle id

    def _acquire_slots(self, nodes: list[str]) -> list[Slot]:
        limit = self.sub.spec.cluster.max_concurrent_migrations
        held: list[Slot] = []
        deadline = self.sub.clock.now() + self.sub.queue_timeout_s
        announced = False
        for node in nodes:
            while True:
                got = self.try_slot(node, limit)
                if got is not None:
                    held.append(got)
                    break
                if not announced:
                    self.sub.say(f"queued: {node} already runs {limit} migrations; "
                                 "waiting for a slot")
                    announced = True
                if self.sub.clock.now() > deadline:
                    for f in held:
                        f.close()
                    raise MigrationError(f"no migration slot on {node} within "
                                         f"{self.sub.queue_timeout_s:.0f} s")
                self.sub.clock.sleep(0.2)
        return held

    def try_slot(self, node: str, limit: int) -> Slot | None:
        """One of ``node``'s ``limit`` migration slots (see the records), or None."""
        return self.sub.records.try_slot(node, limit)

    def prepare(self, vm: str, target: str, network: str,
                mode: str = "precopy") -> MigrationHandle:
        self.sub.spec.vm(vm)
        tnode = self.sub.spec.node(target)
        net = self.sub.spec.network(network)
        for att in self._attempts.values():
            if att.handle is not None and att.handle.vm == vm:
                if (att.handle.target, att.handle.network) == (target, network):
                    return att.handle  # idempotent: the attempt already prepared
                raise MigrationError(f"{vm} is already migrating to {att.handle.target}")
        source = self.sub.owner(vm)
        if source is None:
            raise MigrationError(f"{vm} is not running; start it before migrating")
        if source == target:
            raise MigrationError(f"{vm} already runs on {target}; pick another node")
        # The links as each host's own agent sees them now (a host never looks into
        # another's namespace; a leased store entry that lapsed made every link of a live
        # host look down, and a migration refused over a network that was up).
        for node in (source, target):
            if network not in self.sub.spec.node(node).interfaces:
                raise MigrationError(f"{node} has no interface on {network}")
            down = self.sub.links_down(node)
            if down is None:
                raise MigrationError(f"node {node} is down; cannot migrate {vm} there")
            if network in down:
                raise MigrationError(f"{node}'s interface on {network} is down")
        refusal = self.sub.migration_refusal(vm, source, target)
        if refusal is not None:
            raise MigrationRefused(f"cannot migrate {vm}: {refusal}")
        slots = self._acquire_slots(sorted({source, target}))
        hid = uuid.uuid4().hex[:10]
        # the stream's capabilities go on the target before it listens (QEMU refuses
        # postcopy-preempt or multifd on an incoming migration already started)
        caps, stream = self._stream(mode, source, target)
        try:
            reply = self.sub.agent(target).call(
                "incoming", timeout_s=60, vm=vm, machine=self.sub.machine(vm), id=hid,
                uri=f"tcp:{tnode.interfaces[net.name]}:0",
                tls=self.sub.spec.cluster.migration_tls, caps=caps, params=stream,
            )
        except (SubstrateError, UsageError) as exc:
            for f in slots:
                f.close()
            raise MigrationError(f"cannot prepare {target} to receive {vm}: {exc}") from exc
        handle = MigrationHandle(vm, source, target, network, hid)
        self._attempts[hid] = _Attempt(str(reply["uri"]), slots, self.sub.clock.now(),
                                       handle=handle)
        self.sub.records.set_migrating(vm, target)
        return handle

    def _attempt(self, handle: MigrationHandle) -> _Attempt:
        try:
            return self._attempts[handle.id]
        except KeyError as exc:
            raise MigrationError(f"unknown migration {handle.id} of {handle.vm}") from exc

    def start(self, handle: MigrationHandle, params: MigrationParams) -> None:
        att = self._attempt(handle)
        if att.params is not None:
            return  # idempotent: QEMU is already migrating this attempt
        att.params = params
        net = self.sub.spec.network(handle.network)
        if params.bandwidth_mibps is not None:
            bw = params.bandwidth_mibps * MIB
        elif net.bandwidth_mbps is not None:
            bw = net.bandwidth_mbps * 1e6 / 8
        else:
            bw = 10e9  # unshaped: let QEMU go as fast as it can
        att.bandwidth_mibps = bw / MIB
        # the stream's own, as the target has them since it was prepared
        caps, stream = self._stream(params.mode, handle.source, handle.target)
        caps["auto-converge"] = params.on_no_convergence == "throttle"
        # XBZRLE deltas are the source's alone (a target decodes them as they come)
        if "xbzrle" in self.sub.facts(handle.source).capabilities:
            caps["xbzrle"] = bool(params.delta_cache_mib)
        if params.delta_cache_mib:
            stream = {**stream, "xbzrle_cache_size": int(params.delta_cache_mib * MIB)}
        att.t0 = att.last_change = self.sub.clock.now()
        self.sub.agent(handle.source).call(
            "migrate", vm=handle.vm, uri=att.uri, caps=caps,
            # QEMU aims below the budget where the model says that is cheap (ModeChoice)
            params={"downtime_limit": int(params.aim_ms or params.downtime_ms),
                    "max_bandwidth": int(bw),
                    "cpu_throttle_initial": max(1, min(99, round(
                        100 * (params.throttle_initial or 0.2)))),
                    "throttle_trigger_threshold": max(1, min(100, round(
                        100 * (params.throttle_trigger or TRIGGER)))),
                    # a cap asked for holds after a switch to post-copy too (QEMU's own
                    # default there is none)
                    **({"max_postcopy_bandwidth": int(bw)}
                       if params.bandwidth_mibps is not None else {}),
                    **stream},
            tls_hostname=handle.target if self.sub.spec.cluster.migration_tls else "",
        )

    def poll(self, handle: MigrationHandle) -> MigrationProgress:
        att = self._attempt(handle)
        wait_s = self._switch_wait(att)
        t_ask = self.sub.clock.now()
        try:
            # The source's agent answers as soon as the migration ends (or after WAIT_S):
            # the switchover then starts at once, not at the driver's next poll.
            info = self.sub.agent(handle.source).call(
                "query_migrate", vm=handle.vm, wait_s=wait_s, timeout_s=WAIT_S + 10)["migrate"]
        except SubstrateError as exc:
            att.error = f"lost the source: {exc}"
            return MigrationProgress("failed", error=att.error)
        att.last_info = info
        status = str(info.get("status", "setup"))
        ram = info.get("ram", {})
        sent = int(ram.get("transferred", 0))
        now = self.sub.clock.now()
        if sent != att.last_bytes:
            att.last_bytes, att.last_change = sent, now
        pct = info.get("cpu-throttle-percentage")
        if isinstance(pct, int) and (not att.throttle_steps or att.throttle_steps[-1][2] != pct):
            att.throttle_steps.append([round(now - att.t0, 2),
                                       int(ram.get("dirty-sync-count", 0)), pct])
        progress = MigrationProgress(
            status=_STATUS.get(status, "active"),
            pass_no=int(ram.get("dirty-sync-count", 0)),
            sent_mib=sent / MIB,
            remaining_mib=int(ram.get("remaining", 0)) / MIB,
            dirty_mibps=float(ram.get("dirty-pages-rate", 0)) * int(ram.get("page-size", 4096))
            / MIB,
            expected_downtime_ms=info.get("expected-downtime"),
            error=info.get("error-desc"),
            waited_s=now - t_ask,
        )
        if status == "postcopy-active" and att.postcopy:
            # The source paused and sent its devices: the switch is now (the target runs
            # once the store says it is the VM's); its pages follow while it runs.
            return replace(progress, status="completed")
        if status in _POSTCOPY:
            att.error = f"post-copy broke before the switch (QEMU: {status})"
            return MigrationProgress("failed", progress.pass_no, error=att.error)
        if (att.params is not None and att.params.mode == "postcopy" and not att.postcopy
                and status == "active" and (progress.pass_no >= 2 if
                                            att.params.postcopy_after_mib is None else
                                            progress.sent_mib >= att.params.postcopy_after_mib)):
            # Pre-copy sent what the mode chose (else its first pass): the rest follows
            # after the switch, which the next look waits for at the source (the guest is
            # paused from now until the target runs).
            att.postcopy = True
            self.sub.agent(handle.source).call("start_postcopy", vm=handle.vm)
            return self.poll(handle)
        if status == "failed":
            att.error = str(info.get("error-desc") or "QEMU reported the migration failed")
        elif status in _ACTIVE and now - att.last_change > self.sub.stall_s:
            att.error = (f"no bytes moved for {self.sub.stall_s:.0f} s over {handle.network}"
                         " (network down or target gone)")
            return MigrationProgress("failed", progress.pass_no, progress.sent_mib,
                                     progress.remaining_mib, error=att.error)
        elif (att.params is not None and status in _ACTIVE
              and progress.pass_no > att.params.max_passes and not att.forced
              and now - att.t0 > 2 * (att.params.predicted_s or 0.0)):
            if att.params.on_no_convergence in ("abort", "throttle"):
                att.gave_up = True
                how = (" with the guest's vCPUs throttled"
                       if att.params.on_no_convergence == "throttle" else "")
                att.error = (f"it did not fit the {att.params.downtime_ms:g} ms downtime budget "
                             f"after {att.params.max_passes} passes{how} (expected downtime "
                             f"{progress.expected_downtime_ms or '?'} ms); given up, the VM "
                             "stays on its source (forcing it through is the user's choice: "
                             "--on-no-convergence force)")
                return MigrationProgress("failed", progress.pass_no, error=att.error)
            att.forced = True  # force: accept the downtime the copy needs now
            limit = int(max(att.params.downtime_ms, (progress.expected_downtime_ms or 0) * 1.5))
            self.sub.agent(handle.source).call("set_params", vm=handle.vm,
                                           params={"downtime_limit": limit})
        return progress

    def _stream(self, mode: str, source: str, target: str
                ) -> tuple[dict[str, bool], dict[str, int]]:
        """The capabilities and parameters of the stream itself, the same on both ends:
        post-copy's (:meth:`postcopy_caps`), else QEMU's multifd when the cluster asks
        for more than one channel (never with post-copy: QEMU 10.0 refuses the pair).
        Every stream capability both QEMUs know is set, off ones too: a QEMU keeps those
        it received a VM with, and a VM that came by post-copy (or multifd) would
        otherwise offer it to a target that is not set up for it (QEMU: "Sibling
        indicated error 1", seen when a VM moved again after a post-copy)."""
        known = self.sub.facts(source).capabilities & self.sub.facts(target).capabilities
        off: dict[str, bool] = {c: False for c in ("postcopy-ram", "postcopy-preempt",
                                                   "multifd") if c in known}
        if mode == "postcopy":
            return {**off, **self.sub.postcopy_caps(source, target)}, {}
        channels = self.sub.spec.cluster.migration_channels
        if channels > 1:
            return {**off, "multifd": True}, {"multifd_channels": channels}
        return off, {}

    @staticmethod
    def _switch_wait(att: _Attempt) -> float:
        """How long the next look may wait at the source: :data:`WAIT_S`, or until pre-copy
        should have sent what a post-copy switch waits for (at the cap's pace)."""
        p = att.params
        if p is None or p.mode != "postcopy" or att.postcopy or p.postcopy_after_mib is None:
            return WAIT_S
        left = p.postcopy_after_mib - max(0, att.last_bytes) / MIB
        return max(0.02, min(WAIT_S, left / max(att.bandwidth_mibps, 1.0)))

    def finalize(self, handle: MigrationHandle, success: bool,
                 switchover: Switchover | None = None) -> MigrationResult:
        """End the attempt. The target QEMU was started with ``-S``: it runs only after
        ``switchover.commit()`` moved ownership; the source runs again only after
        ``switchover.abort()`` gave the attempt up. If either refuses, neither copy is run,
        touched or removed: whoever holds the migration's record settles it."""
        if handle.id in self._results:
            return self._results[handle.id]  # idempotent: the attempt already ended
        att = self._attempts.get(handle.id)
        src, tgt = self.sub.agent(handle.source), self.sub.agent(handle.target)
        if att is not None and att.last_info.get("status") == "completed":
            info = att.last_info  # just read by poll: no round trip inside the blackout
        else:
            try:
                info = src.call("query_migrate", vm=handle.vm)["migrate"]
            except SubstrateError:
                info = att.last_info if att else {}
        completed = info.get("status") == "completed" or (
            att is not None and att.postcopy and info.get("status") == "postcopy-active")
        error = None if completed else (att.error if att and att.error else None)
        if completed and not success:
            # The contract: without ``success`` it rolls back. The target never ran, so
            # resuming the source (paused after the copy) leaves exactly one copy.
            completed, error = False, "rolled back by finalize"
        ok = False
        refused = None
        marks: dict[str, float | None] = {}
        t_switch = self.sub.clock.now()
        if completed and switchover is not None:
            try:
                switchover.commit()
                marks["commit_ms"] = round((self.sub.clock.now() - t_switch) * 1000, 1)
            except VmclusterError as exc:
                refused = f"switchover refused: {exc}"
        elif switchover is not None:
            try:
                switchover.abort()
            except VmclusterError as exc:
                refused = f"rollback refused: {exc}"
        if refused is not None:
            # Not ours to end any more: both copies stay as they are (the target paused).
            if att is not None:
                for f in att.slots:
                    f.close()
                self._attempts.pop(handle.id, None)
            result = MigrationResult(handle.vm, handle.source, handle.target, handle.network,
                                     ok=False, error=refused + "; the manager settles it",
                                     unsettled=True)
            self._results[handle.id] = result
            return result
        switched = completed and switchover is not None  # the store moved ownership
        if completed:
            # QEMU finished the copy and ownership moved: the target is the VM now. Going
            # back would risk two copies, so only a dead target leaves the (paused) source.
            try:
                t_take = self.sub.clock.now()
                self._take_over(tgt, handle)
                marks["takeover_ms"] = round((self.sub.clock.now() - t_take) * 1000, 1)
                ok = True
            except SubstrateError as exc:
                error = f"target {handle.target} failed after the switchover: {exc}"
        if switched and not ok:
            # The store places the VM on the target: the source is never resumed (the
            # target may have run, or may yet). Its paused copy goes; the cluster starts
            # the VM where it is placed if the target does not run it.
            if att is not None:
                for f in att.slots:
                    f.close()
                self._attempts.pop(handle.id, None)
            try:
                src.call("release", vm=handle.vm)
            except SubstrateError as exc:
                error = f"{error}; releasing the source copy failed: {exc}"
            result = MigrationResult(
                handle.vm, handle.source, handle.target, handle.network, ok=False,
                error=f"{error}; the switchover had committed, so {handle.vm} belongs to "
                      f"{handle.target} and is not resumed on {handle.source} (the cluster "
                      "starts it where it is placed)", extra={"switched": True})
            self._results[handle.id] = result
            return result
        timeline: dict[str, float | None] = {}
        if ok and att is not None and att.postcopy:
            # The source QEMU holds pages the target has not fetched: it may go only once
            # the last has followed. If they cannot, neither side has the whole guest.
            done, info = self._postcopy_done(handle, att)
            if not done:
                return self._postcopy_lost(handle, att, info)
        if ok:
            timeline = self._timeline(handle, att.wall0 if att else 0.0)
            self.sub.records.set_owner(handle.vm, handle.target)
            try:
                src.call("release", vm=handle.vm)
            except SubstrateError as exc:
                self.sub.say(f"warning: could not release {handle.vm} on {handle.source}: {exc}")
        else:
            status = info.get("status") or "unknown"
            error = error or str(info.get("error-desc") or f"QEMU's migration status: {status}")
            rollback_error, source_gone = self._rollback(handle)
            if source_gone:
                # Nothing left to migrate: another network would fail the same way.
                marks["source_gone"] = True
                error = (f"{handle.vm}'s QEMU on {handle.source} ended during the migration "
                         f"({error}); the cluster starts it again where it is placed "
                         f"({handle.source})")
            elif rollback_error:
                error += f"; {rollback_error}"
        if att is not None:
            for f in att.slots:
                f.close()
            self._attempts.pop(handle.id, None)
        ram = info.get("ram", {})
        budget = att.params.downtime_ms if att is not None and att.params is not None else None
        downtime = float(info["downtime"]) if ok and "downtime" in info else None
        paused_at, resumed_at = timeline.get("paused_at"), timeline.get("resumed_at")
        if downtime is not None and att is not None and att.postcopy and \
                paused_at is not None and resumed_at is not None:
            # QEMU's post-copy "downtime" ends once the source sent its devices, before
            # the target loaded them and ran: the guest's pause is its STOP to RESUME.
            marks["qemu_downtime_ms"] = downtime
            downtime = round(max(0.0, resumed_at - paused_at) * 1000.0, 1)
        if budget is not None:
            marks["downtime_budget_ms"] = budget
            marks["over_budget"] = downtime is not None and downtime > budget
            marks["forced"] = bool(att and att.forced)
        if att is not None and att.gave_up:
            marks["no_convergence"] = True
        total_s = (info.get("total-time", 0) / 1000.0) if ok else (
            self.sub.clock.now() - att.t0 if att else 0.0)
        result = MigrationResult(
            vm=handle.vm, source=handle.source, target=handle.target, network=handle.network,
            ok=ok, passes=int(ram.get("dirty-sync-count", 0)),
            sent_mib=int(ram.get("transferred", 0)) / MIB, total_s=float(total_s),
            downtime_ms=downtime, error=None if ok else error,
            extra={"setup_ms": info.get("setup-time"), "mbps": info.get("ram", {}).get("mbps"),
                   "mode": att.params.mode if att is not None and att.params else None,
                   **({"postcopy_recoveries": att.recoveries} if att and att.postcopy else {}),
                   "throttle_pct": (att.throttle_steps[-1][2] if att and att.throttle_steps
                                    else info.get("cpu-throttle-percentage")),
                   **({"throttle_steps": att.throttle_steps} if att and att.throttle_steps
                      else {}),
                   **timeline, **marks},
        )
        self._results[handle.id] = result
        return result

    def _postcopy_done(self, handle: MigrationHandle, att: _Attempt
                       ) -> tuple[bool, dict[str, Any]]:
        """Wait for the source to have sent its last page: (done, its last query-migrate).
        A stream that stalls (a cut network) or breaks is paused at both ends and resumed
        over the first live-migration network up at both (QEMU's post-copy recovery), at
        most :data:`POSTCOPY_RECOVERIES` times; a source that is gone cannot be."""
        clock = self.sub.clock
        deadline = clock.now() + POSTCOPY_DONE_S
        info: dict[str, Any] = {}
        last_bytes, last_change = -1, clock.now()
        while clock.now() < deadline:
            try:
                info = self.sub.agent(handle.source).call(
                    "query_migrate", vm=handle.vm, wait_s=WAIT_S,
                    timeout_s=WAIT_S + 10)["migrate"]
            except SubstrateError as exc:
                return False, {"error-desc": f"lost the source: {exc}"}
            status = info.get("status")
            if status == "completed":
                return True, info
            sent = int(info.get("ram", {}).get("transferred", 0))
            if sent != last_bytes:
                last_bytes, last_change = sent, clock.now()
            stalled = status == "postcopy-active" and clock.now() - last_change > \
                self.sub.stall_s
            if status == "postcopy-paused" or stalled:
                if att.recoveries >= POSTCOPY_RECOVERIES:
                    return False, {**info, "error-desc": f"its stream broke "
                                   f"{att.recoveries + 1} times; recovery gave up"}
                att.recoveries += 1
                self._recover_postcopy(handle)
                last_change = clock.now()
                continue
            if status not in _POSTCOPY and status != "device":
                return False, info
        return False, {"error-desc": f"its pages did not follow within {POSTCOPY_DONE_S:g} s",
                       **info}

    def _recover_postcopy(self, handle: MigrationHandle) -> None:
        """Pause both ends of a broken post-copy, then have the target listen and the
        source resume over the first live-migration network up at both. What fails is
        said, and the caller looks again."""
        clock = self.sub.clock
        for node in (handle.source, handle.target):
            with contextlib.suppress(SubstrateError):
                self.sub.agent(node).call("postcopy_pause", vm=handle.vm, timeout_s=10)
        down: set[tuple[str, str]] = set()
        for node in (handle.source, handle.target):
            links = self.sub.links_down(node)
            nets = self.sub.spec.node(node).interfaces if links is None else links
            down.update((net, node) for net in nets)
        order = live_migration_order(self.sub.spec, Health(frozenset(down)),
                                     self.sub.spec.vm(handle.vm), handle.source, handle.target)
        if not order:
            self.sub.say(f"{handle.vm}: post-copy paused; no live-migration network is up "
                         f"between {handle.source} and {handle.target} yet")
            clock.sleep(1.0)
            return
        net = order[0]
        addr = self.sub.spec.node(handle.target).interfaces[net]
        try:
            uri = str(self.sub.agent(handle.target).call(
                "postcopy_recover", vm=handle.vm, uri=f"tcp:{addr}:0", timeout_s=20)["uri"])
            self.sub.agent(handle.source).call("postcopy_resume", vm=handle.vm, uri=uri,
                                               timeout_s=20)
            self.sub.say(f"{handle.vm}: post-copy resumed over {net}")
        except SubstrateError as exc:
            self.sub.say(f"{handle.vm}: post-copy recovery over {net} failed: {exc}")
            clock.sleep(1.0)

    def _postcopy_lost(self, handle: MigrationHandle, att: _Attempt,
                       info: dict[str, Any]) -> MigrationResult:
        """A post-copy cut short after the switch: the guest's memory is split between
        two QEMUs and neither can go on. Both stop; the VM is placed on the target (the
        store says so since the switch) and the cluster starts it there from its shared
        disk: a failover, and reported as one."""
        why = str(info.get("error-desc") or f"QEMU's status {info.get('status')}")
        for node in (handle.target, handle.source):
            with contextlib.suppress(SubstrateError):
                self.sub.agent(node).call("release", vm=handle.vm)
        for f in att.slots:
            f.close()
        self._attempts.pop(handle.id, None)
        result = MigrationResult(
            handle.vm, handle.source, handle.target, handle.network, ok=False,
            error=f"post-copy of {handle.vm} broke after the switch ({why}); its running "
                  f"copy is lost and the cluster starts it again on {handle.target} from "
                  "its disk (a failover)",
            extra={"switched": True, "mode": "postcopy", "postcopy_lost": True})
        self._results[handle.id] = result
        self.sub.say(f"{handle.vm}: {result.error}")
        return result

    def _timeline(self, handle: MigrationHandle, since: float) -> dict[str, float | None]:
        """When the source's vCPUs stopped for the last copy and the target's ran (QEMU's
        own event timestamps, wall clock), read before the source QEMU quits."""
        def last(node: str, name: str) -> float | None:
            # The target may still be loading the last state when the source reports
            # completion: its RESUME comes a moment later.
            deadline = self.sub.clock.now() + 2.0
            while True:
                try:
                    events = self.sub.agent(node).call("timeline", vm=handle.vm)["events"]
                except SubstrateError:
                    return None
                times = [float(t) for n, t in events if n == name and float(t) >= since]
                if times or self.sub.clock.now() > deadline:
                    return max(times) if times else None
                self.sub.clock.sleep(0.02)

        return {"paused_at": last(handle.source, "STOP"),
                "resumed_at": last(handle.target, "RESUME")}

    def _take_over(self, tgt: AgentClient, handle: MigrationHandle) -> None:
        """Run the target's copy. Its agent may be restarting (it adopts the paused QEMU):
        asked again until it answers, for at most TAKEOVER_WAIT_S."""
        deadline = self.sub.clock.now() + TAKEOVER_WAIT_S
        while True:
            try:
                tgt.call("takeover", vm=handle.vm)
                return
            except AgentDown:
                if self.sub.clock.now() >= deadline:
                    raise
                self.sub.clock.sleep(0.25)

    def _rollback(self, handle: MigrationHandle) -> tuple[str | None, bool]:
        """Discard the target, resume the source: what went wrong (None: nothing), and
        whether the source QEMU was gone (it ended during the migration)."""
        problems = []
        gone = False
        try:
            self.sub.agent(handle.target).call("discard", vm=handle.vm)
        except SubstrateError as exc:
            problems.append(f"target cleanup: {exc}")
        try:
            self.sub.agent(handle.source).call("cancel", vm=handle.vm)
        except SubstrateError as exc:
            if isinstance(exc, AgentError) and exc.code == "not_found":
                gone = True  # its QEMU ended: nothing to resume
            else:
                problems.append(f"resuming on {handle.source} failed: {exc}")
        self.sub.records.set_migrating(handle.vm, None)
        return "; ".join(problems) or None, gone

