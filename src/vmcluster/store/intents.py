"""Intents: what the API was asked to do, recorded in etcd for the manager to carry out.

::

    intents/<id>   {"kind": "migrate" | "drain", "args": {...}, "by": WHO, "at": WALL,
                    "state": "pending" | "running" | "cancelling" | "done" | "failed"
                             | "cancelled",
                    "token": the manager's fencing token once claimed,
                    "progress": {...}, "result": {...}, "error": "..."}

The API writes an intent ``pending`` and answers 202 with its id; the elected
manager claims it (``running``, guarded by its fencing token, by compare-and-set
so that two managers never both run it) and carries it out in a worker of its
own, so its loop never blocks on a migration. A client that asked can watch it
(``GET /api/v1/intents/{id}``) or ask to cancel it; killing the client changes
nothing. A live ``migrate`` a deposed manager was running is adopted by the next
one (its driver, the VM's source host, goes on under the new token and the new
manager watches it to the end); any other intent a deposed manager was running
is marked ``failed`` (the migration it drove, if any, is an orphan the manager
settles).
"""

from __future__ import annotations

import json
import time
import uuid
from dataclasses import dataclass
from typing import Any

from vmcluster.errors import StoreError
from vmcluster.store.errors import StoreConflict
from vmcluster.store.etcd import Compare, Put
from vmcluster.store.state import ClusterState

__all__ = ["DONE", "Intent", "cancel", "claim", "every", "get", "pending", "running", "submit",
           "update"]

KINDS = ("migrate", "drain", "start", "stop", "consolidate", "resume", "delete", "pause",
         "unpause")
DONE = ("done", "failed", "cancelled")


@dataclass(frozen=True)
class Intent:
    id: str
    record: dict[str, Any]
    revision: int

    @property
    def kind(self) -> str:
        return str(self.record["kind"])

    @property
    def state(self) -> str:
        return str(self.record.get("state", "pending"))

    @property
    def args(self) -> dict[str, Any]:
        return dict(self.record.get("args", {}))

    def to_json(self) -> dict[str, Any]:
        return {"id": self.id, **self.record}


def _key(state: ClusterState, intent_id: str) -> str:
    return state.key("intents", intent_id)


def submit(state: ClusterState, kind: str, args: dict[str, Any], by: str) -> Intent:
    if kind not in KINDS:
        raise StoreError(f"unknown intent kind {kind!r}")
    intent_id = uuid.uuid4().hex[:12]
    record = {"kind": kind, "args": args, "by": by, "at": time.time(), "state": "pending"}
    got = state.client.txn([Compare.absent(_key(state, intent_id))],
                           [Put(_key(state, intent_id), json.dumps(record).encode())])
    if not got.succeeded:
        raise StoreConflict(f"intent {intent_id} exists")
    return Intent(intent_id, record, got.revision)


def get(state: ClusterState, intent_id: str) -> Intent | None:
    kv = state.client.get(_key(state, intent_id))
    return None if kv is None else Intent(intent_id, kv.json(), kv.mod_revision)


def every(state: ClusterState) -> list[Intent]:
    kvs, _ = state.client.get_prefix(state.key("intents", ""))
    return sorted((Intent(kv.key.rsplit("/", 1)[1], kv.json(), kv.mod_revision) for kv in kvs),
                  key=lambda i: (float(i.record.get("at", 0)), i.id))


def pending(state: ClusterState) -> list[Intent]:
    return [i for i in every(state) if i.state == "pending"]


def running(state: ClusterState) -> list[Intent]:
    return [i for i in every(state) if i.state in ("running", "cancelling")]


def _write(state: ClusterState, intent: Intent, record: dict[str, Any], token: int | None,
           what: str) -> Intent:
    rev = state._guarded(token, [Compare.modified(_key(state, intent.id), intent.revision)],
                         [Put(_key(state, intent.id), json.dumps(record).encode())], what)
    return Intent(intent.id, record, rev)


def claim(state: ClusterState, intent: Intent, token: int, **fields: Any) -> Intent:
    """``pending`` -> ``running`` under ``token`` (StoreConflict: someone claimed it), with
    ``fields`` (a first ``progress``)."""
    return _write(state, intent, {**intent.record, "state": "running", "token": token,
                                  "started": time.time(), **fields}, token,
                  f"intent {intent.id}")


def update(cluster: ClusterState, intent_id: str, guard: int | None, tries: int = 10,
           **fields: Any) -> Intent:
    """Set ``fields`` of an intent (its progress, its end), the write guarded by the
    fencing token ``guard``, re-reading on a lost compare; a cancel asked meanwhile is
    kept (a ``running`` intent stays ``cancelling``)."""
    for _ in range(tries):
        current = get(cluster, intent_id)
        if current is None:
            raise StoreError(f"intent {intent_id} is gone")
        record = {**current.record, **fields}
        if current.state == "cancelling" and fields.get("state") == "running":
            record["state"] = "cancelling"
        try:
            return _write(cluster, current, record, guard, f"intent {intent_id}")
        except StoreConflict:
            continue
    raise StoreConflict(f"intent {intent_id} kept changing")


def cancel(state: ClusterState, intent_id: str) -> Intent:
    """Ask to cancel: a pending intent is cancelled at once, a running one is marked
    ``cancelling`` for its worker (it stops at its next safe point)."""
    for _ in range(10):
        current = get(state, intent_id)
        if current is None:
            raise StoreError(f"no intent {intent_id}")
        if current.state in DONE or current.state == "cancelling":
            return current
        new = "cancelled" if current.state == "pending" else "cancelling"
        try:
            return _write(state, current, {**current.record, "state": new}, None,
                          f"intent {intent_id}")
        except StoreConflict:
            continue
    raise StoreConflict(f"intent {intent_id} kept changing")
