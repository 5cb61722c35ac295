"""Each VM's measured CPU load, from the host that runs it to the store, for the
consolidation plans that any host's API makes.

* A host's agent measures its QEMUs (:class:`CpuMeter`: the processes' CPU time between
  two ``list`` calls at least ``MIN_WINDOW_S`` apart, in cores busy).
* Its node watch writes what it listed to ``loads/<node>`` every ``PUBLISH_S``:
  ``{"at": unix time, "vms": {vm: cores busy}}``; apart from the reports (which are
  rewritten twice a second) so that a load that moves a little is not a cluster change.
* Any host's API reads them back (:func:`read`): an entry not rewritten for ``STALE_S``
  (its host silent, off or cut off) is not used.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Mapping

import psutil

from vmcluster.store.state import ClusterState

__all__ = ["MIN_WINDOW_S", "PUBLISH_S", "STALE_S", "CpuMeter", "loads_key", "publish", "read",
           "threads_cpu_s"]

MIN_WINDOW_S = 1.0
PUBLISH_S = 5.0
STALE_S = 30.0


class CpuMeter:
    """CPU time of processes by name, turned into cores busy over the last window."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self._last: dict[str, tuple[int, float, float]] = {}  # name -> (pid, at, cpu s)
        self._rate: dict[str, float] = {}

    def sample(self, name: str, pid: int) -> float | None:
        """Cores busy for ``name``'s process since the sample before (kept for
        ``MIN_WINDOW_S`` at least); None until two samples of the same process exist."""
        try:
            t = psutil.Process(pid).cpu_times()
        except psutil.Error:
            self._last.pop(name, None)
            self._rate.pop(name, None)
            return None
        now, used = self.clock(), float(t.user + t.system)
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


def loads_key(state: ClusterState, node: str = "") -> str:
    return state.key("loads", node)


def publish(state: ClusterState, node: str, cores: Mapping[str, float]) -> None:
    body = {"at": round(time.time(), 3), "vms": {vm: round(c, 4) for vm, c in cores.items()}}
    state.client.put(loads_key(state, node), json.dumps(body, sort_keys=True).encode())


def read(state: ClusterState, age: Callable[[str], float | None]
         ) -> tuple[dict[str, float], float | None]:
    """Every VM's cores busy, from the entries this host saw written within ``STALE_S``
    (``age``: seconds since it saw a key written, as the API's cache says; no host's clock
    is compared with another's); and the oldest such entry's age (None: there is none)."""
    kvs, _ = state.client.get_prefix(loads_key(state))
    out: dict[str, float] = {}
    oldest: float | None = None
    for kv in kvs:
        seen = age(kv.key)
        if seen is None or seen > STALE_S:
            continue
        oldest = seen if oldest is None else max(oldest, seen)
        for vm, c in dict(kv.json().get("vms", {})).items():
            out[str(vm)] = float(c)
    return out, oldest
