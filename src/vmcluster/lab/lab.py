"""``lab up`` / ``down`` / ``status`` / ``net``: several hosts on one machine.

``up`` builds the guest image (cached), the namespaces and links of
:mod:`vmcluster.lab.netns`, writes each host's ``vmclusterd.toml`` and starts
``vmclusterd`` on every host (:mod:`vmcluster.lab.hosts`: etcd member, agent,
heartbeats, manager candidate, watchdog), boots the spec's VMs on their
owners, then seeds the store and waits for a manager
(:mod:`vmcluster.lab.services`); any failure tears the half-built lab down
again.
``down`` finds everything by the lab's name (namespaces by prefix, processes
by namespace and by the state dir on their command line), so it works after
a crash and is safe to run twice.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import time
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from vmcluster.csv.san import start_san
from vmcluster.csv.storage import SAN_NAME, san_address, storage_networks
from vmcluster.errors import LabError, LabNotUp, UsageError, VmclusterError
from vmcluster.lab import netns
from vmcluster.lab.credentials import issue_credentials
from vmcluster.lab.hosts import (
    bootstrap_hosts,
    needs_file_storage,
    start_daemon,
    start_power_switch,
    write_node_configs,
)
from vmcluster.lab.mountns import remove_host_namespaces
from vmcluster.lab.qemu_cache import ensure_qemu
from vmcluster.lab.services import seed_store, start_services, wait_placed
from vmcluster.lab.substrate import LabSubstrate
from vmcluster.model import ClusterSpec
from vmcluster.model.spec import load_spec
from vmcluster.substrate.host.client import AgentClient, forget_namespaces
from vmcluster.substrate.host.layout import RUN_ROOT, LabLayout, check_lab_name
from vmcluster.substrate.host.state import write_state
from vmcluster.substrate.qemu.image import ensure_guest_image

__all__ = ["default_lab_name", "lab_down", "lab_up", "resolve_lab", "set_net", "wait_ready"]

Say = Callable[[str], None]


def default_lab_name(spec: ClusterSpec) -> str:
    return re.sub(r"[^a-z0-9]", "", spec.cluster.name.lower())[:12] or "lab"


def resolve_lab(name: str | None, root: Path = RUN_ROOT) -> LabLayout:
    """The lab named ``name``, else $VMCLUSTER_LAB, else the only lab that is up."""
    name = name or os.environ.get("VMCLUSTER_LAB")
    if name:
        return LabLayout(check_lab_name(name), root)
    labs = sorted(p.name for p in root.glob("*") if (p / "harness" / "state.json").exists())
    if not labs:
        raise LabError("no lab is up; run `vmcluster lab up` first")
    if len(labs) > 1:
        raise UsageError(f"several labs are up ({', '.join(labs)}); pass --name")
    return LabLayout(labs[0], root)


def _require_root() -> None:
    if os.geteuid() != 0:
        raise LabError("the lab needs root (network namespaces, taps); run it as root")


def lab_up(spec_path: Path, name: str | None = None, say: Say = print,
           root: Path = RUN_ROOT, ready_timeout_s: float = 120.0,
           qemu: Mapping[str, str] | None = None, control_plane: bool = True,
           manager: Mapping[str, float] | None = None) -> LabSubstrate:
    """Build and start the lab; returns a substrate bound to it.

    ``qemu`` gives some hosts another QEMU than the installed one (node -> a name of
    :data:`~vmcluster.lab.qemu_cache.LAB_QEMUS`, e.g. ``{"node3": "debian-7.2"}``).
    ``control_plane=False``: hosts run their agent only (no etcd, heartbeats, manager or
    watchdog), for tests of the substrate alone. ``manager``: ManagerParams overrides.
    """

    _require_root()
    t0 = time.monotonic()
    spec = load_spec(spec_path)
    layout = LabLayout(name or default_lab_name(spec), root)
    if layout.state_file.exists() and any(
        AgentClient(layout, n.name).alive() for n in spec.nodes
    ):
        raise LabNotUp(f"lab {layout.name!r} is already up; `vmcluster lab down --name "
                       f"{layout.name}` first or pick another --name")
    if layout.state_dir.exists() or netns.lab_namespaces(layout):
        say(f"[{time.monotonic() - t0:5.1f}s] removing leftovers of an earlier {layout.name!r}")
        lab_down(layout)
    for node in qemu or {}:
        spec.node(node)
    image = ensure_guest_image(progress=lambda m: say(f"[{time.monotonic() - t0:5.1f}s] {m}"))
    installs = {node: ensure_qemu(q, progress=lambda m: say(f"[{time.monotonic() - t0:5.1f}s] "
                                                              f"{m}")).to_json()
                for node, q in (qemu or {}).items()}
    try:
        layout.harness_dir.mkdir(parents=True)
        write_state(layout, {
            "lab": layout.name,
            "control_plane": control_plane,  # its hosts then see nothing of this file
            "spec": str(Path(spec_path).resolve()),
            "image": {"kernel": str(image.kernel), "initrd": str(image.initrd),
                      "kernel_version": image.kernel_version},
            "nodes": {n.name: {"state": "up", "storage_path": True} for n in spec.nodes},
            "vms": {vm.name: {"node": None} for vm in spec.vms},
            "qemu": installs,
        })
        issue_credentials(layout, spec, _other_hosts(spec), nodes=not control_plane)
        netns.build_network(layout, spec)
        say(f"[{time.monotonic() - t0:5.1f}s] network: {len(spec.hosts)} host namespaces, "
            f"{len(spec.networks)} bridges in {layout.fabric_ns}, client in {layout.client_ns}")
        if spec.volumes:
            for line in start_san(layout, spec):
                say(f"[{time.monotonic() - t0:5.1f}s] {line}")
        write_node_configs(layout, spec, control_plane, manager)
        if needs_file_storage(spec):  # before the hosts' namespaces, which bind it
            layout.file_storage.mkdir(parents=True, exist_ok=True)
        if control_plane:  # `cluster init` on the first host, `cluster join` on the others

            stamp: Say = lambda m: say(f"[{time.monotonic() - t0:5.1f}s] {m}")  # noqa: E731
            init = bootstrap_hosts(layout, spec, Path(spec_path).read_text(), stamp)
            seed_store(layout, spec, init, say=stamp)
        with ThreadPoolExecutor(max_workers=max(1, len(spec.hosts))) as pool:
            list(pool.map(lambda n: start_daemon(layout, n.name), spec.hosts))
        if control_plane and netns.client_address(spec) is not None:
            start_power_switch(layout)  # hosts with power = { driver = "lab" } come back
        sub = LabSubstrate(layout, spec)
        versions = ", ".join(f"{n.name} QEMU {sub.facts(n.name).version}" for n in spec.nodes)
        say(f"[{time.monotonic() - t0:5.1f}s] vmclusterd on {len(spec.nodes)} hosts, agents up "
            f"({versions})")
        pins = sub.define_vms()
        say(f"[{time.monotonic() - t0:5.1f}s] machine types: "
            + ", ".join(f"{vm} {m}" for vm, m in pins.items()))
        if control_plane:
            # `cluster init` defined the spec's VMs, to run: the elected manager starts each
            # on its owner, as it would on real hosts.

            start_services(layout, spec,
                           say=lambda m: say(f"[{time.monotonic() - t0:5.1f}s] {m}"))
            homes = wait_placed(layout, [vm.name for vm in spec.vms], ready_timeout_s)
            say(f"[{time.monotonic() - t0:5.1f}s] VMs: the manager started {len(homes)} "
                "QEMUs; booting")
        else:
            with ThreadPoolExecutor(max_workers=max(1, len(spec.vms))) as pool:
                list(pool.map(lambda vm: sub.start_vm(vm.name, vm.owner), spec.vms))
            homes = {vm.name: vm.owner for vm in spec.vms}
            say(f"[{time.monotonic() - t0:5.1f}s] VMs: {len(spec.vms)} QEMUs started; booting")
        for vm in spec.vms:
            wait_ready(layout, vm.name, homes[vm.name], ready_timeout_s)
            say(f"[{time.monotonic() - t0:5.1f}s] {vm.name} ready on {homes[vm.name]} "
                f"({vm.address})")
    except (VmclusterError, OSError) as exc:
        say(f"lab up failed: {exc}; tearing down")
        lab_down(layout)
        if isinstance(exc, VmclusterError):
            raise
        raise LabError(f"lab up failed: {exc}") from exc
    except BaseException:
        lab_down(layout)
        raise
    say(f"[{time.monotonic() - t0:5.1f}s] lab {layout.name!r} is up")
    return sub


def _other_hosts(spec: ClusterSpec) -> dict[str, list[str]]:
    """The lab's hosts besides the nodes that need a certificate: the SAN, when there are
    shared volumes (it serves them over NBD with TLS)."""
    if not spec.volumes:
        return {}

    return {SAN_NAME: [str(san_address(spec, n)) for n in storage_networks(spec)]}


def wait_ready(layout: LabLayout, vm: str, node: str, timeout_s: float) -> None:
    """Wait for the guest's workload to say WORKLOAD-READY on its serial console."""
    log = layout.serial_log(vm, node)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            data = log.read_bytes()
        except OSError:
            data = b""
        if b"WORKLOAD-READY" in data:
            return
        if b"VMC-WORKLOAD-EXIT" in data or b"Kernel panic" in data:
            raise LabError(f"{vm} failed to boot on {node}; see {log}")
        time.sleep(0.2)
    raise LabError(f"{vm} did not boot on {node} within {timeout_s:.0f} s; see {log}")


def _kill_by_cmdline(needle: str) -> int:
    killed = 0
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit() or int(proc.name) == os.getpid():
            continue
        try:
            cmdline = (proc / "cmdline").read_bytes()
        except OSError:
            continue
        if needle.encode() in cmdline:
            try:
                os.kill(int(proc.name), signal.SIGKILL)
                killed += 1
            except ProcessLookupError:
                pass
    return killed


def keep_logs(layout: LabLayout) -> None:
    """With $VMC_KEEP_LOGS=DIR (debugging a CI run; unset by default), copy the lab's
    logs (every host's parts, every serial console) under DIR/<lab>/ before they go."""
    keep = os.environ.get("VMC_KEEP_LOGS")
    if not keep or not layout.state_dir.is_dir():
        return
    dest = Path(keep) / layout.name
    for log in [*layout.state_dir.glob("hosts/*/var/log/*.log"),
                *layout.state_dir.glob("hosts/*/var/console/*.log")]:
        target = dest / log.relative_to(layout.state_dir)
        target.parent.mkdir(parents=True, exist_ok=True)
        with contextlib.suppress(OSError):
            shutil.copyfile(log, target)


def lab_down(layout: LabLayout, say: Say | None = None) -> dict[str, object]:
    """Remove every process, namespace, socket and file of the lab. Safe to repeat."""
    _require_root()
    keep_logs(layout)  # a lab that failed to come up too
    forget_namespaces()  # no thread of ours may keep a removed namespace alive
    killed = _kill_by_cmdline(str(layout.state_dir) + "/")
    killed += _kill_by_cmdline(f"--lab\0{layout.name}\0")
    namespaces = netns.destroy_namespaces(layout)
    remove_host_namespaces(layout)  # the hosts' mount namespaces, bound under the state dir
    existed = layout.state_dir.exists()
    shutil.rmtree(layout.state_dir, ignore_errors=True)
    summary: dict[str, object] = {"lab": layout.name, "namespaces": namespaces,
                                  "processes_killed": killed, "state_dir_removed": existed}
    if say is not None:
        say(f"lab {layout.name!r}: removed {len(namespaces)} namespaces, killed {killed} "
            f"processes{', removed ' + str(layout.state_dir) if existed else ''}")
    return summary


def set_net(sub: LabSubstrate, target: str, up: bool) -> list[tuple[str, str]]:
    """``NETWORK`` (every node on it) or ``NETWORK@NODE`` down or up; returns what changed."""
    net_name, _, node_name = target.partition("@")
    net = sub.spec.network(net_name)
    nodes = [sub.spec.host(node_name).name] if node_name else [
        n.name for n in sub.spec.hosts if net.name in n.interfaces]
    for node in nodes:
        sub.set_link(net.name, node, up)
    return [(net.name, n) for n in nodes]
