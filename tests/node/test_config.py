"""vmclusterd.toml: what reads back, and one located line for what does not."""

from __future__ import annotations

from pathlib import Path

import pytest

from vmcluster.errors import SpecError, SubstrateError
from vmcluster.node.config import EtcdMemberConfig, LabRef, NodeConfig, parse_config
from vmcluster.substrate.host.layout import shared_layout

GOOD = """\
[node]
name = "node1"
cluster = "prod"

[etcd]
endpoints = ["https://198.18.1.11:2379"]

[etcd.member]
peer_urls = ["https://198.18.1.11:2380"]
client_urls = ["https://198.18.1.11:2379"]
initial_cluster = "node1=https://198.18.1.11:2380"
token = "vmc-prod"

[api]
listen = ["198.18.1.11", "198.18.2.11"]
"""


def test_defaults_are_a_real_hosts_paths() -> None:
    cfg = parse_config(GOOD, "vmclusterd.toml")
    assert cfg.node == "node1" and cfg.cluster == "prod"
    assert cfg.config_dir == Path("/etc/vmcluster")
    assert cfg.state_dir == Path("/var/lib/vmcluster")
    assert cfg.run_dir == Path("/run/vmcluster")
    assert cfg.parts == ("etcd", "agent", "heartbeats", "manager", "api")
    assert cfg.api_listen == ("198.18.1.11", "198.18.2.11") and cfg.api_port == 8443
    assert cfg.tls_dir == Path("/etc/vmcluster/tls")
    assert cfg.qemu_dir == Path("/var/lib/vmcluster/qemu")
    assert cfg.watchdog_socket == Path("/run/vmcluster/watchdog.sock")
    assert cfg.fence_window_s == 2.5 and cfg.restart_grace_s == 30.0
    assert cfg.member is not None and cfg.member.token == "vmc-prod"


def test_a_host_without_file_storage_refuses_a_plain_disk_with_one_line() -> None:
    """No [paths] shared_dir: the cluster has no file storage; a VM without a shared
    volume has nowhere to keep its disk, and says so (where to set it, what else to do)."""
    cfg = parse_config(GOOD, "vmclusterd.toml")
    assert cfg.shared is None
    host = shared_layout(cfg.shared, cfg.state_dir, cfg.run_dir, cfg.lab_dir)
    with pytest.raises(SubstrateError, match=r"no file storage \(\[paths\] shared_dir") as err:
        host.disk("web")
    assert "\n" not in str(err.value) and "volume" in str(err.value)
    nfs = shared_layout(Path("/srv/vmcluster"), cfg.state_dir, cfg.run_dir)
    assert nfs.disk("web") == Path("/srv/vmcluster/disks/web.img")
    assert nfs.quick_state("web") == Path("/srv/vmcluster/saved/web.state")


def test_render_reads_back() -> None:
    cfg = NodeConfig(
        path=Path("/tmp/x/vmclusterd.toml"), node="n-2", cluster="lab", parts=("agent",),
        config_dir=Path("/tmp/x/etc"), state_dir=Path("/tmp/x/var"), run_dir=Path("/tmp/x/run"),
        endpoints=("https://198.18.1.12:2379",),
        member=EtcdMemberConfig(("https://198.18.1.12:2380",), ("https://198.18.1.12:2379",),
                                "n-2=https://198.18.1.12:2380", "t"),
        fence_window_s=4.0, qemu={"binary": "/opt/q/qemu-system-x86_64"},
        api_listen=("198.18.1.12",), api_port=9443,
        api_certificate=Path("/etc/ssl/dash.pem"), api_key=Path("/etc/ssl/dash-key.pem"),
        manager={"tick_s": 0.1}, lab=LabRef("lab", Path("/run/vmcluster")))
    assert parse_config(cfg.render(), str(cfg.path)) == cfg


@pytest.mark.parametrize(("text", "where", "what"), [
    ("[node]\nname = \"n1\"\n", "c.toml:1", "missing required key 'cluster'"),
    ("[node]\nname = \"n1\"\ncluster = \"c\"\ncolour = 1\n", "c.toml:4", "unknown key 'colour'"),
    ("[nodes]\n", "c.toml", "unknown table 'nodes'"),
    ("[node]\nname = \"n 1\"\ncluster = \"c\"\n", "c.toml:2", "node name 'n 1'"),
    ("[node]\nname = \"n1\"\ncluster = \"c\"\nparts = [\"agent\", \"web\"]\n", "c.toml:4",
     "unknown part 'web'"),
    ("[node]\nname = \"n1\"\ncluster = \"c\"\n", "c.toml", "need the cluster's store"),
    ("[node]\nname = \"n1\"\ncluster = \"c\"\nparts = [\"agent\"]\n[etcd]\n"
     "endpoints = [\"198.18.1.1\"]\n", "c.toml:6", "list of URLs"),
    ("[node]\nname = \"n1\"\ncluster = \"c\"\nparts = [\"agent\"]\n[paths]\n"
     "state_dir = \"var\"\n", "c.toml:6", "absolute path"),
    ("[node]\nname = \"n1\"\ncluster = \"c\"\nparts = [\"agent\"]\n[watchdog]\n"
     "fence_window_s = 0\n", "c.toml:6", "must be > 0"),
    (GOOD.replace("node1=https", "node9=https"), "c.toml:11", "does not name this node"),
    (GOOD.replace("[etcd.member]", "[etcd.member]\nlearner = true"), "c.toml:9",
     "unknown key 'learner'"),
    ("[node]\nname = \"n1\"\ncluster = \"c\"\nparts = [\"agent\"]\n[manager]\nspeed = 2\n",
     "c.toml:6", "unknown key 'speed'"),
    ("[node\n", "c.toml:1", "invalid TOML"),
    (GOOD.replace('listen = ["198.18.1.11", "198.18.2.11"]', 'listen = ["node1"]'),
     "c.toml:15", "'node1' is not an IP address"),
    (GOOD.replace('listen = ["198.18.1.11", "198.18.2.11"]', 'port = 8443'), "c.toml:1",
     "[api] has no listen addresses"),
    (GOOD + "port = 70000\n", "c.toml:16", "port must be a port number"),
    (GOOD + 'certificate = "/etc/ssl/dash.pem"\n', "c.toml:14", "needs both certificate and key"),
])
def test_a_bad_config_is_one_located_line(text: str, where: str, what: str) -> None:
    with pytest.raises(SpecError) as got:
        parse_config(text, "c.toml")
    assert got.value.where == where, str(got.value)
    assert what in str(got.value)
    assert "\n" not in str(got.value)
