"""Watch every node agent and count any VM seen running on two nodes at once.

:class:`RunSampler` asks every agent for its VM list every ``period_s`` (100 ms)
on a thread. A sample where one VM's QEMU is ``running`` on two nodes is a
**double run**, the one thing failover must never do. The sampler also keeps,
per VM, when it was last seen running and where, so a test or benchmark can
tell when a VM ran again after a fault. Agents that do not answer (a crashed
node) count as running nothing. The sampler watches from outside the hosts,
as a fault campaign's observer must: through each host's local agent socket,
so that a host whose networks are all cut is still seen.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

from vmcluster.errors import VmclusterError
from vmcluster.substrate.host.client import AgentClient
from vmcluster.substrate.host.layout import LabLayout

__all__ = ["RunSampler", "Sample"]


@dataclass(frozen=True)
class Sample:
    at: float  # time.monotonic()
    running: dict[str, tuple[str, ...]]  # vm -> nodes where its QEMU is running


@dataclass
class RunSampler:
    layout: LabLayout
    nodes: Sequence[str]
    period_s: float = 0.1
    samples: list[Sample] = field(default_factory=list)
    doubles: list[Sample] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def sample(self) -> Sample:
        running: dict[str, list[str]] = {}
        for node in self.nodes:
            try:
                listed = AgentClient(self.layout, node, local=True).call("list", timeout_s=2)["vms"]
            except VmclusterError:
                continue
            for v in listed:
                if v.get("status") == "running":
                    running.setdefault(v["vm"], []).append(node)
        return Sample(time.monotonic(), {vm: tuple(ns) for vm, ns in running.items()})

    def _run(self) -> None:
        while not self._stop.is_set():
            s = self.sample()
            with self._lock:
                self.samples.append(s)
                if any(len(ns) > 1 for ns in s.running.values()):
                    self.doubles.append(s)
            self._stop.wait(self.period_s)

    def start(self) -> RunSampler:
        self._thread = threading.Thread(target=self._run, name="run sampler", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)

    def __enter__(self) -> RunSampler:
        return self.start()

    def __exit__(self, *_: object) -> None:
        self.stop()

    def latest(self) -> Sample | None:
        with self._lock:
            return self.samples[-1] if self.samples else None

    def wait(self, vms: Sequence[str], *, since: float, timeout_s: float,
             avoid: str | None = None) -> float | None:
        """Seconds from ``since`` until every VM in ``vms`` was seen running (on a node
        other than ``avoid``) in one sample; None after ``timeout_s``."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            with self._lock:
                for s in self.samples:
                    if s.at >= since and all(
                        any(n != avoid for n in s.running.get(vm, ())) for vm in vms
                    ):
                        return s.at - since
            time.sleep(self.period_s)
        return None
