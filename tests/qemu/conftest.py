"""Fixtures that boot the lab's guest image in QEMU (TCG, one vCPU) and clean up.

No ``__init__.py`` in this directory on purpose: with pytest's default import mode
it would make this directory the package ``qemu`` and hide QEMU's ``qemu.qmp``.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from vmcluster.lab import netns
from vmcluster.lab.lab import lab_down, lab_up
from vmcluster.lab.sampler import RunSampler
from vmcluster.lab.services import LabStore, lab_store
from vmcluster.lab.substrate import LabSubstrate
from vmcluster.substrate.host.layout import LabLayout
from vmcluster.substrate.qemu.image import GuestImage, ensure_guest_image, kernel_cmdline
from vmcluster.substrate.qemu.vm import ram_arg

GUEST_IP = "198.18.1.101"
GUEST_NET = "198.18.1.0/24"
GUEST_HOST = "198.18.1.2"  # slirp's own address on the guest's network
GUEST_PORT = 7777
# 256 MiB plus one 4 KiB page: see ram_arg() for the QEMU 7.2 TCG dirty-tracking bug.
GUEST_RAM = ram_arg(256)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class GuestVm:
    """One QEMU process; its serial console goes to ``serial``, QMP to ``qmp_path``."""

    name: str
    proc: subprocess.Popen[bytes]
    serial: Path
    qmp_path: Path
    fwd_port: int
    log: Path
    _seen: int = field(default=0)

    def console(self) -> str:
        try:
            return self.serial.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def lines(self, pattern: str) -> list[str]:
        return [ln for ln in self.console().splitlines() if re.search(pattern, ln)]

    def wait_for(self, pattern: str, timeout: float, count: int = 1) -> list[str]:
        """Wait until ``count`` console lines match ``pattern``; fail with the console tail."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = self.lines(pattern)
            if len(found) >= count:
                return found
            if self.proc.poll() is not None:
                break
            time.sleep(0.2)
        tail = "\n".join(self.console().splitlines()[-15:])
        stderr = self.log.read_text(errors="replace")[-600:] if self.log.exists() else ""
        pytest.fail(
            f"{self.name}: {count}x /{pattern}/ not seen in {timeout:g} s "
            f"(qemu exit={self.proc.poll()}); console tail:\n{tail}\nqemu stderr:\n{stderr}"
        )

    def request(self, lines: list[str], timeout: float = 20) -> list[str]:
        """Send request lines to the guest workload through the host forward; one reply each."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                with socket.create_connection(("127.0.0.1", self.fwd_port), timeout=5) as s:
                    f = s.makefile("rw", encoding="ascii", newline="\n")
                    replies = []
                    for line in lines:
                        f.write(line + "\n")
                        f.flush()
                        replies.append(f.readline().strip())
                    if all(replies):
                        return replies
            except OSError:
                pass
            # slirp accepts the host side before the guest answers; retry until it does.
            if time.monotonic() > deadline:
                pytest.fail(f"{self.name}: guest port {GUEST_PORT} did not answer {lines!r}")
            time.sleep(0.5)


class VmFactory:
    """Starts guest VMs in a private temp dir; :meth:`close` kills them and removes it."""

    def __init__(self, image: GuestImage) -> None:
        self.image = image
        self.dir = Path(tempfile.mkdtemp(prefix="vmc-qemu-test-"))
        self.vms: list[GuestVm] = []

    def start(
        self,
        name: str,
        *,
        mem_mib: int = 96,
        wws_mib: int = 16,
        dirty_mibps: float = 8.0,
        incoming_port: int | None = None,
    ) -> GuestVm:
        serial = self.dir / f"{name}.serial"
        qmp_path = self.dir / f"{name}.qmp"
        log = self.dir / f"{name}.log"
        fwd = free_port()
        netdev = (
            f"user,id=n0,net={GUEST_NET},host={GUEST_HOST},restrict=on,"
            f"hostfwd=tcp:127.0.0.1:{fwd}-{GUEST_IP}:{GUEST_PORT}"
        )
        argv = [
            "qemu-system-x86_64",
            "-accel", "tcg,thread=single",
            "-m", GUEST_RAM,
            "-smp", "1",
            "-nodefaults",
            "-display", "none",
            "-monitor", "none",
            "-serial", f"file:{serial}",
            "-qmp", f"unix:{qmp_path},server=on,wait=off",
            "-no-reboot",
            "-kernel", str(self.image.kernel),
            "-initrd", str(self.image.initrd),
            "-append", kernel_cmdline(GUEST_IP, 24, mem_mib, wws_mib, dirty_mibps),
            "-netdev", netdev,
            "-device", "virtio-net-pci,netdev=n0,mac=52:54:00:12:01:65",
        ]
        if incoming_port is not None:
            argv += ["-incoming", f"tcp:127.0.0.1:{incoming_port}"]
        with log.open("wb") as err:
            proc = subprocess.Popen(
                argv, stdin=subprocess.DEVNULL, stdout=err, stderr=err, start_new_session=True
            )
        vm = GuestVm(name, proc, serial, qmp_path, fwd, log)
        self.vms.append(vm)
        return vm

    def close(self) -> None:
        try:
            for vm in self.vms:
                if vm.proc.poll() is None:
                    vm.proc.terminate()
            for vm in self.vms:
                try:
                    vm.proc.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    vm.proc.kill()
                    vm.proc.wait(timeout=10)
        finally:
            shutil.rmtree(self.dir, ignore_errors=True)


@pytest.fixture(scope="session")
def guest_image() -> GuestImage:
    """The cached guest image (built once into the user's cache on first use)."""
    return ensure_guest_image()


@pytest.fixture
def vms(guest_image: GuestImage) -> Iterator[VmFactory]:
    factory = VmFactory(guest_image)
    try:
        yield factory
    finally:
        factory.close()


LabStarter = Callable[..., LabSubstrate]
_LIVE_LABS: list[LabLayout] = []  # labs up right now, whose logs a failing test shows
_LOG_TAIL = 60  # lines of each host log a failing lab test's report carries


def _log_tails(layout: LabLayout) -> str:
    """The last lines of every host's logs (vmclusterd, agent, heartbeats, ...): a lab
    test that fails on CI says what the hosts were doing, not only what the test saw."""
    out = []
    for log in sorted(layout.state_dir.glob("hosts/*/var/log/*.log")):
        try:
            tail = 10 if log.name == "etcd.log" else _LOG_TAIL  # etcd's lines are long
            lines = log.read_text(errors="replace").splitlines()[-tail:]
        except OSError as exc:
            lines = [f"(unreadable: {exc})"]
        out.append(f"--- {log.relative_to(layout.state_dir)} (last {len(lines)} lines)")
        out.extend(lines)
    return "\n".join(out)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]
                              ) -> Iterator[None]:
    outcome = yield
    report = outcome.get_result()
    if report.failed:
        for layout in _LIVE_LABS:
            report.sections.append((f"lab {layout.name}: host logs", _log_tails(layout)))


@pytest.fixture(scope="module")
def start_lab() -> Iterator[LabStarter]:
    """``start_lab(spec, prefix)`` brings up a lab named prefix+pid for this test module.

    At the end of the module every lab it started is taken down, and the test
    fails if any namespace, state file or process of it is left behind.
    """
    started: list[LabLayout] = []

    def start(spec: Path, prefix: str, qemu: dict[str, str] | None = None) -> LabSubstrate:
        name = f"{prefix}{os.getpid()}"[:12]
        layout = LabLayout(name)
        started.append(layout)
        _LIVE_LABS.append(layout)
        return lab_up(spec, name, say=lambda _m: None, qemu=qemu)

    try:
        yield start
    finally:
        for layout in started:
            _LIVE_LABS.remove(layout)
            lab_down(layout)
        ps = subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True).stdout
        for layout in started:
            assert not netns.lab_namespaces(layout)
            assert not layout.state_dir.exists()
            assert str(layout.state_dir) + "/" not in ps
            assert f"--lab {layout.name} " not in ps


@pytest.fixture
def store(lab: LabSubstrate) -> Iterator[LabStore]:
    """The module's lab's store (a module that starts a lab defines ``lab``)."""
    with lab_store(lab.layout) as s:
        yield s


@pytest.fixture
def sampler(lab: LabSubstrate) -> Iterator[RunSampler]:
    """Every node's VMs every 100 ms for the test; it fails if a VM ever ran twice."""
    with RunSampler(lab.layout, [n.name for n in lab.spec.nodes]) as s:
        yield s
    assert not s.doubles, f"a VM ran twice: {s.doubles[:3]}"
