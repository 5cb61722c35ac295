"""Python loads this at start when its directory is on ``PYTHONPATH``: the fault
campaign's clock-jump scenario puts it there for one lab host's daemon and every part
it starts (manager, agent, API, heartbeats, watchdog), with ``VMCLUSTER_CLOCK_STEP_S``.

It steps this process's wall clock (``time.time``, ``time.time_ns``) by that many
seconds, as an NTP step would. The monotonic clock and file times stay true, and so do
the clocks that programs other than these Python processes read (etcd, QEMU, OpenSSL's
certificate checks). libfaketime was the first choice: with CPython 3.11 its
``FAKETIME_DONT_FAKE_MONOTONIC`` mode makes ``time.sleep`` fail with EINVAL, and without it
``threading.Event.wait`` hangs.
"""

import os
import time

_STEP_S = float(os.environ.get("VMCLUSTER_CLOCK_STEP_S") or 0.0)
if _STEP_S:
    _true_time, _true_time_ns = time.time, time.time_ns

    def _stepped_time() -> float:
        return _true_time() + _STEP_S

    def _stepped_time_ns() -> int:
        return _true_time_ns() + int(_STEP_S * 1e9)

    time.time = _stepped_time
    time.time_ns = _stepped_time_ns
