"""The store's records of the qemu substrate (:class:`vmcluster.node.records.StoreRecords`)
for the lab's operator side, read from the lab's client namespace, so that the lab's tools
see the owners the cluster's manager decided, not a file of their own."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Mapping
from typing import Any

from vmcluster.lab.services import LabStore, lab_store
from vmcluster.model import ClusterSpec
from vmcluster.node.records import RecordedElsewhere, StoreRecords
from vmcluster.store.slots import take_slot
from vmcluster.substrate.host.layout import LabLayout
from vmcluster.substrate.qemu.records import RecordsSnapshot, Slot

__all__ = ["LabStoreRecords"]


class LabStoreRecords(RecordedElsewhere):
    """:class:`StoreRecords` through the lab's client namespace (one store connection per
    call: the lab's tools call rarely, and hold no thread in a namespace between calls)."""

    def __init__(self, layout: LabLayout) -> None:
        self.layout = layout
        self._slot_lock = threading.Lock()
        self._slot_session: tuple[contextlib.ExitStack, LabStore] | None = None
        self._slots_held = 0

    def _call(self, method: str, *args: Any) -> Any:
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
