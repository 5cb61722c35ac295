"""Watch every node agent and count any VM seen running on two nodes at once.

:class:`RunSampler` asks every agent for its VM list every ``period_s`` (100 ms)
on a thread. A sample where one VM's QEMU is ``running`` on two nodes is a
**double run**, the one thing failover must never do. The sampler also keeps,
per VM, when it was last seen running and where, so a test or benchmark can
tell when a VM ran again after a fault. Agents that do not answer (a crashed
node) are looked at behind their agent's back: each QEMU process left in the
host's namespace is asked its state over its own QMP socket (free while no agent
holds it), so a host whose agent was killed, or whose daemon the watchdog has not
fenced yet, is still seen. The sampler watches from outside the hosts, as a fault
campaign's observer must: through each host's local agent socket, so that a host
whose networks are all cut is still seen.
"""

from __future__ import annotations

import contextlib
import json
import socket
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from vmcluster.errors import VmclusterError
from vmcluster.substrate.host.client import AgentClient
from vmcluster.substrate.host.layout import LabLayout
from vmcluster.substrate.host.netns import ns_pids

__all__ = ["RunSampler", "Sample", "qemus_behind_agent"]

QMP_TIMEOUT_S = 0.5


def _qmp_status(pid: int, argv: list[str]) -> str:
    """Ask one QEMU its run state over its QMP socket, reached through the process's own
    root (its host's mount namespace); ``unknown`` if it does not answer in time."""
    spec = argv[argv.index("-qmp") + 1] if "-qmp" in argv[:-1] else ""
    if not spec.startswith("unix:"):
        return "unknown"
    path = f"/proc/{pid}/root{spec[5:].split(',')[0]}"
    try:
        with socket.socket(socket.AF_UNIX) as s:
            s.settimeout(QMP_TIMEOUT_S)
            s.connect(path)
            f = s.makefile("rwb")
            f.readline()  # the greeting
            for cmd in ("qmp_capabilities", "query-status"):
                f.write(json.dumps({"execute": cmd}).encode() + b"\n")
                f.flush()
                while True:
                    line = f.readline()
                    if not line:
                        return "unknown"
                    reply = json.loads(line)
                    if "return" in reply or "error" in reply:
                        break
            return str(reply.get("return", {}).get("status", "unknown"))
    except (OSError, ValueError):
        return "unknown"


def qemus_behind_agent(layout: LabLayout, node: str) -> dict[str, str]:
    """Every QEMU process in ``node``'s namespace, by VM name, with its run state as QEMU
    itself says (``unknown`` if it does not answer): for a host whose agent is silent."""
    out: dict[str, str] = {}
    for pid in ns_pids(layout.node_ns(node)):
        with contextlib.suppress(OSError):
            argv = [a.decode(errors="replace") for a in
                    Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")]
            if "-name" in argv[:-1] and "-qmp" in argv:
                vm = argv[argv.index("-name") + 1].split(",")[0]
                status = _qmp_status(pid, argv)
                if out.get(vm) != "running":
                    out[vm] = status
    return out


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
                states = {str(v["vm"]): str(v.get("status")) for v in listed}
            except VmclusterError:  # its agent is silent: ask its QEMUs themselves
                states = qemus_behind_agent(self.layout, node)
            for vm, status in states.items():
                if status == "running":
                    running.setdefault(vm, []).append(node)
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
