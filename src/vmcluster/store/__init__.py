"""The cluster store: a typed etcd v3 client, etcd members, leader election with
fencing tokens, and the cluster's state (placements, migrations, events)."""

from vmcluster.store.election import Election, Fence, Keeper, Leadership, current_leader
from vmcluster.store.errors import Fenced, StoreConflict, StoreUnavailable
from vmcluster.store.etcd import EtcdClient, KeyValue
from vmcluster.store.members import EtcdCluster, MemberSpec, embedded, local_members
from vmcluster.store.state import ClusterState, Migration, Placement

__all__ = [
    "ClusterState",
    "Election",
    "EtcdClient",
    "EtcdCluster",
    "Fence",
    "Fenced",
    "Keeper",
    "KeyValue",
    "Leadership",
    "MemberSpec",
    "Migration",
    "Placement",
    "StoreConflict",
    "StoreUnavailable",
    "current_leader",
    "embedded",
    "local_members",
]
