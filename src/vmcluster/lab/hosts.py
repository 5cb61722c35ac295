"""The lab's hosts run what a real host runs: ``vmclusterd --config vmclusterd.toml``.

For each node the lab writes the host's configuration into the host's own
directories (``hosts/<node>/{etc,var,run}``, what ``/etc/vmcluster``,
``/var/lib/vmcluster`` and ``/run/vmcluster`` are on a real host) and starts
``python -m vmcluster.node.daemon --config ...`` inside the node's network and
mount namespaces (:mod:`vmcluster.lab.mountns`: no host sees another's files),
detached, as systemd would. The daemon starts the host's etcd member, agent,
heartbeats, manager candidate and watchdog (:mod:`vmcluster.node.daemon`).

With a control plane the lab makes the cluster as an operator would
(:func:`bootstrap_hosts`): it writes each host's base config (paths, the
lab's QEMU build, manager tunables), runs ``vmcluster cluster init`` inside the
first host and ``vmcluster cluster join`` inside each other one, with the join
command init printed; those start the hosts' daemons. The lab's CA is handed
to init as an organisation's own CA would be (``<config_dir>/ca/``), so that the
lab's SAN and its admin side have certificates of the same CA.

``control_plane=False`` (the substrate contract suite) gives hosts that run
their agent only: no store, no heartbeats, no manager, no watchdog.
"""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from vmcluster.errors import LabError, VmclusterError
from vmcluster.lab.credentials import lab_ca
from vmcluster.lab.mountns import enter_prefix, make_host_namespace
from vmcluster.model import ClusterSpec
from vmcluster.node.config import PARTS, LabRef, NodeConfig, load_base_config, load_config
from vmcluster.node.daemon import child_env
from vmcluster.node.nodewatch import HEARTBEAT_PORT
from vmcluster.pki import NodeCredentials, write_file
from vmcluster.store.members import EtcdCluster, spec_members
from vmcluster.substrate.host.client import AgentClient
from vmcluster.substrate.host.layout import LabLayout
from vmcluster.substrate.host.state import read_state
from vmcluster.substrate.procs import live_cmdline

__all__ = ["bootstrap_hosts", "daemon_pids", "etcd_cluster", "node_config", "start_daemon",
           "start_power_switch", "vmcluster_in", "write_node_configs"]

ROLES = ("vmclusterd", "watchdog", "etcd", "agent", "nodewatch", "managerd", "api")


def _runs_member(layout: LabLayout, node: str) -> bool:
    """Whether ``node``'s daemon runs an etcd member (a host that joined after the
    cluster had ``etcd_voters`` of them does not); True before its config exists."""
    try:
        return load_config(layout.node_config(node)).member is not None
    except VmclusterError:
        return True


def etcd_cluster(layout: LabLayout, spec: ClusterSpec) -> EtcdCluster:
    """The lab's etcd members (each started by its host's daemon), for their URLs and
    health; a member keeps its data in its host's ``var/etcd``."""
    members = spec_members(spec, layout.state_dir, tls=lambda n: NodeCredentials(
        layout.tls_dir(n)))
    members = [dataclasses.replace(m, data_dir=layout.host_state_dir(m.name) / "etcd")
               for m in members if _runs_member(layout, m.name)]
    return EtcdCluster(members, token=f"vmc-{layout.name}")


def needs_file_storage(spec: ClusterSpec) -> bool:
    """Whether a VM of ``spec`` keeps its disk in the file storage (it has no volume)."""
    return any(vm.volume is None for vm in spec.vms)


def node_config(layout: LabLayout, spec: ClusterSpec, node: str, control_plane: bool = True,
                manager: Mapping[str, float] | None = None) -> NodeConfig:
    """What the lab writes into a host's ``vmclusterd.toml`` before it joins a cluster:
    its paths, the lab's QEMU build, manager tunables (``cluster init``/``join`` add the
    cluster's part); a host of a lab without a control plane runs its agent only."""
    state = read_state(layout)
    install: dict[str, Any] = state.get("qemu", {}).get(node) or {}
    image = state["image"]  # the guest image, shared read-only as a package would be
    return NodeConfig(
        path=layout.node_config(node), node=node, cluster=layout.name,
        config_dir=layout.host_config_dir(node), state_dir=layout.host_state_dir(node),
        run_dir=layout.host_run_dir(node),
        parts=PARTS if control_plane else ("agent",),
        heartbeat_port=HEARTBEAT_PORT, fence_window_s=spec.cluster.fence_window_s,
        qemu=install, manager=dict(manager or {}),
        # The file storage (NFS on real hosts), only when a VM needs it.
        shared_dir=layout.file_storage if needs_file_storage(spec) else None,
        # A lab of agents only keeps the cluster's records in its own file.
        lab=None if control_plane else LabRef(layout.name, layout.root),
        guest_kernel=Path(image["kernel"]), guest_initrd=Path(image["initrd"]),
    )


def write_node_configs(layout: LabLayout, spec: ClusterSpec, control_plane: bool = True,
                       manager: Mapping[str, float] | None = None) -> None:
    if spec.witness is not None and not control_plane:
        raise LabError("a witness is a vote in the cluster's store: a lab without a control "
                       "plane has none (leave [cluster] witness out)")
    for n in spec.hosts:
        cfg = node_config(layout, spec, n.name, control_plane, manager)
        cfg.path.parent.mkdir(parents=True, exist_ok=True)
        cfg.path.write_text(cfg.render())
        (load_base_config if control_plane else load_config)(cfg.path)  # must read back


def vmcluster_in(layout: LabLayout, node: str, args: list[str], timeout_s: float
                  ) -> dict[str, Any]:
    """``vmcluster ARGS --json`` run inside ``node`` (its network and mount namespaces),
    as an operator logged in there would; its JSON answer."""
    make_host_namespace(layout, node)
    argv = [*enter_prefix(layout, node), sys.executable, "-m", "vmcluster", *args, "--json"]
    try:
        got = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, text=True,
                             env=child_env(), timeout=timeout_s, check=False)
    except subprocess.TimeoutExpired as exc:
        raise LabError(f"`vmcluster {args[0]} {args[1]}` on {node} took over {timeout_s:.0f} s;"
                       f" see {layout.daemon_log(node)}") from exc
    if got.returncode != 0:
        err = got.stderr.strip().splitlines()
        raise LabError(f"`vmcluster {' '.join(args[:2])}` on {node} failed: "
                       f"{err[-1] if err else got.returncode}; see {layout.daemon_log(node)}")
    out: dict[str, Any] = json.loads(got.stdout)
    return out


def bootstrap_hosts(layout: LabLayout, spec: ClusterSpec, spec_text: str,
                    say: Callable[[str], None], timeout_s: float = 120.0) -> dict[str, Any]:
    """``cluster init`` on the first node, ``cluster join`` on the others (one at a time:
    etcd takes one learner at a time); returns init's answer (the join command, the
    admin's credentials file on the first host)."""

    first = spec.nodes[0].name
    # The witness joins right after the first node: a witness must vote in etcd, and the
    # first etcd_voters hosts to join are the voters.
    joining = [*([spec.witness] if spec.witness is not None else []), *spec.nodes[1:]]
    ca = lab_ca(layout)
    ca_dir = layout.host_config_dir(first) / "ca"
    write_file(ca_dir / "ca-key.pem", ca.key_pem)
    write_file(ca_dir / "ca.pem", ca.cert_pem, secret=False)
    spec_file = layout.host_config_dir(first) / "cluster.toml"
    spec_file.write_text(spec_text)
    creds = layout.host_config_dir(first) / "admin" / "credentials.json"
    t0 = time.monotonic()
    init = vmcluster_in(layout, first, [
        "cluster", "init", "--spec", str(spec_file), "--node", first, "--name", layout.name,
        "--config", str(layout.node_config(first)), "--start", "detach",
        "--credentials", str(creds)], timeout_s)
    say(f"cluster init on {first}: etcd, API at {init['api_url']} "
        f"({time.monotonic() - t0:.1f} s)")
    for node in joining:
        t1 = time.monotonic()
        witness = node.name == spec.cluster.witness
        got = vmcluster_in(layout, node.name, [
            "cluster", "join", init["api_url"], "--token", init["join_token"],
            "--ca-hash", init["ca_hash"], "--node", node.name,
            "--config", str(layout.node_config(node.name)), "--start", "detach",
            *(["--witness"] if witness else [])], timeout_s)
        say(f"cluster join on {node.name}{' (the witness)' if witness else ''}: etcd "
            f"{got['etcd']} ({time.monotonic() - t1:.1f} s)")
    return init


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
                else "agent" if "vmcluster.node.agent" in text else
                "nodewatch" if "vmcluster.node.nodewatch" in text else
                "managerd" if "vmcluster.node.managerd" in text else
                "api" if "vmcluster.node.api" in text else "")
        if role:
            out[role].append(int(proc.name))
    return out


def start_power_switch(layout: LabLayout) -> Path:
    """Start the lab's power switch (:mod:`vmcluster.lab.powerswitch`) in its client
    namespace, on the public network, where the hosts' ``lab`` power driver reaches it;
    ``lab down`` ends it with the lab's other processes (its ``--lab``). Its log."""
    log = layout.harness_dir / "powerswitch.log"
    # nsenter --net, not `ip netns exec`: that makes a mount namespace of its own, where
    # the hosts' mount namespaces, bound in the root one, cannot be entered or made
    argv = ["setsid", "-f", "nsenter", f"--net=/run/netns/{layout.client_ns}", sys.executable,
            "-m", "vmcluster.lab.powerswitch", "--lab", layout.name, "--root",
            str(layout.root)]
    with log.open("ab") as out:
        rc = subprocess.run(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=out,
                            env=child_env(), timeout=10, check=False).returncode
    if rc != 0:
        raise LabError(f"cannot start the lab's power switch; see {log}")
    return log


def start_daemon(layout: LabLayout, node: str, timeout_s: float = 30.0,
                 wait: bool = True, env: Mapping[str, str] | None = None) -> None:
    """Start ``node``'s ``vmclusterd`` in its namespace (unless it runs) and wait until its
    agent answers (a witness's: its heartbeats run); ``wait=False``: only start it (after
    a power cut no host's agent answers before a majority of etcd members runs). ``env``:
    more environment for it and its parts (a fault campaign's faked clock)."""

    client = AgentClient(layout, node)
    witness = _is_witness(layout, node)
    if not daemon_pids(layout, node)["vmclusterd"]:
        log = layout.daemon_log(node)
        log.parent.mkdir(parents=True, exist_ok=True)
        make_host_namespace(layout, node)  # once; a host restarted re-enters its own
        argv = ["setsid", "-f", *enter_prefix(layout, node), sys.executable,
                "-m", "vmcluster.node.daemon", "--config", str(layout.node_config(node))]
        with log.open("ab") as out:
            rc = subprocess.run(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=out,
                                env={**child_env(), **(env or {})}, timeout=10,
                                check=False).returncode
        if rc != 0:
            raise LabError(f"cannot start vmclusterd on {node}; see {log}")
    if not wait:
        return
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if daemon_pids(layout, node)["nodewatch"] if witness else client.alive():
            return
        time.sleep(0.05)
    if witness:
        raise LabError(f"the heartbeats of the witness {node} did not start in "
                       f"{timeout_s:.0f} s; see {layout.daemon_log(node)}")
    last = _last_line(layout.agent_log(node)) or _last_line(layout.daemon_log(node))
    raise LabError(f"the agent of {node} did not come up in {timeout_s:.0f} s"
                   + (f" ({last})" if last else "") + f"; see {layout.agent_log(node)} and "
                   f"{layout.daemon_log(node)}")


def _is_witness(layout: LabLayout, node: str) -> bool:
    try:
        return load_config(layout.node_config(node)).role == "witness"
    except VmclusterError:
        return False


def _last_line(path: Path) -> str:
    try:
        lines = path.read_text(errors="replace").strip().splitlines()
    except OSError:
        return ""
    return lines[-1][-300:] if lines else ""
