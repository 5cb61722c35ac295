"""A migration (live, or quick) is driven by its source host, not by the manager that asked.

The elected manager decides *that* a VM moves (an operator's intent, a drain, a
consolidation plan, a quarantined host); the source host's agent *drives* the move:
it runs :func:`vmcluster.control.migration.migrate` (or, for a quick migration,
:func:`vmcluster.node.quick.quick_migrate`) in a thread of its own, under the
fencing token the manager sent with the request, with the migration's record and
driver lease in etcd (:class:`~vmcluster.control.ledger.StoreLedger`). So:

* the manager's process does not carry the migration: a manager that fails over
  mid-copy does not end it. The copy goes on, and the next manager hands the driver
  its own token (``drive_adopt``), so that the switchover is not refused; a request
  refused as fenced meanwhile waits for that, once, up to ``ADOPT_WAIT_S``. A drive
  no manager adopts ends refused, and the manager settles its record from QEMU's own
  state on both ends, as it does for any driver that died;
* a source host that dies takes its driver along: its lease lapses, and the manager
  settles the record the same way (the VM then fails over with its host);
* the asker watches: :func:`drive_at_source` polls the source's ``drive_status`` and
  hands on its progress, and a cancel is sent to the driver (``drive_cancel``), which
  rolls back at its next safe point. A new manager takes over the watch of a migrate
  intent its predecessor was running (:func:`adopt_drive`).

Two halves: :class:`SourceDrives` lives in the agent (ops ``drive``, ``drive_status``,
``drive_cancel``, ``drive_adopt``), :func:`drive_at_source` and :func:`adopt_drive` in
whoever asks.
"""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

from vmcluster.control.ledger import StoreLedger
from vmcluster.control.migration import MigrationRequest, ProgressCallback, health_for, migrate
from vmcluster.errors import (
    MigrationCancelled,
    MigrationError,
    MigrationRefused,
    PolicyError,
    SubstrateError,
    VmclusterError,
)
from vmcluster.model import ClusterSpec
from vmcluster.node.quick import quick_migrate
from vmcluster.node.records import StoreRecords
from vmcluster.store.errors import Fenced
from vmcluster.store.state import ClusterState
from vmcluster.substrate.host.client import AgentClient, AgentDown, AgentError, NotFound
from vmcluster.substrate.host.layout import LabLayout
from vmcluster.substrate.protocol import (
    MigrationHandle,
    MigrationParams,
    MigrationProgress,
    MigrationResult,
)
from vmcluster.substrate.qemu.substrate import QemuSubstrate

__all__ = ["DRIVER_LOST_S", "SourceDrives", "adopt_drive", "drive_at_source", "start_drive"]

DRIVER_LOST_S = 15.0  # the source's agent silent this long: its driver is taken for lost
# A drive whose token stopped leading waits this long for the next manager to adopt it
# (that manager takes office once the old one's lease ran out, a few seconds) before its
# request counts as refused; QEMU goes on copying meanwhile.
ADOPT_WAIT_S = 20.0
_KEEP_DONE_S = 600.0  # how long a finished drive's result is kept for its asker
# The errors a drive can end with before it moved anything, by name across the wire.
_ERRORS: dict[str, type[VmclusterError]] = {
    cls.__name__: cls for cls in (MigrationError, MigrationRefused, PolicyError,
                                  MigrationCancelled, SubstrateError)}


@dataclass
class _Drive:
    id: str
    vm: str
    target: str
    token: int
    quick: bool = False  # pause, save onto the shared volume, restore; else live pre-copy
    state: str = "running"  # running | done | failed
    handle: dict[str, str] | None = None
    progress: dict[str, Any] | None = None
    result: dict[str, Any] | None = None
    error: str | None = None
    error_type: str | None = None
    cancel: threading.Event = field(default_factory=threading.Event)
    ended_at: float | None = None
    sub: QemuSubstrate | None = None  # what the drive acts through, under ``token``
    ledger: StoreLedger | None = None
    token_changed: threading.Event = field(default_factory=threading.Event)
    abandoned: int | None = None  # a stale token no manager adopted the drive from

    def wait_adopted(self, stale: int | None, timeout_s: float = ADOPT_WAIT_S) -> bool:
        """Wait until a new manager's token replaced ``stale`` (True), or give up (once
        per stale token: the rollback after a refused switchover does not wait again)."""
        if self.abandoned == stale:
            return self.token != stale
        deadline = time.monotonic() + timeout_s
        while self.token == stale:
            left = deadline - time.monotonic()
            if left <= 0 or not self.token_changed.wait(left):
                if self.token == stale:
                    self.abandoned = stale
                return self.token != stale
            self.token_changed.clear()
        return True

    def to_json(self) -> dict[str, Any]:
        return {"id": self.id, "vm": self.vm, "target": self.target, "quick": self.quick,
                "state": self.state,
                "handle": self.handle, "progress": self.progress, "result": self.result,
                "error": self.error, "error_type": self.error_type,
                "cancelled": self.cancel.is_set()}


class SourceDrives:
    """The migrations this host drives as their source (one per VM at a time).

    ``store()``: a new client of the cluster's store (each drive has its own session);
    ``spec()``: the cluster's spec with its VMs as the store defines them now."""

    def __init__(self, node: str, layout: LabLayout, store: Callable[[], ClusterState],
                 spec: Callable[[], ClusterSpec],
                 log: Callable[[str], None] = lambda _m: None) -> None:
        self.node, self.layout, self._store, self._spec = node, layout, store, spec
        self.log = log
        self._drives: dict[str, _Drive] = {}
        self._lock = threading.Lock()
        self._ids = itertools.count(1)

    def start(self, vm: str, target: str, token: int, params: MigrationParams | None,
              quick: bool = False) -> dict[str, Any]:
        """Begin driving ``vm`` to ``target``; returns at once with the drive's id."""
        with self._lock:
            self._forget_old()
            now = self._drives.get(vm)
            if now is not None and now.state == "running":
                raise MigrationError(f"{vm} is already migrating to {now.target} "
                                     f"(driven by {self.node})")
            drive = _Drive(f"{self.node}-{time.time_ns()}-{next(self._ids)}", vm, target, token,
                           quick)
            self._drives[vm] = drive
        self.log(f"driving the {'quick' if quick else 'live'} migration of {vm} to {target} "
                 f"(token {token}, id {drive.id})")
        threading.Thread(target=self._run, args=(drive, params), name=f"drive-{vm}",
                         daemon=True).start()
        return {"id": drive.id, "driver": self.node}

    def _find(self, vm: str, drive_id: str | None) -> _Drive:
        """``vm``'s drive here (the one with ``drive_id``, when given); NotFound else.
        Called with the lock held."""
        drive = self._drives.get(vm)
        if drive is None or (drive_id is not None and drive.id != drive_id):
            raise NotFound(f"{self.node} drives no migration of {vm}"
                           + (f" with id {drive_id}" if drive_id else ""))
        return drive

    def status(self, vm: str, drive_id: str | None = None) -> dict[str, Any]:
        with self._lock:
            return self._find(vm, drive_id).to_json()

    def cancel(self, vm: str, drive_id: str | None = None) -> dict[str, Any]:
        with self._lock:
            drive = self._find(vm, drive_id)
        drive.cancel.set()
        return drive.to_json()

    def adopt(self, vm: str, drive_id: str | None, token: int) -> dict[str, Any]:
        """A new manager took office: the drive goes on under its ``token`` (the agent
        checked that it leads), so that its switchover is not refused for the old one."""
        with self._lock:
            drive = self._find(vm, drive_id)
            drive.token = token
            for holder in (drive.sub, drive.ledger):
                if holder is not None:
                    holder.token = token
            drive.token_changed.set()
        self.log(f"drive {drive.id} of {vm} goes on under token {token}")
        return drive.to_json()

    def _forget_old(self) -> None:
        now = time.monotonic()
        for vm, d in list(self._drives.items()):
            if d.ended_at is not None and now - d.ended_at > _KEEP_DONE_S:
                del self._drives[vm]

    def _run(self, drive: _Drive, params: MigrationParams | None) -> None:
        def on_progress(h: MigrationHandle, p: MigrationProgress) -> None:
            drive.handle = asdict(h)
            drive.progress = asdict(p)
            if drive.cancel.is_set():
                raise MigrationCancelled(f"the migration of {h.vm} was cancelled")

        try:
            state = self._store()
            spec = self._spec()
            sub = _DriveSubstrate(self.layout, spec, records=StoreRecords(state))
            with self._lock:  # every request of this drive carries the asker's token
                sub.token, sub.drive = drive.token, drive
                ledger = _DriveLedger(state, drive.token, drive=drive)
                drive.sub, drive.ledger = sub, ledger
            now = sub.status()
            if now.vm(drive.vm).node != self.node:
                raise MigrationError(f"{drive.vm} does not run on {self.node}; its source "
                                     "drives a migration")
            if drive.quick:
                result = quick_migrate(sub, drive.vm, drive.target, ledger=ledger)
            else:
                result = migrate(sub, spec, health_for(sub, spec, drive.vm, drive.target),
                                 MigrationRequest(drive.vm, drive.target, params), on_progress,
                                 ledger)
            drive.result, drive.state = result.to_json(), "done"
        except VmclusterError as exc:
            drive.error, drive.error_type, drive.state = str(exc), type(exc).__name__, "failed"
        except Exception as exc:  # a driver thread never dies silently
            drive.error, drive.error_type = f"{type(exc).__name__}: {exc}", "MigrationError"
            drive.state = "failed"
        finally:
            drive.ended_at = time.monotonic()
            drive.sub = drive.ledger = None
            r = drive.result or {}
            self.log(f"drive {drive.id} of {drive.vm} ended: " + (
                f"{'moved to ' + drive.target if r.get('ok') else 'not moved'} "
                f"({r.get('network')}, {r.get('total_s')} s, downtime {r.get('downtime_ms')} ms"
                + (f"; {r['error']}" if r.get("error") else "") + ")"
                if drive.state == "done" else f"failed: {drive.error}"))


class _DriveClient(AgentClient):
    """A drive's requests: one refused as fenced waits for the next manager to adopt the
    drive (:meth:`SourceDrives.adopt`) and goes again under its token."""

    def __init__(self, layout: LabLayout, node: str, drive: _Drive) -> None:
        super().__init__(layout, node, token=drive.token)
        self.drive = drive

    def call(self, op: str, timeout_s: float = 30.0, **args: Any) -> dict[str, Any]:
        try:
            return super().call(op, timeout_s, **args)
        except AgentError as exc:
            if exc.code != "fenced" or not self.drive.wait_adopted(self.token):
                raise
            self.token = self.drive.token
            return super().call(op, timeout_s, **args)


class _DriveSubstrate(QemuSubstrate):
    drive: _Drive

    def agent(self, node: str) -> AgentClient:
        return _DriveClient(self.layout, node, self.drive)


@dataclass
class _DriveLedger(StoreLedger):
    """The drive's record: a switchover or abort refused for a token that no longer leads
    waits for the next manager to adopt the drive, then goes again under its token."""

    drive: _Drive | None = None

    def commit(self) -> None:
        self._again(super().commit)

    def abort(self) -> None:
        self._again(super().abort)

    def _again(self, step: Callable[[], None]) -> None:
        try:
            step()
        except Fenced:
            if self.drive is None or not self.drive.wait_adopted(self.token):
                raise
            step()  # adopt() set our token to the new manager's


def drive_at_source(sub: QemuSubstrate, req: MigrationRequest,
                    on_progress: ProgressCallback | None, token: int,
                    lost_s: float = DRIVER_LOST_S, quick: bool = False) -> MigrationResult:
    """Have ``req.vm``'s source host drive its migration under ``token``, and watch it
    until it ends. Raises what the driver raised before it moved anything (no network,
    a refusal, a cancel that rolled back); a driver lost for ``lost_s`` (its host or
    agent went) gives an unsettled result: the manager settles its record."""
    source, drive_id = start_drive(sub, req, token, quick)
    return _watch(sub.layout, source, req, drive_id, on_progress, token, lost_s)


def start_drive(sub: QemuSubstrate, req: MigrationRequest, token: int,
                quick: bool = False) -> tuple[str, str]:
    """Ask ``req.vm``'s source host to drive its migration under ``token``; returns the
    source and the drive's id at once (the switchover moves the VM's placement)."""
    source = sub.status().vm(req.vm).node
    if source is None:
        raise MigrationError(f"{req.vm} is not running; start it before migrating")
    if source == req.target:
        raise MigrationError(f"{req.vm} already runs on {req.target}; pick another node")
    asker = AgentClient(sub.layout, source, token=token)
    params = None if req.params is None else asdict(req.params)
    try:
        drive_id = str(asker.call("drive", vm=req.vm, target=req.target, params=params,
                                  quick=quick, timeout_s=30)["id"])
    except AgentDown as exc:
        raise MigrationError(f"cannot migrate {req.vm}: its source {source} does not "
                             f"answer ({exc})") from exc
    return source, drive_id


def adopt_drive(sub: QemuSubstrate, req: MigrationRequest,
                on_progress: ProgressCallback | None, token: int,
                lost_s: float = DRIVER_LOST_S) -> MigrationResult:
    """A new manager takes over the watch of ``req.vm``'s migration to ``req.target``
    that a deposed one asked for: the host that drives it (asked on every node: the
    placement may have moved already) goes on under ``token`` from now on, so that its
    switchover is not refused for the old token. MigrationError when no host drives
    that migration any more (its record, if any, is an orphan the manager settles)."""
    for node in sorted(n.name for n in sub.spec.nodes):
        try:
            st = AgentClient(sub.layout, node).call("drive_status", vm=req.vm, timeout_s=10)
        except (AgentDown, AgentError):
            continue  # down, or drives no migration of it
        if st.get("target") != req.target:
            continue
        if st["state"] == "running":
            try:
                AgentClient(sub.layout, node, token=token).call(
                    "drive_adopt", vm=req.vm, id=st["id"], timeout_s=10)
            except AgentDown as exc:
                raise MigrationError(f"the driver of {req.vm} on {node} stopped answering "
                                     f"({exc})") from exc
        return _watch(sub.layout, node, req, str(st["id"]), on_progress, token, lost_s)
    raise MigrationError(f"no host drives the migration of {req.vm} to {req.target} any more")


def _watch(layout: LabLayout, source: str, req: MigrationRequest, drive_id: str,
           on_progress: ProgressCallback | None, token: int, lost_s: float
           ) -> MigrationResult:
    """Follow drive ``drive_id`` on ``source`` to its end (see :func:`drive_at_source`)."""
    asker = AgentClient(layout, source, token=token)
    watcher = AgentClient(layout, source)
    cancel_sent, heard = False, time.monotonic()
    shown: tuple[Any, ...] = ()
    while True:
        try:
            st = watcher.call("drive_status", vm=req.vm, id=drive_id, timeout_s=10)
            heard = time.monotonic()
        except (AgentDown, AgentError) as exc:
            # Silent too long, or restarted (a new agent knows no drive of its
            # predecessor): the driver is gone and its lease lapses.
            gone = isinstance(exc, AgentError) and exc.code == "not_found"
            if isinstance(exc, AgentError) and not gone:
                raise
            if gone or time.monotonic() - heard > lost_s:
                return MigrationResult(
                    req.vm, source, req.target, "?", ok=False, unsettled=True,
                    error=f"the driver on {source} was lost ({exc}); the manager settles "
                          "the migration from its record and QEMU's state")
            time.sleep(0.5)
            continue
        if st.get("handle") and st.get("progress") and on_progress is not None:
            key = tuple(sorted(st["progress"].items()))
            if key != shown:
                shown = key
                try:
                    on_progress(MigrationHandle(**st["handle"]),
                                MigrationProgress(**st["progress"]))
                except MigrationCancelled:
                    if not cancel_sent:
                        asker.call("drive_cancel", vm=req.vm, id=drive_id, timeout_s=10)
                        cancel_sent = True
        if st["state"] == "done":
            result = MigrationResult.from_json(st["result"])
            if cancel_sent and not result.ok:
                raise MigrationCancelled(f"the migration of {req.vm} was cancelled; it stays "
                                         f"on {result.source}")
            return result
        if st["state"] == "failed":
            raise _ERRORS.get(str(st.get("error_type")), MigrationError)(str(st["error"]))
        time.sleep(max(req.poll_s, 0.2))
