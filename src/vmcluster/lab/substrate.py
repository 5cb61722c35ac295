"""The lab's substrate: the qemu substrate over the lab's hosts, plus what only a
harness may do to them (the :class:`~vmcluster.substrate.protocol.FaultInjector`):
cut a link, crash or start a host, cut its storage path, and power a host on by
starting its ``vmclusterd`` again."""

from __future__ import annotations

import signal
import time

from vmcluster.csv.coordinator import FileBook, coordinator
from vmcluster.errors import SubstrateError, UsageError
from vmcluster.lab.faults import signal_node
from vmcluster.lab.hosts import daemon_pids, start_daemon
from vmcluster.lab.records import LabStoreRecords
from vmcluster.lab.services import has_control_plane
from vmcluster.model import ClusterSpec
from vmcluster.substrate.host import netns
from vmcluster.substrate.host.client import AgentDown
from vmcluster.substrate.host.layout import LabLayout
from vmcluster.substrate.host.state import read_state, update_state
from vmcluster.substrate.qemu.records import FileRecords, SubstrateRecords
from vmcluster.substrate.qemu.substrate import QemuSubstrate

__all__ = ["LabSubstrate", "lab_records"]


def lab_records(layout: LabLayout) -> SubstrateRecords:
    """The records of the lab's operator side: the store's, when the lab runs a control
    plane (what its manager decided), else the lab's own file."""
    if read_state(layout).get("control_plane", False):
        return LabStoreRecords(layout)
    return FileRecords(layout)


OFF_WAIT_S = 20.0  # a SIGTERM'd vmclusterd stops its parts within this, or is switched off

class LabSubstrate(QemuSubstrate):
    """:class:`QemuSubstrate` on the lab called ``layout.name``, seen from the admin side,
    and the lab's fault injector."""

    def __init__(self, layout: LabLayout, spec: ClusterSpec | None = None,
                 stall_s: float = 5.0, queue_timeout_s: float = 600.0) -> None:
        super().__init__(layout, spec, stall_s, queue_timeout_s, records=lab_records(layout))

    # -- faults ---------------------------------------------------------------------------
    def set_link(self, network: str, node: str, up: bool) -> None:
        self.spec.network(network)
        if network not in self.spec.host(node).interfaces:
            raise UsageError(f"node {node!r} has no interface on {network!r}")
        netns.set_link(self.layout, self.spec, network, node, up)
        if node == self.spec.cluster.witness:
            return  # no agent publishes the witness's links: nothing to wait for
        # Return once the records show the link as set (in a lab with a store: once the
        # host published what it sees, a fraction of a second); a host that is down never
        # does, so this gives up after 5 s without an error.
        self.records.wait_link(self.spec, network, node, up, 5.0)

    def set_node(self, node: str, up: bool) -> None:
        self.spec.node(node)
        if up:
            start_daemon(self.layout, node)  # its vmclusterd starts the host's parts
            self.records.set_node_state(node, "up")
            # Return once the cluster heard it again (its manager's next tick or two).
            self._await_off(node, False, 60.0, 0.5,
                            f"{node}'s vmclusterd runs again but the cluster has not heard "
                            f"it within 60 s; see {self.layout.daemon_log(node)}")
            return
        signal_node(self.layout, node, signal.SIGKILL)
        for f in self.layout.qemu_dir(node).glob("*.json"):
            f.unlink(missing_ok=True)
        self.records.set_node_state(node, "down", drop_owners=True)

    def set_storage_path(self, node: str, up: bool) -> None:
        """Cut or restore ``node``'s path to the SAN (its storage interfaces), then let its
        agent switch its VM disks (redirected / direct) and hand a coordinator role over.

        The disk switches the node's agent made are kept in ``last_switches``.
        """
        nd = self.spec.node(node)
        nets = sorted({v.network for v in self.spec.volumes
                       if v.network is not None and v.network in nd.interfaces})
        since = time.time()
        store = has_control_plane(self.layout)
        if not store:  # hosts that run their agent only: the lab keeps their records
            with update_state(self.layout) as st:
                st["nodes"][node] = {**st["nodes"].get(node, {}), "storage_path": up}
        for net in nets:
            netns.set_link(self.layout, self.spec, net, node, up)
        if not store:  # else the node's agent sees its own link and re-elects, as a host would
            for vol in self.spec.volumes:
                coordinator(FileBook(self.layout), self.spec, vol.name, say=self.say)
        try:
            reply = self.agent(node).call("csv_reconcile", timeout_s=120, since=since)
        except AgentDown:
            self.last_switches = []
            return
        self.last_switches = list(reply.get("switched", []))

    # -- power: the lab's own switch ----------------------------------------------------
    def set_power(self, node: str, on: bool) -> None:
        self.spec.node(node)
        if on:
            self.set_node(node, True)
            return
        if any(v.node == node for v in self.status().vms):
            raise SubstrateError(f"{node} still runs VMs; migrate them away first")
        signal_node(self.layout, node, signal.SIGTERM)  # a clean power-off
        # Off means off: a power-on must not find the old daemon still stopping (it
        # would skip starting one and wait for an agent that is on its way out).
        deadline = time.monotonic() + OFF_WAIT_S
        while daemon_pids(self.layout, node)["vmclusterd"] and time.monotonic() < deadline:
            time.sleep(0.05)
        if daemon_pids(self.layout, node)["vmclusterd"]:
            signal_node(self.layout, node, signal.SIGKILL)  # the switch, then
        self.records.set_node_state(node, "off")
