"""QemuSubstrate: the substrate Protocol on a lab of node agents running QEMU.

Each method is a call (or a few) to the node agents over their unix sockets;
VM ownership lives in the lab state file and moves in one atomic write at
switchover. Migration follows the phased protocol of
:mod:`vmcluster.substrate.protocol`: ``prepare`` starts an incoming QEMU on
the target listening on the target's address on the chosen network,
``start`` migrates the source to it with the downtime budget and bandwidth
cap, ``poll`` reads ``query-migrate`` (and calls a migration that moves no
bytes for ``stall_s`` failed: a cut network never makes QEMU give up on its
own), and ``finalize`` either hands the VM to the target (``cont``,
``announce-self``, ownership, source quits) or rolls back (cancel, resume on
the source, target removed). A per-node limit on concurrent migrations is
kept with ``flock`` slot files, so it holds across processes and frees
itself when a process dies.
"""

from __future__ import annotations

import contextlib
import fcntl
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import IO, Any

import psutil

from vmcluster.errors import MigrationError, SubstrateError, UsageError
from vmcluster.lab import netns
from vmcluster.lab.client import AgentClient, AgentDown, start_agent
from vmcluster.lab.layout import LabLayout
from vmcluster.lab.state import read_state, update_state
from vmcluster.model import ClusterSpec
from vmcluster.model.spec import load_spec
from vmcluster.substrate.protocol import (
    MigrationHandle,
    MigrationParams,
    MigrationProgress,
    MigrationResult,
    MigrationStatus,
    NodeStatus,
    SubstrateStatus,
    VmState,
    VmStatus,
)
from vmcluster.substrate.qemu.vm import VmConfig, mac_for

__all__ = ["QemuSubstrate", "WallClock"]

MIB = 1024 * 1024
_STATUS: dict[str, MigrationStatus] = {
    "setup": "setup", "completed": "completed", "failed": "failed", "cancelled": "cancelled",
    "cancelling": "cancelled",
}
_ACTIVE = ("active", "device", "pre-switchover", "wait-unplug")


class WallClock:
    """Monotonic wall time since the substrate started."""

    def __init__(self) -> None:
        self._t0 = time.monotonic()

    def now(self) -> float:
        return time.monotonic() - self._t0

    def sleep(self, seconds: float) -> None:
        time.sleep(max(0.0, seconds))


@dataclass
class _Attempt:
    """What this process knows about one migration attempt (by handle id)."""

    uri: str
    slots: list[IO[str]]
    t0: float
    params: MigrationParams | None = None
    last_bytes: int = -1
    last_change: float = 0.0
    error: str | None = None
    forced: bool = False
    last_info: dict[str, Any] = field(default_factory=dict)
    handle: MigrationHandle | None = None


class QemuSubstrate:
    """The qemu substrate over the lab called ``layout.name`` (see module docstring)."""

    def __init__(
        self, layout: LabLayout, spec: ClusterSpec | None = None, stall_s: float = 5.0,
        queue_timeout_s: float = 600.0,
    ) -> None:
        self.layout = layout
        state = read_state(layout)
        self.spec = spec if spec is not None else load_spec(state["spec"])
        self._clock = WallClock()
        self.stall_s = stall_s
        self.queue_timeout_s = queue_timeout_s
        self.on_event: Callable[[str], None] | None = None
        self._attempts: dict[str, _Attempt] = {}
        self._results: dict[str, MigrationResult] = {}  # finalized attempts, by handle id
        self.last_switches: list[dict[str, Any]] = []

    @property
    def clock(self) -> WallClock:
        return self._clock

    def agent(self, node: str) -> AgentClient:
        return AgentClient(self.layout, node)

    def _say(self, msg: str) -> None:
        if self.on_event is not None:
            self.on_event(msg)

    # -- configuration ------------------------------------------------------------
    def vm_config(self, vm_name: str, node: str, owner: str | None = None) -> VmConfig:
        """The VM's QEMU config on ``node``; a CSV disk's owner becomes ``owner`` if given."""
        from vmcluster.csv.attach import disk_config
        from vmcluster.lab.image import kernel_cmdline  # the image module is optional at import

        vm, nd = self.spec.vm(vm_name), self.spec.node(node)
        image = read_state(self.layout)["image"]
        pub = next((n for n in self.spec.networks if n.public), None)
        if pub is None or vm.address is None:
            raise SubstrateError(f"{vm.name} has no address on a public network")
        work_mib = max(8, vm.memory_mib - 96)
        wws = int(min(vm.working_set_mib, work_mib))
        append = kernel_cmdline(str(vm.address), pub.subnet.prefixlen, work_mib, wws,
                                vm.dirty_mibps, gw=str(pub.gateway) if pub.gateway else "")
        return VmConfig(
            name=vm.name, memory_mib=vm.memory_mib, vcpus=vm.vcpus, mac=mac_for(vm.name),
            tap=self.layout.tap(vm.name), bridge=self.layout.PUBLIC_BRIDGE,
            kernel=image["kernel"], initrd=image["initrd"], append=append,
            disk=str(self.layout.disk(vm.name)), accel=nd.accel,
            csv=None if vm.volume is None else disk_config(self.layout, self.spec, vm.name, node,
                                                           owner, say=self._say),
        )

    # -- observation ----------------------------------------------------------------
    def owner(self, vm: str) -> str | None:
        self.spec.vm(vm)
        node = read_state(self.layout)["vms"].get(vm, {}).get("node")
        return None if node is None else str(node)

    def status(self) -> SubstrateStatus:
        state = read_state(self.layout)
        nodes, running = [], {}
        for node in self.spec.nodes:
            recorded = state["nodes"].get(node.name, {})
            nstate = recorded.get("state", "up")
            if nstate != "off":
                try:
                    listed = self.agent(node.name).call("list", timeout_s=10)["vms"]
                    nstate = "up"
                    running[node.name] = {v["vm"]: v for v in listed}
                except AgentDown:
                    nstate = "down"
            down = tuple(n for n in node.interfaces
                         if not netns.link_is_up(self.layout, n, node.name))
            nodes.append(NodeStatus(node.name, nstate, recorded.get("storage_path", True), down))
        vms = []
        for vm in self.spec.vms:
            owner = state["vms"].get(vm.name, {}).get("node")
            info = running.get(owner, {}).get(vm.name) if owner else None
            if owner is None:
                vms.append(VmStatus(vm.name, None, "stopped"))
                continue
            if info is None:
                # Not listed: stopped, or its node's agent is down (the recorded owner stays).
                vms.append(VmStatus(vm.name, owner if owner not in running else None, "stopped"))
                continue
            st: VmState = "running" if info["status"] == "running" else "paused"
            if state["vms"][vm.name].get("migrating_to"):
                st = "migrating"
            vms.append(VmStatus(vm.name, owner, st))
        return SubstrateStatus(tuple(nodes), tuple(vms))

    def utilisation(self) -> Mapping[str, float]:
        out: dict[str, float] = {}
        procs: dict[str, list[psutil.Process]] = {}
        for node in self.spec.nodes:
            try:
                listed = self.agent(node.name).call("list", timeout_s=10)["vms"]
            except AgentDown:
                continue
            procs[node.name] = []
            for v in listed:
                try:
                    p = psutil.Process(v["pid"])
                    p.cpu_percent(None)
                    procs[node.name].append(p)
                except psutil.Error:
                    pass
        self._clock.sleep(0.5)
        for node in self.spec.nodes:
            if node.name not in procs:
                continue
            busy = 0.0
            for p in procs[node.name]:
                with contextlib.suppress(psutil.Error):
                    busy += p.cpu_percent(None) / 100.0
            out[node.name] = min(1.0, busy / node.cores)
        return out

    # -- lifecycle ----------------------------------------------------------------------
    def start_vm(self, vm: str, node: str) -> None:
        self.spec.vm(vm)
        self.spec.node(node)
        owner = self.owner(vm)
        if owner is not None and owner != node and self._runs_on(vm, owner):
            raise SubstrateError(f"{vm} already runs on {owner}; stop or migrate it first")
        disk = self.layout.disk(vm)
        if self.spec.vm(vm).volume is None:  # a CSV disk lives on its volume's LUN instead
            disk.parent.mkdir(parents=True, exist_ok=True)
            if not disk.exists():
                with disk.open("wb") as f:
                    f.truncate(self.spec.vm(vm).disk_mib * MIB)
        cfg = self.vm_config(vm, node, owner=node)
        try:
            self.agent(node).call("start", timeout_s=90, config=cfg.to_json())
        except AgentDown as exc:
            raise SubstrateError(f"cannot start {vm}: node {node} is down") from exc
        with update_state(self.layout) as st:
            st["vms"][vm] = {"node": node}

    def _runs_on(self, vm: str, node: str) -> bool:
        try:
            listed = self.agent(node).call("list", timeout_s=10)["vms"]
        except AgentDown:
            return False
        return any(v["vm"] == vm and v["role"] == "run" for v in listed)

    def stop_vm(self, vm: str) -> None:
        owner = self.owner(vm)
        if owner is not None:
            with contextlib.suppress(AgentDown):  # a down node's VMs died with it
                self.agent(owner).call("stop", timeout_s=30, vm=vm)
        with update_state(self.layout) as st:
            st["vms"][vm] = {"node": None}

    def _owned(self, vm: str) -> str:
        owner = self.owner(vm)
        if owner is None:
            raise SubstrateError(f"{vm} is not running; start it with `vmcluster vm start {vm}`")
        return owner

    def pause_vm(self, vm: str) -> None:
        self.agent(self._owned(vm)).call("pause", vm=vm)

    def resume_vm(self, vm: str) -> None:
        self.agent(self._owned(vm)).call("resume", vm=vm)

    # -- migration ------------------------------------------------------------------------
    def _acquire_slots(self, nodes: list[str]) -> list[IO[str]]:
        limit = self.spec.cluster.max_concurrent_migrations
        held: list[IO[str]] = []
        deadline = self._clock.now() + self.queue_timeout_s
        announced = False
        for node in nodes:
            while True:
                got = self._try_slot(node, limit)
                if got is not None:
                    held.append(got)
                    break
                if not announced:
                    self._say(f"queued: {node} already runs {limit} migrations; waiting for a slot")
                    announced = True
                if self._clock.now() > deadline:
                    for f in held:
                        f.close()
                    raise MigrationError(f"no migration slot on {node} within "
                                         f"{self.queue_timeout_s:.0f} s")
                self._clock.sleep(0.2)
        return held

    def _try_slot(self, node: str, limit: int) -> IO[str] | None:
        for i in range(limit):
            path = self.layout.slot_lock(node, i)
            path.parent.mkdir(parents=True, exist_ok=True)
            f = path.open("a")
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return f
            except BlockingIOError:
                f.close()
        return None

    def prepare_migration(self, vm: str, target: str, network: str) -> MigrationHandle:
        self.spec.vm(vm)
        tnode = self.spec.node(target)
        net = self.spec.network(network)
        for att in self._attempts.values():
            if att.handle is not None and att.handle.vm == vm:
                if (att.handle.target, att.handle.network) == (target, network):
                    return att.handle  # idempotent: the attempt already prepared
                raise MigrationError(f"{vm} is already migrating to {att.handle.target}")
        source = self.owner(vm)
        if source is None:
            raise MigrationError(f"{vm} is not running; start it before migrating")
        if source == target:
            raise MigrationError(f"{vm} already runs on {target}; pick another node")
        for node in (source, target):
            if network not in self.spec.node(node).interfaces:
                raise MigrationError(f"{node} has no interface on {network}")
            if not netns.link_is_up(self.layout, network, node):
                raise MigrationError(f"{node}'s interface on {network} is down")
            if not self.agent(node).alive():
                raise MigrationError(f"node {node} is down; cannot migrate {vm} there")
        slots = self._acquire_slots(sorted({source, target}))
        hid = uuid.uuid4().hex[:10]
        try:
            cfg = self.vm_config(vm, target)
            reply = self.agent(target).call(
                "incoming", timeout_s=60, config=cfg.to_json(), id=hid,
                uri=f"tcp:{tnode.interfaces[net.name]}:0",
            )
        except (SubstrateError, UsageError) as exc:
            for f in slots:
                f.close()
            raise MigrationError(f"cannot prepare {target} to receive {vm}: {exc}") from exc
        handle = MigrationHandle(vm, source, target, network, hid)
        self._attempts[hid] = _Attempt(str(reply["uri"]), slots, self._clock.now(),
                                       handle=handle)
        with update_state(self.layout) as st:
            st["vms"][vm]["migrating_to"] = target
        return handle

    def _attempt(self, handle: MigrationHandle) -> _Attempt:
        try:
            return self._attempts[handle.id]
        except KeyError as exc:
            raise MigrationError(f"unknown migration {handle.id} of {handle.vm}") from exc

    def start_migration(self, handle: MigrationHandle, params: MigrationParams) -> None:
        att = self._attempt(handle)
        if att.params is not None:
            return  # idempotent: QEMU is already migrating this attempt
        att.params = params
        net = self.spec.network(handle.network)
        if params.bandwidth_mibps is not None:
            bw = params.bandwidth_mibps * MIB
        elif net.bandwidth_mbps is not None:
            bw = net.bandwidth_mbps * 1e6 / 8
        else:
            bw = 10e9  # unshaped: let QEMU go as fast as it can
        caps = {"auto-converge": params.on_no_convergence == "throttle"}
        att.t0 = att.last_change = self._clock.now()
        self.agent(handle.source).call(
            "migrate", vm=handle.vm, uri=att.uri, caps=caps,
            params={"downtime_limit": int(params.downtime_ms), "max_bandwidth": int(bw)},
        )

    def poll_migration(self, handle: MigrationHandle) -> MigrationProgress:
        att = self._attempt(handle)
        try:
            info = self.agent(handle.source).call("query_migrate", vm=handle.vm)["migrate"]
        except SubstrateError as exc:
            att.error = f"lost the source: {exc}"
            return MigrationProgress("failed", error=att.error)
        att.last_info = info
        status = str(info.get("status", "setup"))
        ram = info.get("ram", {})
        sent = int(ram.get("transferred", 0))
        now = self._clock.now()
        if sent != att.last_bytes:
            att.last_bytes, att.last_change = sent, now
        progress = MigrationProgress(
            status=_STATUS.get(status, "active"),
            pass_no=int(ram.get("dirty-sync-count", 0)),
            sent_mib=sent / MIB,
            remaining_mib=int(ram.get("remaining", 0)) / MIB,
            dirty_mibps=float(ram.get("dirty-pages-rate", 0)) * int(ram.get("page-size", 4096))
            / MIB,
            expected_downtime_ms=info.get("expected-downtime"),
            error=info.get("error-desc"),
        )
        if status == "failed":
            att.error = str(info.get("error-desc") or "QEMU reported the migration failed")
        elif status in _ACTIVE and now - att.last_change > self.stall_s:
            att.error = (f"no bytes moved for {self.stall_s:.0f} s over {handle.network}"
                         " (network down or target gone)")
            return MigrationProgress("failed", progress.pass_no, progress.sent_mib,
                                     progress.remaining_mib, error=att.error)
        elif (att.params is not None and status in _ACTIVE
              and progress.pass_no > att.params.max_passes and not att.forced):
            if att.params.on_no_convergence == "abort":
                att.error = f"no convergence after {att.params.max_passes} passes"
                return MigrationProgress("failed", progress.pass_no, error=att.error)
            att.forced = True  # force: accept the downtime the copy needs now
            limit = int(max(att.params.downtime_ms, (progress.expected_downtime_ms or 0) * 1.5))
            self.agent(handle.source).call("set_params", vm=handle.vm,
                                           params={"downtime_limit": limit})
        return progress

    def finalize_migration(self, handle: MigrationHandle, success: bool) -> MigrationResult:
        if handle.id in self._results:
            return self._results[handle.id]  # idempotent: the attempt already ended
        att = self._attempts.get(handle.id)
        src, tgt = self.agent(handle.source), self.agent(handle.target)
        try:
            info = src.call("query_migrate", vm=handle.vm)["migrate"]
        except SubstrateError:
            info = att.last_info if att else {}
        completed = info.get("status") == "completed"
        error = None if completed else (att.error if att and att.error else None)
        if completed and not success:
            # The contract: without ``success`` it rolls back. The target never ran, so
            # resuming the source (paused after the copy) leaves exactly one copy.
            completed, error = False, "rolled back by finalize"
        ok = False
        if completed:
            # QEMU finished the copy: the target holds the VM now. Going back would risk two
            # copies, so only a dead target sends us back to the (paused) source.
            try:
                tgt.call("takeover", vm=handle.vm)
                ok = True
            except SubstrateError as exc:
                error = f"target {handle.target} failed after the switchover: {exc}"
        if ok:
            with update_state(self.layout) as st:
                st["vms"][handle.vm] = {"node": handle.target}
            try:
                src.call("release", vm=handle.vm)
            except SubstrateError as exc:
                self._say(f"warning: could not release {handle.vm} on {handle.source}: {exc}")
        else:
            error = error or str(info.get("error-desc") or f"migration {info.get('status')}")
            rollback_error = self._rollback(handle)
            if rollback_error:
                error += f"; {rollback_error}"
        if att is not None:
            for f in att.slots:
                f.close()
            self._attempts.pop(handle.id, None)
        ram = info.get("ram", {})
        total_s = (info.get("total-time", 0) / 1000.0) if ok else (
            self._clock.now() - att.t0 if att else 0.0)
        result = MigrationResult(
            vm=handle.vm, source=handle.source, target=handle.target, network=handle.network,
            ok=ok, passes=int(ram.get("dirty-sync-count", 0)),
            sent_mib=int(ram.get("transferred", 0)) / MIB, total_s=float(total_s),
            downtime_ms=float(info["downtime"]) if ok and "downtime" in info else None,
            error=None if ok else error,
            extra={"setup_ms": info.get("setup-time"), "mbps": info.get("ram", {}).get("mbps")},
        )
        self._results[handle.id] = result
        return result

    def _rollback(self, handle: MigrationHandle) -> str | None:
        problems = []
        try:
            self.agent(handle.target).call("discard", vm=handle.vm)
        except SubstrateError as exc:
            problems.append(f"target cleanup: {exc}")
        try:
            self.agent(handle.source).call("cancel", vm=handle.vm)
        except SubstrateError as exc:
            problems.append(f"resuming on {handle.source} failed: {exc}")
        with update_state(self.layout) as st:
            st["vms"][handle.vm].pop("migrating_to", None)
        return "; ".join(problems) or None

    # -- faults and power ----------------------------------------------------------------
    def set_link(self, network: str, node: str, up: bool) -> None:
        self.spec.network(network)
        if network not in self.spec.node(node).interfaces:
            raise UsageError(f"node {node!r} has no interface on {network!r}")
        netns.set_link(self.layout, self.spec, network, node, up)

    def set_node(self, node: str, up: bool) -> None:
        self.spec.node(node)
        if up:
            from vmcluster.lab.services import start_node_services

            start_agent(self.layout, node)
            start_node_services(self.layout, node)  # its etcd member, heartbeats, candidate
            with update_state(self.layout) as st:
                st["nodes"][node] = {**st["nodes"].get(node, {}), "state": "up"}
            return
        for pid in netns.ns_pids(self.layout.node_ns(node)):
            with contextlib.suppress(psutil.Error):
                psutil.Process(pid).kill()
        for f in self.layout.qemu_dir(node).glob("*.json"):
            f.unlink(missing_ok=True)
        with update_state(self.layout) as st:
            st["nodes"][node] = {**st["nodes"].get(node, {}), "state": "down"}
            for vm, rec in st["vms"].items():
                if rec.get("node") == node:
                    st["vms"][vm] = {"node": None}

    def set_storage_path(self, node: str, up: bool) -> None:
        """Cut or restore ``node``'s path to the SAN (its storage interfaces), then let its
        agent switch its VM disks (redirected / direct) and hand a coordinator role over.

        The disk switches the node's agent made are kept in ``last_switches``.
        """
        from vmcluster.csv.coordinator import coordinator

        nd = self.spec.node(node)
        nets = sorted({v.network for v in self.spec.volumes
                       if v.network is not None and v.network in nd.interfaces})
        since = time.time()
        with update_state(self.layout) as st:
            st["nodes"][node] = {**st["nodes"].get(node, {}), "storage_path": up}
        for net in nets:
            netns.set_link(self.layout, self.spec, net, node, up)
        for vol in self.spec.volumes:
            coordinator(self.layout, self.spec, vol.name, say=self._say)
        try:
            reply = self.agent(node).call("csv_reconcile", timeout_s=120, since=since)
        except AgentDown:
            self.last_switches = []
            return
        self.last_switches = list(reply.get("switched", []))

    def set_power(self, node: str, on: bool) -> None:
        self.spec.node(node)
        if not on:
            if any(v.node == node for v in self.status().vms):
                raise SubstrateError(f"{node} still runs VMs; migrate them away first")
            for pid in netns.ns_pids(self.layout.node_ns(node)):
                with contextlib.suppress(psutil.Error):
                    psutil.Process(pid).terminate()
            with update_state(self.layout) as st:
                st["nodes"][node] = {**st["nodes"].get(node, {}), "state": "off"}
        else:
            self.set_node(node, True)

