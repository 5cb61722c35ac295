"""Real etcd members on 127.0.0.x with free ports; every process and data dir is removed."""

from __future__ import annotations

import json
import queue
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from vmcluster.store import EtcdCluster, embedded, local_members

needs_etcd = pytest.mark.skipif(shutil.which("etcd") is None, reason="etcd-server not installed")


@pytest.fixture
def workdir() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="vmc-store-"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def etcd3(workdir: Path) -> Iterator[EtcdCluster]:
    cluster = EtcdCluster(local_members(["m1", "m2", "m3"], workdir, first_octet=21))
    try:
        cluster.start()
        cluster.wait_healthy(timeout=60)
        yield cluster
    finally:
        cluster.close()


@pytest.fixture
def etcd1(workdir: Path) -> Iterator[EtcdCluster]:
    cluster = embedded(workdir, host="127.0.0.31", timeout=60)
    try:
        yield cluster
    finally:
        cluster.close()


class Candidate:
    """``python -m vmcluster.store.election`` in its own process; its JSON lines in a queue."""

    def __init__(self, endpoints: list[str], cluster: str, name: str, ttl: int) -> None:
        self.name = name
        self.proc = subprocess.Popen(
            [
                sys.executable, "-m", "vmcluster.store.election",
                "--endpoints", ",".join(endpoints), "--cluster", cluster, "--name", name,
                "--ttl", str(ttl), "--timeout", "90", "--lifetime", "90",
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        )  # fmt: skip
        self.lines: queue.Queue[dict[str, Any]] = queue.Queue()
        self.seen: list[dict[str, Any]] = []
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.put(json.loads(line))

    def next(self, timeout: float) -> dict[str, Any] | None:
        try:
            msg = self.lines.get(timeout=timeout)
        except queue.Empty:
            return None
        self.seen.append(msg)
        return msg

    def signal(self, sig: signal.Signals) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGCONT)
            self.proc.kill()
        self.proc.wait(timeout=10)
