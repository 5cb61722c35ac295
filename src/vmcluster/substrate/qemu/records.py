"""What the qemu substrate remembers between calls, and where: :class:`SubstrateRecords`.

The substrate asks the agents what runs where; what it must also know (the owner
of a VM that is stopped or whose host is down, a host powered off on purpose,
a migration under way, each VM's machine type, links cut) comes from records:

* :class:`FileRecords`, the lab harness's own file (``state.json``), for the
  operator's side of a lab and for labs whose hosts run their agent only;
* the store's records, for a host's manager (``vmcluster.node.managerd.StoreRecords``):
  placements, node states, migrations and VM definitions in etcd, links as each host
  publishes them. Writes the store already records elsewhere (a placement is the
  manager's compare-and-set, a migration the ledger's) are no-ops there.
"""

from __future__ import annotations

import fcntl
from collections.abc import Mapping
from typing import Protocol

from vmcluster.model import ClusterSpec
from vmcluster.substrate.host import netns
from vmcluster.substrate.host.layout import LabLayout
from vmcluster.substrate.host.state import read_state, update_state

__all__ = ["FileRecords", "RecordsSnapshot", "Slot", "SubstrateRecords"]


class RecordsSnapshot(Protocol):
    """The records read once, for one ``status()``."""

    def owner(self, vm: str) -> str | None: ...

    def node_state(self, node: str) -> str: ...  # up, down, off

    def storage_path(self, node: str) -> bool: ...

    def links_down(self, node: str) -> tuple[str, ...]: ...

    def migrating(self, vm: str) -> bool: ...


class Slot(Protocol):
    """A migration slot held until closed."""

    def close(self) -> None: ...


class SubstrateRecords(Protocol):
    def snapshot(self, spec: ClusterSpec) -> RecordsSnapshot: ...

    def set_owner(self, vm: str, node: str | None) -> None: ...

    def set_node_state(self, node: str, state: str, drop_owners: bool = False) -> None: ...

    def set_migrating(self, vm: str, target: str | None) -> None: ...

    def machines(self) -> Mapping[str, str]: ...

    def try_slot(self, node: str, limit: int) -> Slot | None:
        """One of ``node``'s ``limit`` migration slots, or None when all are held."""
        ...

    def wait_link(self, spec: ClusterSpec, network: str, node: str, up: bool,
                  timeout_s: float) -> bool:
        """Wait until the records show ``node``'s link on ``network`` as ``up`` (True),
        or ``timeout_s`` passed (False)."""
        ...

    def pin_machines(self, wanted: Mapping[str, str]) -> dict[str, str]:
        """Pin each VM not pinned yet to ``wanted[vm]``; every VM's pin afterwards."""
        ...


class _FileSnapshot:
    def __init__(self, layout: LabLayout, spec: ClusterSpec) -> None:
        self.layout, self.spec, self.st = layout, spec, read_state(layout)

    def owner(self, vm: str) -> str | None:
        node = self.st["vms"].get(vm, {}).get("node")
        return None if node is None else str(node)

    def node_state(self, node: str) -> str:
        return str(self.st["nodes"].get(node, {}).get("state", "up"))

    def storage_path(self, node: str) -> bool:
        return bool(self.st["nodes"].get(node, {}).get("storage_path", True))

    def links_down(self, node: str) -> tuple[str, ...]:
        return tuple(n for n in self.spec.node(node).interfaces
                     if not netns.link_is_up(self.layout, n, node))

    def migrating(self, vm: str) -> bool:
        return bool(self.st["vms"].get(vm, {}).get("migrating_to"))


class FileRecords:
    """The lab's state file (locked read-modify-write: :mod:`vmcluster.substrate.host.state`)."""

    def __init__(self, layout: LabLayout) -> None:
        self.layout = layout

    def snapshot(self, spec: ClusterSpec) -> RecordsSnapshot:
        return _FileSnapshot(self.layout, spec)

    def set_owner(self, vm: str, node: str | None) -> None:
        with update_state(self.layout) as st:
            st["vms"][vm] = {"node": node}

    def set_node_state(self, node: str, state: str, drop_owners: bool = False) -> None:
        with update_state(self.layout) as st:
            st["nodes"][node] = {**st["nodes"].get(node, {}), "state": state}
            if drop_owners:
                for vm, rec in st["vms"].items():
                    if rec.get("node") == node:
                        st["vms"][vm] = {"node": None}

    def set_migrating(self, vm: str, target: str | None) -> None:
        with update_state(self.layout) as st:
            rec = st["vms"].setdefault(vm, {"node": None})
            if target is None:
                rec.pop("migrating_to", None)
            else:
                rec["migrating_to"] = target

    def machines(self) -> Mapping[str, str]:
        return {str(k): str(v) for k, v in read_state(self.layout).get("machines", {}).items()
                if v}

    def try_slot(self, node: str, limit: int) -> Slot | None:
        """An flock on one of the lab's slot files, held open."""
        for i in range(limit):
            path = self.layout.slot_lock(node, i)
            path.parent.mkdir(parents=True, exist_ok=True)
            f = path.open("a")
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return f
            except BlockingIOError:
                f.close()
        return None

    def wait_link(self, spec: ClusterSpec, network: str, node: str, up: bool,
                  timeout_s: float) -> bool:
        return netns.link_is_up(self.layout, network, node) == up  # the link itself: at once

    def pin_machines(self, wanted: Mapping[str, str]) -> dict[str, str]:
        with update_state(self.layout) as st:
            machines = st.setdefault("machines", {})
            for name, machine in wanted.items():
                if not machines.get(name):
                    machines[name] = machine
            return {name: str(machines[name]) for name in wanted}
