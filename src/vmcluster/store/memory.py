"""MemoryKV: the :class:`~vmcluster.store.kv.KV` Protocol in memory, for the simulator.

It keeps what the cluster's state relies on of etcd, and nothing else: one revision for
the store, bumped once per write or transaction; each key's create and mod revision,
version and lease; ``txn`` with compares on CREATE, MOD, VERSION, VALUE and LEASE; a
lease's keys go when it expires, measured on the clock it is given (virtual time in
the simulator: a lease that nobody renews expires as the simulated seconds pass).
Thread-safe, so that the manager's workers may share it as they share etcd.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace

from vmcluster.errors import StoreError
from vmcluster.store.etcd import Compare, Delete, Get, KeyValue, Op, Put, TxnResult
from vmcluster.substrate.clock import MonotonicClock
from vmcluster.substrate.protocol import Clock

__all__ = ["MemoryKV"]

_FIELD = {"CREATE": "create_revision", "MOD": "mod_revision", "VERSION": "version",
          "LEASE": "lease"}


@dataclass
class _Lease:
    ttl: int
    expires: float


class MemoryKV:
    """An in-memory key-value store with etcd's revisions, transactions and leases."""

    def __init__(self, clock: Clock | None = None) -> None:
        self.clock: Clock = clock if clock is not None else MonotonicClock()
        self._kvs: dict[str, KeyValue] = {}
        self._leases: dict[int, _Lease] = {}
        self._revision = 1  # etcd starts at 1 too: no key was ever written at 0
        self._next_lease = 0x1000
        self._lock = threading.RLock()

    # -- reads ---------------------------------------------------------------------
    def get(self, key: str) -> KeyValue | None:
        with self._lock:
            self._expire()
            return self._kvs.get(key)

    def get_prefix(self, prefix: str) -> tuple[list[KeyValue], int]:
        with self._lock:
            self._expire()
            return [self._kvs[k] for k in sorted(self._kvs) if k.startswith(prefix)], \
                self._revision

    # -- writes --------------------------------------------------------------------
    def put(self, key: str, value: bytes, lease: int = 0) -> int:
        with self._lock:
            self._expire()
            self._revision += 1
            self._put(key, value, lease)
            return self._revision

    def delete(self, key: str, prefix: bool = False) -> int:
        with self._lock:
            self._expire()
            gone = self._matching(key, prefix)
            if gone:
                self._revision += 1
                for k in gone:
                    del self._kvs[k]
            return len(gone)

    def txn(self, compare: Sequence[Compare], success: Sequence[Op],
            failure: Sequence[Op] = ()) -> TxnResult:
        with self._lock:
            self._expire()
            ok = all(self._holds(c) for c in compare)
            ops = success if ok else failure
            writes = any(isinstance(op, Put) or (isinstance(op, Delete)
                                                 and self._matching(op.key, op.prefix))
                         for op in ops)
            if writes:
                self._revision += 1
            responses: list[tuple[KeyValue, ...] | int] = []
            for op in ops:
                if isinstance(op, Get):
                    responses.append(tuple(self._kvs[k]
                                           for k in sorted(self._matching(op.key, op.prefix))))
                elif isinstance(op, Put):
                    self._put(op.key, op.value, op.lease)
                    responses.append(self._revision)
                else:
                    gone = self._matching(op.key, op.prefix)
                    for k in gone:
                        del self._kvs[k]
                    responses.append(len(gone))
            return TxnResult(ok, self._revision, tuple(responses))

    # -- leases --------------------------------------------------------------------
    def lease_grant(self, ttl: int) -> int:
        if ttl <= 0:
            raise StoreError(f"a lease needs a positive TTL, not {ttl}")
        with self._lock:
            self._next_lease += 1
            self._leases[self._next_lease] = _Lease(ttl, self.clock.now() + ttl)
            return self._next_lease

    def lease_keepalive(self, lease: int) -> int:
        with self._lock:
            self._expire()
            held = self._leases.get(lease)
            if held is None:
                return 0
            held.expires = self.clock.now() + held.ttl
            return held.ttl

    def lease_revoke(self, lease: int) -> None:
        with self._lock:
            self._expire()
            if self._leases.pop(lease, None) is not None:
                self._drop_keys_of([lease])

    # -- inside --------------------------------------------------------------------
    def _put(self, key: str, value: bytes, lease: int) -> None:
        if lease and lease not in self._leases:
            raise StoreError(f"etcd error: requested lease not found ({lease})")
        old = self._kvs.get(key)
        if old is None:
            self._kvs[key] = KeyValue(key, value, self._revision, self._revision, 1, lease)
        else:
            self._kvs[key] = replace(old, value=value, mod_revision=self._revision,
                                     version=old.version + 1, lease=lease)

    def _matching(self, key: str, prefix: bool) -> list[str]:
        if prefix:
            return [k for k in self._kvs if k.startswith(key)]
        return [key] if key in self._kvs else []

    def _holds(self, c: Compare) -> bool:
        kv = self._kvs.get(c.key)
        if c.target == "VALUE":
            if kv is None:
                return False  # as etcd: a value compare on a missing key never holds
            have: int | bytes = kv.value
        else:
            have = getattr(kv, _FIELD[c.target]) if kv is not None else 0
        want = c.value
        if c.result == "EQUAL":
            return have == want
        if c.result == "NOT_EQUAL":
            return have != want
        if isinstance(have, bytes) or isinstance(want, bytes):
            raise StoreError(f"compare {c.result} needs a number, not a value ({c.key})")
        return have > want if c.result == "GREATER" else have < want

    def _expire(self) -> None:
        now = self.clock.now()
        dead = [lid for lid, lease in self._leases.items() if lease.expires <= now]
        for lid in dead:
            del self._leases[lid]
        if dead:
            self._drop_keys_of(dead)

    def _drop_keys_of(self, leases: Iterable[int]) -> None:
        ids = set(leases)
        gone = [k for k, kv in self._kvs.items() if kv.lease in ids]
        if gone:
            self._revision += 1
            for k in gone:
                del self._kvs[k]
