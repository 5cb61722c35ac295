"""Each VM's load and where it comes from: vCPU threads, the guest's own report."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import pytest

from vmcluster.node.load import CpuMeter, guest_cores, threads_cpu_s


def test_the_guest_report_is_its_last_cpu_pct(tmp_path: Path) -> None:
    log = tmp_path / "serial.log"
    log.write_bytes(b"boot noise\nMEMOK 1 checks=1 cpu_pct=12.5\n" + b"x" * 5000
                    + b"\nMEMOK 2 checks=2 dirtied_mib=1.0 cpu_pct=45.0\n")
    assert guest_cores(log, 2) == pytest.approx(0.9)  # 45 % of two vCPUs
    assert guest_cores(log, 1, now=lambda: time.time() + 60) is None  # stale
    log.write_bytes(b"MEMOK 3 cpu_pct=-1.0\n")  # the guest could not read /proc/stat
    assert guest_cores(log, 1) is None
    log.write_bytes(b"a guest that is not the lab's workload\n")
    assert guest_cores(log, 1) is None
    assert guest_cores(tmp_path / "missing.log", 1) is None


def test_a_meter_of_some_threads_counts_only_them() -> None:
    """A busy thread of this process measured alone: about one core; the main thread,
    asleep meanwhile, about none."""
    stop = threading.Event()
    tid: list[int] = []

    def spin() -> None:
        tid.append(threading.get_native_id())
        while not stop.is_set():
            pass

    worker = threading.Thread(target=spin)
    worker.start()
    try:
        while not tid:
            time.sleep(0.01)
        t = [0.0]
        meter = CpuMeter(clock=lambda: t[0])
        me = {threading.get_native_id()}
        assert meter.sample("busy", os.getpid(), set(tid)) is None  # the first sample
        assert meter.sample("idle", os.getpid(), me) is None
        before = threads_cpu_s(os.getpid(), set(tid))
        time.sleep(1.0)
        t[0] = 1.0
        busy = meter.sample("busy", os.getpid(), set(tid))
        idle = meter.sample("idle", os.getpid(), me)
        assert threads_cpu_s(os.getpid(), set(tid)) > before
    finally:
        stop.set()
        worker.join()
    assert busy is not None and busy > 0.5  # the GIL lets the main thread sleep
    assert idle is not None and idle < 0.2
