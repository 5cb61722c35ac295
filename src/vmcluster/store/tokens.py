"""API tokens: who may call the cluster's API, and with which role.

::

    tokens/<sha256>   {"name": N, "role": "admin" | "read-only", "at": WALL, "by": WHO}

The store keeps each token's SHA-256 only, so a token read from etcd or a
backup cannot be replayed; the secret is shown once, when it is created. Names
are unique in a cluster (the audit trail names the token that made each write),
``admin`` is the one ``cluster init`` makes. An admin token may do everything, a
read-only token may read everything but the tokens themselves.
"""

from __future__ import annotations

import json
import re
import secrets
import time
from dataclasses import dataclass
from typing import Any

from vmcluster.errors import InputError
from vmcluster.pki import token_hash
from vmcluster.store.errors import StoreConflict
from vmcluster.store.etcd import Compare, Put
from vmcluster.store.state import ClusterState

__all__ = ["NAME", "ROLES", "TokenRecord", "create", "lookup", "record", "records", "revoke"]

ROLES = ("admin", "read-only")
NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.@-]{0,62}$")


@dataclass(frozen=True)
class TokenRecord:
    name: str
    role: str
    at: float
    by: str
    digest: str

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "role": self.role, "at": self.at, "by": self.by}


def record(name: str, role: str, by: str) -> bytes:
    """A token's record as the store keeps it (beside its hash)."""
    return json.dumps({"name": name, "role": role, "at": time.time(), "by": by},
                      sort_keys=True).encode()


def _parse(digest: str, data: dict[str, Any]) -> TokenRecord:
    return TokenRecord(str(data.get("name") or digest[:12]), str(data.get("role", "")),
                       float(data.get("at", 0.0)), str(data.get("by", "")), digest)


def lookup(state: ClusterState, token: str) -> TokenRecord | None:
    """The record of ``token``, None when the cluster does not know it."""
    digest = token_hash(token)
    kv = state.client.get(state.key("tokens", digest))
    return None if kv is None else _parse(digest, kv.json())


def records(state: ClusterState) -> list[TokenRecord]:
    kvs, _ = state.client.get_prefix(state.key("tokens", ""))
    return sorted((_parse(kv.key.rsplit("/", 1)[1], kv.json()) for kv in kvs),
                  key=lambda r: r.name)


def create(state: ClusterState, name: str, role: str, by: str) -> tuple[str, TokenRecord]:
    """A new token: (the secret, shown only now; its record). Refuses a bad role or name
    and a name already taken."""
    if role not in ROLES:
        raise InputError(f"role {role!r} is not one of {', '.join(ROLES)}")
    if not NAME.match(name):
        raise InputError(f"token name {name!r}: 1-63 letters, digits, '_', '.', '@' or '-', "
                         "starting with a letter or digit")
    if any(r.name == name for r in records(state)):
        raise StoreConflict(f"a token named {name!r} exists; revoke it first or pick another "
                            "name")
    secret = secrets.token_urlsafe(32)
    digest = token_hash(secret)
    key = state.key("tokens", digest)
    got = state.client.txn([Compare.absent(key)], [Put(key, record(name, role, by))])
    if not got.succeeded:
        raise StoreConflict("token collision; try again")
    return secret, _parse(digest, json.loads(record(name, role, by)))


def revoke(state: ClusterState, name: str) -> TokenRecord:
    """Delete the token named ``name`` (InputError when there is none)."""
    for rec in records(state):
        if rec.name == name:
            state.client.delete(state.key("tokens", rec.digest))
            return rec
    raise InputError(f"no token named {name!r}")
