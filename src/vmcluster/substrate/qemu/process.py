"""A QEMU process owned by a node agent: spawn (daemonized), find again, stop.

QEMU is started with ``-daemonize`` so it outlives the agent that started it:
an agent that restarts finds its VMs again from the records it keeps beside
their QMP sockets, checks them against ``/proc`` and QEMU's own state, and
never kills a running VM to reconcile.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from vmcluster.errors import QmpError, SubstrateError
from vmcluster.substrate.procs import live_cmdline
from vmcluster.substrate.qemu.facts import QemuInstall
from vmcluster.substrate.qemu.qmp import Qmp
from vmcluster.substrate.qemu.vm import VmConfig, qemu_argv

__all__ = ["TIMELINE_EVENTS", "QemuProcess", "Record"]

# QMP events each QEMU's timeline keeps: when its vCPUs stopped and ran again.
TIMELINE_EVENTS = ("STOP", "RESUME")


@dataclass(frozen=True)
class Record:
    """What an agent writes down about one QEMU it started (JSON beside the socket)."""

    vm: str
    role: str  # "run" (owns the VM) or "incoming" (a migration target)
    pid: int
    qmp: str
    serial_log: str
    config: dict[str, Any]
    migration: str = ""

    def with_role(self, role: str) -> Record:
        return Record(**{**asdict(self), "role": role})


class QemuProcess:
    """One live QEMU and its QMP connection."""

    def __init__(self, record: Record, qmp: Qmp, record_path: Path) -> None:
        self.record = record
        self.qmp = qmp
        self.record_path = record_path

    @property
    def pid(self) -> int:
        return self.record.pid

    def save(self) -> None:
        tmp = self.record_path.with_suffix(".tmp")
        tmp.write_text(json.dumps(asdict(self.record)))
        tmp.replace(self.record_path)

    def set_role(self, role: str) -> None:
        self.record = self.record.with_role(role)
        self.save()

    @classmethod
    async def spawn(
        cls, cfg: VmConfig, workdir: Path, serial_log: Path, role: str, migration: str = "",
        install: QemuInstall | None = None, tls_dir: str | None = None,
    ) -> QemuProcess:
        workdir.mkdir(parents=True, exist_ok=True)
        sock = workdir / f"{cfg.name}.qmp"
        pidfile = workdir / f"{cfg.name}.pid"
        errlog = workdir / f"{cfg.name}.err"
        for stale in (sock, pidfile):
            stale.unlink(missing_ok=True)
        serial_log.parent.mkdir(parents=True, exist_ok=True)
        argv = qemu_argv(cfg, str(sock), str(serial_log), str(pidfile), role == "incoming",
                         install, tls_dir)
        argv.append("-daemonize")
        with errlog.open("wb") as err:
            proc = await asyncio.create_subprocess_exec(
                *argv, stdin=asyncio.subprocess.DEVNULL, stdout=err, stderr=err,
                start_new_session=True, env=install.env() if install else None,
            )
            try:
                rc = await asyncio.wait_for(proc.wait(), timeout=60)
            except TimeoutError as exc:
                proc.kill()
                raise SubstrateError(f"QEMU for {cfg.name} did not start within 60 s") from exc
        if rc != 0:
            text = errlog.read_text(errors="replace").strip().splitlines()
            raise SubstrateError(
                f"QEMU for {cfg.name} failed to start (exit {rc}): {text[-1] if text else '?'}"
            )
        pid = int(pidfile.read_text().strip())
        record = Record(cfg.name, role, pid, str(sock), str(serial_log), cfg.to_json(), migration)
        qmp = Qmp(f"{cfg.name}@{pid}")
        await qmp.connect(str(sock))
        qmp.record_events(*TIMELINE_EVENTS)
        qp = cls(record, qmp, workdir / f"{cfg.name}.json")
        qp.save()
        return qp

    @classmethod
    async def adopt(cls, record_path: Path) -> QemuProcess | None:
        """Find a QEMU again from its record; None (record removed) if it is gone."""
        try:
            record = Record(**json.loads(record_path.read_text()))
        except (OSError, ValueError, TypeError):
            record_path.unlink(missing_ok=True)
            return None
        if not pid_matches(record.pid, record.qmp):
            record_path.unlink(missing_ok=True)
            return None
        qmp = Qmp(f"{record.vm}@{record.pid}")
        try:
            await qmp.connect(record.qmp, timeout_s=5)
        except QmpError:
            return None  # alive but not answering: leave it (and its record) alone
        qmp.record_events(*TIMELINE_EVENTS)
        return cls(record, qmp, record_path)

    def alive(self) -> bool:
        return pid_matches(self.record.pid, self.record.qmp)

    async def stop(self, grace_s: float = 5.0, shutdown_s: float = 0.0) -> str:
        """Stop the QEMU; returns how: ``shutdown`` (with ``shutdown_s`` > 0, the guest was
        asked over ACPI and powered itself off within that time), ``quit`` (over QMP) or
        ``killed`` (SIGKILL, when it had not exited ``grace_s`` after the quit). Removes
        the record."""
        how = "quit"
        loop = asyncio.get_running_loop()
        if shutdown_s > 0 and self.alive():
            with contextlib.suppress(QmpError):
                await self.qmp.system_powerdown()
            deadline = loop.time() + shutdown_s
            while self.alive() and loop.time() < deadline:
                await asyncio.sleep(0.1)
            if not self.alive():
                how = "shutdown"
        if self.alive():
            await self.qmp.quit()
            deadline = loop.time() + grace_s
            while self.alive() and loop.time() < deadline:
                await asyncio.sleep(0.05)
            if self.alive():
                how = "killed"
                with contextlib.suppress(ProcessLookupError):
                    os.kill(self.pid, signal.SIGKILL)
                while self.alive() and loop.time() < deadline + 5:
                    await asyncio.sleep(0.05)
        else:
            await self.qmp.close()
        self.record_path.unlink(missing_ok=True)
        Path(self.record.qmp).unlink(missing_ok=True)
        return how


def pid_matches(pid: int, qmp_socket: str) -> bool:
    """Is ``pid`` alive and the QEMU whose QMP socket is ``qmp_socket`` (not a reused pid)?"""
    return qmp_socket.encode() in live_cmdline(pid)
