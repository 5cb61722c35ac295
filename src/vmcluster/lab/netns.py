"""The lab's networks: namespaces, bridges, veths, addresses and shaping.

One ``fabric`` namespace holds a bridge per cluster network (the switches);
each node namespace gets one veth per interface of the spec, carrying the
spec's address (on the Public network the address sits on a bridge ``brpub``
so VM taps can join it); a ``client`` namespace sits on the public network
with the gateway's address. ``tc tbf`` shapes both directions of a link
where the network has ``bandwidth_mbps``. IPv6 is off in every namespace so
the only addresses are the spec's (198.18.0.0/15).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal

from vmcluster.csv.storage import san_address, storage_networks
from vmcluster.model import ClusterSpec, Network
from vmcluster.substrate.host.layout import LabLayout
from vmcluster.substrate.host.netns import ns_pids, run

__all__ = [
    "bridge_mac",
    "build_network",
    "client_address",
    "destroy_namespaces",
    "lab_namespaces",
]


def _public(spec: ClusterSpec) -> Network | None:
    return next((n for n in spec.networks if n.public), None)


def client_address(spec: ClusterSpec) -> str | None:
    """The client namespace's address: the public network's gateway."""
    pub = _public(spec)
    return None if pub is None or pub.gateway is None else str(pub.gateway)


def _ns_setup(ns: str) -> list[list[str]]:
    return [
        ["ip", "netns", "add", ns],
        ["ip", "netns", "exec", ns, "sysctl", "-qw",
         "net.ipv6.conf.all.disable_ipv6=1", "net.ipv6.conf.default.disable_ipv6=1"],
        ["ip", "-n", ns, "link", "set", "lo", "up"],
    ]


def bridge_mac(node_index: int, network_index: int) -> str:
    """The fixed, locally administered MAC of lab node ``node_index``'s bridge on network
    ``network_index`` (unique in a lab: each lab has a fabric of its own)."""
    return f"02:76:63:00:{node_index:02x}:{network_index:02x}"


def _shape(ns: str, dev: str, net: Network) -> list[list[str]]:
    """The link's MTU, and its rate as a token bucket (both directions are shaped: each
    end of a veth shapes what it sends)."""
    out = [["ip", "-n", ns, "link", "set", dev, "mtu", str(net.mtu)]] if net.mtu else []
    if not net.bandwidth_mbps:
        return out
    rate_bytes = net.bandwidth_mbps * 1e6 / 8
    burst = max(32 * 1024, int(rate_bytes / 100))  # 10 ms worth, at least 32 KiB
    return [*out, ["tc", "-n", ns, "qdisc", "replace", "dev", dev, "root", "tbf",
                   "rate", f"{int(net.bandwidth_mbps)}mbit", "burst", str(burst),
                   "latency", "50ms"]]


def build_network(layout: LabLayout, spec: ClusterSpec) -> None:
    """Create every namespace, bridge, veth, address and shaper of the lab."""
    fab = layout.fabric_ns
    cmds: list[list[str]] = []
    for ns in [fab, layout.client_ns, *(layout.node_ns(n.name) for n in spec.hosts)]:
        cmds += _ns_setup(ns)
    for i in range(len(spec.networks)):
        br = layout.fabric_bridge(i)
        cmds += [["ip", "-n", fab, "link", "add", br, "type", "bridge", "forward_delay", "0"],
                 ["ip", "-n", fab, "link", "set", br, "up"]]
    for ni, node in enumerate(spec.hosts):
        ns = layout.node_ns(node.name)
        for i, net in enumerate(spec.networks):
            if net.name not in node.interfaces:
                continue
            port, ifn = layout.fabric_port(ni, i), layout.node_if(net.name)
            addr = f"{node.interfaces[net.name]}/{net.subnet.prefixlen}"
            cmds += [
                ["ip", "-n", fab, "link", "add", port, "type", "veth", "peer", "name", ifn,
                 "netns", ns],
                ["ip", "-n", fab, "link", "set", port, "master", layout.fabric_bridge(i), "up"],
            ]
            if net.public:
                br = layout.PUBLIC_BRIDGE
                cmds += [
                    ["ip", "-n", ns, "link", "add", br, "type", "bridge", "forward_delay", "0"],
                    # A fixed MAC: a bridge without one takes its lowest port's, so a VM's
                    # tap joining or leaving (a start, a migration) changed the host's MAC
                    # and the others' ARP entries pointed at nothing for up to a minute.
                    ["ip", "-n", ns, "link", "set", br, "address", bridge_mac(ni, i)],
                    ["ip", "-n", ns, "link", "set", ifn, "master", br, "up"],
                    ["ip", "-n", ns, "addr", "add", addr, "dev", br],
                    ["ip", "-n", ns, "link", "set", br, "up"],
                ]
            else:
                cmds += [["ip", "-n", ns, "addr", "add", addr, "dev", ifn],
                         ["ip", "-n", ns, "link", "set", ifn, "up"]]
            cmds += _shape(ns, ifn, net) + _shape(fab, port, net)
    cmds += _san_links(layout, spec)
    pub = _public(spec)
    caddr = client_address(spec)
    if pub is not None and caddr is not None:
        i = spec.networks.index(pub)
        port = layout.fabric_port(-1, i)
        cmds += [
            ["ip", "-n", fab, "link", "add", port, "type", "veth", "peer", "name", "eth0",
             "netns", layout.client_ns],
            ["ip", "-n", fab, "link", "set", port, "master", layout.fabric_bridge(i), "up"],
            ["ip", "-n", layout.client_ns, "addr", "add", f"{caddr}/{pub.subnet.prefixlen}",
             "dev", "eth0"],
            ["ip", "-n", layout.client_ns, "link", "set", "eth0", "up"],
        ]
    for cmd in cmds:
        run(cmd)


def _san_links(layout: LabLayout, spec: ClusterSpec) -> list[list[str]]:
    """The SAN namespace and its one interface per storage network (none without volumes)."""

    if not spec.volumes:
        return []
    fab, san = layout.fabric_ns, layout.san_ns
    cmds = _ns_setup(san)
    for name in storage_networks(spec):
        net = spec.network(name)
        i = spec.networks.index(net)
        port, ifn = layout.san_port(i), layout.node_if(name)
        cmds += [
            ["ip", "-n", fab, "link", "add", port, "type", "veth", "peer", "name", ifn,
             "netns", san],
            ["ip", "-n", fab, "link", "set", port, "master", layout.fabric_bridge(i), "up"],
            ["ip", "-n", san, "addr", "add", f"{san_address(spec, name)}/{net.subnet.prefixlen}",
             "dev", ifn],
            ["ip", "-n", san, "link", "set", ifn, "up"],
        ]
        cmds += _shape(san, ifn, net) + _shape(fab, port, net)
    return cmds


def lab_namespaces(layout: LabLayout) -> list[str]:
    """Every namespace of this lab that exists now (found by the lab's prefix)."""
    out = run(["ip", "-j", "netns", "list"], check=False)
    try:
        names = [str(e["name"]) for e in json.loads(out or "[]")]
    except (json.JSONDecodeError, KeyError, TypeError):
        names = [line.split()[0] for line in out.splitlines() if line.strip()]
    return [n for n in names if n.startswith(layout.ns_prefix)]


def destroy_namespaces(layout: LabLayout) -> list[str]:
    """Kill every process in the lab's namespaces, then delete them. Safe to repeat."""
    namespaces = lab_namespaces(layout)
    for ns in namespaces:
        for pid in ns_pids(ns):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
    for ns in namespaces:
        run(["ip", "netns", "del", ns], check=False)
    return namespaces
