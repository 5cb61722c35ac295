"""Cluster state on a real etcd: CAS placements, fenced writes, switchover, the event log."""

from __future__ import annotations

import threading

import pytest

from vmcluster.store import (
    ClusterState,
    Election,
    EtcdClient,
    EtcdCluster,
    Fenced,
    StoreConflict,
)

from .conftest import needs_etcd

pytestmark = [pytest.mark.lab, needs_etcd]


def test_cas_placement_prevents_a_double_owner(etcd1: EtcdCluster) -> None:
    client = EtcdClient(etcd1.endpoints())
    leader = Election(client, "c", "mgr", ttl=5).campaign(timeout=10)
    state = ClusterState(client, "c")
    state.place("web", "n1", expect=0, token=leader.token)
    seen = state.placement("web")  # both workers read the same revision (n1 just died)
    results: dict[str, str] = {}
    barrier = threading.Barrier(8)

    def restart_on(node: str) -> None:
        barrier.wait(timeout=10)
        try:
            state.place("web", node, expect=seen.revision, token=leader.token)
            results[node] = "won"
        except StoreConflict:
            results[node] = "lost"

    threads = [threading.Thread(target=restart_on, args=(f"n{i}",)) for i in range(2, 10)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    winners = [n for n, r in results.items() if r == "won"]
    assert len(results) == 8 and len(winners) == 1
    assert state.placement("web").node == winners[0]


def test_stale_token_cannot_place(etcd1: EtcdCluster) -> None:
    client = EtcdClient(etcd1.endpoints())
    old = Election(client, "c", "old", ttl=5)
    stale = old.campaign(timeout=10)
    state = ClusterState(client, "c")
    state.place("db", "n1", expect=0, token=stale.token)
    old.resign()
    new = Election(client, "c", "new", ttl=5).campaign(timeout=10)
    current = state.placement("db")
    with pytest.raises(Fenced):
        state.place("db", "n2", expect=current.revision, token=stale.token)
    assert state.placement("db").node == "n1"
    state.place("db", "n3", expect=current.revision, token=new.token)
    assert state.placement("db").node == "n3"


def test_migration_switchover_is_one_step(etcd1: EtcdCluster) -> None:
    client = EtcdClient(etcd1.endpoints())
    token = Election(client, "c", "mgr", ttl=5).campaign(timeout=10).token
    state = ClusterState(client, "c")
    p = state.place("web", "n1", expect=0, token=token)
    mig = state.begin_migration("web", "n2", "Migration", expect=p, token=token)
    with pytest.raises(StoreConflict):  # one migration in flight per VM
        state.begin_migration("web", "n3", "Migration", expect=p, token=token)
    with pytest.raises(StoreConflict):  # the owner cannot change under a migration
        state.place("web", "n3", expect=p.revision - 1, token=token)
    assert set(state.migrations()) == {"web"}
    done = state.finish_migration(mig, success=True, token=token)
    assert done.node == "n2" and state.placement("web").node == "n2"
    assert state.migrations() == {}
    p2 = state.placement("web")
    mig2 = state.begin_migration("web", "n3", "Migration", expect=p2, token=token)
    back = state.finish_migration(mig2, success=False, token=token)
    assert back.node == "n2" and state.placement("web") == p2


def test_event_log_is_gap_free_and_followable(etcd1: EtcdCluster) -> None:
    client = EtcdClient(etcd1.endpoints())
    state = ClusterState(client, "c")
    assert state.append_event({"kind": "first"}) == 1

    def writer(w: int) -> None:
        for i in range(10):
            state.append_event({"kind": "n", "w": w, "i": i})

    threads = [threading.Thread(target=writer, args=(w,)) for w in range(3)]
    got: list[tuple[int, dict[str, object]]] = []
    for t in threads:
        t.start()
    for seq, rec in state.follow(after=0, timeout=30, stop=lambda: len(got) >= 31):
        got.append((seq, rec))
    for t in threads:
        t.join(timeout=30)
    assert [s for s, _ in got] == list(range(1, 32))
    assert sorted((r["w"], r["i"]) for _, r in got[1:]) == [
        (w, i) for w in range(3) for i in range(10)
    ]
    events, _ = state.events(after=29)
    assert [s for s, _ in events] == [30, 31]


def test_the_spec_carries_the_schema_version_and_a_newer_one_is_refused(
    etcd1: EtcdCluster,
) -> None:
    import json
    from pathlib import Path

    from vmcluster.errors import StoreError
    from vmcluster.store.state import SCHEMA_VERSION

    text = (Path(__file__).resolve().parents[2] / "examples" / "lab.toml").read_text()
    state = ClusterState(EtcdClient(etcd1.endpoints()), "s")
    waiter: dict[str, object] = {}
    t = threading.Thread(target=lambda: waiter.update(spec=state.wait_spec(poll_s=0.05)))
    t.start()  # a daemon's part waits for the spec before it starts
    state.put_spec(text)
    t.join(10)
    spec = waiter["spec"]
    assert spec.cluster.name == "lab"
    schema = state.client.get(state.key("schema"))
    assert schema is not None and schema.json() == {"version": SCHEMA_VERSION}
    state.client.put(state.key("schema"), json.dumps({"version": SCHEMA_VERSION + 1}).encode())
    with pytest.raises(StoreError, match="schema version 2; this vmcluster knows 1"):
        state.spec_text()
    with pytest.raises(StoreError, match="upgrade it on this host"):
        state.put_spec(text)
