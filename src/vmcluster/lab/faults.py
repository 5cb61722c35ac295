"""Rehearse failures as on real hardware: crash, start, isolate and rejoin a node.

* ``crash``: SIGKILL every process in the node's namespace: its agent, etcd
  member, node watch, manager candidate and QEMUs, all at once, with nothing
  recorded anywhere (the cluster has to find out by itself).
* ``start``: the node boots again: agent, etcd member (rejoining with its
  data), node watch, manager candidate. Its old VMs are not restarted there;
  the manager owns placement.
* ``isolate`` / ``rejoin``: every cluster (role >= 1) interface of the node
  down / up; its processes keep running, cut off.
* ``kill`` / ``freeze`` / ``restart`` one part of a host (its etcd member, agent,
  manager candidate, heartbeats, API, the ``vmclusterd`` supervisor itself, or
  one VM's QEMU): the faults a campaign and an operator inject one at a time.
* ``blip``: a network (or one node's interface on it) down for a moment, N times.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

from vmcluster.errors import LabError, UsageError
from vmcluster.lab.hosts import daemon_pids, start_daemon
from vmcluster.model import ClusterSpec
from vmcluster.model.spec import load_spec
from vmcluster.policy.networks import node_cluster_networks
from vmcluster.substrate.host import netns
from vmcluster.substrate.host.layout import LabLayout
from vmcluster.substrate.host.state import read_state

__all__ = ["ETCD_PEER_PORT", "PARTS", "SIGNALS", "blackhole_etcd", "blip_net", "crash_node",
           "cut_between", "freeze_part", "isolate_node", "kill_part", "part_pids", "qemu_pids",
           "rejoin_node", "restart_part", "signal_node", "start_node", "start_nodes", "stop_daemon"]

#: A host's parts as the fault commands name them -> the role :func:`daemon_pids` gives.
PARTS = {"etcd": "etcd", "agent": "agent", "manager": "managerd", "heartbeats": "nodewatch",
         "api": "api", "vmclusterd": "vmclusterd", "watchdog": "watchdog", "qemu": ""}
SIGNALS = {"KILL": signal.SIGKILL, "TERM": signal.SIGTERM, "INT": signal.SIGINT}


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
    start_nodes(layout, [node])


def start_nodes(layout: LabLayout, nodes: Sequence[str]) -> None:
    """Boot ``nodes`` again together (after a power cut: no host's agent answers before a
    majority of etcd members runs), then wait for each."""
    for node in nodes:
        _spec(layout, node)
        if daemon_pids(layout, node)["vmclusterd"]:
            raise UsageError(f"{node}'s vmclusterd is running; crash the node first "
                             f"(`vmcluster lab node crash {node}`)")
    for node in nodes:  # after a crash, or after its watchdog fenced it
        start_daemon(layout, node, wait=False)
    for node in nodes:
        start_daemon(layout, node, timeout_s=60)


def _links(layout: LabLayout, node: str, up: bool) -> list[str]:
    spec = _spec(layout, node)
    nets = [p.name for p in node_cluster_networks(spec, node)]
    for net in nets:
        netns.set_link(layout, spec, net, node, up)
    return nets


def cut_between(layout: LabLayout, a: str, b: str, cut: bool,
                one_way: bool = False) -> list[str]:
    """Cut (or mend) every cluster-network path between hosts ``a`` and ``b`` only: each
    gets a ``prohibit`` route to the other's addresses, so both keep reaching everyone
    else (the witness among them). Returns the addresses cut off, as ``host:address``."""
    spec = _spec(layout, a)
    _spec(layout, b)
    if a == b:
        raise UsageError(f"cut {a} from itself? name two different hosts")
    done = []
    # One way: only ``a`` loses its routes to ``b`` (b's packets still reach a; a's
    # replies, heartbeats and TCP acknowledgements to b do not).
    for me, peer in ((a, b),) if one_way else ((a, b), (b, a)):
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


def qemu_pids(layout: LabLayout, node: str, vm: str) -> list[int]:
    """The pids of ``vm``'s QEMU on ``node`` (its source or target; none if it runs elsewhere)."""
    out = []
    for pid in netns.ns_pids(layout.node_ns(node)):
        try:
            argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"-name" in argv[:-1] and argv[argv.index(b"-name") + 1].split(b",")[0] == vm.encode():
            out.append(pid)
    return out


def part_pids(layout: LabLayout, node: str, part: str, vm: str | None = None) -> list[int]:
    """The pids of one part of ``node`` (see :data:`PARTS`); ``qemu`` needs ``vm``."""
    _spec(layout, node)
    if part not in PARTS:
        raise UsageError(f"no part {part!r} of a host; parts: {', '.join(PARTS)}")
    if part == "qemu":
        if not vm:
            raise UsageError("which VM's QEMU? name it: `lab kill NODE qemu VM`")
        return qemu_pids(layout, node, vm)
    if vm:
        raise UsageError(f"a VM is named only with the part qemu, not {part}")
    return daemon_pids(layout, node)[PARTS[part]]


def _alive(pids: list[int]) -> list[int]:
    return [p for p in pids if Path(f"/proc/{p}").exists()]


def kill_part(layout: LabLayout, node: str, part: str, vm: str | None = None,
              sig: str = "KILL", timeout_s: float = 10.0) -> list[int]:
    """Send ``sig`` (KILL, TERM or INT) to one part of ``node``; returns the pids hit,
    once they are gone (KILL) or signalled (TERM, INT: the part decides what it does)."""
    if sig not in SIGNALS:
        raise UsageError(f"signal {sig!r}: KILL, TERM or INT")
    pids = part_pids(layout, node, part, vm)
    if not pids:
        what = f"{vm}'s QEMU" if part == "qemu" else f"its {part}"
        raise UsageError(f"{node} runs no {what} now; nothing to kill")
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, SIGNALS[sig])
    deadline = time.monotonic() + timeout_s
    while sig == "KILL" and _alive(pids) and time.monotonic() < deadline:
        time.sleep(0.05)
    return pids


def freeze_part(layout: LabLayout, node: str, part: str, seconds: float,
                vm: str | None = None) -> list[int]:
    """SIGSTOP one part of ``node`` for ``seconds``, then SIGCONT it (also if this call
    is interrupted: a freeze never outlives the command); returns the pids frozen."""
    if not 0 < seconds <= 3600:
        raise UsageError(f"--for {seconds:g}: a freeze lasts 0 to 3600 s")
    pids = part_pids(layout, node, part, vm)
    if not pids:
        raise UsageError(f"{node} runs no {part} now; nothing to freeze")
    try:
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGSTOP)
        time.sleep(seconds)
    finally:
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)
    return pids


def restart_part(layout: LabLayout, node: str, part: str, timeout_s: float = 30.0,
                 env: Mapping[str, str] | None = None) -> list[int]:
    """Restart one part of ``node`` as an operator would: the ``vmclusterd`` supervisor
    (SIGTERM, as ``systemctl restart`` does, then started again: its VMs keep running),
    or one of its parts (SIGTERM; the supervisor starts it again). Returns the new pids."""
    if part in ("qemu", "watchdog"):
        raise UsageError(f"{part} is not restarted: kill it (`lab kill`) and see what follows")
    deadline = time.monotonic() + timeout_s
    _stop(layout, node, part, timeout_s)
    if part == "vmclusterd":
        start_daemon(layout, node, env=env)
    while not (new := part_pids(layout, node, part)):
        if time.monotonic() > deadline:
            raise LabError(f"{node}'s {part} was not started again within {timeout_s:.0f} s")
        time.sleep(0.1)
    return new


#: etcd's peer port (raft between members): what an etcd blackhole drops.
ETCD_PEER_PORT = 2380
_NFT_TABLE = "vmc_fault"


def blackhole_etcd(layout: LabLayout, node: str, on: bool) -> None:
    """Drop (``on``) or let through again every packet of ``node``'s etcd member to or
    from its peers (TCP port 2380, in ``node``'s network namespace, by nftables): the
    member lives on, the host's heartbeats and clients' traffic too, but raft cannot
    reach it. Idempotent both ways."""
    _spec(layout, node)
    ns = layout.node_ns(node)
    netns.run(["ip", "netns", "exec", ns, "nft", "delete", "table", "inet", _NFT_TABLE],
              check=False)  # mending what is not cut: fine
    if not on:
        return
    rules = (f"table inet {_NFT_TABLE} {{ chain out {{ type filter hook output priority 0; "
             f"tcp dport {ETCD_PEER_PORT} drop; tcp sport {ETCD_PEER_PORT} drop; }}; }}")
    netns.run(["ip", "netns", "exec", ns, "nft", rules], check=True)


def _stop(layout: LabLayout, node: str, part: str, timeout_s: float) -> None:
    """SIGTERM one part of ``node`` and wait until it is gone."""
    old = part_pids(layout, node, part)
    if not old:
        raise UsageError(f"{node} runs no {part} now; start the node (`lab node start {node}`)")
    for pid in old:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout_s
    while _alive(old):
        if time.monotonic() > deadline:
            raise LabError(f"{node}'s {part} did not stop within {timeout_s:.0f} s of SIGTERM")
        time.sleep(0.05)


def stop_daemon(layout: LabLayout, node: str, timeout_s: float = 30.0) -> None:
    """Stop ``node``'s ``vmclusterd`` as ``systemctl stop`` would (SIGTERM; its QEMUs keep
    running, and so do its heartbeat part and watchdog for a while: a daemon started again
    adopts them). It ends once the parts that stop with it have."""
    _stop(layout, node, "vmclusterd", timeout_s)


def blip_net(set_link: Callable[[bool], object], seconds: float, times: int,
             gap_s: float) -> int:
    """Take a link down for ``seconds`` and up again, ``times`` times with ``gap_s``
    between; always leaves it up. Returns how many blips were made."""
    if not 0 < seconds <= 600 or not 1 <= times <= 1000 or not 0 <= gap_s <= 600:
        raise UsageError(f"a blip lasts 0-600 s ({seconds:g}), 1-1000 times ({times}), "
                         f"0-600 s apart ({gap_s:g})")
    done = 0
    try:
        for i in range(times):
            if i:
                time.sleep(gap_s)
            set_link(False)
            time.sleep(seconds)
            set_link(True)
            done += 1
    finally:
        set_link(True)
    return done
