"""Rehearse failures as on real hardware: crash, start, isolate and rejoin a node.

* ``crash``: SIGKILL every process in the node's namespace: its agent, etcd
  member, node watch, manager candidate and QEMUs, all at once, with nothing
  recorded anywhere (the cluster has to find out by itself).
* ``start``: the node boots again: agent, etcd member (rejoining with its
  data), node watch, manager candidate. Its old VMs are not restarted there;
  the manager owns placement.
* ``isolate`` / ``rejoin``: every cluster (role >= 1) interface of the node
  down / up; its processes keep running, cut off.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time

from vmcluster.errors import LabError, UsageError
from vmcluster.lab.hosts import daemon_pids, start_daemon
from vmcluster.model import ClusterSpec
from vmcluster.model.spec import load_spec
from vmcluster.policy.networks import node_cluster_networks
from vmcluster.substrate.host import netns
from vmcluster.substrate.host.layout import LabLayout
from vmcluster.substrate.host.state import read_state

__all__ = ["crash_node", "cut_between", "isolate_node", "rejoin_node", "signal_node",
           "start_node"]


def _spec(layout: LabLayout, node: str) -> ClusterSpec:
    spec = load_spec(read_state(layout)["spec"])
    if node not in {n.name for n in spec.hosts}:
        raise UsageError(f"no node {node!r} in lab {layout.name}; nodes: "
                         f"{', '.join(n.name for n in spec.hosts)}")
    return spec


def signal_node(layout: LabLayout, node: str, sig: signal.Signals) -> list[int]:
    """Send ``sig`` to every process of ``node`` (its namespace's); returns their pids."""
    pids = netns.ns_pids(layout.node_ns(node))
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)
    return pids


def crash_node(layout: LabLayout, node: str, timeout_s: float = 10.0) -> list[int]:
    """SIGKILL every process of ``node``; returns their pids once all are gone."""
    _spec(layout, node)
    pids = signal_node(layout, node, signal.SIGKILL)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if not netns.ns_pids(layout.node_ns(node)):
            return pids
        time.sleep(0.05)
    raise LabError(f"processes of {node} survived SIGKILL for {timeout_s:.0f} s")


def start_node(layout: LabLayout, node: str) -> None:
    """Boot ``node`` again: its vmclusterd (etcd member, agent, heartbeats, manager candidate)."""
    _spec(layout, node)
    if daemon_pids(layout, node)["vmclusterd"]:
        raise UsageError(f"{node}'s vmclusterd is running; crash the node first "
                         f"(`vmcluster lab node crash {node}`)")
    start_daemon(layout, node)  # after a crash, or after its watchdog fenced it


def _links(layout: LabLayout, node: str, up: bool) -> list[str]:
    spec = _spec(layout, node)
    nets = [p.name for p in node_cluster_networks(spec, node)]
    for net in nets:
        netns.set_link(layout, spec, net, node, up)
    return nets


def cut_between(layout: LabLayout, a: str, b: str, cut: bool) -> list[str]:
    """Cut (or mend) every cluster-network path between hosts ``a`` and ``b`` only: each
    gets a ``prohibit`` route to the other's addresses, so both keep reaching everyone
    else (the witness among them). Returns the addresses cut off, as ``host:address``."""
    spec = _spec(layout, a)
    _spec(layout, b)
    if a == b:
        raise UsageError(f"cut {a} from itself? name two different hosts")
    done = []
    for me, peer in ((a, b), (b, a)):
        for p in node_cluster_networks(spec, peer):
            if p.name not in spec.host(me).interfaces:
                continue
            addr = f"{spec.host(peer).interfaces[p.name]}/32"
            netns.run(["ip", "-n", layout.node_ns(me), "route", "replace" if cut else "del",
                       "prohibit", addr], check=cut)  # mending what is not cut: fine
            done.append(f"{me}:{addr}")
    return done


def isolate_node(layout: LabLayout, node: str) -> list[str]:
    """Every cluster interface of ``node`` down; returns the networks cut."""
    return _links(layout, node, False)


def rejoin_node(layout: LabLayout, node: str) -> list[str]:
    """Every cluster interface of ``node`` up again."""
    return _links(layout, node, True)
