"""QemuSubstrate: the substrate Protocol on a lab of node agents running QEMU.

Each method is a call (or a few) to the node agents over their unix sockets;
VM ownership lives in the lab state file and moves in one atomic write at
switchover. Migration follows the phased protocol of
:mod:`vmcluster.substrate.protocol`, implemented in
:mod:`vmcluster.substrate.qemu.migration`.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Mapping
from typing import Any

import psutil

from vmcluster.errors import SubstrateError, UsageError
from vmcluster.lab import netns
from vmcluster.lab.client import AgentClient, AgentDown
from vmcluster.lab.hosts import start_daemon
from vmcluster.lab.layout import LabLayout
from vmcluster.lab.state import read_state, update_state
from vmcluster.model import ClusterSpec
from vmcluster.model.spec import load_spec
from vmcluster.substrate.clock import MonotonicClock
from vmcluster.substrate.protocol import (
    MigrationHandle,
    MigrationParams,
    MigrationProgress,
    MigrationResult,
    NodeState,
    NodeStatus,
    SubstrateStatus,
    Switchover,
    VmState,
    VmStatus,
)
from vmcluster.substrate.qemu.facts import QemuFacts, migration_refusal, pinned_machine
from vmcluster.substrate.qemu.migration import QemuMigrations
from vmcluster.substrate.qemu.records import FileRecords, SubstrateRecords

__all__ = ["QemuSubstrate", "lab_records"]


def lab_records(layout: LabLayout) -> SubstrateRecords:
    """The records of the lab's operator side: the store's, when the lab runs a control
    plane (what its manager decided), else the lab's own file."""
    if read_state(layout).get("control_plane", False):
        from vmcluster.lab.records import LabStoreRecords

        return LabStoreRecords(layout)
    return FileRecords(layout)

class QemuSubstrate:
    """The qemu substrate over the lab called ``layout.name`` (see module docstring)."""

    def __init__(
        self, layout: LabLayout, spec: ClusterSpec | None = None, stall_s: float = 5.0,
        queue_timeout_s: float = 600.0, records: SubstrateRecords | None = None,
    ) -> None:
        self.layout = layout
        self.records: SubstrateRecords = records or lab_records(layout)
        self.spec = spec if spec is not None else load_spec(read_state(layout)["spec"])
        self._clock = MonotonicClock()
        self.stall_s = stall_s
        self.queue_timeout_s = queue_timeout_s
        self.on_event: Callable[[str], None] | None = None
        self.migrations = QemuMigrations(self)
        self.last_switches: list[dict[str, Any]] = []
        self._facts: dict[str, QemuFacts] = {}
        # The manager's fencing token when it acts through this substrate: it goes with
        # every request to an agent (see vmcluster.lab.fencing).
        self.token: int | None = None

    @property
    def clock(self) -> MonotonicClock:
        return self._clock

    def agent(self, node: str) -> AgentClient:
        return AgentClient(self.layout, node, token=self.token)

    def say(self, msg: str) -> None:
        if self.on_event is not None:
            self.on_event(msg)

    # -- each host's QEMU and each VM's machine type -------------------------------------
    def facts(self, node: str) -> QemuFacts:
        """What ``node``'s QEMU supports, as its agent probed it (asked once per substrate)."""
        if node not in self._facts:
            try:
                reply = self.agent(node).call("facts", timeout_s=10)
            except AgentDown as exc:
                raise SubstrateError(f"node {node} is down; its QEMU is unknown") from exc
            self._facts[node] = QemuFacts.from_json(reply["facts"])
        return self._facts[node]

    def machine(self, vm: str) -> str:
        """The machine type ``vm`` is pinned to (pinned now if it is not yet)."""
        pinned = self.records.machines().get(vm)
        return pinned if pinned else self.define_vms([vm])[vm]

    def define_vms(self, names: list[str] | None = None) -> dict[str, str]:
        """Pin each VM's machine type, once: the spec's, or the newest every host knows.

        A cluster upgraded host by host keeps its VMs on the machine type they were
        defined with, so they can move to the hosts that already run a newer QEMU.
        """
        want = names if names is not None else [v.name for v in self.spec.vms]
        pinned = self.records.machines()
        hosts = []
        if any(name not in pinned for name in want):
            for n in self.spec.nodes:
                with contextlib.suppress(SubstrateError):
                    hosts.append(self.facts(n.name))
        return self.records.pin_machines({
            name: pinned.get(name) or pinned_machine(hosts, self.spec.vm(name).machine)
            for name in want})

    def migration_refusal(self, vm: str, source: str, target: str) -> str | None:
        """Why ``vm`` cannot go from ``source``'s QEMU to ``target``'s (one line), or None."""
        return migration_refusal(self.machine(vm), self.facts(source), self.facts(target),
                                 source, target)

    # -- observation ----------------------------------------------------------------
    def owner(self, vm: str) -> str | None:
        self.spec.vm(vm)
        return self.records.snapshot(self.spec).owner(vm)

    def status(self) -> SubstrateStatus:
        rec = self.records.snapshot(self.spec)
        nodes, running = [], {}
        for node in self.spec.nodes:
            nstate: NodeState = "off" if rec.node_state(node.name) == "off" else "up"
            if nstate != "off":
                try:
                    listed = self.agent(node.name).call("list", timeout_s=10)["vms"]
                    nstate = "up"
                    running[node.name] = {v["vm"]: v for v in listed}
                except AgentDown:
                    nstate = "down"
            nodes.append(NodeStatus(node.name, nstate, rec.storage_path(node.name),
                                    rec.links_down(node.name)))
        vms = []
        for vm in self.spec.vms:
            owner = rec.owner(vm.name)
            info = running.get(owner, {}).get(vm.name) if owner else None
            if owner is None:
                vms.append(VmStatus(vm.name, None, "stopped"))
                continue
            if info is None:
                # Not listed: stopped, or its node's agent is down (the recorded owner stays).
                vms.append(VmStatus(vm.name, owner if owner not in running else None, "stopped"))
                continue
            st: VmState = "running" if info["status"] == "running" else "paused"
            if rec.migrating(vm.name):
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
        try:  # the agent builds the QEMU from the VM's definition, its disk too
            self.agent(node).call("start", timeout_s=90, vm=vm, machine=self.machine(vm))
        except AgentDown as exc:
            raise SubstrateError(f"cannot start {vm}: node {node} is down") from exc
        self.records.set_owner(vm, node)

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
        self.records.set_owner(vm, None)

    def _owned(self, vm: str) -> str:
        owner = self.owner(vm)
        if owner is None:
            raise SubstrateError(f"{vm} is not running; start it with `vmcluster vm start {vm}`")
        return owner

    def pause_vm(self, vm: str) -> None:
        self.agent(self._owned(vm)).call("pause", vm=vm)

    def resume_vm(self, vm: str) -> None:
        self.agent(self._owned(vm)).call("resume", vm=vm)

    # -- migration (the phases live in QemuMigrations) -----------------------------------
    def prepare_migration(self, vm: str, target: str, network: str) -> MigrationHandle:
        return self.migrations.prepare(vm, target, network)

    def start_migration(self, handle: MigrationHandle, params: MigrationParams) -> None:
        self.migrations.start(handle, params)

    def poll_migration(self, handle: MigrationHandle) -> MigrationProgress:
        return self.migrations.poll(handle)

    def finalize_migration(self, handle: MigrationHandle, success: bool,
                           switchover: Switchover | None = None) -> MigrationResult:
        return self.migrations.finalize(handle, success, switchover)

    # -- faults and power ----------------------------------------------------------------
    def set_link(self, network: str, node: str, up: bool) -> None:
        self.spec.network(network)
        if network not in self.spec.node(node).interfaces:
            raise UsageError(f"node {node!r} has no interface on {network!r}")
        netns.set_link(self.layout, self.spec, network, node, up)
        self._await_link(network, node, up)

    def _await_link(self, network: str, node: str, up: bool, timeout_s: float = 5.0) -> None:
        """Return once the records show the link as set (in a lab with a store: once the
        host published what it sees, a fraction of a second); a host that is down never
        does, so this gives up after ``timeout_s`` without an error."""
        self.records.wait_link(self.spec, network, node, up, timeout_s)

    def _await_off(self, node: str, off: bool, timeout_s: float, poll_s: float,
                   failed: str) -> None:
        """Return once the records show ``node`` off (``off``) or no longer off; with a
        store, the manager records that once it heard the host leave or come back.
        ``failed``: the error's text after ``timeout_s``."""
        deadline = self._clock.now() + timeout_s
        while (self.records.snapshot(self.spec).node_state(node) == "off") != off:
            if self._clock.now() > deadline:
                raise SubstrateError(failed)
            self._clock.sleep(poll_s)

    def _await_heard(self, node: str, timeout_s: float = 60.0) -> None:
        """Return once the cluster heard ``node`` again (its manager's next tick or two
        after the daemon's start)."""
        self._await_off(node, False, timeout_s, 0.5,
                        f"{node}'s vmclusterd runs again but the cluster has not heard it "
                        f"within {timeout_s:.0f} s; see {self.layout.daemon_log(node)}")

    def set_node(self, node: str, up: bool) -> None:
        self.spec.node(node)
        if up:
            start_daemon(self.layout, node)  # its vmclusterd starts the host's parts
            self.records.set_node_state(node, "up")
            self._await_heard(node)
            return
        for pid in netns.ns_pids(self.layout.node_ns(node)):
            with contextlib.suppress(psutil.Error):
                psutil.Process(pid).kill()
        for f in self.layout.qemu_dir(node).glob("*.json"):
            f.unlink(missing_ok=True)
        self.records.set_node_state(node, "down", drop_owners=True)

    def set_storage_path(self, node: str, up: bool) -> None:
        """Cut or restore ``node``'s path to the SAN (its storage interfaces), then let its
        agent switch its VM disks (redirected / direct) and hand a coordinator role over.

        The disk switches the node's agent made are kept in ``last_switches``.
        """
        from vmcluster.csv.coordinator import FileBook, coordinator
        from vmcluster.lab.services import has_control_plane

        nd = self.spec.node(node)
        nets = sorted({v.network for v in self.spec.volumes
                       if v.network is not None and v.network in nd.interfaces})
        since = time.time()
        store = has_control_plane(self.layout)
        if not store:  # hosts that run their agent only: the lab keeps their records
            with update_state(self.layout) as st:
                st["nodes"][node] = {**st["nodes"].get(node, {}), "storage_path": up}
        for net in nets:
            netns.set_link(self.layout, self.spec, net, node, up)
        if not store:  # else the node's agent sees its own link and re-elects, as a host would
            for vol in self.spec.volumes:
                coordinator(FileBook(self.layout), self.spec, vol.name, say=self.say)
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
            self.records.set_node_state(node, "off")
        else:
            self.set_node(node, True)

