"""Attaching a VM's disk on a cluster shared volume to a node: the region and the path.

The coordinator creates the disk's region in the allocation table (once) and,
when asked, records the node that writes it; the node's access mode decides
where its QEMU connects: the SAN (direct) or a node that re-exports the LUN
(redirected). A node with no access cannot run the VM.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from vmcluster.csv.coordinator import CsvBook, coordinator_call, volume_access
from vmcluster.csv.storage import NbdTarget, san_target
from vmcluster.errors import SubstrateError
from vmcluster.model import MIB, ClusterSpec
from vmcluster.substrate.host.client import AgentClient
from vmcluster.substrate.host.layout import LabLayout

__all__ = ["disk_config", "node_target", "record_owner"]

Say = Callable[[str], None]


def node_target(layout: LabLayout, book: CsvBook, spec: ClusterSpec, volume: str,
                node: str) -> NbdTarget:
    """Where ``node`` reaches ``volume`` now (starting a re-export when redirected)."""
    _, modes = volume_access(book, spec, volume)
    acc = modes[node]
    if acc.mode == "direct":
        return san_target(spec, volume)
    if acc.mode == "redirected":
        assert acc.via is not None and acc.network is not None
        reply = AgentClient(layout, acc.via).call("csv_export", volume=volume,
                                                  network=acc.network)
        return NbdTarget.from_json(reply["target"])
    raise SubstrateError(f"{node} has no access to volume {volume}: {acc.reason}")


def disk_config(layout: LabLayout, book: CsvBook, spec: ClusterSpec, vm_name: str, node: str,
                owner: str | None, say: Say | None = None) -> dict[str, Any]:
    """The ``csv`` part of a VmConfig: the disk's region (created if new) and its path."""
    vm = spec.vm(vm_name)
    assert vm.volume is not None
    reply = coordinator_call(layout, book, spec, vm.volume, "csv_create", say=say,
                             disk=vm.name, size=vm.disk_mib * MIB, owner=owner)
    ext = next(d for d in reply["table"]["disks"] if d["name"] == vm.name)
    target = node_target(layout, book, spec, vm.volume, node)
    return {**target.to_json(), "volume": vm.volume, "offset": int(ext["offset"]),
            "size": int(ext["size"])}


def record_owner(layout: LabLayout, book: CsvBook, spec: ClusterSpec, vm_name: str, node: str,
                 say: Say | None = None) -> None:
    """Record ``node`` as the one writer of the VM's disk (at start and at switchover)."""
    vm = spec.vm(vm_name)
    if vm.volume is not None:
        coordinator_call(layout, book, spec, vm.volume, "csv_set_owner", say=say,
                         disk=vm.name, owner=node)
