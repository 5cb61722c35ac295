"""A small typed etcd v3 client over etcd's JSON gRPC gateway (stdlib only).

etcd 3.4 (Debian's ``etcd-server`` 3.4.23) serves the gateway under ``/v3/``
(and ``/v3beta/``; ``/v3alpha/`` is gone). Every request is an HTTP POST of a
JSON body; keys and values are base64; 64-bit integers come back as strings
and fields equal to zero are left out.

Failover: the client holds a list of endpoints and remembers the last one that
answered. A request that cannot connect, times out, or meets a member without
a leader (gRPC code 14, "no leader") goes to the next endpoint; when none
answers, :class:`StoreUnavailable` is raised. Any other etcd error is a
:class:`~vmcluster.errors.StoreError` at once. A timed-out write may still
have been applied; callers that care (the election) check what the store
holds after a retry rather than trusting the second answer.
"""

from __future__ import annotations

import base64
import http.client
import json
import ssl
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from vmcluster.errors import StoreError
from vmcluster.pki import NodeCredentials
from vmcluster.store.errors import StoreUnavailable
from vmcluster.store.transport import Connections
from vmcluster.substrate.clock import MonotonicClock
from vmcluster.substrate.protocol import Clock

__all__ = [
    "Compare",
    "Delete",
    "EtcdClient",
    "Get",
    "KeyValue",
    "Put",
    "TxnResult",
]

PREFIX = "/v3"
_RETRY_CODES = {14}  # UNAVAILABLE
# "not supported for learner": a member that joined and is not promoted yet serves no
# client requests; the next endpoint does.
_RETRY_TEXT = ("no leader", "leader changed", "request timed out", "not capable",
               "not supported for learner")


def _b64(text: str | bytes) -> str:
    raw = text.encode() if isinstance(text, str) else text
    return base64.b64encode(raw).decode()


def _unb64(text: str | None) -> bytes:
    return base64.b64decode(text) if text else b""


def prefix_end(key: str) -> str:
    """The ``range_end`` that makes a range cover every key starting with ``key``."""
    raw = bytearray(key.encode())
    while raw and raw[-1] == 0xFF:
        raw.pop()
    if not raw:
        return _b64(b"\0")
    raw[-1] += 1
    return _b64(bytes(raw))


@dataclass(frozen=True)
class KeyValue:
    """One key as etcd holds it; revisions are cluster-wide and only grow."""

    key: str
    value: bytes
    create_revision: int
    mod_revision: int
    version: int
    lease: int = 0

    @classmethod
    def from_wire(cls, kv: dict[str, Any]) -> KeyValue:
        return cls(
            key=_unb64(kv.get("key")).decode(),
            value=_unb64(kv.get("value")),
            create_revision=int(kv.get("create_revision", 0)),
            mod_revision=int(kv.get("mod_revision", 0)),
            version=int(kv.get("version", 0)),
            lease=int(kv.get("lease", 0)),
        )

    def json(self) -> Any:
        return json.loads(self.value)


CompareTarget = Literal["CREATE", "MOD", "VERSION", "VALUE", "LEASE"]
CompareResult = Literal["EQUAL", "GREATER", "LESS", "NOT_EQUAL"]
_TARGET_FIELD = {
    "CREATE": "create_revision",
    "MOD": "mod_revision",
    "VERSION": "version",
    "VALUE": "value",
    "LEASE": "lease",
}


@dataclass(frozen=True)
class Compare:
    """One guard of a transaction, e.g. ``Compare.absent(k)`` or ``Compare.modified(k, rev)``."""

    key: str
    target: CompareTarget
    result: CompareResult
    value: int | bytes

    @classmethod
    def absent(cls, key: str) -> Compare:
        return cls(key, "CREATE", "EQUAL", 0)

    @classmethod
    def created(cls, key: str, revision: int) -> Compare:
        return cls(key, "CREATE", "EQUAL", revision)

    @classmethod
    def modified(cls, key: str, revision: int) -> Compare:
        """``key`` is unchanged since ``revision`` (0: the key does not exist)."""
        return cls(key, "MOD", "EQUAL", revision)

    def wire(self) -> dict[str, Any]:
        name = _TARGET_FIELD[self.target]
        value: str = _b64(self.value) if isinstance(self.value, bytes) else str(self.value)
        return {"key": _b64(self.key), "target": self.target, "result": self.result, name: value}


@dataclass(frozen=True)
class Put:
    key: str
    value: bytes
    lease: int = 0

    def wire(self) -> dict[str, Any]:
        body: dict[str, Any] = {"key": _b64(self.key), "value": _b64(self.value)}
        if self.lease:
            body["lease"] = str(self.lease)
        return {"request_put": body}


def key_range(key: str, prefix: bool) -> dict[str, Any]:
    """The gateway's key (and range end, for a whole prefix) of a range request."""
    body: dict[str, Any] = {"key": _b64(key)}
    if prefix:
        body["range_end"] = prefix_end(key)
    return body


@dataclass(frozen=True)
class Delete:
    key: str
    prefix: bool = False

    def wire(self) -> dict[str, Any]:
        return {"request_delete_range": key_range(self.key, self.prefix)}


@dataclass(frozen=True)
class Get:
    key: str
    prefix: bool = False

    def wire(self) -> dict[str, Any]:
        return {"request_range": key_range(self.key, self.prefix)}


Op = Put | Delete | Get


@dataclass(frozen=True)
class TxnResult:
    """``responses`` has one entry per op of the branch taken: the kvs of a Get,
    the revision of a Put, the number deleted by a Delete."""

    succeeded: bool
    revision: int
    responses: tuple[tuple[KeyValue, ...] | int, ...] = ()


@dataclass
class EtcdClient:
    """Typed access to etcd; ``endpoints`` are client URLs such as ``http://127.0.0.2:2379``."""

    endpoints: Sequence[str]
    timeout: float = 2.0
    retry_s: float = 5.0  # keep trying every endpoint this long (a raft election takes ~1 s)
    clock: Clock = field(default_factory=MonotonicClock, repr=False)
    # TLS with a client certificate, for https:// endpoints (etcd on real hosts).
    tls: NodeCredentials | None = None
    # Every sync_s seconds (0: never) the endpoints become the voting members' client URLs
    # as etcd lists them, those given kept first and in order: a host that joined before
    # others did, or a member that left, does not leave this client with a stale list.
    sync_s: float = 0.0
    _current: int = field(default=0, repr=False)
    _synced: float = field(default=0.0, repr=False)

    def __post_init__(self) -> None:
        if not self.endpoints:
            raise StoreError("no etcd endpoints given (pass at least one client URL)")
        try:
            self.ssl_context = self.tls.client_context() if self.tls is not None else None
        except (OSError, ssl.SSLError) as exc:
            raise StoreError(f"cannot load the etcd TLS files ({self.tls}): {exc}") from exc
        self._conns = Connections(self.timeout, self.ssl_context)
        self.endpoints = list(self.endpoints)
        self._synced = self.clock.now()

    def close(self) -> None:
        """Close the connections this thread kept."""
        self._conns.close()

    # -- transport --------------------------------------------------------

    def _ordered(self) -> list[str]:
        n = len(self.endpoints)
        return [self.endpoints[(self._current + i) % n] for i in range(n)]

    def _post_one(self, url: str, path: str, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        for attempt in (0, 1):
            kept = self._conns.has(url)
            conn = self._conns.get(url)
            try:
                conn.request(
                    "POST", PREFIX + path, json.dumps(body), {"Content-Type": "application/json"}
                )
                resp = conn.getresponse()
                raw = resp.read()
                status = resp.status
            except (http.client.RemoteDisconnected, BrokenPipeError, ConnectionResetError):
                self._conns.drop(url)
                if kept and attempt == 0:
                    continue  # the member closed a kept connection while it was idle
                raise
            except BaseException:
                self._conns.drop(url)  # a broken or half-used connection is never reused
                raise
            if resp.will_close:
                self._conns.drop(url)
            break
        try:
            data = json.loads(raw.splitlines()[0] if raw.strip() else b"{}")
        except (ValueError, IndexError) as exc:
            raise StoreError(f"etcd at {url} answered {path} with non-JSON: {raw[:80]!r}") from exc
        if isinstance(data, dict) and "result" in data and path.startswith("/lease/keepalive"):
            data = data["result"]
        if not isinstance(data, dict):
            raise StoreError(f"etcd at {url} answered {path} with {raw[:80]!r}")
        return status, data

    def request(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        """POST ``body`` to ``/v3{path}`` on the first endpoint that answers, trying all of
        them again for up to ``retry_s`` seconds (StoreUnavailable after that)."""
        deadline = self.clock.now() + self.retry_s
        if self.sync_s and self.clock.now() - self._synced >= self.sync_s:
            self._sync()
        while True:
            try:
                return self._request_round(path, body)
            except StoreUnavailable:
                if self.clock.now() >= deadline:
                    raise
            self.clock.sleep(0.1)

    def _sync(self) -> None:
        """The endpoints from etcd's member list (see ``sync_s``); kept as they are when
        no member answers, or when the list names no voter with a client URL."""
        self._synced = self.clock.now()
        try:
            members = self._request_round("/cluster/member/list", {}).get("members") or []
        except StoreError:
            return
        urls = [u for m in members if not m.get("isLearner") for u in m.get("clientURLs", [])]
        if not urls:
            return
        # The order this host was given is kept (its own member first: it answers when
        # the network is cut), for the endpoints that are still members; then the others.
        known = [u for u in self.endpoints if u in urls]
        fresh = known + [u for u in urls if u not in known]
        if fresh != list(self.endpoints):
            self.endpoints = fresh
            self._current = 0

    def _request_round(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        failures: list[str] = []
        for i, url in enumerate(self._ordered()):
            try:
                status, data = self._post_one(url, path, body)
            except (OSError, http.client.HTTPException) as exc:
                failures.append(f"{url}: {exc or type(exc).__name__}")
                continue
            if status == 200 and "error" not in data:
                self._current = (self._current + i) % len(self.endpoints)
                return data
            msg = str(data.get("message") or data.get("error") or f"HTTP {status}")
            if int(data.get("code", 0)) in _RETRY_CODES or any(t in msg for t in _RETRY_TEXT):
                failures.append(f"{url}: {msg}")
                continue
            raise StoreError(f"etcd refused {path}: {msg}")
        raise StoreUnavailable(
            f"no etcd endpoint answered {path} ({'; '.join(failures)}); "
            "check that a majority of members runs"
        )

    # -- key/value --------------------------------------------------------

    def get(self, key: str) -> KeyValue | None:
        data = self.request("/kv/range", {"key": _b64(key)})
        kvs = data.get("kvs") or []
        return KeyValue.from_wire(kvs[0]) if kvs else None

    def get_prefix(self, prefix: str) -> tuple[list[KeyValue], int]:
        """Every key under ``prefix`` (sorted by key) and the store revision read at."""
        data = self.request("/kv/range", key_range(prefix, True))
        kvs = [KeyValue.from_wire(kv) for kv in data.get("kvs") or []]
        return kvs, int(data.get("header", {}).get("revision", 0))

    def put(self, key: str, value: bytes, lease: int = 0) -> int:
        """Write ``key``; returns the revision of the write."""
        data = self.request("/kv/put", Put(key, value, lease).wire()["request_put"])
        return int(data.get("header", {}).get("revision", 0))

    def delete(self, key: str, prefix: bool = False) -> int:
        """Delete ``key`` (or every key under it); returns how many were deleted."""
        data = self.request("/kv/deleterange", Delete(key, prefix).wire()["request_delete_range"])
        return int(data.get("deleted", 0))

    def txn(
        self, compare: Sequence[Compare], success: Sequence[Op], failure: Sequence[Op] = ()
    ) -> TxnResult:
        """If every ``compare`` holds, apply ``success``, else ``failure``, atomically."""
        data = self.request(
            "/kv/txn",
            {
                "compare": [c.wire() for c in compare],
                "success": [op.wire() for op in success],
                "failure": [op.wire() for op in failure],
            },
        )
        responses: list[tuple[KeyValue, ...] | int] = []
        for resp in data.get("responses") or []:
            if "response_range" in resp:
                kvs = resp["response_range"].get("kvs") or []
                responses.append(tuple(KeyValue.from_wire(kv) for kv in kvs))
            elif "response_put" in resp:
                responses.append(int(resp["response_put"].get("header", {}).get("revision", 0)))
            elif "response_delete_range" in resp:
                responses.append(int(resp["response_delete_range"].get("deleted", 0)))
        return TxnResult(
            succeeded=bool(data.get("succeeded", False)),
            revision=int(data.get("header", {}).get("revision", 0)),
            responses=tuple(responses),
        )

    # -- leases -----------------------------------------------------------

    def lease_grant(self, ttl: int) -> int:
        """A new lease of ``ttl`` seconds; returns its id."""
        data = self.request("/lease/grant", {"TTL": str(ttl)})
        if data.get("error"):
            raise StoreError(f"etcd could not grant a lease: {data['error']}")
        return int(data["ID"])

    def lease_keepalive(self, lease: int) -> int:
        """Renew ``lease``; returns its new TTL, 0 when it has expired (is gone)."""
        data = self.request("/lease/keepalive", {"ID": str(lease)})
        return int(data.get("TTL", 0))

    def lease_revoke(self, lease: int) -> None:
        """Revoke ``lease`` (its keys are deleted); a lease already gone is fine."""
        try:
            self.request("/kv/lease/revoke", {"ID": str(lease)})
        except StoreError as exc:
            if "not found" not in str(exc):
                raise

    def member_list(self) -> list[dict[str, Any]]:
        return list(self.request("/cluster/member/list", {}).get("members") or [])

    def member_add(self, peer_urls: Sequence[str], learner: bool = True) -> dict[str, Any]:
        """Add a member (a learner by default: it votes only once promoted, so a member
        that never catches up cannot cost the cluster its quorum); returns its record."""
        data = self.request("/cluster/member/add",
                            {"peerURLs": list(peer_urls), "isLearner": learner})
        return dict(data.get("member") or {})

    def member_promote(self, member_id: str) -> None:
        """Make a learner a voter; etcd refuses while it has not caught up with the leader
        (StoreError "can only promote a learner member which is in sync with leader")."""
        self.request("/cluster/member/promote", {"ID": member_id})

    def member_remove(self, member_id: str) -> None:
        self.request("/cluster/member/remove", {"ID": member_id})

    def status(self, url: str) -> dict[str, Any]:
        """Maintenance status of one member (its id, leader id, raft term)."""
        _, data = self._post_one(url, "/maintenance/status", {})
        return data
