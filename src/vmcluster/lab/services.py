"""The lab's control plane: etcd members, node watches and manager candidates.

Per node, inside the node's namespace (so that crashing a node kills them all):

* an etcd member listening on the node's address on every cluster network
  (role >= 1), peer port 2380, client port 2379, data in ``<state>/etcd/``;
* a node watch (:mod:`vmcluster.lab.nodewatch`): heartbeats, the node's report,
  and the isolation rule;
* a manager candidate (:mod:`vmcluster.lab.managerd`); one of them leads.

``services.json`` in the state dir says where the store is (every member's
client URLs) and under which cluster name. The host reaches the store from
the lab's client namespace (on the public network) through
:class:`~vmcluster.lab.nsenter.NetnsThread`: see :func:`lab_store`.
Every process is found again by its namespace or command line, so stopping
works from any process and after a crash.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import vmcluster
from vmcluster.errors import LabError, StoreError, VmclusterError
from vmcluster.lab.credentials import etcd_tls
from vmcluster.lab.layout import LabLayout
from vmcluster.lab.nodewatch import HEARTBEAT_PORT
from vmcluster.lab.nsenter import NetnsThread
from vmcluster.lab.state import read_state
from vmcluster.model import ClusterSpec
from vmcluster.model.spec import load_spec
from vmcluster.store.election import Leadership, current_leader
from vmcluster.store.etcd import EtcdClient
from vmcluster.store.members import EtcdCluster, spec_members
from vmcluster.store.state import ClusterState

__all__ = [
    "DAEMONS",
    "LabStore",
    "etcd_cluster",
    "lab_store",
    "leader",
    "leader_summary",
    "service_pids",
    "start_member",
    "start_node_services",
    "start_services",
    "stop_services",
]

Say = Callable[[str], None]
DAEMONS = ("vmcluster.lab.nodewatch", "vmcluster.lab.managerd")


def services_file(layout: LabLayout) -> Path:
    return layout.state_dir / "services.json"


def service_log(layout: LabLayout, what: str, node: str) -> Path:
    return layout.state_dir / "services" / f"{what}.{node}.log"


def etcd_cluster(layout: LabLayout, spec: ClusterSpec) -> EtcdCluster:
    """The lab's etcd members (not started); one per node, in the node's namespace."""
    members = spec_members(spec, layout.state_dir / "etcd",
                           prefix=lambda n: ("ip", "netns", "exec", layout.node_ns(n)),
                           tls=lambda n: etcd_tls(layout, n))
    return EtcdCluster(members, token=f"vmc-{layout.name}")


def _read_services(layout: LabLayout) -> dict[str, Any]:
    try:
        return dict(json.loads(services_file(layout).read_text()))
    except (OSError, ValueError) as exc:
        raise LabError(f"lab {layout.name!r} runs no control plane ({services_file(layout)} "
                       "missing); it starts with `vmcluster lab up`") from exc


@dataclass
class LabStore:
    """A ClusterState whose connections are made from the lab's client namespace."""

    state: ClusterState
    thread: NetnsThread

    def call(self, fn: Callable[..., Any], *args: object, timeout: float = 60) -> Any:
        return self.thread.call(fn, *args, timeout=timeout)


@contextlib.contextmanager
def lab_store(layout: LabLayout, ns: str | None = None) -> Iterator[LabStore]:
    """The lab's store, used through a thread inside ``ns`` (default: the client ns)."""
    svc = _read_services(layout)
    client = EtcdClient(svc["endpoints"], timeout=1.0, retry_s=10.0, tls=etcd_tls(layout))
    with NetnsThread(ns or layout.client_ns) as thread:
        yield LabStore(ClusterState(client, svc["cluster"]), thread)


def leader(layout: LabLayout) -> Leadership | None:
    with lab_store(layout) as store:
        got: Leadership | None = store.call(current_leader, store.state.client,
                                            store.state.cluster)
        return got


def leader_summary(layout: LabLayout) -> dict[str, Any] | None:
    """``{"manager": node, "token": N}`` for ``lab status``; None when there is no control
    plane, no leader, or the store does not answer within a few seconds (never raises)."""
    if not services_file(layout).exists():
        return None
    try:
        svc = _read_services(layout)
        client = EtcdClient(svc["endpoints"], timeout=1.0, retry_s=2.0, tls=etcd_tls(layout))
        with NetnsThread(layout.client_ns) as thread:
            held = thread.call(current_leader, client, svc["cluster"], timeout=15)
    except (VmclusterError, OSError, TimeoutError, KeyError):  # status shows the rest anyway
        return None
    return None if held is None else {"manager": held.name, "token": held.token}


def _spawn(layout: LabLayout, node: str, module: str) -> None:
    what = module.rsplit(".", 1)[1]
    log = service_log(layout, what, node)
    log.parent.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ)
    src = str(Path(vmcluster.__file__).resolve().parent.parent)
    env["PYTHONPATH"] = src + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    argv = ["setsid", "-f", "ip", "netns", "exec", layout.node_ns(node), sys.executable, "-m",
            module, "--lab", layout.name, "--node", node, "--root", str(layout.root)]
    with log.open("ab") as out:
        rc = subprocess.run(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=out, env=env,
                            timeout=10, check=False).returncode
    if rc != 0:
        raise LabError(f"cannot start {what} on {node}; see {log}")


def _seed(store: ClusterState, layout: LabLayout, spec_text: str) -> None:
    """Spec, node states and the placements the lab booted with (only where none is set)."""
    store.put_spec(spec_text)
    vms = read_state(layout)["vms"]
    existing = store.placements()
    for vm, rec in sorted(vms.items()):
        if vm not in existing and rec.get("node"):
            store.place(vm, rec["node"], expect=0, token=None)
    states = store.node_states()
    for node in read_state(layout)["nodes"]:
        if node not in states:
            store.set_node_state(node, "up")


def start_services(layout: LabLayout, spec: ClusterSpec | None = None, say: Say = print,
                   timeout_s: float = 90.0, manager: dict[str, Any] | None = None) -> None:
    """Start every node's etcd member, then node watches and manager candidates."""
    t0 = time.monotonic()
    st = read_state(layout)
    spec = spec or load_spec(st["spec"])
    cluster = etcd_cluster(layout, spec)
    services_file(layout).write_text(json.dumps({
        "cluster": layout.name, "endpoints": cluster.endpoints(),
        "members": {m.name: list(m.client_urls) for m in cluster.members},
        "heartbeat_port": HEARTBEAT_PORT, "manager": manager or {},
    }, indent=1))
    cluster.start()
    # The members outlive this process; close our copies of their log files only.
    for log in cluster._logs.values():
        log.close()
    with NetnsThread(layout.client_ns) as thread:
        try:
            thread.call(cluster.wait_healthy, None, timeout_s)
        except StoreError as exc:
            raise LabError(f"the lab's etcd did not come up: {exc}") from exc
        say(f"etcd: {len(spec.nodes)} members healthy ({time.monotonic() - t0:.1f} s)")
        svc = _read_services(layout)
        store = ClusterState(EtcdClient(svc["endpoints"], timeout=1.0, retry_s=10.0,
                                        tls=etcd_tls(layout)), svc["cluster"])
        thread.call(_seed, store, layout, Path(st["spec"]).read_text())
    for node in spec.nodes:
        for module in DAEMONS:
            _spawn(layout, node.name, module)
    with lab_store(layout) as ls:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            held = ls.call(current_leader, ls.state.client, ls.state.cluster)
            if held is not None:
                say(f"manager: {held.name} leads (token {held.token}); a candidate and "
                    "heartbeats on every node")
                return
            time.sleep(0.2)
    raise LabError(f"no manager was elected in {timeout_s:.0f} s; see "
                   f"{service_log(layout, 'managerd', spec.nodes[0].name)}")


def start_member(layout: LabLayout, node: str) -> None:
    """Start ``node``'s etcd member again; it rejoins with the data it has."""
    cluster = etcd_cluster(layout, load_spec(read_state(layout)["spec"]))
    cluster.start([node], state="existing")
    for log in cluster._logs.values():
        log.close()


def start_node_services(layout: LabLayout, node: str) -> None:
    """After a crash or power-on: the node's etcd member (with its data), node watch and
    manager candidate, each unless it runs already; nothing when the lab has no control
    plane."""
    if not services_file(layout).exists():
        return
    running = service_pids(layout, node)
    if not running["etcd"]:
        start_member(layout, node)
    for module in DAEMONS:
        if not running[module.rsplit(".", 1)[1]]:
            _spawn(layout, node, module)


def service_pids(layout: LabLayout, node: str | None = None) -> dict[str, list[int]]:
    """``{"etcd"|"nodewatch"|"managerd": [pid, ...]}`` of the lab (or one node)."""
    out: dict[str, list[int]] = {"etcd": [], "nodewatch": [], "managerd": []}
    etcd_dir = str(layout.state_dir / "etcd") + "/"
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            args = (proc / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        text = [a.decode(errors="replace") for a in args]
        if any(a.startswith("--data-dir=" + etcd_dir) for a in text) and text[0].endswith("etcd"):
            name = next(a for a in text if a.startswith("--name=")).split("=", 1)[1]
            if node is None or name == node:
                out["etcd"].append(int(proc.name))
            continue
        for module in DAEMONS:
            if (module in text and "--lab" in text and text[text.index("--lab") + 1]
                    == layout.name and (node is None or text[text.index("--node") + 1] == node)
                    and text[0] != "ip"):
                out[module.rsplit(".", 1)[1]].append(int(proc.name))
    return out


def stop_services(layout: LabLayout, timeout_s: float = 10.0) -> int:
    """SIGTERM every control-plane process of the lab, SIGKILL what is left; the count."""
    pids = [p for ps in service_pids(layout).values() for p in ps]
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGCONT)
            os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and any(_alive(p) for p in pids):
        time.sleep(0.1)
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    return len(pids)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.split(") ", 1)[1][:1] != "Z"

