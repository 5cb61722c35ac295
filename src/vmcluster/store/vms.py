"""VM definitions and their desired state, under ``/vmcluster/<cluster>/vms/<name>``.

::

    vms/<name>   {"definition": {...}, "desired": "running" | "stopped", "machine": M | null,
                  "seq": N}

``definition`` holds the keys of a spec file's ``[[vms]]`` table (name, owner,
memory_mib, vcpus, volume, address, ...): the store's definitions are the
cluster's VMs, and the spec text beside them only gives the cluster, its
nodes, networks and volumes (``cluster init`` defines the spec file's own VMs).
``desired`` is what the operator asked for; what runs where is the VM's
placement (``placements/<name>``) and the nodes' reports. ``machine`` is the
machine type the VM was pinned to at its first start, so that it can move to
hosts whose QEMU is newer. ``seq`` orders the VMs as they were defined (the spec
file's order first), so that the cluster's spec lists them in a stable order.

A definition is created once (a second one of the same name is a conflict),
changes only by compare-and-set on its revision, and is deleted only while the
VM has no owner.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from vmcluster.errors import InputError
from vmcluster.store.errors import StoreConflict
from vmcluster.store.etcd import Compare, Delete, KeyValue, Op, Put
from vmcluster.store.kv import KV


class StateLike(Protocol):
    """What of :class:`vmcluster.store.state.ClusterState` this module uses (that class
    reads the definitions through this module, so it is not imported here)."""

    client: KV

    def key(self, *parts: str) -> str: ...

    def _guarded(self, token: int | None, compare: list[Compare], ops: list[Op],
                 what: str) -> int: ...

__all__ = ["DESIRED", "VmRecord", "define", "get", "pin_machine", "records", "redefine",
           "set_desired", "undefine"]

DESIRED = ("running", "stopped")


@dataclass(frozen=True)
class VmRecord:
    name: str
    definition: dict[str, Any]
    desired: str
    machine: str | None
    revision: int
    seq: int = 0

    def to_json(self) -> dict[str, Any]:
        return {"definition": self.definition, "desired": self.desired, "machine": self.machine,
                "seq": self.seq}


def _key(state: StateLike, name: str = "") -> str:
    return str(state.key("vms", name))


def _record(kv: KeyValue) -> VmRecord:
    d = kv.json()
    return VmRecord(kv.key.rsplit("/", 1)[1], dict(d.get("definition", {})),
                    str(d.get("desired", "stopped")), d.get("machine"), kv.mod_revision,
                    int(d.get("seq", 0)))


def _dump(rec: Mapping[str, Any]) -> bytes:
    return json.dumps(rec, sort_keys=True).encode()


def records(state: StateLike) -> dict[str, VmRecord]:
    """Every VM definition, by name (in name order)."""
    kvs, _ = state.client.get_prefix(_key(state))
    return {r.name: r for r in sorted((_record(kv) for kv in kvs),
                                      key=lambda r: (r.seq, r.name))}


def get(state: StateLike, name: str) -> VmRecord | None:
    kv = state.client.get(_key(state, name))
    return None if kv is None else _record(kv)


def define(state: StateLike, definition: Mapping[str, Any], desired: str = "stopped",
           token: int | None = None) -> VmRecord:
    """Create a VM's definition (StoreConflict when the name is taken). Validate it first
    (``ClusterState.spec_with``): the store keeps what it is given."""
    if desired not in DESIRED:
        raise InputError(f"desired state {desired!r} is not one of {', '.join(DESIRED)}")
    name = str(definition["name"])
    key = _key(state, name)
    seq = 1 + max((r.seq for r in records(state).values()), default=-1)
    body = {"definition": dict(definition), "desired": desired, "machine": None, "seq": seq}
    try:
        rev = state._guarded(token, [Compare.absent(key)], [Put(key, _dump(body))],
                             f"definition of {name}")
    except StoreConflict as exc:
        raise StoreConflict(f"a VM named {name!r} is already defined") from exc
    return VmRecord(name, dict(definition), desired, None, rev, seq)


def _update(state: StateLike, rec: VmRecord, token: int | None, what: str,
            **fields: Any) -> VmRecord:
    key = _key(state, rec.name)
    body = {**rec.to_json(), **fields}
    rev = state._guarded(token, [Compare.modified(key, rec.revision)], [Put(key, _dump(body))],
                         f"{what} of {rec.name}")
    return VmRecord(rec.name, dict(body["definition"]), str(body["desired"]), body["machine"],
                    rev, rec.seq)


def redefine(state: StateLike, rec: VmRecord, definition: Mapping[str, Any],
             token: int | None = None) -> VmRecord:
    """Replace ``rec``'s definition (validated by the caller) if it has not changed since
    ``rec`` was read (StoreConflict otherwise: read it again)."""
    if definition.get("name") != rec.name:
        raise InputError(f"a VM's name does not change ({rec.name})")
    return _update(state, rec, token, "definition", definition=dict(definition))


def _require(state: StateLike, name: str) -> VmRecord:
    rec = get(state, name)
    if rec is None:
        raise InputError(f"no VM named {name!r} is defined")
    return rec


def _change(state: StateLike, name: str, token: int | None, what: str,
            done: Callable[[VmRecord], bool], **fields: Any) -> VmRecord:
    """Set ``fields`` on ``name``'s record unless ``done(record)`` already; retried on a
    concurrent change (bounded)."""
    for _ in range(20):
        rec = _require(state, name)
        if done(rec):
            return rec
        try:
            return _update(state, rec, token, what, **fields)
        except StoreConflict:
            continue
    raise StoreConflict(f"the definition of {name} keeps changing; try again")


def set_desired(state: StateLike, name: str, desired: str, token: int | None = None) -> VmRecord:
    """Record what the operator wants of ``name`` (retried on a concurrent change)."""
    if desired not in DESIRED:
        raise InputError(f"desired state {desired!r} is not one of {', '.join(DESIRED)}")
    return _change(state, name, token, "desired state", lambda r: r.desired == desired,
                   desired=desired)


def pin_machine(state: StateLike, name: str, machine: str, token: int | None = None) -> str:
    """Pin ``name`` to ``machine`` unless it is pinned already; the pinned machine type."""
    rec = _change(state, name, token, "machine type", lambda r: bool(r.machine),
                  machine=machine)
    return rec.machine or machine


def undefine(state: StateLike, name: str, token: int | None = None) -> None:
    """Delete ``name``'s definition; refused while the VM has an owner (stop it first)."""
    rec = _require(state, name)
    pkey = state.key("placements", name)
    placed = state.client.get(pkey)
    if placed is not None and placed.json().get("node"):
        raise StoreConflict(f"{name} runs on {placed.json()['node']}; stop it before deleting it")
    guards = [Compare.modified(_key(state, name), rec.revision),
              Compare.modified(pkey, 0 if placed is None else placed.mod_revision)]
    state._guarded(token, guards, [Delete(_key(state, name)), Delete(pkey)],
                   f"deletion of {name}")
