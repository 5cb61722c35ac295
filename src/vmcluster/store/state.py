"""The cluster's state in etcd, under ``/vmcluster/<cluster>/``.

::

    schema                  {"version": 1}  what this layout is; a newer one is refused
    spec                    the spec file's TOML text (parse it with model.spec.parse_spec)
    crl                     the cluster CA's revocation list (PEM); every host keeps a copy
    tokens/<sha256>         {"role": R}  an API token, by its hash only
    daemons/<node>          {"api_url", "version", "qemu_version", "parts", "at"}
    vms/<vm>                {"definition", "desired", "machine"}  see store.vms
    placements/<vm>         {"node": N, "state": S}  which node owns the VM
    migrations/<vm>         {"source", "target", "network", "token", "id"}  one in flight per VM
    migration-drivers/<vm>  {"id"} on the lease of the process driving it; gone: an orphan
    slots/<node>/<i>        {} on its holder's lease: a migration slot (see store.slots)
    csv/hosts/<node>        {"links"} what the host sees of its links, on its lease
    csv/volumes/<volume>    {"coordinator", "epoch"} a shared volume's coordinator (csv)
    nodes/<node>            {"state": "up" | "down" | "quarantined" | "draining", ...}
    routes/<observer>       the observer's heartbeat view {"peer/net": true|false}
    reports/<node>          the node's report: routes, the VMs it runs, isolated or not
    loads/<node>            {"at", "vms": {vm: cores busy}} measured (node.load)
    event-seq               the last event number
    events/<seq:012d>       one event record (JSON, see control.events), append-only

A VM's placement changes only by compare-and-set on its key's mod revision,
in a transaction that is also guarded by the manager's fencing token, so two
managers (or one stale one) can never give a VM two owners. A migration's
switchover (placement -> target, migration key deleted) is one transaction, and
so is its abort (the migration key deleted): whoever wins that compare-and-set on
the record decides which copy runs, the driver or the manager that adopts an
orphan, never both.
A lost compare raises :class:`StoreConflict`, a stale token :class:`Fenced`.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from vmcluster.errors import StoreError
from vmcluster.model import ClusterSpec
from vmcluster.model.spec import spec_with_vms
from vmcluster.store import vms
from vmcluster.store.election import Fence, leader_key
from vmcluster.store.errors import Fenced, StoreConflict, StoreUnavailable
from vmcluster.store.etcd import Compare, Delete, EtcdClient, Get, KeyValue, Op, Put
from vmcluster.store.kv import KV
from vmcluster.store.watch import Watch
from vmcluster.substrate.clock import MonotonicClock
from vmcluster.substrate.protocol import Clock

__all__ = ["SCHEMA_VERSION", "ClusterState", "Migration", "Placement", "declared_failed"]

SCHEMA_VERSION = 1
SEQ_WIDTH = 12
_APPEND_TRIES = 50


def declared_failed(record: Mapping[str, Any]) -> bool:
    """Does a node's record (``nodes/<node>``) say the manager declared it failed, its VMs
    to restart elsewhere? (``failed`` is cleared once the node is heard again.)"""
    return bool(record.get("failed")) and record.get("state") in ("down", "quarantined")


def _dump(obj: object) -> bytes:
    return json.dumps(obj, sort_keys=True).encode()


@dataclass(frozen=True)
class Placement:
    """Where a VM runs; ``revision`` is the key's mod revision (0: never placed)."""

    vm: str
    node: str | None
    state: str
    revision: int


@dataclass(frozen=True)
class Migration:
    vm: str
    source: str
    target: str
    network: str
    token: int | None
    revision: int
    id: str = ""


class ClusterState:
    """Typed reads and guarded writes of one cluster's state."""

    def __init__(self, client: KV, cluster: str, clock: Clock | None = None) -> None:
        self.client, self.cluster = client, cluster
        self.root = f"/vmcluster/{cluster}/"
        self.fence = Fence(client, cluster)
        self.clock = clock or MonotonicClock()

    @property
    def etcd(self) -> EtcdClient:
        """The store as etcd, for what only etcd has: its members and its watches (a
        cluster whose store is in memory, the simulator's, has neither)."""
        if not isinstance(self.client, EtcdClient):
            raise StoreError("this cluster's store is in memory: it has no etcd members "
                             "or watches")
        return self.client

    def key(self, *parts: str) -> str:
        return self.root + "/".join(parts)

    # -- guarded writes ---------------------------------------------------

    def _guarded(self, token: int | None, compare: list[Compare], ops: list[Op], what: str) -> int:
        """Apply ``ops`` if ``compare`` holds and ``token`` leads; return the revision."""
        guards = [*compare, self.fence.guard(token)] if token is not None else compare
        got = self.client.txn(guards, ops, [Get(leader_key(self.cluster))])
        if got.succeeded:
            return got.revision
        if token is not None:
            kvs = got.responses[0] if got.responses else ()
            leader = kvs[0] if isinstance(kvs, tuple) and kvs else None
            if leader is None or leader.create_revision != token:
                raise Fenced(
                    f"fenced: token {token} no longer leads {self.cluster}; {what} refused"
                )
        raise StoreConflict(f"{what}: changed by someone else since it was read; read it again")

    # -- spec -------------------------------------------------------------

    def put_spec(self, text: str, token: int | None = None) -> int:
        self.check_schema()
        schema = Put(self.key("schema"), _dump({"version": SCHEMA_VERSION}))
        return self._guarded(token, [], [schema, Put(self.key("spec"), text.encode())],
                             "spec update")

    def check_schema(self) -> None:
        """Refuse a store written by a newer vmcluster (its layout may mean other things)."""
        kv = self.client.get(self.key("schema"))
        version = 0 if kv is None else int(kv.json().get("version", 0))
        if version > SCHEMA_VERSION:
            raise StoreError(f"the store of {self.cluster} has schema version {version}; this "
                             f"vmcluster knows {SCHEMA_VERSION}: upgrade it on this host")

    def spec_text(self) -> str | None:
        self.check_schema()
        kv = self.client.get(self.key("spec"))
        return None if kv is None else kv.value.decode()

    def spec(self, text: str | None = None,
             definitions: Sequence[Mapping[str, Any]] | None = None) -> ClusterSpec:
        """The cluster's spec: the spec text with the store's VM definitions as its VMs
        (StoreError when there is no spec in the store yet). ``text`` and
        ``definitions``, when given, are used instead of reading them."""
        text = self.spec_text() if text is None else text
        if text is None:
            raise StoreError(f"the store holds no spec for {self.cluster}; run `vmcluster "
                             "cluster init` first")
        if definitions is None:
            definitions = [r.definition for r in vms.records(self).values()]
        return spec_with_vms(text, f"<the spec of {self.cluster} in etcd>", definitions)

    def wait_spec(self, say: Callable[[str], None] | None = None, poll_s: float = 0.5,
                  timeout_s: float | None = None) -> ClusterSpec:
        """The cluster's spec from the store, waiting for it to be put there (and for the
        store to answer); a part of a daemon starts with this."""
        deadline = None if timeout_s is None else self.clock.now() + timeout_s
        said = False
        while True:
            try:
                text = self.spec_text()
            except StoreUnavailable:
                text = None
            if text is not None:
                return self.spec(text)
            if deadline is not None and self.clock.now() >= deadline:
                raise StoreError(f"no spec for {self.cluster} in the store after {timeout_s} s")
            if say is not None and not said:
                say(f"waiting for the spec of {self.cluster} in the store")
                said = True
            self.clock.sleep(poll_s)

    # -- placements -------------------------------------------------------

    @staticmethod
    def _placement(vm: str, kv: KeyValue | None) -> Placement:
        if kv is None:
            return Placement(vm, None, "stopped", 0)
        data = kv.json()
        return Placement(vm, data.get("node"), str(data.get("state", "running")), kv.mod_revision)

    def placement(self, vm: str) -> Placement:
        return self._placement(vm, self.client.get(self.key("placements", vm)))

    def placements(self) -> dict[str, Placement]:
        kvs, _ = self.client.get_prefix(self.key("placements", ""))
        out = {}
        for kv in kvs:
            vm = kv.key.rsplit("/", 1)[1]
            out[vm] = self._placement(vm, kv)
        return out

    def place(
        self,
        vm: str,
        node: str | None,
        *,
        expect: int,
        token: int | None,
        state: str = "running",
    ) -> Placement:
        """Set ``vm``'s owner to ``node`` if its key is still at revision ``expect``."""
        key = self.key("placements", vm)
        rev = self._guarded(
            token,
            [Compare.modified(key, expect)],
            [Put(key, _dump({"node": node, "state": state}))],
            f"placement of {vm}",
        )
        return Placement(vm, node, state, rev)

    # -- migrations -------------------------------------------------------

    def begin_migration(
        self, vm: str, target: str, network: str, *, expect: Placement, token: int | None,
        attempt: str = "", driver_lease: int = 0,
    ) -> Migration:
        """Record a migration of ``vm`` from its current owner; one in flight per VM. With
        ``driver_lease``, the driver's key lives on that lease: when the driver dies the
        record is an orphan (:meth:`orphaned_migrations`)."""
        if expect.node is None:
            raise StoreError(f"cannot migrate {vm}: it has no owner")
        mkey = self.key("migrations", vm)
        body = {"source": expect.node, "target": target, "network": network, "token": token,
                "id": attempt}
        ops: list[Op] = [Put(mkey, _dump(body))]
        if driver_lease:
            ops.append(Put(self.key("migration-drivers", vm), _dump({"id": attempt}),
                           driver_lease))
        rev = self._guarded(
            token,
            [Compare.modified(self.key("placements", vm), expect.revision), Compare.absent(mkey)],
            ops,
            f"migration of {vm}",
        )
        return Migration(vm, expect.node, target, network, token, rev, attempt)

    def migrations(self) -> dict[str, Migration]:
        kvs, _ = self.client.get_prefix(self.key("migrations", ""))
        return {kv.key.rsplit("/", 1)[1]: self._migration(kv) for kv in kvs}

    @staticmethod
    def _migration(kv: KeyValue) -> Migration:
        d = kv.json()
        return Migration(kv.key.rsplit("/", 1)[1], d["source"], d["target"], d["network"],
                         d.get("token"), kv.mod_revision, str(d.get("id", "")))

    def orphaned_migrations(self) -> dict[str, Migration]:
        """Migrations whose driver is gone (its lease expired): the manager settles them."""
        # One read of both prefixes ("migrations/" and "migration-drivers/" share
        # "migration"): two reads could see a migration begun between them without its
        # driver, and take a live one for an orphan.
        kvs, _ = self.client.get_prefix(self.key("migration"))
        records, driven = self.key("migrations", ""), self.key("migration-drivers", "")
        out, have = {}, set()
        for kv in kvs:
            if kv.key.startswith(driven):
                have.add(kv.key[len(driven):])
            elif kv.key.startswith(records):
                out[kv.key[len(records):]] = self._migration(kv)
        return {vm: m for vm, m in out.items() if vm not in have}

    def reclaim_migration(self, mig: Migration, lease: int) -> bool:
        """The driver of ``mig`` claims it again on ``lease`` (its old lease expired while it
        was still driving), only if the record is still the one it wrote; False when
        someone else settled it meanwhile."""
        mkey = self.key("migrations", mig.vm)
        got = self.client.txn([Compare.modified(mkey, mig.revision)],
                              [Put(self.key("migration-drivers", mig.vm),
                                   _dump({"id": mig.id}), lease)])
        return bool(got.succeeded)

    def abort_migration(self, mig: Migration, token: int | None = None) -> None:
        """Give ``mig`` up (the VM stays on its source): the record is deleted only if it is
        still the one ``mig`` read (StoreConflict otherwise: someone else settled it)."""
        mkey = self.key("migrations", mig.vm)
        self._guarded(token, [Compare.modified(mkey, mig.revision)],
                      [Delete(mkey), Delete(self.key("migration-drivers", mig.vm))],
                      f"rollback of {mig.vm}'s migration")

    def finish_migration(self, mig: Migration, *, success: bool, token: int | None) -> Placement:
        """End ``mig``: on success the owner becomes the target in the same transaction."""
        pkey, mkey = self.key("placements", mig.vm), self.key("migrations", mig.vm)
        current = self.placement(mig.vm)
        if current.node != mig.source:
            raise StoreConflict(f"{mig.vm} is owned by {current.node}, not {mig.source}")
        ops: list[Op] = [Delete(mkey), Delete(self.key("migration-drivers", mig.vm))]
        node = mig.target if success else mig.source
        if success:
            ops.append(Put(pkey, _dump({"node": node, "state": current.state})))
        rev = self._guarded(
            token,
            [Compare.modified(pkey, current.revision), Compare.modified(mkey, mig.revision)],
            ops,
            f"switchover of {mig.vm}",
        )
        return Placement(mig.vm, node, current.state, rev if success else current.revision)

    # -- nodes and routes -------------------------------------------------

    def set_node_state(self, node: str, state: str, token: int | None = None, **extra: Any) -> int:
        return self._guarded(
            token, [], [Put(self.key("nodes", node), _dump({"state": state, **extra}))], node
        )

    def node_states(self) -> dict[str, dict[str, Any]]:
        kvs, _ = self.client.get_prefix(self.key("nodes", ""))
        return {kv.key.rsplit("/", 1)[1]: kv.json() for kv in kvs}

    def node_record(self, node: str) -> dict[str, Any]:
        """One node's record (``{}`` when it has none)."""
        kv = self.client.get(self.key("nodes", node))
        return {} if kv is None else dict(kv.json())

    def daemons(self) -> dict[str, dict[str, Any]]:
        """Each host's daemon record (``daemons/<node>``, written by its API part once it
        runs): a host without one has never run in this cluster."""
        kvs, _ = self.client.get_prefix(self.key("daemons", ""))
        return {kv.key.rsplit("/", 1)[1]: kv.json() for kv in kvs}

    # -- events -----------------------------------------------------------

    def append_event(self, record: Mapping[str, object]) -> int:
        """Append one event; returns its sequence number (1, 2, ...), gap-free."""
        seq_key = self.key("event-seq")
        for _ in range(_APPEND_TRIES):
            kv = self.client.get(seq_key)
            last = int(kv.value) if kv else 0
            seq = last + 1
            got = self.client.txn(
                [Compare.modified(seq_key, kv.mod_revision if kv else 0)],
                [Put(seq_key, str(seq).encode()), Put(self._event_key(seq), _dump(record))],
            )
            if got.succeeded:
                return seq
        raise StoreConflict(f"could not append an event in {_APPEND_TRIES} tries (contention)")

    def _event_key(self, seq: int) -> str:
        return self.key("events", f"{seq:0{SEQ_WIDTH}d}")

    def events(self, after: int = 0) -> tuple[list[tuple[int, dict[str, Any]]], int]:
        """Events with seq > ``after`` in order, and the store revision they were read at."""
        kvs, rev = self.client.get_prefix(self.key("events", ""))
        out = []
        for kv in kvs:
            seq = int(kv.key.rsplit("/", 1)[1])
            if seq > after:
                out.append((seq, kv.json()))
        return out, rev

    def follow(
        self,
        after: int = 0,
        *,
        timeout: float | None = None,
        stop: Callable[[], bool] | None = None,
        poll_s: float = 0.25,
    ) -> Iterator[tuple[int, dict[str, Any]]]:
        """Past events after ``after``, then new ones as they are appended, until ``timeout``
        seconds pass or ``stop()`` is true (one of them bounds the loop; both may be given)."""
        if timeout is None and stop is None:
            raise StoreError("follow needs a timeout or a stop condition")
        deadline = None if timeout is None else self.clock.now() + timeout
        past, rev = self.events(after)
        last = after
        for seq, rec in past:
            last = seq
            yield seq, rec
        with Watch(self.etcd, self.key("events", ""), prefix=True, start_revision=rev + 1) as w:
            while (stop is None or not stop()) and (
                deadline is None or self.clock.now() < deadline
            ):
                for ev in w.get(poll_s):
                    if ev.type != "PUT":
                        continue
                    seq = int(ev.kv.key.rsplit("/", 1)[1])
                    if seq > last:
                        last = seq
                        yield seq, ev.kv.json()
