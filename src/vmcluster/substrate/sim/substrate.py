"""The simulation substrate: the Protocol of :mod:`vmcluster.substrate.protocol` in virtual time.

Method for method the same contract as the qemu substrate (see that
module's docstring). What the simulator adds on top, for the scenario
runner: :meth:`SimSubstrate.at` to schedule callbacks, ``on_tick`` hooks run
after each utilisation update, ``engine.on_end`` called when a started
migration ends, and a ``trace`` callback that receives every event as a dict.

Modelled: VM CPU from a :class:`~.workload.Workload`; live migration pass by
pass (:mod:`.engine`) over max-min fair links (:mod:`.network`); CSV
redirected I/O (a node without its storage path sends its VMs' I/O over the
cluster network to a node that has one); heartbeats on the cluster network.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import replace
from typing import Any

import numpy as np

from vmcluster.errors import MigrationError, SubstrateError, UsageError, VmclusterError
from vmcluster.model import ClusterSpec
from vmcluster.policy.networks import Health, cluster_network, cluster_networks
from vmcluster.substrate.protocol import (
    Clock,
    MigrationHandle,
    MigrationParams,
    MigrationProfile,
    MigrationProgress,
    MigrationResult,
    NodeStatus,
    SubstrateStatus,
    Switchover,
    VmStatus,
)
from vmcluster.substrate.sim.engine import Engine
from vmcluster.substrate.sim.kernel import Kernel, SimClock, Timer
from vmcluster.substrate.sim.network import Fabric
from vmcluster.substrate.sim.state import FlowRec, MigRec, NodeRec, VmRec
from vmcluster.substrate.sim.workload import Workload

__all__ = ["SimSubstrate"]

HEARTBEAT_BYTES = 134  # one UDP heartbeat datagram on the wire, roughly


class SimSubstrate:
    """A whole cluster in virtual time. Deterministic: no randomness, ordered containers only."""

    def __init__(
        self,
        spec: ClusterSpec,
        *,
        workload: Workload | None = None,
        io_mibps: float = 0.0,
        state_mib: float = 0.0,
        trace: Callable[[dict[str, Any]], None] | None = None,
    ) -> None:
        self.spec = spec
        self.kernel = Kernel()
        self._clock = SimClock(self.kernel)
        self.trace = trace
        self.io_mibps = io_mibps
        self.state_mib = state_mib
        self.nodes = {
            n.name: NodeRec(n.name, i, n.cores, n.memory_mib, tuple(n.interfaces))
            for i, n in enumerate(spec.nodes)
        }
        self.vms = {v.name: VmRec(v, i) for i, v in enumerate(spec.vms)}
        self.fabric = Fabric(spec, self.now)
        self.engine = Engine(self, spec.cluster.max_concurrent_migrations)
        self._props = sorted(cluster_networks(spec.networks), key=lambda p: p.key)
        self._redirects: list[FlowRec] = []
        self._paths_down = 0  # nodes without a storage path (skip redirect work when none)
        self._health: Health | None = None
        self.vm_util = np.zeros(len(self.vms))
        self._vm_weight = np.array([float(v.vcpus) for v in spec.vms])
        self._vm_node = np.full(len(self.vms), -1, dtype=np.int64)  # -1: not using any CPU
        self._cores = np.array([float(n.cores) for n in spec.nodes])
        self.on_tick: list[Callable[[int], None]] = []
        self.workload = workload
        if workload is not None:
            self.kernel.at(0.0, lambda: self._tick(0), priority=0)
        self._update_heartbeat()

    # -- plumbing for the runner ---------------------------------------------

    @property
    def clock(self) -> Clock:
        return self._clock

    def now(self) -> float:
        return self.kernel.now

    def at(self, when: float, callback: Callable[[], None], priority: int = 1) -> Timer:
        return self.kernel.at(when, callback, priority)

    def emit(self, kind: str, **fields: Any) -> None:
        if self.trace is not None:
            self.trace({"t": round(self.kernel.now, 6), "kind": kind, **fields})

    def vm_rec(self, name: str) -> VmRec:
        rec = self.vms.get(name)
        if rec is None:
            raise UsageError(f"unknown VM {name!r}")
        return rec

    def node_rec(self, name: str) -> NodeRec:
        rec = self.nodes.get(name)
        if rec is None:
            raise UsageError(f"unknown node {name!r}")
        return rec

    def health(self) -> Health:
        """Which interfaces are down, as the network policy sees it (a dead node's are all down)."""
        if self._health is None:
            down = [
                (net, n.name)
                for n in self.nodes.values()
                for net in n.interfaces
                if n.state != "up" or net in n.links_down
            ]
            self._health = Health(frozenset(down))
        return self._health

    def _changed(self) -> None:
        self._health = None
        self._update_heartbeat()
        self._refresh_redirects()

    def _tick(self, step: int) -> None:
        assert self.workload is not None
        self.vm_util = self.workload.row(step).astype(np.float64)
        for hook in self.on_tick:
            hook(step)
        self.kernel.at((step + 1) * self.workload.interval_s, lambda: self._tick(step + 1), 0)

    # -- observation ---------------------------------------------------------

    def status(self) -> SubstrateStatus:
        return SubstrateStatus(
            nodes=tuple(
                NodeStatus(n.name, n.state, n.storage_path, tuple(sorted(n.links_down)))
                for n in self.nodes.values()
            ),
            vms=tuple(VmStatus(v.spec.name, v.node, v.state) for v in self.vms.values()),
        )

    def utilisation_array(self) -> np.ndarray[Any, np.dtype[np.float64]]:
        """CPU utilisation of every node, in spec order (0 for nodes that are not up)."""
        mask = self._vm_node >= 0
        load = np.bincount(self._vm_node[mask], weights=(self.vm_util * self._vm_weight)[mask],
                           minlength=len(self._cores))
        return np.asarray(np.minimum(load / self._cores, 1.0), dtype=np.float64)

    def redirects(self) -> list[tuple[str, str, str]]:
        """Redirected CSV I/O streams now: (network, from node, to node)."""
        return [(f.network, str(f.links[0][1]), str(f.links[1][1]))  # type: ignore[index]
                for f in self._redirects]

    def utilisation(self) -> Mapping[str, float]:
        util = self.utilisation_array()
        return {n.name: float(util[n.index]) for n in self.nodes.values() if n.state == "up"}

    # -- VM lifecycle ----------------------------------------------------------

    def _place(self, vm: VmRec, node: NodeRec | None, state: str) -> None:
        if vm.node is not None and vm.node != (node.name if node else None):
            self.nodes[vm.node].used_mib -= vm.spec.memory_mib
        if node is not None and vm.node != node.name:
            node.used_mib += vm.spec.memory_mib
        vm.node = node.name if node else None
        vm.state = state  # type: ignore[assignment]
        busy = node is not None and state in ("running", "migrating")
        self._vm_node[vm.index] = node.index if busy and node is not None else -1

    def start_vm(self, vm: str, node: str) -> None:
        rec, target = self.vm_rec(vm), self.node_rec(node)
        if rec.node == node and rec.state != "stopped":
            return
        if rec.state != "stopped":
            raise SubstrateError(f"{vm} already runs on {rec.node}; stop or migrate it first")
        if target.state != "up":
            raise SubstrateError(f"cannot start {vm} on {node}: the node is {target.state}")
        if target.used_mib + rec.spec.memory_mib > target.memory_mib:
            raise SubstrateError(f"cannot start {vm} on {node}: not enough free memory")
        self._place(rec, target, "running")
        self.emit("vm-start", vm=vm, node=node)
        self._refresh_redirects()

    def stop_vm(self, vm: str) -> None:
        rec = self.vm_rec(vm)
        if rec.state == "stopped":
            return
        for m in self.engine.live():
            if m.handle.vm == vm:
                self.engine.fail(m, f"{vm} was stopped")
        self._place(rec, None, "stopped")
        self.emit("vm-stop", vm=vm)
        self._refresh_redirects()

    def pause_vm(self, vm: str) -> None:
        self._toggle(vm, "paused")

    def resume_vm(self, vm: str) -> None:
        self._toggle(vm, "running")

    def _toggle(self, vm: str, state: str) -> None:
        rec = self.vm_rec(vm)
        if rec.state == state:
            return
        if rec.state not in ("running", "paused"):
            raise SubstrateError(f"{vm} is {rec.state}; it can be paused or resumed only when up")
        self._place(rec, self.nodes[rec.node] if rec.node else None, state)
        self.emit("vm-" + ("pause" if state == "paused" else "resume"), vm=vm)

    # -- migration -------------------------------------------------------------

    def migration_profile(self, vm: str, target: str) -> MigrationProfile:
        """The simulated guest's dirty profile is its spec's (or its trace's) own."""
        spec = self.vm_rec(vm).spec
        self.node_rec(target)
        return MigrationProfile(spec.dirty_mibps, spec.working_set_mib, "the spec's")

    def prepare_migration(self, vm: str, target: str, network: str,
                          mode: str = "precopy") -> MigrationHandle:
        rec, dst = self.vm_rec(vm), self.node_rec(target)
        self.spec.network(network)
        for m in self.engine.live():
            if m.handle.vm == vm:
                if (m.handle.target, m.handle.network) == (target, network):
                    return m.handle  # idempotent
                raise MigrationError(f"{vm} is already migrating to {m.handle.target}")
        if rec.node is None or rec.state == "stopped":
            raise MigrationError(f"{vm} is not running; start it before migrating")
        src = self.nodes[rec.node]
        if src.name == target:
            raise MigrationError(f"{vm} already runs on {target}; pick another node")
        if dst.state != "up":
            raise MigrationError(f"target {target} is {dst.state}")
        for node in (src, dst):
            if network not in node.interfaces or network in node.links_down:
                raise MigrationError(
                    f"{node.name} has no working interface on {network!r}; pick another network"
                )
        if dst.used_mib + rec.spec.memory_mib > dst.memory_mib:
            raise MigrationError(f"{target} has not enough free memory for {vm}")
        dst.used_mib += rec.spec.memory_mib  # reserved for the incoming VM
        handle = MigrationHandle(vm, src.name, target, network, self.engine.new_id())
        self.engine.add(MigRec(handle, prior_state=rec.state))
        self.emit("migration-prepare", vm=vm, id=handle.id, source=src.name, target=target,
                  network=network)
        return handle

    def start_migration(self, handle: MigrationHandle, params: MigrationParams) -> None:
        m = self.engine.get(handle)
        if m.status == "setup":
            self.engine.start(m, params)

    def poll_migration(self, handle: MigrationHandle) -> MigrationProgress:
        return self.engine.progress(self.engine.get(handle))

    def finalize_migration(self, handle: MigrationHandle, success: bool,
                           switchover: Switchover | None = None) -> MigrationResult:
        m = self.engine.get(handle)
        if m.result is not None:
            return m.result
        ok = success and m.status == "completed"
        refused = False
        if switchover is not None:
            try:
                (switchover.commit if ok else switchover.abort)()
            except VmclusterError as exc:  # not ours to end (the sim keeps it on its source)
                self.engine.fail(m, f"switchover refused: {exc}")
                ok, refused = False, True
        if not ok:
            self.engine.fail(m, "cancelled by finalize" if success is False else "not completed")
            if m.status == "completed":  # completed but the caller says it failed: roll back
                m.error = "rolled back by finalize"
        rec, dst = self.vms[handle.vm], self.nodes[handle.target]
        dst.used_mib -= rec.spec.memory_mib  # drop the reservation; _place re-adds on success
        if ok:
            self._place(rec, dst, "running" if m.prior_state != "paused" else "paused")
        elif rec.state == "migrating":
            rec.state = m.prior_state
        m.result = replace(self.engine.result(m, ok), unsettled=refused)
        self.emit("migration-finalize", vm=handle.vm, id=handle.id, ok=ok,
                  node=rec.node, error=m.result.error)
        self._refresh_redirects()
        return m.result

    # -- faults and power ----------------------------------------------------

    def set_link(self, network: str, node: str, up: bool) -> None:
        self.spec.network(network)
        rec = self.node_rec(node)
        if network not in rec.interfaces:
            raise UsageError(f"node {node!r} has no interface on {network!r}")
        if up == (network not in rec.links_down):
            return
        if up:
            rec.links_down.remove(network)
        else:
            rec.links_down.append(network)
            for m in self.engine.live():
                if m.handle.network == network and node in (m.handle.source, m.handle.target):
                    self.engine.fail(m, f"{network} went down on {node}")
        self.emit("link-" + ("up" if up else "down"), network=network, node=node)
        self._changed()

    def set_node(self, node: str, up: bool) -> None:
        rec = self.node_rec(node)
        if (rec.state == "up") == up:
            return
        if up:
            rec.state = "up"
        else:
            for m in self.engine.live():
                if node in (m.handle.source, m.handle.target):
                    self.engine.fail(m, f"{node} went down")
            rec.state = "down"
            lost = [v for v in self.vms.values() if v.node == node]
            for v in lost:
                self._place(v, None, "stopped")
            self.emit("vms-lost", node=node, vms=[v.spec.name for v in lost])
        self.emit("node-" + ("up" if up else "down"), node=node)
        self._changed()

    def lose_vm(self, vm: str, why: str) -> None:
        """A VM whose running copy is gone (a post-copy cut short): stopped, for the
        manager to start again from its shared disk, as after its node's crash."""
        rec = self.vm_rec(vm)
        node = rec.node
        self._place(rec, None, "stopped")
        self.emit("vms-lost", node=node, vms=[vm], why=why)

    def set_storage_path(self, node: str, up: bool) -> None:
        rec = self.node_rec(node)
        if rec.storage_path == up:
            return
        rec.storage_path = up
        self._paths_down += -1 if up else 1
        self.emit("storage-" + ("up" if up else "down"), node=node)
        self._changed()

    def set_power(self, node: str, on: bool) -> None:
        rec = self.node_rec(node)
        if on:
            if rec.state == "off":
                rec.state = "up"
                self.emit("power-on", node=node)
                self._changed()
            return
        if rec.state == "off":
            return
        if rec.used_mib > 0 or any(node in (m.handle.source, m.handle.target)
                                   for m in self.engine.live()):
            raise SubstrateError(f"cannot power off {node}: VMs still run there; drain it first")
        rec.state = "off"
        self.emit("power-off", node=node)
        self._changed()

    # -- background traffic -----------------------------------------------------

    def _update_heartbeat(self) -> None:
        up = [n for n in self.nodes.values() if n.state == "up"]
        net = None
        for p in self._props:
            members = sum(1 for n in up if p.name in n.interfaces and p.name not in n.links_down)
            if members >= 2:
                net = p.name
                break
        n = len(up)
        delay_s = self.spec.cluster.same_subnet_delay_ms / 1000.0
        rate = n * (n - 1) * HEARTBEAT_BYTES / delay_s / 1048576.0
        self.fabric.set_constant("heartbeat", net, rate)

    def _refresh_redirects(self) -> None:
        """Redirected CSV I/O: each up node without a storage path, to one that has it."""
        if not self._redirects and self._paths_down == 0:
            return
        for f in self._redirects:
            self.fabric.remove(f)
        self._redirects = []
        if self.io_mibps > 0:
            ok = [n.name for n in self.nodes.values() if n.state == "up" and n.storage_path]
            for n in self.nodes.values():
                if n.state != "up" or n.storage_path:
                    continue
                vms = sum(1 for v in self.vms.values() if v.node == n.name and v.state != "stopped")
                for coord in ok:
                    net = cluster_network(self.spec, self.health(), n.name, coord)
                    if net is not None and vms:
                        self._redirects.append(
                            self.fabric.add("csv-redirect", net, n.name, coord, self.io_mibps * vms)
                        )
                        break
        self.fabric.reallocate()
