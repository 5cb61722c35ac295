"""Leader election on a real 3-member etcd: one leader, failover after a crash, fencing."""

from __future__ import annotations

import signal
from collections.abc import Iterator
from contextlib import contextmanager

import pytest

from vmcluster.store import (
    Election,
    EtcdClient,
    EtcdCluster,
    Fence,
    Fenced,
    current_leader,
)
from vmcluster.store.etcd import Compare, Put
from vmcluster.substrate.clock import MonotonicClock

from .conftest import Candidate, needs_etcd

pytestmark = [pytest.mark.lab, needs_etcd]
TTL = 2


def own_first(cluster: EtcdCluster, name: str) -> list[str]:
    """A node's manager talks to its own member first, then the others."""
    mine = cluster.endpoints([name])
    return mine + [e for e in cluster.endpoints() if e not in mine]


@contextmanager
def candidates(cluster: EtcdCluster, names: list[str]) -> Iterator[dict[str, Candidate]]:
    cands = {n: Candidate(own_first(cluster, n), "c1", n, TTL) for n in names}
    try:
        yield cands
    finally:
        for c in cands.values():
            c.close()


def wait_event(
    cands: list[Candidate], event: str, timeout: float
) -> tuple[Candidate, dict[str, object]]:
    clock = MonotonicClock()
    deadline = clock.now() + timeout
    while clock.now() < deadline:
        for c in cands:
            msg = c.next(0.05)
            if msg is not None and msg["event"] == event:
                return c, msg
    raise AssertionError(f"no {event!r} from {[c.name for c in cands]} in {timeout} s")


def test_one_leader_among_three(etcd3: EtcdCluster) -> None:
    with candidates(etcd3, ["m1", "m2", "m3"]) as cands:
        leader, msg = wait_event(list(cands.values()), "leader", 60)
        client = EtcdClient(etcd3.endpoints())
        held = current_leader(client, "c1")
        assert held is not None and held.name == leader.name and held.token == msg["token"]
        Fence(client, "c1").check(held.token)  # the leader's own token passes
        MonotonicClock().sleep(3 * TTL)  # past a TTL: the others still wait, nobody else won
        for c in cands.values():
            while (m := c.next(0.01)) is not None:
                assert m["event"] != "leader", f"{c.name} also became leader"
                assert m["event"] != "fenced", f"{c.name} was fenced while leading"
        held2 = current_leader(client, "c1")
        assert held2 == held  # the leader renewed its lease


def test_crash_of_leader_node_elects_a_higher_token(etcd3: EtcdCluster) -> None:
    with candidates(etcd3, ["m1", "m2", "m3"]) as cands:
        leader, msg = wait_event(list(cands.values()), "leader", 60)
        old_token = int(str(msg["token"]))
        # The node crashes: its etcd member and its manager die with SIGKILL.
        etcd3.signal(leader.name, signal.SIGKILL)
        leader.signal(signal.SIGKILL)
        rest = [c for c in cands.values() if c is not leader]
        new, msg2 = wait_event(rest, "leader", 60)
        assert new is not leader
        assert int(str(msg2["token"])) > old_token
        survivors = EtcdClient(etcd3.endpoints([c.name for c in rest]))
        with pytest.raises(Fenced):
            Fence(survivors, "c1").check(old_token)
        held = current_leader(survivors, "c1")
        assert held is not None and held.name == new.name


def test_stale_leader_is_fenced_after_sigcont(etcd3: EtcdCluster) -> None:
    with candidates(etcd3, ["m1"]) as cands:
        stale = cands["m1"]
        _, msg = wait_event([stale], "leader", 60)
        old_token = int(str(msg["token"]))
        stale.signal(signal.SIGSTOP)  # frozen: no keepalive, no action
        client = EtcdClient(own_first(etcd3, "m2"))
        rival = Election(client, "c1", "m2", ttl=TTL)
        try:
            held = rival.campaign(timeout=30)  # only possible once the stale lease expired
            assert held.token > old_token
            stale.signal(signal.SIGCONT)
            _, woke = wait_event([stale], "fenced", 30)
            assert woke["token"] == old_token
            fence = Fence(client, "c1")
            with pytest.raises(Fenced):
                fence.check(old_token)
            assert fence.check(held.token).name == "m2"
            # Its guarded write after waking was refused: the key holds no stale write.
            acted = client.get("/vmcluster/c1/acted/m1")
            assert acted is None or acted.mod_revision < held.token
            # And a guarded write with the stale token fails atomically, here too.
            got = client.txn([fence.guard(old_token)], [Put("/vmcluster/c1/x", b"stale")])
            assert not got.succeeded and client.get("/vmcluster/c1/x") is None
            _, lost = wait_event([stale], "lost", 30)
            assert lost["name"] == "m1"
        finally:
            rival.resign()
        assert current_leader(client, "c1") is None


def test_resign_hands_over(etcd3: EtcdCluster) -> None:
    client = EtcdClient(etcd3.endpoints())
    a = Election(client, "c2", "a", ttl=TTL)
    b = Election(client, "c2", "b", ttl=TTL)
    first = a.campaign(timeout=10)
    assert b.try_acquire() is None
    a.resign()
    second = b.campaign(timeout=10)
    assert second.token > first.token
    assert client.txn([Compare.created("/vmcluster/c2/leader", second.token)], []).succeeded
    b.resign()
