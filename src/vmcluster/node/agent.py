"""The node agent: one process per node namespace that owns that node's QEMUs.

Started by ``vmclusterd`` as ``python -m vmcluster.node.agent --config
/etc/vmcluster/vmclusterd.toml`` (a part of the node daemon; see
:mod:`vmcluster.node.daemon`). It answers one JSON request per connection,
on its host's unix socket and over mutual TLS on the cluster networks
(``{"op": ..., ...}`` -> ``{"ok": true, ...}`` or ``{"ok": false,
"error": "one line"}``). On start it reconciles from QEMU's own state: every
QEMU it recorded that is still alive is adopted (``query-status``); dead ones
are forgotten; a running VM is never killed to reconcile.

On start it also asks its QEMU what it supports
(:func:`~vmcluster.substrate.qemu.facts.probe`): ``ping`` reports the version,
``facts`` the whole answer (machine types, commands, capabilities).

Ops: ping, facts, timeline, list, start, stop, pause, resume, incoming, migrate,
query_migrate, set_params, cancel, takeover, release, discard, save, drop_saved, power_off,
drive, drive_status, drive_cancel, drive_adopt (this host drives a migration of its VM:
:mod:`vmcluster.node.driver`), and the cluster shared volume ops of
:class:`~vmcluster.csv.agentops.CsvOps` (csv_*). A request that carries a manager's
fencing ``token`` is refused unless that manager still leads
(:mod:`vmcluster.node.fencing`); a state-changing request from another host must carry
one (:data:`STATE_CHANGING`).

``start`` and ``incoming`` name a VM, never a QEMU configuration: the agent builds
the command line itself from the VM's definition in the store (or, in a lab without
a control plane, from the lab's spec file), this host's boot image (``[guest]`` of
its config) and its own paths. The only things a caller chooses are the VM, its
machine type (one this host's QEMU has; pinned in the VM's record in the store at
its first start, after which the record decides) and a ``tcp:ADDRESS:PORT`` to
listen on.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import re
import shutil
import signal
import ssl
import threading
import time
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.x509.oid import NameOID

from vmcluster.csv.agentops import CsvOps
from vmcluster.csv.attach import disk_config, record_owner
from vmcluster.csv.savestate import region_name
from vmcluster.csv.storage import NbdTarget
from vmcluster.errors import (
    InputError,
    QemuGone,
    QmpError,
    StoreError,
    SubstrateError,
    VmclusterError,
)
from vmcluster.model import ClusterSpec, Vm
from vmcluster.node.config import NodeConfig, load_config
from vmcluster.node.driver import SourceDrives
from vmcluster.node.fencing import AgentFence
from vmcluster.node.load import CpuMeter, guest_cores, threads_cpu_s
from vmcluster.pki import ADMIN, NodeCredentials, crl_serials
from vmcluster.policy.networks import node_cluster_networks
from vmcluster.store import vms
from vmcluster.store.errors import Fenced
from vmcluster.store.state import ClusterState
from vmcluster.substrate.host.client import AGENT_PORT, Conflict, NotFound, addresses_from, speak_as
from vmcluster.substrate.host.layout import LabLayout, shared_layout
from vmcluster.substrate.protocol import MigrationParams
from vmcluster.substrate.qemu.diskimage import image_info, to_raw
from vmcluster.substrate.qemu.facts import QemuFacts, QemuInstall, probe
from vmcluster.substrate.qemu.image import (
    kernel_cmdline,  # the image module is optional at import
)
from vmcluster.substrate.qemu.pagesample import DeltaSample
from vmcluster.substrate.qemu.process import QemuProcess
from vmcluster.substrate.qemu.qmp import MIGRATING
from vmcluster.substrate.qemu.vm import (
    FV_SIGNATURE,
    FV_SIGNATURE_AT,
    OVMF_CODE,
    OVMF_VARS,
    VmConfig,
    mac_for,
)

__all__ = ["Agent", "Conflict", "NotFound", "guest_config", "main"]

Reply = dict[str, Any]


MAX_SHUTDOWN_S = 600.0  # the longest a guest is given to shut down when asked
UPLOAD_ID = re.compile(r"[0-9a-f]{32}")
CONSOLE_MAX = 64 * 1024  # bytes of a serial console per read
MIB = 1 << 20
CHUNK = 4 * MIB
# Ops only this host's own parts may ask (over its unix socket): they name its files.
LOCAL_ONLY = frozenset({"import_disk"})

_TCP_URI = re.compile(r"^tcp:\d{1,3}(\.\d{1,3}){3}:\d{1,5}$")


async def _sh(*argv: str) -> tuple[int, str]:
    proc = await asyncio.create_subprocess_exec(
        *argv, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT
    )
    out, _ = await asyncio.wait_for(proc.communicate(), timeout=10)
    return proc.returncode or 0, out.decode(errors="replace").strip()


class Agent(CsvOps):
    """The node agent's state: the QEMUs it owns, by VM name."""

    def __init__(self, cfg: NodeConfig, layout: LabLayout) -> None:
        self.cfg, self.layout, self.node = cfg, layout, cfg.node
        self.install = QemuInstall.from_json(dict(cfg.qemu)) if cfg.qemu else QemuInstall()
        self.facts: QemuFacts | None = None
        self.cpu = CpuMeter()  # each QEMU's CPU, between two lists
        self._vcpu_tids: dict[str, tuple[int, set[int]]] = {}  # vm -> (QEMU pid, its vCPUs)
        self.workdir = cfg.qemu_dir
        self.creds = NodeCredentials(cfg.tls_dir)
        # This host's certificates in QEMU's layout (migration streams, NBD).
        self.qemu_tls_dir = str(self.creds.qemu_dir)
        self.vms: dict[str, QemuProcess] = {}
        self.locks: dict[str, asyncio.Lock] = {}
        self._state: ClusterState | None = None
        self._fresh: tuple[float, ClusterSpec] | None = None
        self._refreshing = threading.Event()
        # The live migrations this host drives as their source (see vmcluster.node.driver).
        self.drives = SourceDrives(self.node, layout,
                                   lambda: cfg.store(timeout_s=5.0, retry_s=5.0),
                                   lambda: self.cluster_spec(max_age_s=1.0), _log)

    def lock(self, vm: str) -> asyncio.Lock:
        return self.locks.setdefault(vm, asyncio.Lock())

    async def reconcile(self) -> None:
        self.facts = await probe(self.install)
        self.workdir.mkdir(parents=True, exist_ok=True)
        for rec in sorted(self.workdir.glob("*.json")):
            qp = await QemuProcess.adopt(rec)
            if qp is not None:
                self.vms[qp.record.vm] = qp

    def get(self, vm: str) -> QemuProcess:
        qp = self.vms.get(vm)
        if qp is None or not qp.alive():
            if qp is not None:
                self.vms.pop(vm, None)
                qp.record_path.unlink(missing_ok=True)
            raise NotFound(f"{vm} has no QEMU on {self.node}")
        return qp

    async def _tap(self, cfg: VmConfig) -> None:
        rc, _ = await _sh("ip", "link", "show", cfg.tap)
        if rc != 0:
            rc, out = await _sh("ip", "tuntap", "add", "dev", cfg.tap, "mode", "tap")
            if rc != 0:
                raise SubstrateError(f"cannot create tap {cfg.tap} on {self.node}: {out}")
        rc, out = await _sh("ip", "link", "set", cfg.tap, "master", cfg.bridge, "up")
        if rc != 0:
            raise SubstrateError(f"cannot attach tap {cfg.tap} to {cfg.bridge}: {out}")

    async def _drop(self, vm: str, shutdown_s: float = 0.0) -> str | None:
        """Stop ``vm``'s QEMU (asking the guest first for ``shutdown_s``); how it ended, None
        when none ran here."""
        qp = self.vms.pop(vm, None)
        if qp is None:
            return None
        how = await qp.stop(shutdown_s=shutdown_s)
        await _sh("ip", "tuntap", "del", "dev", qp.record.config["tap"], "mode", "tap")
        return how

    # -- ops ------------------------------------------------------------------------
    def cluster_addresses(self) -> list[str]:
        """This host's addresses on the cluster networks (role >= 1): where it listens."""
        spec = self._spec()
        mine = spec.node(self.node).interfaces
        return [str(mine[p.name]) for p in node_cluster_networks(spec, self.node)]

    async def op_ping(self, req: Reply) -> Reply:
        return {"node": self.node, "pid": os.getpid(),
                "qemu_version": self.facts.version if self.facts else None,
                "qemu": self.install.label}

    async def op_facts(self, req: Reply) -> Reply:
        """What this host's QEMU supports (see :class:`QemuFacts`)."""
        assert self.facts is not None  # probed before the agent serves
        return {"facts": self.facts.to_json(), "features": self.facts.features(),
                "install": self.install.to_json()}

    async def op_console(self, req: Reply) -> Reply:
        """A VM's serial console as this host has it, from byte ``offset`` (negative: the
        last that many bytes), at most CONSOLE_MAX bytes. ``offset`` in the reply: where to
        ask next; ``running``: whether its QEMU runs here. A read: any cluster host may ask
        (the API of any host serves the console)."""
        name, offset = str(req.get("vm")), req.get("offset", 0)
        if not isinstance(offset, int):
            raise InputError("offset must be an integer")
        spec = await asyncio.to_thread(self.cluster_spec, 1.0)
        if name not in {v.name for v in spec.vms}:
            raise NotFound(f"no VM {name!r} is defined")
        log = self.layout.serial_log(name, self.node)
        running = name in self.vms and self.vms[name].alive()
        try:
            size = log.stat().st_size
        except FileNotFoundError:
            return {"data": "", "offset": 0, "size": 0, "running": running}
        # offset past the end: a new log (the VM started here again), read from its start
        start = max(0, size + offset) if offset < 0 else offset if offset <= size else 0
        with log.open("rb") as f:
            f.seek(start)
            data = f.read(CONSOLE_MAX)
        return {"data": data.decode(errors="replace"), "offset": start + len(data),
                "size": size, "running": running}

    async def op_list(self, req: Reply) -> Reply:
        """Every QEMU this host runs. Their states are asked all at once, each for at most
        LIST_QMP_S: one QEMU slow to answer (TCG under load) must not make the whole host
        look dead to its heartbeats' report. A live QEMU that does not answer is listed
        all the same (status ``unknown``): leaving it out would say it runs nowhere.
        ``cpu``: the cores its QEMU kept busy since an earlier list (None at first)."""
        async def one(name: str) -> Reply | None:
            try:
                qp = self.get(name)
            except VmclusterError:
                return None  # its process is gone
            # asyncio.wait, not wait_for: a QMP call whose cancel does not finish at once
            # must not hold up the list (wait_for waits for the cancelled call to end).
            ask = asyncio.ensure_future(qp.qmp.query_status())
            await asyncio.wait({ask}, timeout=LIST_QMP_S)
            if not ask.done():
                ask.cancel()
                ask.add_done_callback(_consume)
                status = "unknown"
            elif ask.exception() is not None:
                status = "unknown"
            else:
                status = ask.result()
            cpu, source = await self._load(name, qp)
            return {"vm": name, "role": qp.record.role, "status": status, "pid": qp.pid,
                    "serial_log": qp.record.serial_log, "cpu": cpu, "cpu_source": source}

        self.cpu.forget(set(self.vms))
        for gone in set(self._vcpu_tids) - set(self.vms):
            del self._vcpu_tids[gone]
        got = await asyncio.gather(*(one(name) for name in list(self.vms)))
        # This host's interfaces as it sees them now: whoever lists a host learns its
        # links from the host itself, not from a store entry whose lease may lag.
        return {"vms": [v for v in got if v is not None], "links": self._my_links()}

    async def _load(self, name: str, qp: QemuProcess) -> tuple[float | None, str]:
        """``name``'s load in cores and where it came from (node.load): a KVM guest's
        vCPU threads; a TCG guest's own report, which the emulator's threads are not;
        else the whole QEMU process."""
        cfg = qp.record.config
        if cfg.get("accel") == "kvm":
            tids = self._vcpu_tids.get(name)
            if tids is None or tids[0] != qp.pid:
                with contextlib.suppress(VmclusterError):
                    self._vcpu_tids[name] = tids = (qp.pid, await qp.qmp.vcpu_threads())
            if tids is not None and tids[0] == qp.pid:
                return self.cpu.sample(name, qp.pid, tids[1]), "vcpu-threads"
        process = self.cpu.sample(name, qp.pid)
        guest = guest_cores(Path(qp.record.serial_log), int(cfg.get("vcpus", 1)))
        return (guest, "guest") if guest is not None else (process, "process")

    # -- a VM's QEMU configuration, built here ------------------------------------------
    def _store(self) -> ClusterState | None:
        """This host's view of the cluster's store (None in a lab of agents only)."""
        if not self.cfg.endpoints:
            return None
        if self._state is None:
            self._state = self.cfg.store(timeout_s=2.0, retry_s=2.0)
        return self._state

    def cluster_spec(self, max_age_s: float = 0.0) -> ClusterSpec:
        """The cluster's spec with its VMs as the store defines them (read again when
        older than ``max_age_s``); the lab's spec file when there is no store."""
        state = self._store()
        if state is None:
            return CsvOps._spec(self)
        now = time.monotonic()
        if self._fresh is None or now - self._fresh[0] > max_age_s:
            try:
                self._fresh = (now, state.spec())
            except StoreError as exc:
                if self._fresh is None:
                    raise SubstrateError(f"{self.node} cannot read the VM definitions from "
                                         f"the store: {exc}") from exc
        return self._fresh[1]

    def _spec(self) -> ClusterSpec:
        """The CSV ops' view, called on the event loop: it never waits for the store once
        a spec was read (at start); one older than 5 s is read again in a thread, and
        this call returns the last one meanwhile."""
        if self._fresh is None or self._store() is None:
            return self.cluster_spec()
        if time.monotonic() - self._fresh[0] > 5.0 and not self._refreshing.is_set():
            self._refreshing.set()

            def refresh() -> None:
                try:
                    self.cluster_spec()
                except VmclusterError as exc:
                    _log(f"cannot read the VM definitions again: {exc}")
                finally:
                    self._refreshing.clear()

            threading.Thread(target=refresh, name="spec refresh", daemon=True).start()
        return self._fresh[1]

    def _machine(self, vm: str, asked: object) -> str:
        """The machine type ``vm`` runs with here: its record's pin in the store, else
        ``asked`` (checked against this host's QEMU, then pinned in the record)."""
        state = self._store()
        if state is not None:
            rec = vms.get(state, vm)
            if rec is not None and rec.machine:
                if rec.machine not in self._machines():
                    raise SubstrateError(f"{vm} is pinned to {rec.machine}, which this host's "
                                         f"QEMU {self._version()} does not have")
                return rec.machine
        if not isinstance(asked, str) or not re.fullmatch(r"pc-q35-\d+\.\d+", asked):
            raise InputError(f"machine {asked!r} is not a versioned q35 machine type")
        if asked not in self._machines():
            raise SubstrateError(f"this host's QEMU {self._version()} has no machine {asked}")
        if state is not None and vms.get(state, vm) is not None:
            return vms.pin_machine(state, vm, asked)
        return asked

    def _machines(self) -> tuple[str, ...]:
        return self.facts.machines if self.facts is not None else ()

    def _version(self) -> str:
        return self.facts.version if self.facts is not None else "?"

    def _build(self, name: str, machine: object, starting: bool) -> VmConfig:
        """``name``'s QEMU configuration on this host (in a worker thread: it may ask the
        store and a volume's coordinator). ``starting``: this host becomes the writer of
        its shared disk and makes its plain disk if it has none."""
        spec = self.cluster_spec()
        if name not in {v.name for v in spec.vms}:
            raise NotFound(f"no VM named {name!r} is defined in the cluster")
        vm = spec.vm(name)
        if vm.boot == "kernel" and (self.cfg.guest_kernel is None or
                                    self.cfg.guest_initrd is None):
            raise SubstrateError(f"{self.cfg.path}: [guest] names no kernel and initrd; "
                                 f"this host cannot boot {name} (boot = \"kernel\"; a VM "
                                 "that boots its own disk needs none)")
        state = self._store()
        if starting and state is not None:
            # A VM runs where the store places it, and nowhere else: the manager places
            # it (compare-and-set) before it asks for the start.
            try:
                placed = state.placement(name).node
            except StoreError as exc:
                raise SubstrateError(f"{self.node} cannot read {name}'s placement: {exc}; "
                                     "not starting it") from exc
            if placed != self.node:
                raise Conflict(f"{name} is placed on {placed or 'no node'}, not {self.node}; "
                               "a VM starts only where the cluster placed it")
        pinned = self._machine(name, machine)
        csv = None
        if vm.volume is not None:
            csv = disk_config(self.layout, self.book(), spec, name, self.node,
                              self.node if starting else None)
        elif starting:
            disk = self.layout.disk(name)
            if not disk.exists():
                disk.parent.mkdir(parents=True, exist_ok=True)
                with disk.open("wb") as f:
                    f.truncate(vm.disk_mib << 20)
        firmware = self._firmware(vm, csv, starting) if vm.boot == "uefi" else None
        return guest_config(spec, name, self.node, self.layout,
                            self.cfg.guest_kernel or Path(), self.cfg.guest_initrd or Path(),
                            pinned, csv, firmware)

    def _firmware(self, vm: Vm, csv: dict[str, Any] | None, starting: bool) -> dict[str, Any]:
        """A UEFI VM's OVMF: this host's code file, and the VM's own variables (made from
        OVMF's template at its first start): a region of its shared volume beside its
        disk, or a file beside its disk file. A migration's target finds them there."""
        template = Path(OVMF_VARS)
        if not Path(OVMF_CODE).is_file() or not template.is_file():
            raise SubstrateError(f"{vm.name} boots with UEFI, and {self.node} has no OVMF "
                                 f"({OVMF_CODE}); install Debian's ovmf package")
        blank = template.read_bytes()
        if csv is None:
            path = Path(f"{self.layout.disk(vm.name)}.efivars")
            if starting and not path.exists():
                path.write_bytes(blank)
            return {"code": OVMF_CODE, "vars_file": str(path)}
        assert vm.volume is not None
        name = f"{vm.name}/efi-vars"
        ext = self._region(vm.volume, name)
        new = ext is None
        if new and starting:
            ext = self._region(vm.volume, name, "csv_create", disk=name, size=len(blank),
                               owner=self.node)
        if ext is None:
            raise SubstrateError(f"{vm.name} has no UEFI variables on {vm.volume}")
        offset = int(ext["offset"])
        if starting:
            with self._lun(NbdTarget.from_json(csv)) as lun:
                at = offset + FV_SIGNATURE_AT
                # A new region gets the template whatever it holds (a deleted VM's variables
                # stay on the LUN until overwritten); an old one that lost its header too.
                if new or lun.read(at, len(FV_SIGNATURE)) != FV_SIGNATURE:
                    lun.write(offset, blank)
                    lun.flush()
        return {"code": OVMF_CODE, "vars_offset": offset, "vars_size": len(blank)}

    async def op_start(self, req: Reply) -> Reply:
        cfg = await asyncio.to_thread(self._build, str(req.get("vm")), req.get("machine"),
                                      True)
        async with self.lock(cfg.name):
            if cfg.name in self.vms and self.vms[cfg.name].alive():
                qp = self.vms[cfg.name]
                if qp.record.role != "run":
                    raise SubstrateError(f"{cfg.name} is a migration target on {self.node}")
                return {"status": await qp.qmp.query_status(), "pid": qp.pid}
            await self._tap(cfg)
            log = self.layout.serial_log(cfg.name, self.node)
            qp = await QemuProcess.spawn(cfg, self.workdir, log, "run", install=self.install,
                                         tls_dir=self.qemu_tls_dir)
            self.vms[cfg.name] = qp
            return {"status": await qp.qmp.query_status(), "pid": qp.pid}

    async def op_stop(self, req: Reply) -> Reply:
        """Stop a VM: with ``shutdown_s`` > 0 its guest is asked to shut down (the ACPI
        power button) and given that long before its QEMU is made to quit. ``how``:
        shutdown, quit, killed, or null when it did not run here."""
        shutdown_s = req.get("shutdown_s", 0.0)
        if not isinstance(shutdown_s, (int, float)) or not 0 <= shutdown_s <= MAX_SHUTDOWN_S:
            raise InputError(f"shutdown_s must be a number of seconds, 0 to {MAX_SHUTDOWN_S:g}")
        async with self.lock(req["vm"]):
            how = await self._drop(req["vm"], float(shutdown_s))
        return {"how": how}

    async def op_import_disk(self, req: Reply) -> Reply:
        """Put an uploaded image (``upload``: the API's id for a file in this host's upload
        directory) on the disk of VM ``vm`` (defined a moment ago, running nowhere): its
        region of its shared volume, made for it, or its disk file. Only from this host's
        own socket (see LOCAL_ONLY). ``written``: the bytes written."""
        name, upload = str(req.get("vm")), str(req.get("upload"))
        if not UPLOAD_ID.fullmatch(upload):
            raise InputError(f"upload id {upload!r} is not one this API made")
        async with self.lock(name):
            if name in self.vms:
                raise Conflict(f"{name} runs on {self.node}; its disk is not replaced")
            return await asyncio.to_thread(self._import_disk, name,
                                           self.cfg.upload_dir / f"{upload}.img")

    def _import_disk(self, name: str, src: Path) -> Reply:
        spec = self.cluster_spec(max_age_s=0.0)
        vm = spec.vm(name)
        info = image_info(src, "the uploaded image")
        if info.disk_mib > vm.disk_mib:
            raise InputError(f"the image needs {info.disk_mib} MiB; {name}'s disk_mib is "
                             f"{vm.disk_mib}")
        raw = src.with_suffix(".raw")
        try:
            to_raw(src, info, raw, "the uploaded image")
            if vm.volume is None:
                dst = self.layout.disk(name)
                dst.parent.mkdir(parents=True, exist_ok=True)
                with raw.open("rb") as fin, dst.open("wb") as fout:
                    shutil.copyfileobj(fin, fout, CHUNK)
                    fout.truncate(vm.disk_mib * MIB)
                return {"written": raw.stat().st_size, "disk": str(dst),
                        "image": info.to_json()}
            try:
                csv = disk_config(self.layout, self.book(), spec, name, self.node, None)
            except VmclusterError as exc:
                if "no free" in str(exc):
                    raise InputError(f"{name}: volume {vm.volume} has no free {vm.disk_mib} "
                                     "MiB region for the image") from exc
                raise
            target = NbdTarget.from_json(csv)
            offset, region = int(csv["offset"]), int(csv["size"])
            with raw.open("rb") as fin, self._lun(target) as lun:
                written = 0
                while chunk := fin.read(CHUNK):
                    lun.write(offset + written, chunk)
                    written += len(chunk)
                # The rest of the region is zeroed: a region a deleted VM once had keeps
                # nothing of it.
                pos = written
                while pos < region:
                    n = min(CHUNK, region - pos)
                    lun.write(offset + pos, bytes(n))
                    pos += n
                lun.flush()
            _log(f"{name}: imported a {info.format} image of {info.disk_mib} MiB onto "
                 f"{vm.volume} at {offset >> 20} MiB")
            return {"written": written, "disk": f"{vm.volume}/{name}", "offset": offset,
                    "image": info.to_json()}
        finally:
            raw.unlink(missing_ok=True)

    async def op_delete_disk(self, req: Reply) -> Reply:
        """Remove a deleted VM's disk: its region on its shared volume (through the
        volume's coordinator), or its disk file. Refused while its QEMU runs here; the
        manager asks only once the VM runs nowhere."""
        name = str(req.get("vm"))
        async with self.lock(name):
            if name in self.vms and self.vms[name].alive():
                raise Conflict(f"{name} runs on {self.node}; its disk stays")
            vm = (await asyncio.to_thread(self.cluster_spec)).vm(name)
            await self._drop_saved(vm)  # a quick migration's leftover, if any
            if vm.volume is not None:  # None: never started, or removed already
                await asyncio.to_thread(self.drop_region, vm.volume, f"{name}/efi-vars")
                return {"removed": await asyncio.to_thread(self.drop_region, vm.volume, name)}
            self._remove_file(lambda v: Path(f"{self.layout.disk(v)}.efivars"), name)
            return {"removed": self._remove_file(self.layout.disk, name)}

    async def op_pause(self, req: Reply) -> Reply:
        qp = self.get(req["vm"])
        if await qp.qmp.query_status() == "running":
            await qp.qmp.stop()
        return {"status": await qp.qmp.query_status()}

    async def op_resume(self, req: Reply) -> Reply:
        """Run a paused VM again; never a migration target (it runs by ``takeover``) nor a
        source whose state went to a target (``postmigrate``: that copy may be running, or
        be about to; only the migration's rollback, ``cancel``, resumes it)."""
        qp = self.get(req["vm"])
        status = await qp.qmp.query_status()
        if qp.record.role != "run" or status == "postmigrate":
            what = ("a migration target" if qp.record.role != "run"
                    else "a migrated source (postmigrate)")
            raise SubstrateError(f"{req['vm']} on {self.node} is {what}; it is not resumed "
                                 "(its migration decides)")
        if status == "paused":
            await qp.qmp.cont()
        return {"status": await qp.qmp.query_status()}

    async def op_incoming(self, req: Reply) -> Reply:
        """Start a target QEMU waiting for ``uri`` (``tcp:ADDR:0`` picks a port), or, with
        ``quick``, restoring the VM's save file from the shared volume."""
        quick = bool(req.get("quick"))
        uri = "fd:vmc-restore" if quick else _tcp_uri(req.get("uri"))
        cfg = await asyncio.to_thread(self._build, str(req.get("vm")), req.get("machine"),
                                      False)
        async with self.lock(cfg.name):
            old = self.vms.get(cfg.name)
            if old is not None and old.alive():
                if old.record.role == "run":
                    raise SubstrateError(f"{cfg.name} already runs on {self.node}")
                await self._drop(cfg.name)  # a stale target of an earlier attempt
            await self._tap(cfg)
            log = self.layout.serial_log(cfg.name, self.node)
            qp = await QemuProcess.spawn(cfg, self.workdir, log, "incoming", req.get("id", ""),
                                         install=self.install, tls_dir=self.qemu_tls_dir)
            self.vms[cfg.name] = qp
            try:
                await qp.qmp.migrate_set_capabilities({"events": True, **req.get("caps", {})})
                if req.get("params"):
                    await qp.qmp.migrate_set_parameters(**req["params"])
                await self._migration_tls(qp, "server", req.get("tls", False))
                if quick and cfg.csv is not None:
                    vm = (await asyncio.to_thread(self.cluster_spec)).vm(cfg.name)
                    await self.restore_state_from_volume(qp, vm, "vmc-restore")
                elif quick:
                    await self._pass_file(qp, "vmc-restore", self.layout.quick_state(cfg.name),
                                          os.O_RDONLY)
                await qp.qmp.migrate_incoming(uri)
                info = await qp.qmp.query_migrate()
            except SubstrateError:
                await self._drop(cfg.name)
                raise
            return {"uri": _listening(info, uri), "pid": qp.pid}

    async def op_set_params(self, req: Reply) -> Reply:
        qp = self.get(req["vm"])
        if req.get("caps"):
            await qp.qmp.migrate_set_capabilities(req["caps"])
        if req.get("params"):
            await qp.qmp.migrate_set_parameters(**req["params"])
        return {}

    async def op_migrate(self, req: Reply) -> Reply:
        qp = self.get(req["vm"])
        if qp.record.role != "run":
            raise SubstrateError(f"{req['vm']} on {self.node} is not the running copy")
        await qp.qmp.migrate_set_capabilities({"events": True, **req.get("caps", {})})
        await qp.qmp.migrate_set_parameters(**req.get("params", {}))
        await self._migration_tls(qp, "client", bool(req.get("tls_hostname")),
                                  str(req.get("tls_hostname", "")))
        await qp.qmp.start_migration(_tcp_uri(req.get("uri")))
        return {}

    async def op_start_postcopy(self, req: Reply) -> Reply:
        """The migration of a VM that runs here goes on in post-copy from now."""
        qp = self.get(req["vm"])
        if qp.record.role != "run":
            raise SubstrateError(f"{req['vm']} on {self.node} is not the running copy")
        await qp.qmp.start_postcopy()
        # From now on this copy serves the target's pages and never runs again: not the
        # VM (no report lists it as running or as a paused source to power off) until
        # its last page has followed.
        qp.set_role("serving")
        return {}

    async def op_postcopy_pause(self, req: Reply) -> Reply:
        """Break this end of a post-copy whose stream stalled (a cut network): both ends
        pause at once, to be resumed over a network that works."""
        qp = self.get(req["vm"])
        with contextlib.suppress(QmpError):  # already paused, or already over
            await qp.qmp.migrate_pause()
        return {"migrate": await qp.qmp.query_migrate()}

    async def op_postcopy_recover(self, req: Reply) -> Reply:
        """The target of a paused post-copy listens again, on ``uri`` (``tcp:ADDR:0``
        picks a port); returns where."""
        qp = self.get(req["vm"])
        if qp.record.role != "run":
            raise SubstrateError(f"{req['vm']} on {self.node} is not a post-copy's target")
        uri = _tcp_uri(req.get("uri"))
        await qp.qmp.migrate_recover(uri)
        return {"uri": _listening(await qp.qmp.query_migrate(), uri)}

    async def op_postcopy_resume(self, req: Reply) -> Reply:
        """The source of a paused post-copy sends its remaining pages again, to ``uri``."""
        qp = self.get(req["vm"])
        if qp.record.role != "serving":
            raise SubstrateError(f"{req['vm']} on {self.node} serves no post-copy")
        await qp.qmp.resume_migration(_tcp_uri(req.get("uri")))
        return {}

    async def op_drive(self, req: Reply) -> Reply:
        """Drive the migration (live; quick with ``quick``) of a VM that runs here, under
        the asker's fencing token (a thread of this agent runs the whole protocol; see
        vmcluster.node.driver). Returns at once with the drive's id; ``drive_status``
        tells how it goes."""
        if self._store() is None:
            raise SubstrateError(f"{self.node} knows no store: a drive needs the cluster's "
                                 "records (migrate from the operator's side instead)")
        token = _token("drive", req)
        qp = self.get(str(req.get("vm")))
        if qp.record.role != "run":
            raise Conflict(f"{qp.record.vm} on {self.node} is not the running copy")
        params = None
        if req.get("params") is not None:
            try:
                params = MigrationParams(**dict(req["params"]))
            except (TypeError, ValueError) as exc:
                raise InputError(f"drive: bad migration params {req['params']!r}: {exc}"
                                 ) from exc
        return self.drives.start(qp.record.vm, str(req.get("target")), token, params,
                                 bool(req.get("quick")))

    async def op_drive_status(self, req: Reply) -> Reply:
        return self.drives.status(str(req.get("vm")), req.get("id"))

    async def op_drive_cancel(self, req: Reply) -> Reply:
        return self.drives.cancel(str(req.get("vm")), req.get("id"))

    async def op_drive_adopt(self, req: Reply) -> Reply:
        """A new manager's token for a drive in flight (checked to lead, like any)."""
        return self.drives.adopt(str(req.get("vm")), req.get("id"), _token("drive_adopt", req))

    async def _migration_tls(self, qp: QemuProcess, endpoint: str, on: bool,
                             hostname: str = "") -> None:
        """TLS for this QEMU's next migration stream (or none), with this host's certificate:
        the target verifies the source's client certificate, the source the target's
        certificate and its name (``hostname``)."""
        if not on:
            await qp.qmp.migrate_set_parameters(tls_creds="")
            return
        creds = self.creds
        if not creds.exists():
            raise SubstrateError(f"{self.node} has no TLS certificate in {creds.directory}; "
                                 "migration_tls needs one")
        obj = f"vmc-tls-{endpoint}"
        await qp.qmp.add_tls_creds(obj, endpoint, str(creds.qemu_dir))
        await qp.qmp.migrate_set_parameters(tls_creds=obj, tls_hostname=hostname)

    async def op_timeline(self, req: Reply) -> Reply:
        """The VM's last STOP / RESUME events here, with QEMU's wall-clock timestamps."""
        qp = self.vms.get(req["vm"])
        return {"events": [] if qp is None else [list(e) for e in qp.qmp.events]}

    async def op_dirty_rate(self, req: Reply) -> Reply:
        """The VM's dirty rate (MiB/s) over each window asked for (``windows_ms``, at most
        three of 50 ms to 5 s, one after the other): a short window gives the rate, a
        long one what a smaller working set caps it at."""
        qp = self.get(req["vm"])
        windows = [int(w) for w in req.get("windows_ms", [1000])][:3]
        if not windows or not all(50 <= w <= 5000 for w in windows):
            raise InputError(f"windows_ms {windows!r}: one to three windows of 50 to 5000 ms")
        mode = str(req.get("mode", "page-sampling"))
        if mode not in ("dirty-bitmap", "page-sampling"):
            raise InputError(f"mode {mode!r}: dirty-bitmap or page-sampling")
        # and the share of its vCPU threads' time the guest kept busy meanwhile: how hard
        # it must be throttled before it dirties less (vmcluster.policy.migration_model)
        tids = await qp.qmp.vcpu_threads()
        # and, asked for, how the pages it changes meanwhile compress as XBZRLE deltas: a
        # sample of its memory read before and after the windows
        sample = DeltaSample(qp, int(req.get("memory_mib", 0)), self.workdir) \
            if req.get("deltas") else None
        if sample is not None:
            await sample.read()
        t0, used0 = time.monotonic(), threads_cpu_s(qp.pid, tids)
        rates = [[w, await qp.qmp.dirty_rate(w, mode=mode)] for w in windows]
        busy = (threads_cpu_s(qp.pid, tids) - used0) / ((time.monotonic() - t0) * len(tids))
        out: Reply = {"rates": rates, "mode": mode, "vcpu_busy": round(min(1.0, busy), 4)}
        if sample is not None:
            out["delta_ratio"], out["delta_pages_changed"] = await sample.ratio()
        return out

    async def op_query_migrate(self, req: Reply) -> Reply:
        """The VM's migration state; with ``wait_s``, first wait up to that long for a
        migration in progress to end (woken by QEMU's MIGRATION events), so that its
        driver hears of the end at once rather than at its next poll."""
        qp = self.get(req["vm"])
        wait_s = min(float(req.get("wait_s", 0.0)), 5.0)
        info = (await qp.qmp.migration_settled(wait_s) if wait_s > 0
                else await qp.qmp.query_migrate())
        return {"migrate": info, "status": await qp.qmp.query_status()}

    async def op_cancel(self, req: Reply) -> Reply:
        """Roll back the source: cancel any migration, then run the VM again."""
        qp = self.get(req["vm"])
        if qp.record.role == "serving":
            raise SubstrateError(f"{req['vm']} on {self.node} went on in post-copy: its "
                                 "memory is split with the target, it cannot run again")
        info = await qp.qmp.query_migrate()
        if info.get("status") in MIGRATING:
            await qp.qmp.migrate_cancel()
            await qp.qmp.migration_settled(10.0)  # on QEMU's MIGRATION events
        status = await qp.qmp.query_status()
        if status in ("paused", "postmigrate", "finish-migrate"):
            await qp.qmp.cont()
            status = await qp.qmp.query_status()
        qp.set_role("run")
        return {"status": status, "migrate": info.get("status")}

    async def op_takeover(self, req: Reply) -> Reply:
        """The target becomes the VM: run it, announce its MAC, record it as owned."""
        qp = self.get(req["vm"])
        status = await qp.qmp.query_status()
        # The source may report its end a moment before this side has loaded the last
        # state; with -S this QEMU then stays paused: wait for it (woken by its own
        # MIGRATION event, not by asking under the blackout), then run it.
        if status == "inmigrate":
            await qp.qmp.migration_settled(15.0)
            status = await qp.qmp.query_status()
        for _ in range(200):  # the run state may trail the event by a moment
            if status != "inmigrate":
                break
            await asyncio.sleep(0.005)
            status = await qp.qmp.query_status()
        if status == "inmigrate":
            raise SubstrateError(f"{req['vm']} on {self.node} is still receiving its state")
        if status in ("paused", "postmigrate", "prelaunch"):
            await qp.qmp.cont()
        await qp.qmp.announce_self()
        qp.set_role("run")
        owner_error = None
        if qp.record.config.get("csv"):
            # Switchover: this node is now the one writer of the VM's CSV disk.

            try:
                await asyncio.to_thread(record_owner, self.layout, self.book(), self._spec(),
                                        req["vm"], self.node)
            except VmclusterError as exc:
                owner_error = str(exc)
        return {"status": await qp.qmp.query_status(), "owner_error": owner_error}

    async def op_release(self, req: Reply) -> Reply:
        """The source after a completed migration: QEMU quits (the VM lives on the target)."""
        async with self.lock(req["vm"]):
            await self._drop(req["vm"])
        return {}

    async def op_discard(self, req: Reply) -> Reply:
        """A failed migration's target: remove it, but never a QEMU that owns the VM."""
        async with self.lock(req["vm"]):
            qp = self.vms.get(req["vm"])
            if qp is not None and qp.record.role == "run" and not req.get("force"):
                return {"kept": True}
            await self._drop(req["vm"])
        return {"kept": False}

    async def op_power_off(self, req: Reply) -> Reply:
        """This host powers itself off (a consolidation's last step, asked by the manager
        under its token); refused while it runs any QEMU. A lab host is its namespaces:
        every process of this host ends, its heartbeats saying it is leaving (so it is
        "off", not failed). The reply goes out first."""
        running = sorted(n for n, qp in self.vms.items() if qp.alive())
        if running:
            raise Conflict(f"{self.node} still runs {', '.join(running)}; migrate them away "
                           "before powering it off")
        asyncio.get_running_loop().call_later(0.2, _power_off_host)
        return {"node": self.node, "powering_off": True}

    async def _pass_file(self, qp: QemuProcess, name: str, path: Path, flags: int) -> None:
        """Open ``path`` here and hand it to the QEMU as ``fd:name``: QEMU never opens a
        path, and never runs a command, that came over the network."""
        fd = os.open(path, flags, 0o600)
        try:
            await qp.qmp.pass_fd(name, fd)
        finally:
            os.close(fd)

    async def op_save(self, req: Reply) -> Reply:
        """Quick migration's first half: pause, write the state where the VM's disk is (a
        region of its shared volume, or a file beside its plain disk), stay paused."""
        qp = self.get(req["vm"])
        vm = (await asyncio.to_thread(self.cluster_spec)).vm(qp.record.vm)
        if await qp.qmp.query_status() == "running":
            await qp.qmp.stop()
        await qp.qmp.migrate_set_capabilities({"events": True})
        # tls_creds="": a QEMU that once received a TLS migration keeps its server creds as a
        # parameter, and a save to a local file is no TLS stream.
        await qp.qmp.migrate_set_parameters(max_bandwidth=int(10e9), tls_creds="")
        timeout_s = float(req.get("save_timeout_s", 120))

        async def migrate() -> Reply:
            await qp.qmp.start_migration("fd:vmc-save")
            info = await qp.qmp.migration_settled(timeout_s)  # on QEMU's MIGRATION events
            if info.get("status") in ("completed", "failed", "cancelled"):
                return info
            await qp.qmp.migrate_cancel()
            raise SubstrateError(f"saving {vm.name} did not finish in {timeout_s:.0f} s")

        if vm.volume is not None:
            return {"migrate": await self.save_state_to_volume(qp, vm, "vmc-save", migrate)}
        path = self.layout.quick_state(vm.name)
        path.parent.mkdir(parents=True, exist_ok=True)
        await self._pass_file(qp, "vmc-save", path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
        return {"migrate": await migrate()}

    async def op_drop_saved(self, req: Reply) -> Reply:
        """Remove the VM's saved state (its quick migration ended, either way)."""
        return {"removed": await self._drop_saved(
            (await asyncio.to_thread(self.cluster_spec)).vm(str(req.get("vm"))))}

    async def _drop_saved(self, vm: Vm) -> str | None:
        if vm.volume is not None:
            return await asyncio.to_thread(self.drop_region, vm.volume, region_name(vm.name))
        return self._remove_file(self.layout.quick_state, vm.name)

    def _remove_file(self, where: Callable[[str], Path], vm: str) -> str | None:
        """Remove ``where(vm)`` from the file storage; its path, or None when there was
        none (or the cluster has no file storage, so it never had one)."""
        try:
            path = where(vm)
        except SubstrateError:
            return None
        if not path.exists():
            return None
        path.unlink()
        return str(path)


# What changes a VM or this host. From another host (over TCP with its certificate) each
# must carry the manager's fencing token, which must still lead; reads, the shared
# volumes' coordination between agents (csv_*), the host's own parts (the unix socket)
# and the cluster's operator (the admin certificate) need none.
LIST_QMP_S = 3.0
STATE_CHANGING = frozenset({"start", "stop", "pause", "resume", "incoming", "set_params",
                            "migrate", "cancel", "takeover", "release", "discard", "save",
                            "drop_saved", "power_off", "delete_disk", "drive", "drive_cancel",
                            "drive_adopt"})


def _token(op: str, req: Reply) -> int:
    """The manager's fencing token ``req`` carries (already checked to lead): a drive
    acts under it, so even a request from this host's own socket must name one."""
    if req.get("token") is None:
        raise InputError(f"{op}: the manager's fencing token is missing")
    return int(req["token"])


def _peer_name(tls: ssl.SSLObject) -> str:
    """The common name of the caller's certificate (a host's name, or ``admin``)."""
    der = tls.getpeercert(binary_form=True)
    if der is None:
        return ""
    names = x509.load_der_x509_certificate(der).subject.get_attributes_for_oid(
        NameOID.COMMON_NAME)
    return str(names[0].value) if names else ""


def _require_token(op: str, req: Reply, peer: str) -> None:
    if op in STATE_CHANGING and req.get("token") is None and peer != ADMIN:
        raise Fenced(f"fenced: {op} from host {peer or '?'} carries no fencing token; a "
                     "host acts on another only for the elected manager, under its token")


def _power_off_host() -> None:
    """SIGTERM to every other process of this host's network namespace, then to us."""
    me = os.stat("/proc/self/ns/net")
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            st = os.stat(f"/proc/{entry}/ns/net")
            if (st.st_dev, st.st_ino) == (me.st_dev, me.st_ino):
                os.kill(int(entry), signal.SIGTERM)
        except OSError:
            continue
    _log("powered off: every process of this host was asked to end")
    os.kill(os.getpid(), signal.SIGTERM)


def guest_config(spec: ClusterSpec, vm_name: str, node: str, layout: LabLayout, kernel: Path,
                 initrd: Path, machine: str, csv: dict[str, Any] | None,
                 firmware: dict[str, Any] | None = None) -> VmConfig:
    """The QEMU configuration of ``vm_name`` on ``node``, from its definition: memory,
    vCPUs and accelerator, its NIC on the public bridge with its stable MAC, the guest's
    kernel command line (its address, the test workload's working set and dirty rate),
    its disk (a plain file, or its region of a shared volume: ``csv``)."""

    vm, nd = spec.vm(vm_name), spec.node(node)
    pub = next((n for n in spec.networks if n.public), None)
    if pub is None or vm.address is None:
        raise SubstrateError(f"{vm.name} has no address on a public network")
    work_mib = max(8, vm.memory_mib - 96)
    wws = int(min(vm.working_set_mib, work_mib))
    append = kernel_cmdline(str(vm.address), pub.subnet.prefixlen, work_mib, wws,
                            vm.dirty_mibps, gw=str(pub.gateway) if pub.gateway else "")
    return VmConfig(
        name=vm.name, memory_mib=vm.memory_mib, vcpus=vm.vcpus, mac=mac_for(vm.name),
        tap=layout.tap(vm.name), bridge=layout.PUBLIC_BRIDGE, kernel=str(kernel),
        initrd=str(initrd), append=append,
        disk="" if csv is not None else str(layout.disk(vm.name)), accel=nd.accel,
        machine=machine, csv=csv, boot=vm.boot, firmware=firmware)


def _listening(info: Mapping[str, Any], asked: str) -> str:
    """Where an incoming migration listens (``query-migrate``'s socket address: the port
    a ``tcp:ADDR:0`` picked), else the URI it was asked to listen on."""
    for sa in info.get("socket-address", []):
        if sa.get("type") in ("inet", "ipv4"):
            asked = f"tcp:{sa['host']}:{sa['port']}"
    return asked


def _tcp_uri(uri: object) -> str:
    """The only migration URI an agent takes from the network: ``tcp:ADDRESS:PORT``."""
    if not isinstance(uri, str) or not _TCP_URI.match(uri):
        raise InputError(f"migration URI {uri!r} is not tcp:ADDRESS:PORT; an agent takes no "
                         "other URI (no exec:, no file:) from the network")
    return uri


_CODES: tuple[tuple[type[BaseException], str], ...] = (
    (Fenced, "fenced"), (InputError, "invalid"), (QemuGone, "unavailable"), (QmpError, "qemu"),
    (NotFound, "not_found"), (Conflict, "conflict"), (VmclusterError, "failed"))


def error_code(exc: BaseException) -> str:
    """The wire code of an error (see vmcluster.substrate.host.client); the first kind that fits."""
    return next((code for kind, code in _CODES if isinstance(exc, kind)), "internal")


class _Revocations:
    """The serials on this host's copy of the CA's revocation list (reread when it changes)."""

    def __init__(self, creds: NodeCredentials) -> None:
        self.path, self._mtime, self.serials = creds.crl, -1.0, frozenset[int]()

    def revoked(self, der: bytes | None) -> bool:
        try:
            mtime = self.path.stat().st_mtime
        except OSError:
            return False
        if mtime != self._mtime:
            self.serials, self._mtime = crl_serials(self.path.read_bytes()), mtime
        return der is not None and x509.load_der_x509_certificate(der).serial_number in self.serials


async def _serve(agent: Agent, sock_path: Path) -> None:
    handlers: dict[str, Callable[[Reply], Awaitable[Reply]]] = {
        name[3:]: getattr(agent, name) for name in dir(agent) if name.startswith("op_")
    }

    fence = AgentFence.from_config(agent.cfg)
    creds = agent.creds
    revocations = _Revocations(creds)

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        tls = writer.get_extra_info("ssl_object")
        peer = writer.get_extra_info("peername")
        if tls is not None and revocations.revoked(tls.getpeercert(binary_form=True)):
            _log(f"refused {peer}: its certificate is revoked")
            writer.close()
            return
        try:
            line = await asyncio.wait_for(reader.readline(), timeout=10)
            req = json.loads(line)
            handler = handlers.get(str(req.get("op")))
            if handler is None:
                reply: Reply = {"ok": False, "code": "invalid",
                                "error": f"unknown op {req.get('op')!r}"}
            else:
                if tls is not None:
                    if req.get("op") in LOCAL_ONLY:
                        raise InputError(f"{req.get('op')} is asked by this host's own parts "
                                         "only, over its socket")
                    _require_token(str(req.get("op")), req, _peer_name(tls))
                await fence.check(req)  # a manager's request: refused if its token is stale
                began = time.monotonic()
                reply = {"ok": True, **await handler(req)}
                took = time.monotonic() - began
                if took > SLOW_OP_S:
                    _log(f"{req.get('op')} from {peer} took {took:.1f} s")
        except VmclusterError as exc:
            reply = {"ok": False, "code": error_code(exc), "error": str(exc)}
        except Exception as exc:  # the agent answers every request, whatever broke
            reply = {"ok": False, "code": "internal", "error": f"{type(exc).__name__}: {exc}"}
        with contextlib.suppress(OSError, ssl.SSLError):
            writer.write(json.dumps(reply).encode() + b"\n")
            await writer.drain()
            writer.close()

    sock_path.parent.mkdir(parents=True, exist_ok=True)
    sock_path.unlink(missing_ok=True)
    servers = [await asyncio.start_unix_server(handle, path=str(sock_path))]
    ctx = creds.server_context()  # revocation: checked per connection, see _Revocations
    for addr in agent.cluster_addresses():
        try:
            servers.append(await asyncio.start_server(handle, host=addr, port=AGENT_PORT,
                                                      ssl=ctx, ssl_handshake_timeout=10))
        except OSError as exc:
            raise SubstrateError(f"cannot listen on {addr}:{AGENT_PORT}: {exc}") from exc
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    monitor = asyncio.create_task(agent.csv_monitor())
    lag = asyncio.create_task(_watch_loop_lag())
    await stop.wait()
    for server in servers:
        server.close()
    monitor.cancel()
    lag.cancel()
    # Exiting leaves every QEMU running: a restarted agent adopts them again.
    for qp in agent.vms.values():
        await qp.qmp.close()


def _consume(task: asyncio.Future[Any]) -> None:
    """Fetch an abandoned task's outcome, so that asyncio does not log it as lost."""
    if not task.cancelled():
        task.exception()


SLOW_OP_S = 5.0  # an op that takes longer is logged: its callers time out at 10-30 s
LAG_S = 1.0  # the event loop held this long by one step is logged (nothing else answers)


async def _watch_loop_lag(every_s: float = 0.25) -> None:
    """Log when this agent's event loop was held (a blocking call on it): while it is,
    no request, not even ``ping`` or ``list``, is answered."""
    while True:
        t0 = time.monotonic()
        await asyncio.sleep(every_s)
        late = time.monotonic() - t0 - every_s
        if late > LAG_S:
            _log(f"the event loop was held for {late:.1f} s")


def _log(msg: str) -> None:
    print(f"{time.strftime('%H:%M:%S')} agent: {msg}", flush=True)


async def _amain(cfg: NodeConfig) -> None:
    speak_as(cfg.node, cfg.tls_dir)
    # what this host shares with the others, and its own directories
    agent = Agent(cfg, shared_layout(cfg.shared, cfg.state_dir, cfg.run_dir, cfg.lab_dir))
    addresses_from(agent._spec)  # the other hosts' addresses: the spec the store has
    t0 = time.monotonic()
    await agent.reconcile()
    _log(f"started: QEMU {agent.facts.version if agent.facts else '?'} probed, "
         f"{len(agent.vms)} running QEMU(s) adopted in {time.monotonic() - t0:.1f} s")
    await _serve(agent, cfg.agent_socket)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="vmcluster.node.agent")
    p.add_argument("--config", required=True, help="the host's vmclusterd.toml")
    args = p.parse_args(argv)
    asyncio.run(_amain(load_config(args.config)))


if __name__ == "__main__":
    main()
