"""The etcd client against real members: basics, watch across a failover, unavailability."""

from __future__ import annotations

import signal

import pytest

from vmcluster.errors import StoreError
from vmcluster.store import EtcdClient, EtcdCluster, StoreUnavailable
from vmcluster.store.etcd import Compare, Get, Put, prefix_end
from vmcluster.store.members import free_port
from vmcluster.store.watch import Watch

from .conftest import needs_etcd


def test_prefix_end() -> None:
    import base64

    assert base64.b64decode(prefix_end("a/")) == b"a0"
    assert base64.b64decode(prefix_end("a\xff")) == b"a\xc3\xc0"  # UTF-8 c3 bf, last byte + 1
    assert base64.b64decode(prefix_end("")) == b"\0"  # every key


def test_no_endpoint_answers_is_store_unavailable() -> None:
    dead = [f"http://127.0.0.41:{free_port('127.0.0.41')}" for _ in range(2)]
    with pytest.raises(StoreUnavailable, match="no etcd endpoint answered"):
        EtcdClient(dead, timeout=0.5, retry_s=0).get("k")
    with pytest.raises(StoreError):
        EtcdClient([])


@pytest.mark.lab
@needs_etcd
def test_kv_txn_lease_and_watch(etcd1: EtcdCluster) -> None:
    c = EtcdClient(etcd1.endpoints())
    rev = c.put("k/a", b"1")
    assert c.get("k/a") is not None and c.get("k/a").value == b"1"  # type: ignore[union-attr]
    assert c.txn([Compare.modified("k/a", rev)], [Put("k/a", b"2")]).succeeded
    lost = c.txn([Compare.modified("k/a", rev)], [Put("k/a", b"3")], [Get("k/a")])
    assert not lost.succeeded and lost.responses[0][0].value == b"2"  # type: ignore[index]
    lease = c.lease_grant(5)
    c.put("k/b", b"x", lease)
    assert c.lease_keepalive(lease) > 0
    with Watch(c, "k/", prefix=True, start_revision=rev) as w:
        c.lease_revoke(lease)  # deletes k/b
        seen = []
        for _ in range(20):
            seen += w.get(0.5)
            if len(seen) >= 4:
                break
    assert [(e.type, e.kv.key) for e in seen] == [
        ("PUT", "k/a"), ("PUT", "k/a"), ("PUT", "k/b"), ("DELETE", "k/b"),
    ]  # fmt: skip
    assert c.lease_keepalive(lease) == 0 and c.get("k/b") is None
    assert c.delete("k/", prefix=True) == 1


@needs_etcd
def test_a_client_learns_the_members_from_etcd_itself(etcd1: EtcdCluster) -> None:
    """A host's endpoints are those it knew when it joined; with ``sync_s`` the client
    takes the voting members' URLs from etcd's member list (a gone one is dropped)."""
    class Clock:
        t = 0.0

        def now(self) -> float:
            return self.t

        def sleep(self, seconds: float) -> None:
            self.t += seconds

    real = etcd1.endpoints()
    gone = f"http://127.0.0.1:{free_port()}"
    clock = Clock()
    c = EtcdClient([gone, *real], timeout=1.0, retry_s=0.5, sync_s=30.0, clock=clock)
    c.put("sync/a", b"1")
    assert c.endpoints == [gone, *real]  # not yet: 30 s have not passed
    clock.t += 31.0
    assert c.get("sync/a") is not None
    assert c.endpoints == real
    c.delete("sync/", prefix=True)


@pytest.mark.lab
@needs_etcd
def test_client_and_watch_fail_over_to_another_member(etcd3: EtcdCluster) -> None:
    c = EtcdClient(etcd3.endpoints(), timeout=1.0)  # m1 first
    rev = c.put("w/1", b"a")
    with Watch(c, "w/", prefix=True, start_revision=rev) as w:
        assert [e.kv.key for e in w.get(5)] == ["w/1"]
        etcd3.signal("m1", signal.SIGKILL)
        c.put("w/2", b"b")  # goes to m2 or m3
        keys: list[str] = []
        for _ in range(40):
            keys += [e.kv.key for e in w.get(0.5)]
            if keys:
                break
        assert keys == ["w/2"]  # resumed from the last revision: nothing lost, no repeat
    assert c.get("w/2") is not None


def test_spec_members_use_every_cluster_network() -> None:
    from pathlib import Path

    from vmcluster.model.spec import load_spec
    from vmcluster.store.members import spec_members

    spec = load_spec(Path(__file__).resolve().parents[2] / "examples/lab.toml")
    ms = spec_members(spec, Path("/nonexistent"), lambda n: ("ip", "netns", "exec", f"vmc-{n}"))
    m1 = ms[0]
    assert m1.name == "node1" and len(ms) == 3
    assert m1.client_urls == (
        "http://198.18.1.11:2379", "http://198.18.2.11:2379", "http://198.18.3.11:2379",
    )  # Public, Heartbeat, Migration; never Storage (role 0)  # fmt: skip
    argv = m1.argv(",".join(f"{m.name}={m.peer_urls[0]}" for m in ms), "t", "new", ())
    assert argv[:5] == ["ip", "netns", "exec", "vmc-node1", "/usr/bin/etcd"]
    assert (
        "--listen-peer-urls=http://198.18.1.11:2380,http://198.18.2.11:2380,http://198.18.3.11:2380"
        in argv
    )
