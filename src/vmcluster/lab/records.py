"""The qemu substrate's records in the store (see :mod:`vmcluster.substrate.qemu.records`).

:class:`StoreRecords` is what a host's manager uses; :class:`LabStoreRecords` the same
records for the lab's operator side, read from the lab's client namespace, so that
the lab's tools see the owners the cluster's manager decided, not a file of their own.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from vmcluster.csv.coordinator import LabView, StoreBook
from vmcluster.lab.layout import LabLayout
from vmcluster.model import ClusterSpec
from vmcluster.store import vms as vm_records
from vmcluster.store.slots import take_slot
from vmcluster.store.state import ClusterState, Placement
from vmcluster.substrate.qemu.records import RecordsSnapshot, Slot

if TYPE_CHECKING:
    from vmcluster.lab.services import LabStore

__all__ = ["LabStoreRecords", "StoreRecords"]


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


class _RecordedElsewhere:
    """The writes the store already records elsewhere: a placement is the manager's
    compare-and-set, a node's state the manager's, a migration the ledger's."""

    def set_owner(self, vm: str, node: str | None) -> None:
        return None

    def set_node_state(self, node: str, state: str, drop_owners: bool = False) -> None:
        return None

    def set_migrating(self, vm: str, target: str | None) -> None:
        return None


class StoreRecords(_RecordedElsewhere):
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


class LabStoreRecords(_RecordedElsewhere):
    """:class:`StoreRecords` through the lab's client namespace (one store connection per
    call: the lab's tools call rarely, and hold no thread in a namespace between calls)."""

    def __init__(self, layout: LabLayout) -> None:
        self.layout = layout
        self._slot_lock = threading.Lock()
        self._slot_session: tuple[contextlib.ExitStack, LabStore] | None = None
        self._slots_held = 0

    def _call(self, method: str, *args: Any) -> Any:
        from vmcluster.lab.services import lab_store

        with lab_store(self.layout) as ls:
            return ls.call(getattr(StoreRecords(ls.state), method), *args)

    def snapshot(self, spec: ClusterSpec) -> RecordsSnapshot:
        got: RecordsSnapshot = self._call("snapshot", spec)
        return got

    def machines(self) -> Mapping[str, str]:
        got: Mapping[str, str] = self._call("machines")
        return got

    def pin_machines(self, wanted: Mapping[str, str]) -> dict[str, str]:
        got: dict[str, str] = self._call("pin_machines", wanted)
        return got

    def try_slot(self, node: str, limit: int) -> Slot | None:
        """A slot whose lease a thread in the client namespace keeps alive. The slots this
        process holds at once (a migration's source and target) share one session, which
        goes with the last of them."""
        from vmcluster.lab.services import lab_store

        with self._slot_lock:
            if self._slot_session is None:
                stack = contextlib.ExitStack()
                self._slot_session = (stack, stack.enter_context(lab_store(self.layout)))
            self._slots_held += 1
            ls = self._slot_session[1]
        return take_slot(ls.state, node, limit, ls.call, done=self._slot_gone)

    def _slot_gone(self) -> None:
        with self._slot_lock:
            self._slots_held -= 1
            if self._slots_held == 0 and self._slot_session is not None:
                self._slot_session[0].close()
                self._slot_session = None

    def wait_link(self, spec: ClusterSpec, network: str, node: str, up: bool,
                  timeout_s: float) -> bool:
        got: bool = self._call("wait_link", spec, network, node, up, timeout_s)
        return got
