"""Each VM's measured CPU load, from the host that runs it to the store, for the
consolidation plans that any host's API makes.

* A host's agent measures each VM by the best source its host has (``cpu_source``):
  on a KVM host its vCPU threads' CPU time (``vcpu-threads``: the guest's own work,
  from ``query-cpus-fast``'s thread ids); on a TCG host (the lab) those threads run the
  emulator, whose cost is not the guest's load, so the guest's own report is used
  (``guest``: the lab's workload prints its CPU use from ``/proc/stat`` on its serial
  console every 2 s, :func:`guest_cores`); failing both, the whole QEMU process
  (``process``). CPU times are turned into cores busy between two ``list`` calls at
  least ``MIN_WINDOW_S`` apart (:class:`CpuMeter`).
* Its node watch writes what it listed to ``loads/<node>`` every ``PUBLISH_S``:
  ``{"at": unix time, "vms": {vm: cores busy}, "sources": {vm: cpu_source}}``; apart
  from the reports (which are rewritten twice a second) so that a load that moves a
  little is not a cluster change.
* Any host's API reads them back (:func:`read`): an entry not rewritten for ``STALE_S``
  (its host silent, off or cut off) is not used.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import psutil

from vmcluster.store.state import ClusterState

__all__ = ["GUEST_REPORT_S", "MIN_WINDOW_S", "PUBLISH_S", "STALE_S", "CpuMeter", "guest_cores",
           "loads_key", "publish", "read", "threads_cpu_s", "vm_loads"]

MIN_WINDOW_S = 1.0
GUEST_REPORT_S = 6.0  # a guest's CPU report older than this is not used
_CPU_PCT = re.compile(rb"cpu_pct=(-?[0-9]+(?:\.[0-9]+)?)")
PUBLISH_S = 5.0
STALE_S = 30.0


class CpuMeter:
    """CPU time of processes by name, turned into cores busy over the last window."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self._last: dict[str, tuple[int, float, float]] = {}  # name -> (pid, at, cpu s)
        self._rate: dict[str, float] = {}

    def sample(self, name: str, pid: int, tids: set[int] | None = None) -> float | None:
        """Cores busy for ``name``'s process (only its threads ``tids``, when given) since
        the sample before (kept for ``MIN_WINDOW_S`` at least); None until two samples
        of the same process exist."""
        try:
            if tids is None:
                t = psutil.Process(pid).cpu_times()
                used = float(t.user + t.system)
            else:
                used = threads_cpu_s(pid, tids)
        except psutil.Error:
            self._last.pop(name, None)
            self._rate.pop(name, None)
            return None
        now = self.clock()
        last = self._last.get(name)
        if last is None or last[0] != pid:  # a new QEMU for this VM: start again
            self._last[name] = (pid, now, used)
            self._rate.pop(name, None)
            return None
        if now - last[1] >= MIN_WINDOW_S:
            self._rate[name] = max(0.0, (used - last[2]) / (now - last[1]))
            self._last[name] = (pid, now, used)
        return self._rate.get(name)

    def forget(self, keep: set[str]) -> None:
        for name in set(self._last) - keep:
            self._last.pop(name, None)
            self._rate.pop(name, None)


def threads_cpu_s(pid: int, tids: set[int]) -> float:
    """The CPU time (s) process ``pid``'s threads ``tids`` have used so far."""
    return sum(float(t.user_time + t.system_time) for t in psutil.Process(pid).threads()
               if t.id in tids)


def guest_cores(serial_log: Path, vcpus: int, max_age_s: float = GUEST_REPORT_S,
                now: Callable[[], float] = time.time) -> float | None:
    """The VM's load in cores as its guest last reported it (``cpu_pct=``, a share of
    all its vCPUs, in the last 4 KiB of its serial log), when the log was written within
    ``max_age_s``; else None (no report: not the lab's workload, or a stalled guest)."""
    try:
        st = serial_log.stat()
        if now() - st.st_mtime > max_age_s:
            return None
        with serial_log.open("rb") as f:
            f.seek(max(0, st.st_size - 4096))
            tail = f.read()
    except OSError:
        return None
    found = _CPU_PCT.findall(tail)
    if not found or float(found[-1]) < 0:
        return None
    return min(100.0, float(found[-1])) / 100.0 * vcpus


def loads_key(state: ClusterState, node: str = "") -> str:
    return state.key("loads", node)


def publish(state: ClusterState, node: str, cores: Mapping[str, float],
            sources: Mapping[str, str] | None = None) -> None:
    body = {"at": round(time.time(), 3), "vms": {vm: round(c, 4) for vm, c in cores.items()},
            "sources": {vm: s for vm, s in (sources or {}).items() if vm in cores}}
    state.client.put(loads_key(state, node), json.dumps(body, sort_keys=True).encode())


def _entries(state: ClusterState) -> list[tuple[str, dict[str, Any], dict[str, str], Any]]:
    """Each host's published loads: (key, VM -> cores, VM -> source, ``at``)."""
    kvs, _ = state.client.get_prefix(loads_key(state))
    out = []
    for kv in kvs:
        body = kv.json()
        out.append((kv.key, dict(body.get("vms", {})),
                    {str(vm): str(s) for vm, s in dict(body.get("sources", {})).items()},
                    body.get("at")))
    return out


def vm_loads(state: ClusterState) -> dict[str, dict[str, Any]]:
    """Each VM's load as its host last published it: ``cores`` busy, its ``source`` and
    when (``at``, that host's clock)."""
    return {str(vm): {"cores": float(cores), "source": sources.get(str(vm), "process"),
                      "at": at}
            for _key, vms, sources, at in _entries(state) for vm, cores in vms.items()}


def read(state: ClusterState, age: Callable[[str], float | None]
         ) -> tuple[dict[str, float], float | None, dict[str, str]]:
    """Every VM's cores busy, from the entries this host saw written within ``STALE_S``
    (``age``: seconds since it saw a key written, as the API's cache says; no host's clock
    is compared with another's); the oldest such entry's age (None: there is none); and
    how each VM's load was measured (``cpu_source``) as its host last said, stale or not."""
    out: dict[str, float] = {}
    oldest: float | None = None
    sources: dict[str, str] = {}
    for key, vms, said, _at in _entries(state):
        sources.update(said)
        seen = age(key)
        if seen is None or seen > STALE_S:
            continue
        oldest = seen if oldest is None else max(oldest, seen)
        out.update({str(vm): float(c) for vm, c in vms.items()})
    return out, oldest, sources
