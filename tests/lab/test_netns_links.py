"""The lab's links as the spec draws them: MTU and shaping (the commands, not run)."""

from __future__ import annotations

from ipaddress import IPv4Network

from vmcluster.lab.netns import _shape
from vmcluster.model.network import Network


def test_a_network_sets_its_mtu_before_its_shaper_on_each_end() -> None:
    jumbo = Network("Migration", IPv4Network("198.18.3.0/24"), bandwidth_mbps=1000, mtu=9000)
    cmds = _shape("vmc-x-node1", "mig0", jumbo)
    assert cmds[0] == ["ip", "-n", "vmc-x-node1", "link", "set", "mig0", "mtu", "9000"]
    tbf = cmds[1]
    assert tbf[:9] == ["tc", "-n", "vmc-x-node1", "qdisc", "replace", "dev", "mig0", "root",
                       "tbf"]
    assert tbf[tbf.index("rate") + 1] == "1000mbit"
    assert int(tbf[tbf.index("burst") + 1]) >= 9000  # a jumbo frame fits the bucket


def test_a_plain_network_is_left_as_the_host_has_it() -> None:
    assert _shape("ns", "eth0", Network("Heartbeat", IPv4Network("198.18.2.0/24"))) == []
    only_mtu = Network("Storage", IPv4Network("198.18.4.0/24"), mtu=9000)
    assert _shape("ns", "eth0", only_mtu) == [["ip", "-n", "ns", "link", "set", "eth0", "mtu",
                                                "9000"]]
