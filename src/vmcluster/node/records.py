"""The qemu substrate's records in the store (see :mod:`vmcluster.substrate.qemu.records`):
what a host's manager and a migration's source host use. Placements are the manager's
compare-and-set writes, node states the manager's, migrations the ledger's, links what
each host publishes, machine types the VM definitions' pins."""

from __future__ import annotations

import time
from collections.abc import Mapping

from vmcluster.csv.coordinator import LabView, StoreBook
from vmcluster.model import ClusterSpec
from vmcluster.store import vms as vm_records
from vmcluster.store.slots import take_slot
from vmcluster.store.state import ClusterState, Placement
from vmcluster.substrate.qemu.records import RecordsSnapshot, Slot

__all__ = ["RecordedElsewhere", "StoreRecords"]


class _StoreSnapshot:
    def __init__(self, state: ClusterState, spec: ClusterSpec) -> None:
        self.spec = spec
        self.placed: dict[str, Placement] = state.placements()
        self.nodes = state.node_states()
        self.moving = set(state.migrations())
        self.view: LabView = StoreBook(state).view(spec)

    def owner(self, vm: str) -> str | None:
        got = self.placed.get(vm)
        return None if got is None else got.node

    def node_state(self, node: str) -> str:
        return "off" if self.nodes.get(node, {}).get("state") == "off" else "up"

    def storage_path(self, node: str) -> bool:
        nets = {v.network for v in self.spec.volumes if v.network is not None}
        return all((net, node) in self.view.links_up for net in nets
                   if net in self.spec.node(node).interfaces)

    def links_down(self, node: str) -> tuple[str, ...]:
        return tuple(net for net in self.spec.node(node).interfaces
                     if (net, node) not in self.view.links_up)

    def migrating(self, vm: str) -> bool:
        return vm in self.moving


class RecordedElsewhere:
    """The writes the store already records elsewhere: a placement is the manager's
    compare-and-set, a node's state the manager's, a migration the ledger's."""

    def set_owner(self, vm: str, node: str | None) -> None:
        return None

    def set_node_state(self, node: str, state: str, drop_owners: bool = False) -> None:
        return None

    def set_migrating(self, vm: str, target: str | None) -> None:
        return None


class StoreRecords(RecordedElsewhere):
    """The substrate's records for a host's manager: all in the store. Owners are the
    placements (the manager's compare-and-set writes them, a migration's ledger moves
    them), node states the manager's, migrations the ledger's, links what each host
    publishes, machine types the VM definitions' pins; so the writes are no-ops here."""

    def __init__(self, state: ClusterState) -> None:
        self.state = state

    def snapshot(self, spec: ClusterSpec) -> RecordsSnapshot:
        return _StoreSnapshot(self.state, spec)

    def machines(self) -> Mapping[str, str]:
        return {name: rec.machine for name, rec in vm_records.records(self.state).items()
                if rec.machine}

    def try_slot(self, node: str, limit: int) -> Slot | None:
        return take_slot(self.state, node, limit)

    def wait_link(self, spec: ClusterSpec, network: str, node: str, up: bool,
                  timeout_s: float) -> bool:
        """Poll only the hosts' published links (one read each 50 ms): a host publishes
        what it sees a fraction of a second after its link changed."""
        book, deadline = StoreBook(self.state), time.monotonic() + timeout_s
        while ((network, node) in book.view(spec).links_up) != up:
            if time.monotonic() > deadline:
                return False
            time.sleep(0.05)
        return True

    def pin_machines(self, wanted: Mapping[str, str]) -> dict[str, str]:
        return {name: vm_records.pin_machine(self.state, name, machine)
                for name, machine in wanted.items()}
