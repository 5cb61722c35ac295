"""The lab's hosts run what a real host runs: ``vmclusterd --config vmclusterd.toml``.

For each node the lab writes the host's configuration into the host's own
directories (``hosts/<node>/{etc,var,run}``, what ``/etc/vmcluster``,
``/var/lib/vmcluster`` and ``/run/vmcluster`` are on a real host) and starts
``python -m vmcluster.node.daemon --config ...`` inside the node's network and
mount namespaces (:mod:`vmcluster.lab.mountns`: no host sees another's files),
detached, as systemd would. The daemon starts the host's etcd member, agent,
heartbeats, manager candidate and watchdog (:mod:`vmcluster.node.daemon`).

``control_plane=False`` (the substrate contract suite) gives hosts that run
their agent only: no store, no heartbeats, no manager, no watchdog.
"""

from __future__ import annotations

import dataclasses
import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from vmcluster.errors import LabError
from vmcluster.lab.layout import LabLayout
from vmcluster.lab.mountns import enter_prefix, make_host_namespace
from vmcluster.lab.nodewatch import HEARTBEAT_PORT
from vmcluster.lab.state import read_state
from vmcluster.model import ClusterSpec
from vmcluster.node.config import EtcdMemberConfig, LabRef, NodeConfig, load_config
from vmcluster.node.daemon import child_env
from vmcluster.pki import NodeCredentials
from vmcluster.policy.networks import node_cluster_networks
from vmcluster.store.members import EtcdCluster, spec_members
from vmcluster.substrate.procs import live_cmdline

__all__ = ["daemon_pids", "etcd_cluster", "node_config", "start_daemon", "write_node_configs"]

ROLES = ("vmclusterd", "watchdog", "etcd", "agent", "nodewatch", "managerd", "api")


def etcd_cluster(layout: LabLayout, spec: ClusterSpec) -> EtcdCluster:
    """The lab's etcd members (each started by its host's daemon), for their URLs and
    health; a member keeps its data in its host's ``var/etcd``."""
    members = spec_members(spec, layout.state_dir, tls=lambda n: NodeCredentials(
        layout.tls_dir(n)))
    members = [dataclasses.replace(m, data_dir=layout.host_state_dir(m.name) / "etcd")
               for m in members]
    return EtcdCluster(members, token=f"vmc-{layout.name}")


def api_addresses(spec: ClusterSpec, node: str) -> tuple[str, ...]:
    """Where a host's API answers: its addresses on the cluster networks, those on
    client-facing (role 3) networks first (the admin side reaches those)."""
    nets = sorted(node_cluster_networks(spec, node), key=lambda p: (-int(p.role), p.metric))
    mine = spec.node(node).interfaces
    return tuple(str(mine[p.name]) for p in nets)


def node_config(layout: LabLayout, spec: ClusterSpec, node: str, control_plane: bool = True,
                manager: Mapping[str, float] | None = None) -> NodeConfig:
    cluster = etcd_cluster(layout, spec)
    member = cluster.member(node)
    mine = list(member.client_urls)
    endpoints = mine + [u for u in cluster.endpoints() if u not in mine]
    install: dict[str, Any] = read_state(layout).get("qemu", {}).get(node) or {}
    return NodeConfig(
        path=layout.node_config(node), node=node, cluster=layout.name,
        config_dir=layout.host_config_dir(node), state_dir=layout.host_state_dir(node),
        run_dir=layout.host_run_dir(node),
        parts=("etcd", "agent", "heartbeats", "manager", "api") if control_plane
        else ("agent",),
        api_listen=api_addresses(spec, node) if control_plane else (),
        heartbeat_port=HEARTBEAT_PORT,
        endpoints=tuple(endpoints) if control_plane else (),
        member=EtcdMemberConfig(member.peer_urls, member.client_urls, cluster.initial_cluster,
                                cluster.token) if control_plane else None,
        fence_window_s=spec.cluster.fence_window_s, qemu=install,
        manager=dict(manager or {}), lab=LabRef(layout.name, layout.root),
    )


def write_node_configs(layout: LabLayout, spec: ClusterSpec, control_plane: bool = True,
                       manager: Mapping[str, float] | None = None) -> None:
    for n in spec.nodes:
        cfg = node_config(layout, spec, n.name, control_plane, manager)
        cfg.path.parent.mkdir(parents=True, exist_ok=True)
        cfg.path.write_text(cfg.render())
        load_config(cfg.path)  # what the daemon will read must read back


def _argv_of(pid: str) -> list[str]:
    raw = live_cmdline(int(pid))
    return [a.decode(errors="replace") for a in raw.split(b"\0")] if raw else []


def daemon_pids(layout: LabLayout, node: str | None = None) -> dict[str, list[int]]:
    """The host processes of the lab (or of one node), by role: ``vmclusterd``,
    ``watchdog``, ``etcd``, ``agent``, ``nodewatch``, ``managerd``."""
    out: dict[str, list[int]] = {r: [] for r in ROLES}
    hosts = [layout.host_dir(n) for n in ([node] if node else [])] or [
        layout.state_dir / "hosts"]
    marks = [str(h) + "/" for h in hosts]
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        argv = _argv_of(proc.name)
        if not argv or argv[0] == "ip" or not any(m in a for a in argv for m in marks):
            continue
        text = " ".join(argv)
        role = ("etcd" if argv[0].endswith("etcd") else
                "watchdog" if "vmcluster.node.watchdog" in text else
                "vmclusterd" if "vmcluster.node.daemon" in text or argv[0].endswith("vmclusterd")
                else "agent" if "vmcluster.lab.agent" in text else
                "nodewatch" if "vmcluster.lab.nodewatch" in text else
                "managerd" if "vmcluster.lab.managerd" in text else
                "api" if "vmcluster.node.api" in text else "")
        if role:
            out[role].append(int(proc.name))
    return out


def start_daemon(layout: LabLayout, node: str, timeout_s: float = 30.0) -> None:
    """Start ``node``'s ``vmclusterd`` in its namespace (unless it runs) and wait until its
    agent answers."""
    from vmcluster.lab.client import AgentClient

    client = AgentClient(layout, node)
    if not daemon_pids(layout, node)["vmclusterd"]:
        log = layout.daemon_log(node)
        log.parent.mkdir(parents=True, exist_ok=True)
        make_host_namespace(layout, node)  # once; a host restarted re-enters its own
        argv = ["setsid", "-f", *enter_prefix(layout, node), sys.executable,
                "-m", "vmcluster.node.daemon", "--config", str(layout.node_config(node))]
        with log.open("ab") as out:
            rc = subprocess.run(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=out,
                                env=child_env(), timeout=10, check=False).returncode
        if rc != 0:
            raise LabError(f"cannot start vmclusterd on {node}; see {log}")
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if client.alive():
            return
        time.sleep(0.05)
    last = _last_line(layout.agent_log(node)) or _last_line(layout.daemon_log(node))
    raise LabError(f"the agent of {node} did not come up in {timeout_s:.0f} s"
                   + (f" ({last})" if last else "") + f"; see {layout.agent_log(node)} and "
                   f"{layout.daemon_log(node)}")


def _last_line(path: Path) -> str:
    try:
        lines = path.read_text(errors="replace").strip().splitlines()
    except OSError:
        return ""
    return lines[-1][-300:] if lines else ""
