"""Quick migration, live migration's predecessor: pause, save, restore.

The VM is paused for the whole copy (its downtime is the full save + restore). The
source's agent saves the state where the VM's disk is: a region of its cluster shared
volume (see :mod:`vmcluster.csv.savestate`), or a file beside a plain disk in the
hosts' file storage; the target's agent restores it from there; the source's removes
it afterwards. On any failure
the target is removed and the VM resumes on its source. With a ``ledger`` (the
manager's, under its token) the move follows the switchover protocol of live
migration: recorded before the save, ownership moved by compare-and-set before the
target may run, the record deleted by compare-and-set before the source may run
again; a refused end leaves both copies for whoever holds the record.
"""

from __future__ import annotations

import contextlib

from vmcluster.control.ledger import StoreLedger
from vmcluster.errors import MigrationError, SubstrateError, VmclusterError
from vmcluster.model import MIB
from vmcluster.substrate.protocol import MigrationHandle, MigrationResult
from vmcluster.substrate.qemu.qmp import MIGRATING
from vmcluster.substrate.qemu.substrate import QemuSubstrate

__all__ = ["quick_migrate"]


def quick_migrate(sub: QemuSubstrate, vm: str, target: str, timeout_s: float = 120.0,
                  ledger: StoreLedger | None = None) -> MigrationResult:
    source = sub.owner(vm)
    if source is None:
        raise MigrationError(f"{vm} is not running")
    if source == target:
        raise MigrationError(f"{vm} already runs on {target}; pick another node")
    if not sub.agent(target).alive():
        raise MigrationError(f"node {target} is down; cannot move {vm} there")
    clock = sub.clock
    t0 = clock.now()
    src, tgt = sub.agent(source), sub.agent(target)
    if ledger is not None:
        try:
            ledger.begin(MigrationHandle(vm, source, target, "shared-path", "quick"))
        except VmclusterError as exc:
            return MigrationResult(vm, source, target, "shared-path", ok=False, error=str(exc))
    committed = False
    try:
        saved = src.call("save", timeout_s=timeout_s + 10, vm=vm,
                         save_timeout_s=timeout_s)["migrate"]
        if saved.get("status") != "completed":
            raise MigrationError(f"saving {vm} failed: {saved.get('error-desc', saved)}")
        if ledger is not None:
            ledger.renew()
        tgt.call("incoming", timeout_s=60, vm=vm, machine=sub.machine(vm), quick=True,
                 id="quick")
        deadline = clock.now() + timeout_s
        while True:  # woken by the target QEMU's MIGRATION events, not a 50 ms poll
            info = tgt.call("query_migrate", vm=vm, wait_s=0.5)
            # The target starts with -S: once restored it is paused, until takeover.
            if info["migrate"].get("status") == "completed" or info["status"] in (
                    "running", "paused"):
                break
            if info["migrate"].get("status") == "failed" or clock.now() > deadline:
                raise MigrationError(f"restoring {vm} on {target} failed")
            if ledger is not None:
                ledger.renew()
            if info["migrate"].get("status") not in MIGRATING:
                clock.sleep(0.05)  # nothing in progress to wait on yet: look again shortly
        if ledger is not None:
            ledger.commit()  # ownership moves before the target may run
            committed = True
        tgt.call("takeover", vm=vm)
        down_s = clock.now() - t0
        sub.records.set_owner(vm, target)
        src.call("release", vm=vm)
    except VmclusterError as exc:
        if committed:  # the target owns it now: never run the source again
            return MigrationResult(vm, source, target, "shared-path", ok=False, unsettled=True,
                                   error=f"{exc}; {vm} belongs to {target} now, the manager "
                                   "runs it there", total_s=clock.now() - t0)
        try:
            if ledger is not None:
                ledger.abort()  # the record gone before the source may run again
        except VmclusterError as refused:
            return MigrationResult(vm, source, target, "shared-path", ok=False, unsettled=True,
                                   error=f"{exc}; rollback refused: {refused}",
                                   total_s=clock.now() - t0)
        for agent, op in ((tgt, "discard"), (src, "cancel")):
            with contextlib.suppress(SubstrateError):
                agent.call(op, vm=vm)
        return MigrationResult(vm, source, target, "shared-path", ok=False, error=str(exc),
                               total_s=clock.now() - t0)
    finally:
        with contextlib.suppress(SubstrateError):  # a leftover is replaced by the next save
            src.call("drop_saved", vm=vm)
        if ledger is not None:
            ledger.stop_keeping()
    return MigrationResult(
        vm, source, target, "shared-path", ok=True, passes=1,
        sent_mib=int(saved.get("ram", {}).get("transferred", 0)) / MIB,
        total_s=down_s, downtime_ms=down_s * 1000.0,
    )
