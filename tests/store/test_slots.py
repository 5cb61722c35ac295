"""Migration slots in a real etcd: a host's limit holds across drivers; a dead one's frees."""

from __future__ import annotations

import pytest

from vmcluster.store import ClusterState, EtcdClient, EtcdCluster
from vmcluster.store.slots import take_slot

from .conftest import needs_etcd

pytestmark = [pytest.mark.lab, needs_etcd]


def test_a_hosts_slots_are_counted_across_drivers_and_a_dead_holder_frees_its_own(
    etcd1: EtcdCluster,
) -> None:
    one = ClusterState(EtcdClient(etcd1.endpoints()), "c")
    two = ClusterState(EtcdClient(etcd1.endpoints()), "c")  # another driver, elsewhere
    a, b = take_slot(one, "node1", 2), take_slot(two, "node1", 2)
    assert a is not None and b is not None and a.key != b.key
    assert take_slot(one, "node1", 2) is None  # the third waits, whoever asks
    other = take_slot(two, "node2", 2)
    assert other is not None  # another host's slots are its own
    a.release()
    c = take_slot(two, "node1", 2)
    assert c is not None and c.key == a.key
    # A holder that died (its lease gone: what SLOT_TTL_S does to it) frees its slot.
    one.client.lease_revoke(b.lease)
    d = take_slot(one, "node1", 2)
    assert d is not None and d.key == b.key
    for held in (b, c, d, other):
        held.release()
    assert one.client.get_prefix(one.key("slots", ""))[0] == []
