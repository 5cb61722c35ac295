"""QemuSubstrate: the substrate Protocol over the hosts' agents, which run QEMU.

Each method is a call (or a few) to the node agents; VM ownership lives in the
records it is given (the store's, for a host's manager) and moves in one
compare-and-set at switchover. Migration follows the phased protocol of
:mod:`vmcluster.substrate.protocol`, implemented in
:mod:`vmcluster.substrate.qemu.migration`.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Mapping
from typing import Any

from vmcluster.errors import SubstrateError
from vmcluster.model import ClusterSpec
from vmcluster.model.spec import load_spec
from vmcluster.policy.migration_mode import dirty_profile
from vmcluster.policy.migration_model import Costs
from vmcluster.policy.prediction import deltas_allowed
from vmcluster.substrate.clock import MonotonicClock
from vmcluster.substrate.host.client import AgentClient, AgentDown
from vmcluster.substrate.host.layout import LabLayout
from vmcluster.substrate.host.state import read_state
from vmcluster.substrate.power import power_on
from vmcluster.substrate.protocol import (
    MigrationHandle,
    MigrationParams,
    MigrationProfile,
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
from vmcluster.substrate.qemu.records import RecordsSnapshot, SubstrateRecords

# The dirty-rate windows a migration's profile is measured over, one after the other.
PROFILE_WINDOWS_MS = (250, 1500)
# What QEMU adds to the ideal migration model, fitted by bench/fit_migration.py from
# bench_migration's runs on this machine (QEMU 10.0.2, TCG; docs/notes.md has the data):
# the switchover's pause beyond the last pages, each pass's own time, a post-copy
# switch's pause (source STOP to target RESUME: devices move and load, the store moves
# ownership, the target runs) and the page rate after it. Each migration's own time
# around QEMU's (setup_s): the profile's windows, then starting the target QEMU, the
# store's records and the switchover's commit, 0.75 s more as bench/bench_drain.py's
# first round measured it (docs/notes.md).
SETUP_S = sum(PROFILE_WINDOWS_MS) / 1000.0 + 0.75
QEMU_COSTS = Costs(switch_ms=2.0, pass_s=0.0, postcopy_pause_ms=40.0,
                   postcopy_efficiency=1.0, setup_s=SETUP_S)

__all__ = ["PROFILE_WINDOWS_MS", "QEMU_COSTS", "QemuSubstrate", "measure_profile"]


# An agent measures a QEMU's CPU over windows of at least a second (node.load.CpuMeter);
# a little more than one, and a QEMU listed once before is measured.
CPU_WINDOW_S = 1.1

def measure_profile(spec: ClusterSpec, vm: str, source: str | None, target: str,
                    agent: Callable[[str], AgentClient],
                    facts: Callable[[str], QemuFacts]) -> MigrationProfile:
    """The guest's dirty rate measured now by its QEMU on ``source`` (page sampling over
    a short window, then a long one: :func:`~vmcluster.policy.migration_mode.
    dirty_profile`), and whether both QEMUs can post-copy. Where it cannot be measured,
    the spec's profile, saying why."""
    spec_vm = spec.vm(vm)
    blocker = None
    for node in (source, target):
        if node is None:
            continue
        try:
            if "postcopy-ram" not in facts(node).capabilities:
                blocker = f"{node}'s QEMU {facts(node).version} cannot post-copy"
        except SubstrateError as exc:
            blocker = str(exc)
    if source is None:
        return MigrationProfile(spec_vm.dirty_mibps, spec_vm.working_set_mib,
                                f"the spec's ({vm} runs nowhere)", blocker, QEMU_COSTS)
    short_ms, long_ms = PROFILE_WINDOWS_MS
    try:
        reply = agent(source).call("dirty_rate", vm=vm, timeout_s=30,
                                   windows_ms=[short_ms, long_ms],
                                   deltas=deltas_allowed(spec, spec_vm),
                                   memory_mib=spec_vm.memory_mib)
        rates = reply["rates"]
        fast, slow = float(rates[0][1]), float(rates[1][1])
        # an older agent does not say: as if the guest kept its vCPUs busy
        busy = float(reply.get("vcpu_busy", 1.0))
        delta = reply.get("delta_ratio")
        delta_ratio = None if delta is None else min(1.0, max(float(delta), 1e-4))
    except (SubstrateError, KeyError, IndexError, TypeError, ValueError) as exc:
        return MigrationProfile(spec_vm.dirty_mibps, spec_vm.working_set_mib,
                                f"the spec's (not measured: {exc})", blocker, QEMU_COSTS)
    dirty, wws = dirty_profile((short_ms, fast), (long_ms, slow), float(spec_vm.memory_mib),
                               spec_vm.working_set_mib)
    return MigrationProfile(dirty, wws, f"measured by {source}'s QEMU over {short_ms} and "
                            f"{long_ms} ms", blocker, QEMU_COSTS,
                            vcpu_busy=min(1.0, max(busy, 0.01)), delta_ratio=delta_ratio)


class QemuSubstrate:
    """The qemu substrate over the lab called ``layout.name`` (see module docstring)."""

    def __init__(
        self, layout: LabLayout, spec: ClusterSpec | None = None, stall_s: float = 5.0,
        queue_timeout_s: float = 600.0, *, records: SubstrateRecords,
    ) -> None:
        self.layout = layout
        self.records = records
        self.spec = spec if spec is not None else load_spec(read_state(layout)["spec"])
        self._clock = MonotonicClock()
        self.stall_s = stall_s
        self.queue_timeout_s = queue_timeout_s
        self.on_event: Callable[[str], None] | None = None
        self.migrations = QemuMigrations(self)
        self.last_switches: list[dict[str, Any]] = []
        self._facts: dict[str, QemuFacts] = {}
        # The manager's fencing token when it acts through this substrate: it goes with
        # every request to an agent (see vmcluster.node.fencing).
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

    def postcopy_caps(self, source: str, target: str) -> dict[str, bool]:
        """The capabilities a post-copy between the two hosts' QEMUs is set up with, on
        both ends: ``postcopy-ram``, and ``postcopy-preempt`` where both have it (the pages
        the running guest waits for then take a channel of their own instead of queueing
        behind the background stream)."""
        both = all("postcopy-preempt" in self.facts(n).capabilities for n in (source, target))
        return {"postcopy-ram": True, **({"postcopy-preempt": True} if both else {})}

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

    def migration_profile(self, vm: str, target: str) -> MigrationProfile:
        return measure_profile(self.spec, vm, self.owner(vm), target, self.agent, self.facts)

    # -- observation ----------------------------------------------------------------
    def owner(self, vm: str) -> str | None:
        self.spec.vm(vm)
        return self.records.snapshot(self.spec).owner(vm)

    def links_down(self, node: str) -> tuple[str, ...] | None:
        """``node``'s interfaces down as its own agent sees them now (its ``list`` reply:
        no store entry whose lease may lag); None when its agent does not answer."""
        try:
            reply = self.agent(node).call("list", timeout_s=10)
        except AgentDown:
            return None
        return self._down_in(node, reply)

    def _down_in(self, node: str, reply: Mapping[str, Any],
                 rec: RecordsSnapshot | None = None) -> tuple[str, ...]:
        """``node``'s interfaces down, from its agent's ``list`` reply (an older agent's
        reply names no links: the records' then)."""
        links = reply.get("links")
        if isinstance(links, dict):
            return tuple(net for net in self.spec.node(node).interfaces
                         if links.get(net) is not True)
        return (rec or self.records.snapshot(self.spec)).links_down(node)

    def status(self) -> SubstrateStatus:
        rec = self.records.snapshot(self.spec)
        nodes, running = [], {}
        for node in self.spec.nodes:
            nstate: NodeState = "off" if rec.node_state(node.name) == "off" else "up"
            reply: dict[str, Any] = {}
            if nstate != "off":
                try:
                    reply = self.agent(node.name).call("list", timeout_s=10)
                    nstate = "up"
                    running[node.name] = {v["vm"]: v for v in reply["vms"]}
                except AgentDown:
                    nstate = "down"
            down = self._down_in(node.name, reply, rec)
            nodes.append(NodeStatus(node.name, nstate, rec.storage_path(node.name), down))
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
        """Each up node's CPU busy (of its cores) as its own agent measures its QEMUs (the
        ``cpu`` of its ``list`` reply: cores busy over its last window of at least a
        second; no process of another host is read from here). A QEMU not yet measured
        twice is listed again once a window has passed."""
        out: dict[str, float] = {}
        pending: list[str] = []
        for node in self.spec.nodes:
            try:
                listed = self.agent(node.name).call("list", timeout_s=10)["vms"]
            except AgentDown:
                continue
            if any(v.get("cpu") is None for v in listed):
                pending.append(node.name)
            out[node.name] = _busy(listed, node.cores)
        if pending:
            self._clock.sleep(CPU_WINDOW_S)
        for name in pending:
            with contextlib.suppress(AgentDown):
                listed = self.agent(name).call("list", timeout_s=10)["vms"]
                out[name] = _busy(listed, self.spec.node(name).cores)
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
    def prepare_migration(self, vm: str, target: str, network: str,
                          mode: str = "precopy") -> MigrationHandle:
        return self.migrations.prepare(vm, target, network, mode)

    def start_migration(self, handle: MigrationHandle, params: MigrationParams) -> None:
        self.migrations.start(handle, params)

    def poll_migration(self, handle: MigrationHandle) -> MigrationProgress:
        return self.migrations.poll(handle)

    def finalize_migration(self, handle: MigrationHandle, success: bool,
                           switchover: Switchover | None = None) -> MigrationResult:
        return self.migrations.finalize(handle, success, switchover)

    # -- power --------------------------------------------------------------------------
    def _await(self, done: Callable[[], bool], deadline: float, poll_s: float,
               failed: str) -> None:
        """Return once ``done()``; ``failed``: the error's text after ``deadline`` (this
        substrate's clock)."""
        while not done():
            if self._clock.now() > deadline:
                raise SubstrateError(failed)
            self._clock.sleep(poll_s)

    def _await_off(self, node: str, off: bool, deadline: float, poll_s: float,
                   failed: str) -> None:
        """Return once the records show ``node`` off (``off``) or no longer off; with a
        store, the manager records that once it heard the host leave or come back."""
        self._await(lambda: (self.records.snapshot(self.spec).node_state(node) == "off")
                    == off, deadline, poll_s, failed)

    def set_power(self, node: str, on: bool) -> None:
        """A host powers itself off when asked (its agent, under the manager's token); it
        is powered on by the driver its spec names (:mod:`vmcluster.substrate.power`:
        IPMI, Wake-on-LAN, the lab's switch), then waited for until the cluster hears it
        again, for its ``boot_s`` at most (SubstrateError after: reported, and the plan
        goes on without it)."""
        spec_node = self.spec.node(node)
        if on:
            if self.records.snapshot(self.spec).node_state(node) != "off":
                return  # on already
            how = power_on(self.spec, node)
            boot_s = spec_node.power.boot_s if spec_node.power is not None else 0.0
            failed = (f"{node} did not come back within its boot time ({boot_s:g} s) after "
                      f"vmcluster {how}")
            deadline = self._clock.now() + boot_s
            self._await_off(node, False, deadline, 0.5, failed)
            # Heard again is not ready yet: its agent (which starts and receives VMs) may
            # still be starting, and a plan's next step is to move VMs there.
            self._await(lambda: self.links_down(node) is not None, deadline, 0.5,
                        f"{failed} (its agent does not answer)")
            return
        if any(v.node == node for v in self.status().vms):
            raise SubstrateError(f"{node} still runs VMs; migrate them away first")
        with contextlib.suppress(AgentDown):  # already off
            self.agent(node).call("power_off", timeout_s=30)
        # Its last report says it left on purpose: the manager's loop records it "off" once
        # its heartbeats are gone; the step is done then (bounded: a host that left no
        # last words ends up "down" instead).
        self._await_off(node, True, self._clock.now() + 30.0, 0.2,
                        f"{node} was powered off but the cluster has not recorded it off "
                        "within 30 s")


def _busy(listed: list[dict[str, Any]], cores: int) -> float:
    """A node's CPU busy (0..1 of its cores) from its agent's list (unmeasured QEMUs: 0)."""
    return min(1.0, sum(float(v.get("cpu") or 0.0) for v in listed) / cores)
