"""An agent refuses a request from a manager that no longer leads (real one-member etcd)."""

from __future__ import annotations

import asyncio
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from vmcluster.node.fencing import AgentFence
from vmcluster.store import Election, EtcdClient, Fenced, embedded

pytestmark = pytest.mark.skipif(shutil.which("etcd") is None, reason="etcd-server not installed")


@pytest.fixture
def endpoints() -> Iterator[list[str]]:
    base = Path(tempfile.mkdtemp(prefix="vmc-fence-"))
    cluster = embedded(base / "etcd", host="127.0.0.43", timeout=60)
    try:
        yield cluster.endpoints()
    finally:
        cluster.close()
        shutil.rmtree(base, ignore_errors=True)


def test_stale_token_refused_current_accepted_none_unfenced(endpoints: list[str]) -> None:
    fence = AgentFence("node1", "fence", [], None)
    with pytest.raises(Fenced, match="knows no store"):
        asyncio.run(fence.check({"op": "start", "token": 5}))
    fence = AgentFence("node1", "fence", endpoints, None)
    asyncio.run(fence.check({"op": "list"}))  # no token: the operator, not a manager
    client = EtcdClient(endpoints)
    first = Election(client, "fence", "m1", ttl=5)
    old = first.campaign(10).token
    asyncio.run(fence.check({"op": "start", "token": old}))
    first.resign()
    new = Election(client, "fence", "m2", ttl=5).campaign(10).token
    assert new > old
    with pytest.raises(Fenced, match="fenced"):
        asyncio.run(fence.check({"op": "start", "token": old}))
    asyncio.run(fence.check({"op": "start", "token": new}))
