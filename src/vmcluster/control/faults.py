"""Apply a scenario's fault (:mod:`vmcluster.model.faults`) through any FaultInjector: the
simulator's substrate or the lab's hosts, the same data for both."""

from __future__ import annotations

from vmcluster.model import ClusterSpec
from vmcluster.model.faults import Fault, LinkDown, LinkUp, NodeDown, NodeUp, StorageDown
from vmcluster.substrate.protocol import FaultInjector

__all__ = ["inject"]


def inject(fault: Fault, injector: FaultInjector, spec: ClusterSpec) -> tuple[str, ...]:
    """Make ``fault`` happen; returns what changed: nodes (``"node2"``) or a node's link
    (``"node2/Heartbeat"``), as the hosts' heartbeat watches would see them."""
    if isinstance(fault, (LinkDown, LinkUp)):
        nodes = ([fault.node] if fault.node else
                 [n.name for n in spec.nodes if fault.network in n.interfaces])
        for node in nodes:
            injector.set_link(fault.network, node, isinstance(fault, LinkUp))
        return tuple(f"{node}/{fault.network}" for node in nodes)
    if isinstance(fault, (NodeDown, NodeUp)):
        injector.set_node(fault.node, isinstance(fault, NodeUp))
        return (fault.node,)
    injector.set_storage_path(fault.node, not isinstance(fault, StorageDown))
    return ()
