"""Helpers shared by test modules (import as ``from tests.helpers import ...``)."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

from fastapi.testclient import TestClient

from vmcluster.node.api import ApiContext, create_app
from vmcluster.node.cache import CachedKV
from vmcluster.node.config import NodeConfig
from vmcluster.store import EtcdClient, embedded
from vmcluster.store.state import ClusterState

ROOT = Path(__file__).resolve().parents[1]


def vmc(*args: str, cwd: Path = ROOT, timeout: float = 60.0) -> subprocess.CompletedProcess[str]:
    """Run the ``vmcluster`` command as a user would: a new process, its exit code and output."""
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    return subprocess.run([sys.executable, "-m", "vmcluster", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=timeout, check=False)


class ManualClock:
    """Virtual time that moves only when someone sleeps (or a test sets ``t``)."""

    def __init__(self) -> None:
        self.t = 0.0

    def now(self) -> float:
        return self.t

    def sleep(self, seconds: float) -> None:
        self.t += max(0.0, seconds)


@contextlib.contextmanager
def api_app(host: str) -> Iterator[tuple[TestClient, ClusterState]]:
    """The API app against a real one-member etcd on ``host`` (a loopback address of the
    test's own): a TestClient and the store as the API's cache reads it (a write through
    it returns once the cache holds it, so what a test wrote is what the API reads next)."""
    base = Path(tempfile.mkdtemp(prefix="vmc-api-"))
    cluster = embedded(base / "etcd", host=host, timeout=60)
    try:
        state = ClusterState(EtcdClient(cluster.endpoints()), "t")
        cfg = NodeConfig(path=base / "vmclusterd.toml", node="node1", cluster="t",
                         run_dir=base / "run", endpoints=tuple(cluster.endpoints()),
                         api_listen=("198.18.1.11",))
        ctx = ApiContext(cfg, state)
        with TestClient(create_app(ctx)) as client:
            assert ctx.cache is not None and ctx.cache.healthy
            yield client, ClusterState(CachedKV(ctx.cache), "t")
    finally:
        cluster.close()
        shutil.rmtree(base, ignore_errors=True)
