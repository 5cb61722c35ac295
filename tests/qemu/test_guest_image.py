"""The lab's guest image: its parts, the workload's memory check, boot and live migration.

The lab tests boot the real image (Debian cloud kernel + busybox initramfs) in QEMU
with TCG, talk to the workload through user-mode networking forwarded to loopback,
and live-migrate a guest between two QEMU processes while it dirties memory.
"""

from __future__ import annotations

import asyncio
import re
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from qemu.qmp import QMPClient

from vmcluster.errors import InputError
from vmcluster.substrate.qemu.image import GUEST_DIR, kernel_cmdline, module_load_order

if TYPE_CHECKING:
    from conftest import VmFactory

BOOT_TIMEOUT = 60.0


# ----------------------------------------------------------------- fast tests


def test_module_load_order_puts_dependencies_first() -> None:
    dep = (
        "kernel/drivers/virtio/virtio_pci.ko: kernel/drivers/virtio/virtio_pci_modern_dev.ko "
        "kernel/drivers/virtio/virtio.ko kernel/drivers/virtio/virtio_ring.ko\n"
        "kernel/drivers/virtio/virtio_pci_modern_dev.ko:\n"
        "kernel/drivers/virtio/virtio.ko: kernel/drivers/virtio/virtio_ring.ko\n"
        "kernel/drivers/virtio/virtio_ring.ko:\n"
        "kernel/drivers/net/virtio_net.ko: kernel/drivers/net/net_failover.ko "
        "kernel/net/core/failover.ko kernel/drivers/virtio/virtio.ko "
        "kernel/drivers/virtio/virtio_ring.ko\n"
        "kernel/drivers/net/net_failover.ko: kernel/net/core/failover.ko\n"
        "kernel/net/core/failover.ko:\n"
        "kernel/fs/unrelated.ko:\n"
    )
    order = [p.rsplit("/", 1)[1] for p in module_load_order(dep, ["virtio-pci", "virtio_net"])]
    assert sorted(order) == sorted(
        ["virtio_pci.ko", "virtio_pci_modern_dev.ko", "virtio.ko", "virtio_ring.ko",
         "virtio_net.ko", "net_failover.ko", "failover.ko"]
    )
    for before, after in [("virtio_ring.ko", "virtio.ko"), ("virtio.ko", "virtio_pci.ko"),
                          ("failover.ko", "net_failover.ko"), ("net_failover.ko", "virtio_net.ko")]:
        assert order.index(before) < order.index(after)


def test_kernel_cmdline_carries_the_guest_parameters() -> None:
    line = kernel_cmdline("198.18.1.101", 24, 96, 16, 2.5, port=7000, gw="198.18.1.1")
    words = line.split()
    for word in ["console=ttyS0", "panic=-1", "vmc.ip=198.18.1.101/24", "vmc.mem_mib=96",
                 "vmc.wws_mib=16", "vmc.dirty_mibps=2.5", "vmc.port=7000", "vmc.gw=198.18.1.1"]:
        assert word in words


@pytest.mark.parametrize(
    ("ip", "mem", "wws"), [("10.0.2.15", 96, 16), ("198.18.1.101", 16, 32), ("nonsense", 8, 4)]
)
def test_kernel_cmdline_rejects_bad_input(ip: str, mem: int, wws: int) -> None:
    with pytest.raises(InputError):
        kernel_cmdline(ip, 24, mem, wws, 1.0)


@pytest.fixture
def native_workload() -> Iterator[Path]:
    """workload.c compiled for this host, in a temp dir removed afterwards."""
    if shutil.which("gcc") is None:
        pytest.skip("gcc is not installed (run scripts/setup)")
    d = Path(tempfile.mkdtemp(prefix="vmc-workload-"))
    try:
        exe = d / "workload"
        subprocess.run(["gcc", "-static", "-O2", "-pthread", "-Wall", "-Werror", "-o", str(exe),
                        str(GUEST_DIR / "workload.c")], check=True, timeout=120)
        yield exe
    finally:
        shutil.rmtree(d, ignore_errors=True)


def _run_workload(exe: Path, *args: str, until: str, timeout: float = 30) -> list[str]:
    argv = [str(exe), "--mem-mib", "8", "--wws-mib", "4", "--dirty-mibps", "16",
            "--port", "0", "--report-s", "0.5", *args]
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, text=True)
    lines: list[str] = []
    try:
        assert proc.stdout is not None
        deadline = time.monotonic() + timeout
        for line in proc.stdout:
            lines.append(line.strip())
            if re.search(until, line) or time.monotonic() > deadline:
                break
    finally:
        proc.kill()
        proc.wait(timeout=10)
    return lines


def test_workload_reports_memok_when_memory_is_intact(native_workload: Path) -> None:
    lines = _run_workload(native_workload, until=r"^MEMOK [1-9]")
    assert any(re.match(r"MEMOK [1-9]\d* ", ln) for ln in lines), lines
    assert not any("CORRUPT" in ln for ln in lines)


def test_workload_selftest_corruption_is_detected(native_workload: Path) -> None:
    lines = _run_workload(native_workload, "--selftest-corrupt", until=r"CORRUPT summary")
    assert any(ln.startswith("SELFTEST damaging page=") for ln in lines), lines
    assert any(re.match(r"CORRUPT (sweep|check) page=\d+ expected=", ln) for ln in lines), lines
    assert not any(ln.startswith("MEMOK") for ln in lines), lines


# ------------------------------------------------------------------ lab tests


def _stats(reply: str) -> dict[str, float]:
    assert reply.startswith("STATS "), reply
    return {k: float(v) for k, v in (kv.split("=") for kv in reply.split()[1:])}


@pytest.mark.lab
def test_guest_boots_and_serves_echo_and_control(vms: VmFactory) -> None:
    vm = vms.start("solo", mem_mib=64, wws_mib=8, dirty_mibps=4)
    ready = vm.wait_for(r"^VMC-READY ", BOOT_TIMEOUT)
    assert "ip=198.18.1.101/24" in ready[0]
    vm.wait_for(r"^MEMOK \d+", BOOT_TIMEOUT)

    seqs = [str(i) for i in range(1, 21)]
    assert vm.request(seqs) == seqs
    replies = vm.request(["RATE 12.5", "WWS 4", "STATS", "NOPE"])
    assert replies[:2] == ["OK RATE 12.5", "OK WWS 4"]
    stats = _stats(replies[2])
    assert stats["rate_mibps"] == 12.5
    assert stats["mem_mib"] == 64
    assert stats["corrupt"] == 0
    assert stats["dirtied_bytes"] > 0
    assert replies[3].startswith("ERR ")
    before = stats["dirtied_bytes"]
    vm.wait_for(r"^MEMOK .*wws_mib=4\.00", 30)
    after = _stats(vm.request(["STATS"])[0])
    assert after["dirtied_bytes"] > before
    assert after["wws_mib"] == 4
    assert not vm.lines("CORRUPT")


@pytest.mark.lab
def test_the_guest_shuts_down_when_its_acpi_power_button_is_pressed(vms: VmFactory) -> None:
    """What `vmcluster vm stop` asks first: the guest's acpid runs its power-button action,
    which syncs and powers off, and QEMU exits by itself."""
    vm = vms.start("button", mem_mib=64, wws_mib=8, dirty_mibps=1)
    vm.wait_for(r"^VMC-READY ", BOOT_TIMEOUT)

    async def press() -> None:
        client = await _qmp(vm.qmp_path, "button")
        try:
            await client.execute("system_powerdown")
        finally:
            await client.disconnect()

    asyncio.run(press())
    vm.wait_for(r"^VMC-SHUTDOWN acpi power button", 30)
    assert vm.proc.wait(timeout=30) == 0


async def _qmp(path: Path, name: str) -> QMPClient:
    client = QMPClient(name)
    deadline = time.monotonic() + 30
    while True:
        try:
            await client.connect(str(path))
            return client
        except Exception:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.2)


async def _migrate(src_qmp: Path, dst_qmp: Path, port: int, timeout: float) -> dict[str, Any]:
    src = await _qmp(src_qmp, "src")
    dst = await _qmp(dst_qmp, "dst")
    try:
        await src.execute("migrate-set-parameters",
                          {"max-bandwidth": 256 << 20, "downtime-limit": 300})
        await src.execute("migrate", {"uri": f"tcp:127.0.0.1:{port}"})
        deadline = time.monotonic() + timeout
        info: dict[str, Any] = {}
        while time.monotonic() < deadline:
            info = dict(await src.execute("query-migrate"))  # type: ignore[call-overload]
            if info.get("status") in ("completed", "failed", "cancelled"):
                break
            await asyncio.sleep(0.2)
        src_status = await src.execute("query-status")
        dst_status = await dst.execute("query-status")
        info["src-run-state"] = src_status["status"]  # type: ignore[index]
        info["dst-run-state"] = dst_status["status"]  # type: ignore[index]
        return info
    finally:
        await src.disconnect()
        await dst.disconnect()


@pytest.mark.lab
def test_live_migration_keeps_guest_memory_consistent(
    vms: VmFactory, record_property: Any
) -> None:
    src = vms.start("src", mem_mib=128, wws_mib=32, dirty_mibps=16)
    src.wait_for(r"^MEMOK \d+", BOOT_TIMEOUT)
    port = _free_port()
    dst = vms.start("dst", mem_mib=128, wws_mib=32, dirty_mibps=16, incoming_port=port)
    # The sweep must have gone round at least once so the check covers dirtied pages.
    src.wait_for(r"^MEMOK [1-9]", 30)

    info = asyncio.run(_migrate(src.qmp_path, dst.qmp_path, port, timeout=60))
    assert info.get("status") == "completed", info
    assert info["src-run-state"] == "postmigrate"
    assert info["dst-run-state"] == "running"
    ram = info["ram"]
    figures = {
        "total_ms": info.get("total-time"), "downtime_ms": info.get("downtime"),
        "setup_ms": info.get("setup-time"), "passes": ram.get("dirty-sync-count"),
        "transferred_mib": round(ram.get("transferred", 0) / 2**20, 1),
        "mbps": ram.get("mbps"),
    }
    record_property("migration", figures)
    print(f"migration: {figures}")

    src_last = int(src.lines(r"^MEMOK \d+")[-1].split()[1])
    src.proc.terminate()  # the source is done; only the target may run the guest now
    # The guest was not rebooted (no second VMC-READY on the target) and keeps checking.
    memok = dst.wait_for(r"^MEMOK \d+", 30, count=3)
    assert not dst.lines(r"^VMC-READY")
    sweeps = [int(ln.split()[1]) for ln in memok]
    assert sweeps[0] >= src_last
    assert sweeps[-1] > sweeps[0], memok
    stats = _stats(dst.request(["STATS"])[0])
    assert stats["corrupt"] == 0
    assert dst.request(["41", "42"]) == ["41", "42"]
    assert not dst.lines("CORRUPT") and not src.lines("CORRUPT")

    # The same checker, after migration, does see damage to one page.
    assert dst.request(["SELFTEST CORRUPT"]) == ["OK SELFTEST"]
    dst.wait_for(r"^CORRUPT (sweep|check) page=\d+", 30)
    assert _stats(dst.request(["STATS"])[0])["corrupt"] >= 1


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])
