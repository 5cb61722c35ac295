"""The store contract (src/vmcluster/store/kv.py), for every store: etcd and in memory.

What the cluster's state relies on: revisions, compare-and-set transactions, leases
whose expiry deletes their keys, and on top of them the cluster's own records
(placements fenced by the leader's token, migrations switched over in one transaction,
the election, the event log). The same tests run against a real etcd member (a `lab`
test: it starts etcd) and against MemoryKV on a clock the test moves by hand.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.helpers import ManualClock
from vmcluster.errors import StoreError
from vmcluster.store import EtcdClient, embedded
from vmcluster.store.election import Election, current_leader
from vmcluster.store.errors import Fenced, StoreConflict
from vmcluster.store.etcd import Compare, Delete, Get, Put
from vmcluster.store.kv import KV
from vmcluster.store.memory import MemoryKV
from vmcluster.store.state import ClusterState

from .conftest import needs_etcd


class WallClock:
    def now(self) -> float:
        return time.monotonic()

    def sleep(self, seconds: float) -> None:
        time.sleep(seconds)


@dataclass
class Store:
    kv: KV
    clock: ManualClock | WallClock

    def let_lease_expire(self, ttl: int) -> None:
        # etcd's leader checks expiries every 500 ms; one TTL and a margin is enough.
        self.clock.sleep(ttl + 2.0)


@pytest.fixture(params=[pytest.param("memory"),
                        pytest.param("etcd", marks=[pytest.mark.lab, needs_etcd])])
def store(request: pytest.FixtureRequest, workdir: Path) -> Iterator[Store]:
    if request.param == "memory":
        clock = ManualClock()
        yield Store(MemoryKV(clock), clock)
        return
    cluster = embedded(workdir, host="127.0.0.32", timeout=60)
    try:
        yield Store(EtcdClient(cluster.endpoints()), WallClock())
    finally:
        cluster.close()


def test_revisions_versions_and_prefix_reads(store: Store) -> None:
    kv = store.kv
    r1 = kv.put("a/x", b"1")
    r2 = kv.put("a/y", b"2")
    r3 = kv.put("a/x", b"3")
    assert r1 < r2 < r3
    x = kv.get("a/x")
    assert x is not None and x.value == b"3" and x.version == 2
    assert (x.create_revision, x.mod_revision) == (r1, r3)
    kv.put("b/z", b"4")
    got, rev = kv.get_prefix("a/")
    assert [k.key for k in got] == ["a/x", "a/y"] and rev >= r3 + 1
    assert kv.get("a/none") is None
    assert kv.delete("a/", prefix=True) == 2
    assert kv.get_prefix("a/")[0] == [] and kv.get("b/z") is not None


def test_a_transaction_is_all_or_nothing_at_one_revision(store: Store) -> None:
    kv = store.kv
    rev = kv.put("t/a", b"1")
    won = kv.txn([Compare.modified("t/a", rev), Compare.absent("t/b")],
                 [Put("t/a", b"2"), Put("t/b", b"2"), Get("t/a")])
    assert won.succeeded
    a, b = kv.get("t/a"), kv.get("t/b")
    assert a is not None and b is not None and a.mod_revision == b.mod_revision == won.revision
    assert won.responses[2][0].value == b"2"  # type: ignore[index]
    lost = kv.txn([Compare.modified("t/a", rev)], [Put("t/a", b"3"), Delete("t/b")],
                  [Get("t/a")])
    assert not lost.succeeded and lost.responses[0][0].value == b"2"  # type: ignore[index]
    assert kv.get("t/b") is not None  # the success branch did nothing
    assert not kv.txn([Compare("t/none", "VALUE", "EQUAL", b"")], [Put("t/c", b"1")]).succeeded
    assert kv.txn([Compare("t/a", "VALUE", "EQUAL", b"2")], [Put("t/c", b"1")]).succeeded


def test_a_lease_keeps_its_keys_until_it_expires_or_is_revoked(store: Store) -> None:
    kv = store.kv
    gone, kept = kv.lease_grant(2), kv.lease_grant(30)
    kv.put("l/gone", b"1", gone)
    kv.put("l/kept", b"1", kept)
    assert kv.lease_keepalive(gone) > 0
    store.let_lease_expire(2)
    assert kv.get("l/gone") is None and kv.lease_keepalive(gone) == 0
    assert kv.get("l/kept") is not None and kv.lease_keepalive(kept) > 0
    kv.lease_revoke(kept)
    assert kv.get("l/kept") is None
    kv.lease_revoke(kept)  # gone already: fine
    with pytest.raises(StoreError):
        kv.put("l/again", b"1", gone)  # an expired lease takes no key


def test_cluster_records_are_fenced_by_the_leaders_token(store: Store) -> None:
    state = ClusterState(store.kv, "c1", clock=store.clock)
    one = Election(store.kv, "c1", "n1", ttl=2, clock=store.clock)
    two = Election(store.kv, "c1", "n2", ttl=2, clock=store.clock)
    held = one.try_acquire()
    assert held is not None and two.try_acquire() is None
    leader = current_leader(store.kv, "c1")
    assert leader is not None and (leader.name, leader.token) == ("n1", held.token)
    p = state.place("vm1", "n1", expect=0, token=held.token)
    with pytest.raises(StoreConflict):
        state.place("vm1", "n2", expect=0, token=held.token)  # read before the write above
    # n1 stops renewing: its lease expires, n2 leads with a greater token, n1 is fenced.
    store.let_lease_expire(2)
    took = two.try_acquire()
    assert took is not None and took.token > held.token
    with pytest.raises(Fenced):
        state.place("vm1", "n3", expect=p.revision, token=held.token)
    moved = state.place("vm1", "n2", expect=p.revision, token=took.token)
    assert state.placement("vm1") == moved and moved.node == "n2"


def test_a_switchover_moves_the_owner_and_ends_the_record_at_once(store: Store) -> None:
    state = ClusterState(store.kv, "c2", clock=store.clock)
    p = state.place("vm1", "n1", expect=0, token=None)
    lease = store.kv.lease_grant(30)
    mig = state.begin_migration("vm1", "n2", "Migration", expect=p, token=None,
                                attempt="a1", driver_lease=lease)
    with pytest.raises(StoreConflict):  # one migration in flight per VM
        state.begin_migration("vm1", "n3", "Migration", expect=p, token=None)
    assert set(state.migrations()) == {"vm1"} and state.orphaned_migrations() == {}
    store.kv.lease_revoke(lease)  # its driver died
    assert set(state.orphaned_migrations()) == {"vm1"}
    done = state.finish_migration(mig, success=True, token=None)
    assert done.node == "n2" and state.placement("vm1").node == "n2"
    assert state.migrations() == {}
    with pytest.raises(StoreConflict):
        state.abort_migration(mig)  # settled already


def test_events_are_appended_in_order(store: Store) -> None:
    state = ClusterState(store.kv, "c3", clock=store.clock)
    seqs = [state.append_event({"kind": "node-down", "node": f"n{i}"}) for i in range(3)]
    assert seqs == sorted(seqs) and len(set(seqs)) == 3
    got, _ = state.events()
    assert [r["node"] for _, r in got] == ["n0", "n1", "n2"]
    later, _ = state.events(seqs[0])
    assert [seq for seq, _ in later] == seqs[1:]
