"""What the cluster's state is kept in: a key-value store with etcd's semantics.

Everything the manager reads and writes (spec, VM definitions, placements, node states,
reports, migrations, intents, events, leadership and its fencing token) is written once,
in :class:`~vmcluster.store.state.ClusterState` and its neighbours, over this small
Protocol. Two stores implement it: :class:`~vmcluster.store.etcd.EtcdClient` on real
hosts and :class:`~vmcluster.store.memory.MemoryKV` in the simulator (virtual time);
one contract suite (``tests/store/test_kv_contract.py``) runs against both.

The semantics kept: one revision counter for the whole store, bumped by every write
(a transaction's writes share one); each key's create and mod revision and version;
compare-and-set transactions; leases with a TTL whose expiry deletes their keys.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from vmcluster.store.etcd import Compare, KeyValue, Op, TxnResult

__all__ = ["KV"]


class KV(Protocol):
    def get(self, key: str) -> KeyValue | None: ...

    def get_prefix(self, prefix: str) -> tuple[list[KeyValue], int]:
        """Every key under ``prefix`` (sorted by key) and the store revision read at."""

    def put(self, key: str, value: bytes, lease: int = 0) -> int:
        """Write ``key``; returns the revision of the write."""

    def delete(self, key: str, prefix: bool = False) -> int:
        """Delete ``key`` (or every key under it); returns how many were deleted."""

    def txn(self, compare: Sequence[Compare], success: Sequence[Op],
            failure: Sequence[Op] = ()) -> TxnResult:
        """If every ``compare`` holds, apply ``success``, else ``failure``, atomically."""

    def lease_grant(self, ttl: int) -> int:
        """A new lease of ``ttl`` seconds; returns its id."""

    def lease_keepalive(self, lease: int) -> int:
        """Renew ``lease``; returns its TTL, 0 when it has expired (is gone)."""

    def lease_revoke(self, lease: int) -> None:
        """Revoke ``lease`` (its keys are deleted); a lease already gone is fine."""
