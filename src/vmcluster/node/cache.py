"""The API's read cache: one cluster's keys, kept current by one etcd watch.

Every host's API answers reads (the VMs, nodes, networks, volumes, migrations,
events) from memory instead of asking etcd for each request: :class:`StoreCache`
lists the cluster's prefix once, then follows one watch from the revision it
read at, so it holds exactly what etcd held at ``revision``. When the watch ends
(the store lost its quorum, the revision was compacted) the cache says it is not
``healthy`` and :class:`CachedKV` reads etcd directly (whose errors then become
the API's 503s), while the cache lists and watches again.

:class:`CachedKV` is the KV a :class:`~vmcluster.store.state.ClusterState` reads
through: reads from the cache, writes to etcd, and a write returns only once the
cache has seen it, so a client that wrote reads its own write from any later
request to the same host.
"""

from __future__ import annotations

import bisect
import threading
import time
from collections.abc import Sequence

from vmcluster.errors import StoreError, VmclusterError
from vmcluster.store.etcd import Compare, EtcdClient, KeyValue, Op, TxnResult
from vmcluster.store.watch import Watch

__all__ = ["CachedKV", "StoreCache"]


class StoreCache:
    CATCH_UP_S = 2.0  # how long a write waits for the cache to see it
    RETRY_S = 1.0  # between attempts to list and watch again after the watch ended

    def __init__(self, client: EtcdClient, prefix: str) -> None:
        self.client, self.prefix = client, prefix
        self._data: dict[str, KeyValue] = {}
        self._keys: list[str] = []  # sorted: a prefix read is a bisected slice
        self._seen: dict[str, float] = {}  # key -> monotonic time of its last change here
        self._rev = 0
        self._changed = 0  # the revision of the last change of a value (not a rewrite)
        self._healthy = False
        self._cond = threading.Condition()
        self._closed = threading.Event()
        self._thread = threading.Thread(target=self._run, name="store cache", daemon=True)

    # -- lifecycle ------------------------------------------------------------

    def start(self, ready_s: float = 5.0) -> StoreCache:
        """Start following; wait up to ``ready_s`` for the first listing."""
        self._thread.start()
        with self._cond:
            self._cond.wait_for(lambda: self._healthy or self._closed.is_set(), ready_s)
        return self

    def close(self) -> None:
        self._closed.set()
        with self._cond:
            self._cond.notify_all()
        if self._thread.is_alive():
            self._thread.join(timeout=5)

    @property
    def healthy(self) -> bool:
        return self._healthy

    @property
    def revision(self) -> int:
        return self._rev

    @property
    def changed(self) -> int:
        """The revision of the last write that changed a value: rewrites of the same value
        (a node's report every half second), the daemons' own records and the VMs' measured
        loads (:mod:`vmcluster.node.load`) do not count."""
        return self._changed

    def _noisy(self, key: str) -> bool:
        return key.startswith((self.prefix + "daemons/", self.prefix + "loads/"))

    def _run(self) -> None:
        while not self._closed.is_set():
            try:
                rev = self._load()
                with Watch(self.client, self.prefix, prefix=True, start_revision=rev + 1) as w:
                    while not self._closed.is_set():
                        for ev in w.get(0.5):
                            self._apply(ev.type == "DELETE", ev.kv)
            except (VmclusterError, OSError):
                pass
            with self._cond:
                self._healthy = False
                self._cond.notify_all()
            self._closed.wait(self.RETRY_S)

    def _load(self) -> int:
        kvs, rev = self.client.get_prefix(self.prefix)
        now = time.monotonic()
        with self._cond:
            old = self._data
            self._data = {kv.key: kv for kv in kvs}
            self._keys = sorted(self._data)
            for kv in kvs:
                if old.get(kv.key) != kv:
                    self._seen[kv.key] = now
            if {k: v.value for k, v in old.items()} != {k: v.value for k, v in self._data.items()}:
                self._changed = rev
            self._rev = max(self._rev, rev)
            self._healthy = True
            self._cond.notify_all()
        return rev

    def _apply(self, deleted: bool, kv: KeyValue) -> None:
        with self._cond:
            i = bisect.bisect_left(self._keys, kv.key)
            present = i < len(self._keys) and self._keys[i] == kv.key
            old = self._data.get(kv.key)
            if (deleted and old is not None) or (not deleted and (
                    old is None or old.value != kv.value) and not self._noisy(kv.key)):
                self._changed = kv.mod_revision
            if deleted:
                if present:
                    del self._keys[i]
                self._data.pop(kv.key, None)
            else:
                if not present:
                    self._keys.insert(i, kv.key)
                self._data[kv.key] = kv
            self._seen[kv.key] = time.monotonic()
            self._rev = max(self._rev, kv.mod_revision)
            self._cond.notify_all()

    # -- reads ----------------------------------------------------------------

    def get(self, key: str) -> KeyValue | None:
        with self._cond:
            return self._data.get(key)

    def get_prefix(self, prefix: str) -> tuple[list[KeyValue], int]:
        with self._cond:
            lo = bisect.bisect_left(self._keys, prefix)
            hi = lo
            while hi < len(self._keys) and self._keys[hi].startswith(prefix):
                hi += 1
            return [self._data[k] for k in self._keys[lo:hi]], self._rev

    def age_s(self, key: str) -> float | None:
        """Seconds since ``key`` last changed (as this cache saw it); None: never seen."""
        seen = self._seen.get(key)
        return None if seen is None else time.monotonic() - seen

    def wait_for(self, revision: int, timeout_s: float) -> bool:
        """Wait until the cache holds ``revision``; False when it did not in time."""
        with self._cond:
            return self._cond.wait_for(lambda: self._rev >= revision or self._closed.is_set(),
                                       timeout_s)

    def wait_change(self, after: int, timeout_s: float) -> int:
        """Wait until the revision passes ``after`` (or ``timeout_s``); the revision."""
        with self._cond:
            self._cond.wait_for(lambda: self._rev > after or self._closed.is_set(), timeout_s)
            return self._rev

    def catch_up(self, timeout_s: float = CATCH_UP_S) -> bool:
        """Wait until the cache holds everything etcd held when this was called."""
        _, rev = self.client.get_prefix(self.prefix + "\x00")  # an empty range: its revision
        return self.wait_for(rev, timeout_s)


class CachedKV:
    """A KV whose reads come from ``cache`` (etcd itself while the cache is not healthy)
    and whose writes go to etcd and return once the cache has them."""

    def __init__(self, cache: StoreCache) -> None:
        self.cache = cache
        self.client = cache.client

    def get(self, key: str) -> KeyValue | None:
        if self.cache.healthy:
            return self.cache.get(key)
        return self.client.get(key)

    def get_prefix(self, prefix: str) -> tuple[list[KeyValue], int]:
        if self.cache.healthy:
            return self.cache.get_prefix(prefix)
        return self.client.get_prefix(prefix)

    def _seen(self, revision: int) -> None:
        if self.cache.healthy and not self.cache.wait_for(revision, StoreCache.CATCH_UP_S):
            raise StoreError(f"the API's cache did not see revision {revision} within "
                             f"{StoreCache.CATCH_UP_S:g} s")

    def put(self, key: str, value: bytes, lease: int = 0) -> int:
        rev = self.client.put(key, value, lease)
        self._seen(rev)
        return rev

    def delete(self, key: str, prefix: bool = False) -> int:
        n = self.client.delete(key, prefix)
        if self.cache.healthy:
            self.cache.catch_up()
        return n

    def txn(self, compare: Sequence[Compare], success: Sequence[Op],
            failure: Sequence[Op] = ()) -> TxnResult:
        got = self.client.txn(compare, success, failure)
        self._seen(got.revision)
        return got

    def lease_grant(self, ttl: int) -> int:
        return self.client.lease_grant(ttl)

    def lease_keepalive(self, lease: int) -> int:
        return self.client.lease_keepalive(lease)

    def lease_revoke(self, lease: int) -> None:
        self.client.lease_revoke(lease)
