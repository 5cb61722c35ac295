"""The CSV records in etcd: hosts publish their links on a lease, coordinators by CAS."""

from __future__ import annotations

import threading
import time

import pytest

from vmcluster.csv.coordinator import LinkPublisher, StoreBook, coordinator, volume_access
from vmcluster.model.spec import parse_spec
from vmcluster.store import ClusterState, EtcdClient, EtcdCluster

from .conftest import needs_etcd

pytestmark = [pytest.mark.lab, needs_etcd]

SPEC = parse_spec("""
[cluster]
name = "c"
[[networks]]
name = "Heartbeat"
subnet = "198.18.2.0/24"
role = 1
[[networks]]
name = "Storage"
subnet = "198.18.4.0/24"
role = 0
[[nodes]]
name = "n1"
cores = 2
memory_mib = 4096
interfaces = { Heartbeat = "198.18.2.1", Storage = "198.18.4.1" }
[[nodes]]
name = "n2"
cores = 2
memory_mib = 4096
interfaces = { Heartbeat = "198.18.2.2", Storage = "198.18.4.2" }
[[nodes]]
name = "n3"
cores = 2
memory_mib = 4096
interfaces = { Heartbeat = "198.18.2.3", Storage = "198.18.4.3" }
[[volumes]]
name = "CSV1"
network = "Storage"
size_gib = 1
""", "test")


def _log(_m: str) -> None:
    return None


def test_hosts_links_and_coordinator_live_in_the_store(etcd1: EtcdCluster) -> None:
    state = ClusterState(EtcdClient(etcd1.endpoints()), "c")
    book = StoreBook(state)
    pubs = {n: LinkPublisher(StoreBook(state), n, _log) for n in ("n1", "n2", "n3")}
    try:
        for pub in pubs.values():
            pub.publish({"Heartbeat": True, "Storage": True})
        view = book.view(SPEC)
        assert view.up == {"n1", "n2", "n3"}
        assert view.has_path("Storage") == {"n1", "n2", "n3"}
        assert coordinator(book, SPEC, "CSV1") == "n1"
        # n1 loses its storage path: n2 takes the role, n1 is redirected through it.
        pubs["n1"].publish({"Heartbeat": True, "Storage": False})
        coord, modes = volume_access(book, SPEC, "CSV1")
        assert coord == "n2" and book.recorded("CSV1") == "n2"
        assert (modes["n1"].mode, modes["n1"].via, modes["n1"].network) == (
            "redirected", "n2", "Heartbeat")
        # n2's agent stops (hung or dead): its entry goes with its lease, and n3 is elected.
        pubs["n2"].stop()
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline and "n2" in book.view(SPEC).up:
            time.sleep(0.2)
        assert "n2" not in book.view(SPEC).up
        assert coordinator(book, SPEC, "CSV1") == "n3"
        # A lease that expired while its host lived (the store was slow): the host's
        # publisher notices (keepalive says TTL 0) and writes its entry again.
        state.client.lease_revoke(pubs["n3"]._lease)
        assert "n3" not in book.view(SPEC).up
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and "n3" not in book.view(SPEC).up:
            time.sleep(0.2)
        assert "n3" in book.view(SPEC).up
    finally:
        for pub in pubs.values():
            pub.stop()


def test_electing_at_once_agrees(etcd1: EtcdCluster) -> None:
    state = ClusterState(EtcdClient(etcd1.endpoints()), "c")
    books = [StoreBook(state, me, lambda: {"Heartbeat": True, "Storage": True})
             for me in ("n1", "n2", "n3") for _ in range(3)]
    pubs = [LinkPublisher(StoreBook(state), n, _log) for n in ("n1", "n2", "n3")]
    for pub in pubs:
        pub.publish({"Heartbeat": True, "Storage": True})
    got: list[str | None] = []
    barrier = threading.Barrier(len(books))

    def elect(b: StoreBook) -> None:
        barrier.wait(timeout=10)
        got.append(coordinator(b, SPEC, "CSV1"))

    threads = [threading.Thread(target=elect, args=(b,)) for b in books]
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=30)
    finally:
        for pub in pubs:
            pub.stop()
    assert len(got) == len(books) and len(set(got)) == 1
    assert StoreBook(state).recorded("CSV1") == got[0]


def test_a_lost_links_lease_is_replaced_at_once_with_the_newest_links(
    etcd1: EtcdCluster,
) -> None:
    """A host's links entry lives on a lease; when the lease is gone (the store was slow
    to renew it), the next publish makes a new one at once and writes what the host sees
    now, never the links it saw before: a live host never looks as if all its links were
    down, nor as if a cut link were up."""
    state = ClusterState(EtcdClient(etcd1.endpoints()), "lease")
    said: list[str] = []
    pub = LinkPublisher(StoreBook(state), "n1", said.append)
    try:
        pub.publish({"Heartbeat": True, "Migration": True})
        state.client.lease_revoke(pub._lease)  # lapsed, as a late renewal lets it
        assert StoreBook(state).view(SPEC).links_up == frozenset()
        pub.publish({"Heartbeat": True, "Migration": False})
        view = StoreBook(state).view(SPEC)
        assert ("Heartbeat", "n1") in view.links_up and ("Migration", "n1") not in view.links_up
        assert said == []  # replaced in the same call: nothing to report
    finally:
        pub.stop()
