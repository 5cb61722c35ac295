"""The hosts' side of a simulated cluster, so that the real manager runs in virtual time.

The simulator does not imitate the manager: it runs :class:`~vmcluster.control.manager.Manager`
itself, on an in-memory store (:class:`~vmcluster.store.memory.MemoryKV`, on the sim's
clock) and through an actuator onto the sim substrate. What real hosts would do around
it, :class:`SimHosts` does:

* each host that is up writes its **report** (``reports/<node>``) as its heartbeat watch
  would: a route to a peer on a network is up while the two are connected there (both
  up, both links up) and for the heartbeat window (``delay * threshold``) after they
  lost each other; it comes up one heartbeat after they reconnect. The report lists
  the VMs the host runs. A host that is down writes nothing (its report goes stale);
  the spec's witness reports too, always up (its vote counts as the cluster's does);
* placements follow every migration's switchover, as the real switchover's
  compare-and-set does;
* the manager holds the leader key and ticks every ``tick_s`` while a fault is being
  handled: from a fault (a node or a link down or up) until the restarts it calls for
  are due and done (the heartbeat window, the isolation wait, ``recover_s`` and a
  margin). Between faults nothing in the cluster changes that the manager acts on, and
  it sleeps, so a simulated day costs nothing where nothing fails.

Every event the manager records goes into the sim's trace; a restart also as a
``decision`` record naming the policy that chose the node (``failover_plan``).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from typing import Any

from vmcluster.control.manager import Manager, ManagerParams, MigrationEnds, report_key
from vmcluster.errors import MigrationError, SubstrateError, VmclusterError
from vmcluster.heartbeat.detector import HeartbeatParams, isolated, view_to_json
from vmcluster.model import ClusterSpec
from vmcluster.policy.failover import restart_not_before
from vmcluster.policy.networks import cluster_networks
from vmcluster.store.memory import MemoryKV
from vmcluster.store.state import ClusterState
from vmcluster.substrate.sim import SimSubstrate

__all__ = ["SimHosts"]

MANAGER = "manager"
REPORT_S = 0.5  # a host rewrites its report this often (and at once when it changed)
SETTLE_MARGIN_S = 5.0


class _Actuator:
    """The manager's hands on the sim substrate. The simulator records no migration in
    the store (its migrations are the runner's), so nothing it does is ever an orphan
    to settle or adopt, and it carries out no API intents."""

    def __init__(self, sub: SimSubstrate, migrate: Callable[[str, str], None]) -> None:
        self.sub, self._migrate = sub, migrate

    def start_vm(self, vm: str, node: str, token: int) -> None:
        self.sub.start_vm(vm, node)

    def stop_vm(self, vm: str, node: str, token: int, shutdown_s: float = 0.0) -> str | None:
        if self.sub.status().vm(vm).node == node:
            self.sub.stop_vm(vm)
            return "quit"  # a simulated guest has no power button
        return None

    def migrate_vm(self, vm: str, target: str, token: int) -> None:
        self._migrate(vm, target)

    def migration_ends(self, vm: str, source: str, target: str) -> MigrationEnds:
        where = self.sub.status().vm(vm).node
        return MigrationEnds("running" if where == source else "gone",
                             "complete" if where == target else "gone")

    def complete_migration(self, vm: str, source: str | None, target: str,
                           token: int) -> None:
        raise MigrationError(f"{vm}: the simulator keeps no migration record to settle")

    def roll_back_migration(self, vm: str, source: str | None, target: str,
                            token: int) -> None:
        raise MigrationError(f"{vm}: the simulator keeps no migration record to settle")

    def carry_out(self, kind: str, args: Mapping[str, Any], token: int,
                  cancelled: Callable[[], bool],
                  progress: Callable[[Mapping[str, Any]], None]) -> dict[str, Any]:
        raise SubstrateError(f"the simulator takes no {kind!r} intent: scenario events "
                             "drive its migrations and drains")

    def lend_token(self, vm: str, source: str, token: int) -> None:
        return  # no driver runs under a token in the simulator

    def adopt_migration(self, args: Mapping[str, Any], token: int,
                        cancelled: Callable[[], bool],
                        progress: Callable[[Mapping[str, Any]], None]) -> dict[str, Any]:
        raise MigrationError("nothing of it is in flight in the simulator")


class SimHosts:
    """The real manager over the sim substrate (see the module docstring)."""

    def __init__(self, sub: SimSubstrate, spec: ClusterSpec,
                 migrate: Callable[[str, str], None],
                 params: ManagerParams | None = None) -> None:
        params = params if params is not None else ManagerParams()
        self.sub, self.spec, self.params = sub, spec, params
        self.state = ClusterState(MemoryKV(sub.clock), "sim", clock=sub.clock)
        self.manager = Manager(self.state, spec, MANAGER, _Actuator(sub, migrate), sub.clock,
                               wall=sub.now, params=params, say=self._say)
        self.hb = HeartbeatParams.from_settings(spec.cluster)
        heartbeat_nets = {n.name for n in cluster_networks(spec.networks)}
        # Each host's heartbeat networks; a pair exchanges heartbeats on those it shares.
        # The witness (always up here) is a heartbeat peer that reports like a node.
        self.nets = {n.name: frozenset(n.interfaces) & heartbeat_nets for n in spec.hosts}
        self.changed: dict[str, float] = {}  # "node" or "node/network" -> its last change
        self.written: dict[str, tuple[str, float]] = {}  # node -> (report, when)
        self.active_until = -1.0
        self.ticking = False
        self.last_event = 0
        self.on_event: list[Callable[[dict[str, Any]], None]] = []

    # -- what the runner tells it -------------------------------------------------
    def place_all(self) -> None:
        """The store's placements as the VMs run now (before the first fault)."""
        for vm in self.sub.status().vms:
            if vm.node is not None:
                self.state.place(vm.name, vm.node, expect=0, token=None)

    def moved(self, vm: str, node: str) -> None:
        """``vm`` switched over to ``node``: its placement follows in the store."""
        current = self.state.placement(vm)
        if current.node != node:
            self.state.place(vm, node, expect=current.revision, token=None)

    def fault(self, *components: str) -> None:
        """Nodes (``"n2"``) or a node's link (``"n2/Net"``) went down or came back now:
        the manager wakes and ticks until what follows from it is done."""
        now = self.sub.now()
        for c in components:
            self.changed[c] = now
        wait = restart_not_before(now, self.spec.cluster, self.params.failover) - now
        self.active_until = max(self.active_until,
                                now + wait + self.params.recover_s + SETTLE_MARGIN_S)
        if not self.ticking:
            self.ticking = True
            self.sub.at(now, self._round, priority=1)

    # -- one round: the hosts report, the manager ticks --------------------------------
    def _round(self) -> None:
        self._report()
        try:
            self._lead()
            self.manager.tick()
        except VmclusterError as exc:
            self._say(f"tick: {exc}")
        self._trace_events()
        now = self.sub.now()
        if now + self.params.tick_s <= self.active_until:
            self.sub.at(now + self.params.tick_s, self._round, priority=1)
        else:
            self.ticking = False

    def _lead(self) -> None:
        """Hold the leader key (its lease lapses while the manager sleeps between faults:
        it then takes office again, a new term)."""
        if self.manager.term is not None:
            try:
                self.manager.election.keepalive()
                return
            except VmclusterError:
                self.manager.term = None
        self.manager.take_office(timeout=self.params.campaign_s)

    def _report(self) -> None:
        now = self.sub.now()
        status = self.sub.status()
        up = {n.name for n in status.nodes if n.state == "up"}
        if self.spec.cluster.witness is not None:
            up.add(self.spec.cluster.witness)
        links_down = {(n.name, net) for n in status.nodes for net in n.links_down}
        vms: dict[str, list[str]] = {}
        for vm in status.vms:
            if vm.node is not None and vm.state in ("running", "paused"):
                vms.setdefault(vm.node, []).append(vm.name)
        for node in sorted(up):
            view = {(peer, net): self._heard(node, peer, net, up, links_down, now)
                    for peer, theirs in self.nets.items() if peer != node
                    for net in sorted(self.nets[node] & theirs)}
            body = json.dumps({"routes": view_to_json(view), "vms": sorted(vms.get(node, [])),
                               "isolated": isolated(view)},
                              sort_keys=True)
            last = self.written.get(node)
            if last is None or last[0] != body or now - last[1] >= REPORT_S:
                self.state.client.put(report_key(self.state, node), body.encode())
                self.written[node] = (body, now)

    def _heard(self, me: str, peer: str, net: str, up: set[str],
               links_down: set[tuple[str, str]], now: float) -> bool:
        """Would ``me``'s heartbeat detector have ``peer`` up on ``net`` now?"""
        parts = (me, peer, f"{me}/{net}", f"{peer}/{net}")  # me: its watch (re)started
        connected = peer in up and (me, net) not in links_down and (peer, net) not in links_down
        since = max((self.changed.get(p, 0.0) for p in parts), default=0.0)
        if connected:  # one heartbeat after they found each other again
            return since == 0.0 or now - since >= self.hb.delay_s
        return now - since < self.hb.window_s  # until the window without heartbeats ends

    def _trace_events(self) -> None:
        events, _ = self.state.events(self.last_event)
        for seq, rec in events:
            self.last_event = seq
            for listener in self.on_event:
                listener(rec)

    def _say(self, msg: str) -> None:
        self.sub.emit("manager", message=msg)

