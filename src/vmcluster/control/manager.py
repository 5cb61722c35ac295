"""The cluster manager: win the election, then observe -> decide -> act, fenced.

One candidate runs on every node, so the manager survives any one node. The
candidate that holds the etcd leader key runs the loop; its fencing token (the
key's create revision) guards every store write (``ClusterState``) and goes
with every action to an agent, which refuses a token that no longer leads.

Each tick (``tick_s``, wall time through the injected clock):

* **observe**: the nodes' reports (``reports/<node>``: routes, VMs, isolated),
  placements, node states; freshness by :class:`ReportTracker`.
* **decide**: :func:`~vmcluster.control.liveness.assess` -> dead nodes,
  network states; quorum (:func:`has_quorum`); a node newly dead is recorded
  (event, ``nodes/<n>`` = down, a failure for the flapping rule) and its VMs
  wait until :func:`restart_not_before` (the isolated side has stopped them by
  then); then :func:`failover_plan` over the dead and excluded nodes.
* **act**: each restart is a compare-and-set of the VM's placement with the
  token, then ``Actuator.start_vm(vm, node, token)``. A VM placed on a healthy
  node that no node reports running (its start failed, or it was stopped while
  its node was cut off) is started there again after ``recover_s``.
  A node that fails ``flap_limit`` times within ``flap_window_s`` is
  quarantined: kept out of placement and drained by live migration.
* **desired state**: a VM defined to run (``vms/<vm>`` desired "running", see
  :mod:`vmcluster.store.vms`) that has no owner is started: on its owner when that
  node is healthy, elsewhere by :func:`start_plan` once the term is ``start_grace_s``
  old (a new manager first waits to hear every node). The VMs come from the store's
  definitions, read again whenever one changes. ``start`` and ``stop`` intents (the
  API's) use the same steps; a VM desired "stopped" is never started again.

A lost lease (``Keeper.lost``) or a :class:`Fenced` write ends the term; the
candidate campaigns again.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any, Protocol

from vmcluster.control import ledger
from vmcluster.control.consolidate import drain_plan, recorded
from vmcluster.control.events import (
    Event,
    LeaderElected,
    MigrationDone,
    NetworkStateChanged,
    NodeDown,
    NodeQuarantined,
    NodeUp,
    VmCannotPlace,
    VmError,
    VmRestarted,
    VmStarted,
    VmStopped,
    WitnessBack,
    WitnessLost,
)
from vmcluster.control.liveness import Assessment, NodeReport, ReportTracker, assess, split_off
from vmcluster.errors import (
    MigrationCancelled,
    MigrationError,
    SpecError,
    StoreError,
    SubstrateError,
    UsageError,
    VmclusterError,
)
from vmcluster.model import ClusterSpec
from vmcluster.policy.failover import (
    CLUSTER_FAILOVER,
    STORE_GRACE_S,
    CannotPlace,
    FailoverParams,
    FailoverPlan,
    Restart,
    failover_plan,
    has_quorum,
    quarantined,
    restart_not_before,
    start_plan,
)
from vmcluster.store import intents, vms
from vmcluster.store.election import Election, Keeper, current_leader
from vmcluster.store.errors import Fenced, StoreConflict
from vmcluster.store.state import ClusterState, Placement
from vmcluster.substrate.protocol import Clock

__all__ = ["Actuator", "Manager", "ManagerParams", "MigrationEnds", "quorate", "report_key"]

# Nodes no VM is placed on: "joining" (admitted by `cluster join`, not heard from yet: not
# down either), "left" (`cluster leave`).
EXCLUDED_STATES = ("quarantined", "draining", "joining", "left")


@dataclass(frozen=True)
class MigrationEnds:
    """What QEMU says at both ends of a migration whose driver is gone. ``source``:
    "running", "migrating" (copying), "paused", "postmigrate" (its state went to the
    target) or "gone"; ``target``: "complete" (the state is in, paused by ``-S``),
    "receiving" or "gone"."""

    source: str
    target: str


class Actuator(Protocol):
    """How the manager acts on nodes; every call carries its fencing token."""

    def start_vm(self, vm: str, node: str, token: int) -> None: ...

    def stop_vm(self, vm: str, node: str, token: int, shutdown_s: float = 0.0) -> str | None:
        """``vm``'s QEMU on ``node`` quits (nothing to do when it runs no such QEMU); with
        ``shutdown_s`` > 0 its guest is asked to shut down first and given that long. How
        it ended: shutdown, quit, killed (None: unknown, or it ran nowhere)."""

    def migrate_vm(self, vm: str, target: str, token: int) -> None:
        """Start moving ``vm`` live to ``target`` and return: its source host drives it,
        and the switchover moves its placement (the loop never waits for a copy)."""

    def migration_ends(self, vm: str, source: str, target: str) -> MigrationEnds: ...

    def complete_migration(self, vm: str, source: str | None, target: str,
                           token: int) -> None:
        """The target runs and announces itself, the source QEMU (if known) quits."""

    def roll_back_migration(self, vm: str, source: str | None, target: str,
                            token: int) -> None:
        """The target QEMU goes; the source, if any and alive, runs again (None: no source
        is resumed: the switchover had committed)."""

    def carry_out(self, kind: str, args: Mapping[str, Any], token: int,
                  cancelled: Callable[[], bool],
                  progress: Callable[[Mapping[str, Any]], None]) -> dict[str, Any]:
        """Do what an intent asks (``migrate``: ``vm``, ``to``; ``drain``: ``node``) under
        ``token``; ``cancelled()`` says the asker cancelled (stop at the next safe point,
        raising MigrationCancelled), ``progress(...)`` reports. Returns the result."""

    def lend_token(self, vm: str, source: str, token: int) -> None:
        """The driver of ``vm``'s migration on ``source`` goes on under ``token`` (nothing
        happens when it drives none: its record is then an orphan, settled apart)."""

    def adopt_migration(self, args: Mapping[str, Any], token: int,
                        cancelled: Callable[[], bool],
                        progress: Callable[[Mapping[str, Any]], None]) -> dict[str, Any]:
        """Take over a live migration a deposed manager asked for (a ``migrate`` intent's
        ``args``) and is still in flight: its driver goes on under ``token``, watched to
        its end. Raises MigrationError when nothing of it is in flight any more."""


@dataclass(frozen=True)
class ManagerParams:
    tick_s: float = 0.2
    stale_s: float = 3.0  # a report not rewritten this long is stale
    lease_ttl: int = 3
    campaign_s: float = 10.0  # take_office(): campaign at most this long
    campaign_poll_s: float = 0.25
    recover_s: float = 3.0  # a placed VM seen running nowhere this long is started again
    # ... or, where a committed switchover's target copy waits for its driver (gone), is
    # taken over: a driver that lives takes over within a fraction of a second of the
    # commit, and both taking over at once is harmless (run, announce, release are each
    # idempotent); waiting recover_s only lengthened the VM's blackout.
    switchover_s: float = 1.0
    adopt_s: float = 3.0  # a VM seen running elsewhere than placed this long is placed there
    flap_limit: int = 3
    flap_window_s: float = 3600.0
    max_workers: int = 4  # intents carried out at once
    start_grace_s: float = 15.0  # a new term waits this long for a VM's owner to be heard
    start_wait_s: float = 180.0  # a start intent waits this long to see the VM run
    resume_wait_s: float = 600.0  # a resumed intent waits this long for migrations in flight
    failover: FailoverParams = CLUSTER_FAILOVER


# What a deposed manager was carrying out that the next one carries out again from the
# start: each reads the cluster afresh, so nothing done is done twice (a drain plans from
# the placements, a consolidation skips VMs already on their target; the others are
# idempotent).
RESUMED = frozenset({"drain", "consolidate", "start", "stop", "resume", "delete"})


def quorate(spec: ClusterSpec, alive: int, witness_seen: bool = False) -> bool:
    """May the side that still hears ``alive`` of the spec's nodes act? The manager's own
    rule: a strict majority of the votes, the witness's among them while its report is
    fresh (the manager is one, elected in the store: the vote counts for its side only)."""
    return has_quorum(len(spec.nodes), alive, spec.cluster.witness is not None, witness_seen)


PASSES_KEPT = 100  # of a migration's passes, in its intent's progress


def _note_pass(passes: list[dict[str, Any]], p: Mapping[str, Any]) -> bool:
    """Keep the latest figures of each pass of a migration's progress; True when ``p``
    starts a new pass."""
    n = p.get("pass")
    if not isinstance(n, int) or n < 1:
        return False
    entry = {"pass": n, "sent_mib": p.get("sent_mib"), "remaining_mib": p.get("remaining_mib")}
    if passes and passes[-1]["pass"] == n:
        passes[-1] = entry
        return False
    passes.append(entry)
    return True


def report_key(state: ClusterState, node: str = "") -> str:
    return state.key("reports", node)


@dataclass
class _Term:
    """What one leader remembers during its term (rebuilt by the next leader)."""

    token: int
    dead_since: dict[str, float] = field(default_factory=dict)
    missing_since: dict[str, tuple[int, float]] = field(default_factory=dict)
    unplaceable: set[str] = field(default_factory=set)
    # Starts that failed, by VM and node, and the VM's moves after them (max_restart,
    # max_relocate); a start that works forgets them.
    failed_starts: dict[str, dict[str, int]] = field(default_factory=dict)
    relocations: dict[str, int] = field(default_factory=dict)
    errors: dict[str, str] = field(default_factory=dict)  # why a VM went into error
    waiting: set[str] = field(default_factory=set)  # VMs said to wait for their owner
    drained: set[str] = field(default_factory=set)
    mismatch: dict[str, tuple[str, int, float]] = field(default_factory=dict)
    strays: dict[tuple[str, str], float] = field(default_factory=dict)  # (vm, node): since
    net_states: dict[str, str] = field(default_factory=dict)
    cluster_network: str | None = None
    workers: dict[str, threading.Thread] = field(default_factory=dict)  # by intent id
    began: float | None = None  # when its first tick ran
    starting: dict[str, threading.Thread] = field(default_factory=dict)  # by VM
    asked: set[str] = field(default_factory=set)  # VMs a start intent is placing
    lent: set[str] = field(default_factory=set)  # migrations handed this term's token
    split: set[str] = field(default_factory=set)  # declared down though the witness hears them
    witness_lost: bool = False


class Manager:
    """One manager candidate (see module docstring); ``run(stop)`` until ``stop()``."""

    def __init__(
        self,
        state: ClusterState,
        spec: ClusterSpec,
        name: str,
        actuator: Actuator,
        clock: Clock,
        wall: Callable[[], float],
        params: ManagerParams = ManagerParams(),
        say: Callable[[str], None] = lambda _m: None,
    ) -> None:
        self.state, self.spec, self.name = state, spec, name
        self.actuator, self.clock, self.wall, self.params = actuator, clock, wall, params
        self.say = say
        self.election = Election(state.client, state.cluster, name, params.lease_ttl, clock)
        self.tracker = ReportTracker(params.stale_s)
        self.term: _Term | None = None
        self.desired: dict[str, str] = {}  # vm -> "running" | "stopped", from the store
        self._defs: tuple[tuple[str, int], ...] | None = None
        self._spec_lock = threading.Lock()
        self.seen: Assessment | None = None  # the last tick's

    # -- leadership ---------------------------------------------------------------
    def run(self, stop: Callable[[], bool]) -> None:
        while not stop():
            token = self._campaign_round()
            if token is None:
                self.clock.sleep(self.params.campaign_poll_s)
                continue
            keeper = Keeper(self.election).start()
            self.say(f"leader with token {token}")
            try:
                while not stop() and not keeper.lost.is_set():
                    try:
                        self.tick()
                    except Fenced:
                        raise
                    except VmclusterError as exc:  # the store electing, an agent away: retry
                        self.say(f"tick: {exc}")
                    self.clock.sleep(self.params.tick_s)
            except Fenced as exc:
                self.say(f"fenced: {exc}")
            except StoreError as exc:
                self.say(f"store: {exc}")
            finally:
                keeper.stop()
                self.term = None
            if stop():
                with contextlib.suppress(StoreError):
                    self.election.resign()
            else:
                self.say(f"lost leadership ({keeper.error or 'store error'}); campaigning")

    def _campaign_round(self) -> int | None:
        """Try once to lead; failing that, depose a leader whose node is dead."""
        try:
            held = self.election.try_acquire()
            if held is None:
                self.depose_dead_leader()
                return None
            self.term = _Term(held.token)
            self._event(LeaderElected(self.wall(), self.name, held.token))
        except StoreError as exc:
            self.say(f"campaign: {exc}")
            return None
        return held.token

    def depose_dead_leader(self) -> bool:
        """Revoke the leader's lease when the leader's node is dead by the same evidence
        that fails its VMs over (every fresh report of another node lost it), instead of
        waiting out the lease: the manager's own failover then takes about as long as a
        node's. A deposed leader that still runs is fenced like any stale one."""
        held = current_leader(self.state.client, self.state.cluster)
        if held is None or held.name == self.name:
            return False
        seen, _ = self.observe()
        if held.name not in seen.dead:
            return False
        self.state.client.lease_revoke(held.lease)
        self.say(f"deposed {held.name} (token {held.token}): its node is down")
        return True

    def take_office(self, timeout: float) -> int:
        """Campaign until this candidate leads (StoreError after ``timeout``); its token."""
        held = self.election.campaign(timeout)
        self.term = _Term(held.token)
        self.tracker = ReportTracker(self.params.stale_s)
        self._event(LeaderElected(self.wall(), self.name, held.token))
        return held.token

    # -- one tick -----------------------------------------------------------------
    def observe(self) -> tuple[Assessment, dict[str, NodeReport]]:
        kvs, _ = self.state.client.get_prefix(report_key(self.state))
        now = self.clock.now()
        reports = {}
        for kv in kvs:
            node = kv.key.rsplit("/", 1)[1]
            fresh = self.tracker.update(node, kv.mod_revision, now)
            reports[node] = NodeReport.from_json(node, kv.json(), fresh)
        return assess(self.spec, reports), reports

    def tick(self) -> None:
        """One observe -> decide -> act round (raises Fenced when the term is over)."""
        term = self.term
        if term is None:
            return
        now = self.clock.now()
        if term.began is None:
            term.began = now
        self._refresh_spec()
        seen, reports = self.observe()
        # Split off from this manager's side though a third party (the witness) hears
        # both: down, as if dead; their VMs stay "running" while their fresh reports list
        # them, so nothing restarts before they stop them (they read the verdict).
        # One whose report went stale stays split until it reports again from this side.
        fresh = {n for n, r in reports.items() if r.fresh}
        split = (split_off(self.spec, reports, self.name)
                 | {n for n in term.split if n not in fresh}) - seen.dead
        seen = replace(seen, dead=seen.dead | split, healthy=seen.healthy - split)
        self.seen = seen
        self._networks(term, seen)
        witness_seen = self._witness(term, reports)
        total = len(self.spec.nodes)
        if not quorate(self.spec, total - len(seen.dead), witness_seen):
            return  # the minority never acts (etcd would refuse our writes anyway)
        term.split = set(split)
        nodes = self.state.node_states()
        for node in sorted(seen.heard - seen.dead):
            if nodes.get(node, {}).get("state") == "joining":  # its first heartbeats
                self.state.set_node_state(node, "up", term.token)
                self.say(f"{node} joined: up")
        joining = {n for n, r in nodes.items() if r.get("state") == "joining"}
        for node in sorted(seen.dead - set(term.dead_since) - joining):
            leaving = node in reports and reports[node].leaving
            self._node_down(term, node, now, nodes.get(node, {}), leaving)
        self._adopt(term, seen)
        self._strays(term, seen)
        for node in sorted(set(term.dead_since) & (seen.heard - seen.dead)):
            del term.dead_since[node]
            record = nodes.get(node, {})
            if record.get("failed") or record.get("state") in ("down", "off"):
                state = "up" if record.get("state") in ("down", "off") else record["state"]
                self.state.set_node_state(node, state, term.token,
                                          failures=record.get("failures", []), failed=False)
            self._event(NodeUp(self.wall(), self.name, node))
        self._settle_orphans(term)
        self._adopt_drives(term)
        self._intents(term)
        nodes = self.state.node_states()
        excluded = {n for n, s in nodes.items() if s.get("state") in EXCLUDED_STATES}
        self._failover(term, seen, excluded, now)
        self._recover(term, seen, excluded, now)
        self._start_desired(term, seen, excluded, now)
        self._drain_quarantined(term, seen, nodes)

    def _refresh_spec(self) -> None:
        """The VMs as the store defines them, read again when a definition changed (a
        store without a spec, as in tests of the manager alone, keeps the given spec)."""
        with self._spec_lock:  # the tick and an intent's worker may both read it
            self._read_spec()

    def _read_spec(self) -> None:
        recs = vms.records(self.state)
        sig = tuple((r.name, r.revision) for r in recs.values())
        if sig == self._defs:
            return
        self._defs = sig
        self.desired = {n: r.desired for n, r in recs.items()}
        text = self.state.spec_text()
        if text is None:
            return
        try:
            self.spec = self.state.spec(text, [r.definition for r in recs.values()])
        except SpecError as exc:
            self.say(f"the store's VM definitions do not fit its spec ({exc}); keeping the "
                     "VMs as they were")

    # -- desired state: VMs to run that have no owner ----------------------------------
    def _start_desired(self, term: _Term, seen: Assessment, excluded: set[str],
                       now: float) -> None:
        for done, t in list(term.starting.items()):  # an intent's worker may add one
            if not t.is_alive():
                term.starting.pop(done, None)
        want = [v.name for v in self.spec.vms if self.desired.get(v.name) == "running"
                and v.name not in term.starting and v.name not in term.asked]
        if not want:
            return
        placements = self.state.placements()
        migrating = set(self.state.migrations())
        todo = []
        for name in want:
            p = placements.get(name)
            if (p is not None and (p.node is not None or p.state == "error")) \
                    or name in migrating:
                continue  # placed, moving, or in error (its starts failed: a user starts it)
            if seen.running_fresh.get(name):
                continue  # it runs somewhere: the placement follows it (_adopt), no start
            todo.append(name)
        if not todo:
            return
        young = term.began is not None and now - term.began < self.params.start_grace_s
        plan = self._where_to_start(todo, seen, excluded, placements)
        ran = set(self.state.daemons())  # hosts that have run in this cluster at all
        for action in plan.actions:
            if isinstance(action, CannotPlace):
                if not young and action.vm not in term.unplaceable:
                    term.unplaceable.add(action.vm)
                    self._event(VmCannotPlace(self.wall(), self.name, action.vm, action.reason))
                continue
            if not isinstance(action, Restart):
                continue
            owner = self.spec.vm(action.vm).owner
            unjoined = owner is not None and owner not in ran
            if action.node != owner and (young or unjoined):
                # Its owner may not have been heard yet, or has not joined the cluster at
                # all (hosts join one by one after `cluster init`): it waits for its owner
                # rather than piling onto the first hosts; once the owner ran, failover.
                if unjoined and action.vm not in term.waiting:
                    term.waiting.add(action.vm)
                    self.say(f"{action.vm} waits for its owner {owner}, which has not "
                             "joined the cluster yet (or start it elsewhere: vm start --on)")
                continue
            self._launch(term, action.vm, action.node, placements.get(action.vm))

    def _where_to_start(self, vms: list[str], seen: Assessment, excluded: set[str],
                        placements: Mapping[str, Placement]) -> FailoverPlan:
        """Where to start ``vms``: the start policy over the healthy nodes that are not
        dead, drained, quarantined, joining or gone."""
        barred = excluded | set(seen.dead) | {
            n.name for n in self.spec.nodes if n.name not in seen.healthy}
        owners = {vm: p.node for vm, p in placements.items()}
        return start_plan(self.spec, owners, vms, params=self.params.failover, excluded=barred)

    def _launch(self, term: _Term, vm: str, node: str, current: Placement | None) -> bool:
        """Place ``vm`` on ``node`` (compare-and-set from ``current``), then start its QEMU
        there in a thread of its own; False when someone placed it meanwhile."""
        try:
            self.state.place(vm, node, expect=0 if current is None else current.revision,
                             token=term.token)
        except StoreConflict:
            return False
        term.unplaceable.discard(vm)
        term.missing_since.pop(vm, None)

        def run() -> None:
            with contextlib.suppress(Fenced):  # the next manager starts it
                if self._start_on(term, vm, node):
                    self._event(VmStarted(self.wall(), node, vm, term.token))
                    self.say(f"started {vm} on {node}")

        worker = threading.Thread(target=run, name=f"start-{vm}", daemon=True)
        # Started before it is listed: an intent's worker calls this, and the tick thread
        # drops listed threads that are not alive (one not yet started is not alive). The
        # placement above already keeps a second start away in between.
        worker.start()
        term.starting[vm] = worker
        return True

    def _carry_start(self, args: Mapping[str, Any], token: int) -> dict[str, Any]:
        """A ``start`` intent (the API set the VM's desired state to running): place and
        start it (on ``on`` if given), then wait until a report shows it running."""
        vm = str(args["vm"])
        try:
            return self._start_and_wait(vm, args.get("on"), token)
        finally:
            if self.term is not None:
                self.term.asked.discard(vm)

    def _start_and_wait(self, vm: str, on: object, token: int) -> dict[str, Any]:
        deadline = self.clock.now() + self.params.start_wait_s
        launched = False
        while self.clock.now() < deadline:
            term = self.term
            if term is None or term.token != token:
                raise Fenced(f"fenced: token {token} lost office while starting {vm}")
            if vm not in {v.name for v in self.spec.vms}:
                self._refresh_spec()  # defined a moment ago: the tick may not have read it
                if vm not in {v.name for v in self.spec.vms}:
                    raise SubstrateError(f"no VM {vm!r} is defined")
            p = self.state.placement(vm)
            if launched and p.state == "error":  # its starts failed, as max_restart allows
                return {"ok": False, "vm": vm, "error": self._error_reason(vm)}
            if p.node is None and vm not in term.starting and self.seen is not None:
                node = str(on) if on else None
                if node is None:
                    excluded = {n for n, r in self.state.node_states().items()
                                if r.get("state") in EXCLUDED_STATES}
                    got = self._where_to_start([vm], self.seen, excluded,
                                               self.state.placements()).actions[0]
                    if isinstance(got, CannotPlace):
                        return {"ok": False, "vm": vm, "error": got.reason}
                    node = getattr(got, "node", None)
                if node is not None:
                    launched = self._launch(term, vm, node, p) or launched
            elif p.node is not None and self.seen is not None and \
                    p.node in self.seen.running_fresh.get(vm, frozenset()):
                return {"ok": True, "vm": vm, "node": p.node}
            self.clock.sleep(self.params.tick_s)
        raise SubstrateError(f"{vm} was not seen running within {self.params.start_wait_s:.0f} s")

    def _error_reason(self, vm: str) -> str:
        term = self.term
        why = term.errors.get(vm) if term is not None else None
        return f"{vm} is in error: {why or 'its starts failed'}"

    def _carry_resume(self, args: Mapping[str, Any], token: int) -> dict[str, Any]:
        """A ``resume`` intent: a drained or quarantined node takes VMs again (a node that
        is down must come back first; its failures are forgotten with the quarantine)."""
        node = str(args["node"])
        record = self.state.node_states().get(node, {})
        before = str(record.get("state", "up"))
        if before in ("down", "off"):
            raise SubstrateError(f"{node} is {before}; start it first, it comes back up "
                                 "by itself once it is heard")
        if before != "up":
            self.state.set_node_state(node, "up", token, failures=[], failed=False)
        return {"ok": True, "node": node, "was": before, "state": "up"}

    def _carry_stop(self, args: Mapping[str, Any], token: int) -> dict[str, Any]:
        """A ``stop`` intent (the API set the VM's desired state to stopped): its QEMU
        quits, then its placement is cleared, so that nothing starts it again."""
        vm = str(args["vm"])
        if vm in self.state.migrations():
            raise SubstrateError(f"{vm} is migrating; cancel the migration first")
        p = self.state.placement(vm)
        how = None
        shutdown_s = 0.0 if args.get("force") else float(args.get("shutdown_s", 0.0))
        if p.node is not None:
            how = self.actuator.stop_vm(vm, p.node, token, shutdown_s)
            self.state.place(vm, None, expect=p.revision, token=token, state="stopped")
            why = {"shutdown": "shut down by its guest (ACPI) through the API",
                   "killed": "killed (it did not quit) through the API"}.get(
                how or "", "powered off through the API")
            self._event(VmStopped(self.wall(), p.node, vm, why))
        return {"ok": True, "vm": vm, "node": p.node, "how": how}

    def _carry_delete(self, args: Mapping[str, Any], token: int,
                      cancelled: Callable[[], bool],
                      progress: Callable[[Mapping[str, Any]], None]) -> dict[str, Any]:
        """A ``delete`` intent: a VM that runs nowhere loses its disk (unless
        ``keep_disk``), then its definition; a disk that cannot be removed keeps the
        definition too, so nothing is half gone."""
        vm = str(args["vm"])
        if vm in self.state.migrations():
            raise SubstrateError(f"{vm} is migrating; it is not deleted")
        p = self.state.placement(vm)
        running = self._still_reported(vm) if p.node is None else frozenset()
        if p.node is not None or running:
            where = p.node or ", ".join(sorted(running))
            raise StoreConflict(f"{vm} runs on {where}; stop it first (`vmcluster vm stop {vm}`)")
        result: dict[str, Any] = {"ok": True, "vm": vm, "disk": None}
        if not args.get("keep_disk"):
            result["disk"] = self.actuator.carry_out("delete", {"vm": vm}, token, cancelled,
                                                     progress).get("removed")
        vms.undefine(self.state, vm, token)
        return result

    def _still_reported(self, vm: str, settle_s: float = 3.0) -> frozenset[str]:
        """The nodes whose fresh reports still run ``vm``, once they have had ``settle_s``
        to catch up (a VM stopped a moment ago is in its node's report until the next one,
        written about twice a second)."""
        deadline = self.clock.now() + settle_s
        while True:
            seen = self.seen
            running = seen.running_fresh.get(vm, frozenset()) if seen is not None else frozenset()
            if not running or self.clock.now() >= deadline:
                return running
            self.clock.sleep(0.2)

    def _networks(self, term: _Term, seen: Assessment) -> None:
        """An event per network whose state changed since the last tick of this term."""
        if not seen.network_states:
            return
        first = not term.net_states
        for net, st in sorted(seen.network_states.items()):
            if not first and term.net_states.get(net) != st:
                self._event(
                    NetworkStateChanged(self.wall(), self.name, net, st, seen.cluster_network)
                )
        term.net_states = dict(seen.network_states)
        term.cluster_network = seen.cluster_network

    def _adopt(self, term: _Term, seen: Assessment) -> None:
        """Placements follow what runs: a VM that exactly one live node's fresh report runs
        (moved by an operator's migration, say) is placed there, so a later failover never
        restarts a copy of a VM that is running."""
        migrating = set(self.state.migrations())
        now = self.clock.now()
        for vm, p in self.state.placements().items():
            # Current lists only: an agent that does not answer (restarting) leaves its
            # host's last list standing, which may name a copy that has migrated out since.
            nodes = seen.running_now.get(vm, frozenset())
            if vm in migrating or len(nodes) != 1 or p.node in nodes:
                term.mismatch.pop(vm, None)
                continue
            (node,) = nodes
            # Reports lag a switchover by up to one report period: act on a mismatch only
            # when it has lasted, with the placement unchanged all along.
            first = term.mismatch.setdefault(vm, (node, p.revision, now))
            if first[:2] != (node, p.revision):
                term.mismatch[vm] = (node, p.revision, now)
                continue
            if now - first[2] < self.params.adopt_s:
                continue
            term.mismatch.pop(vm, None)
            with contextlib.suppress(StoreConflict):
                self.state.place(vm, node, expect=p.revision, token=term.token)
                self.say(f"{vm} runs on {node}, not {p.node}: placement follows")

    def _strays(self, term: _Term, seen: Assessment) -> None:
        """Copies the store does not place are powered off, once the sight has lasted
        ``adopt_s`` (reports lag a switchover):

        * a VM that fresh reports show running on its placed node and on another (a host
          that was cut off one way kept it while the others restarted it) runs twice;
        * a source left paused after a switchover (its release failed: its agent was
          restarting) is never resumed, since the VM belongs elsewhere: it goes."""
        migrating = set(self.state.migrations())
        now = self.clock.now()
        seen_now: set[tuple[str, str]] = set()
        for vm, p in self.state.placements().items():
            if vm in migrating:
                continue
            nodes = seen.running_now.get(vm, frozenset())
            twice = sorted(nodes - {p.node}) if p.node in nodes else []
            left = sorted(seen.migrated_fresh.get(vm, frozenset()) - {p.node})
            for node, why in [*((n, f"runs on {n} too") for n in twice),
                              *((n, f"was left paused on {n} after migrating out")
                                for n in left)]:
                seen_now.add((vm, node))
                first = term.strays.setdefault((vm, node), now)
                if now - first < self.params.adopt_s:
                    continue
                del term.strays[(vm, node)]
                self.say(f"{vm} {why}, placed on {p.node}: powering that copy off")
                self._act(f"cannot power off {vm}'s copy on {node}",
                          lambda v, n, t: (self.actuator.stop_vm(v, n, t), None)[1],
                          vm, node, term.token)
        for key in set(term.strays) - seen_now:
            del term.strays[key]

    def _witness(self, term: _Term, reports: Mapping[str, NodeReport]) -> bool:
        """Is the witness's report fresh? Its loss alone is a warning, once."""
        w = self.spec.witness
        if w is None:
            return False
        fresh = w.name in reports and reports[w.name].fresh
        if fresh == term.witness_lost:
            term.witness_lost = not fresh
            self._event((WitnessBack if fresh else WitnessLost)(self.wall(), self.name, w.name))
            self.say(f"the witness {w.name} " + ("reports again" if fresh else
                     "went silent: the nodes keep running, but a split can no longer be "
                     "broken"))
        return fresh

    def _node_down(self, term: _Term, node: str, now: float, record: Mapping[str, Any],
                   leaving: bool = False) -> None:
        """Record a failure (kept in the store with wall times, so the next leader knows);
        the ``flap_limit``-th within ``flap_window_s`` quarantines the node. A node that
        said it was leaving (powered off on purpose) is ``off``, not failed."""
        window = self.spec.cluster.same_subnet_delay_ms * self.spec.cluster.same_subnet_threshold
        last_heard = now - window / 1000.0
        term.dead_since[node] = now
        wall = self.wall()
        if record.get("failed"):
            return  # a former leader recorded this failure already: count it once
        failures = [float(t) for t in record.get("failures", [])] + ([] if leaving else [wall])
        failures = [t for t in failures if wall - t < self.params.flap_window_s]
        flapping = quarantined(failures, wall, self.params.flap_limit, self.params.flap_window_s)
        # a drained node powered off on purpose is off (powered on, it is up again); a
        # quarantined one stays quarantined, and a draining one that fails stays draining
        stay = record.get("state") in EXCLUDED_STATES and not (
            leaving and record.get("state") == "draining")
        new_state = (str(record["state"]) if stay else "quarantined" if flapping
                     else "off" if leaving else "down")
        wait = restart_not_before(last_heard, self.spec.cluster, self.params.failover) - now
        if node in term.split:  # it reaches the store: it stops its VMs on the verdict
            wait = max(wait, self._split_grace())
        # Until restart_at (wall time) its VMs are being fenced: the isolated side stops
        # them; the API shows them as "fence", then "recovery" until they run elsewhere.
        self.state.set_node_state(node, new_state, term.token, failures=failures, failed=True,
                                  restart_at=round(wall + max(0.0, wait), 3))
        self._event(NodeDown(wall, self.name, node, round(wall - window / 1e3, 3)))
        if flapping and record.get("state") != "quarantined":
            self._event(NodeQuarantined(wall, self.name, node, len(failures)))
        self.say(f"{node} is down ({len(failures)} failure(s) within the flap window); "
                 f"its VMs restart in {wait:.1f} s at the earliest")

    def _failover(self, term: _Term, seen: Assessment, excluded: set[str], now: float) -> None:
        ready = set()
        window = self.spec.cluster.same_subnet_delay_ms * self.spec.cluster.same_subnet_threshold
        for node, since in term.dead_since.items():
            if node in term.split:
                # Its report, fresh, lists what it still runs (never started twice); gone
                # stale, it stops them itself within the store grace of its last write.
                changed = self.tracker.changed_at(node)
                if changed is None or now - changed <= self.params.stale_s \
                        or now - changed >= self._split_grace():
                    ready.add(node)
                continue
            last_heard = since - window / 1000.0
            if now >= restart_not_before(last_heard, self.spec.cluster, self.params.failover):
                ready.add(node)
        if not ready:
            return
        placements = self.state.placements()
        owners = {vm: p.node for vm, p in placements.items()}
        plan = failover_plan(self.spec, owners, set(seen.dead), self.params.failover,
                             excluded=excluded | (seen.dead - ready))
        for action in plan.actions:
            if isinstance(action, CannotPlace):
                if action.vm not in term.unplaceable and owners.get(action.vm) in ready:
                    term.unplaceable.add(action.vm)
                    self._event(VmCannotPlace(self.wall(), self.name, action.vm, action.reason))
                continue
            if not isinstance(action, Restart) or action.from_node not in ready:
                continue
            if seen.running_fresh.get(action.vm):
                continue  # it runs on a live node: never start a second copy
            self._restart(term, action.vm, action.node, action.from_node,
                          placements[action.vm].revision)

    def _split_grace(self) -> float:
        """How long a split-off node whose report went stale may still run its VMs: the
        store grace after its last write (:data:`STORE_GRACE_S`), then its stop budget."""
        return STORE_GRACE_S + self.params.failover.stop_budget_s

    def _restart(self, term: _Term, vm: str, node: str, from_node: str, revision: int) -> None:
        try:
            self.state.place(vm, node, expect=revision, token=term.token)
        except StoreConflict:
            return  # someone moved it since we read; the next tick reads again
        term.unplaceable.discard(vm)
        term.missing_since.pop(vm, None)
        if not self._start_on(term, vm, node):
            return
        self._event(VmRestarted(self.wall(), node, vm, from_node, term.token))
        self.say(f"restarted {vm} on {node} (was on {from_node})")

    def _start_on(self, term: _Term, vm: str, node: str) -> bool:
        """Ask ``node`` to start ``vm`` (placed there already); False when it failed (the
        placement stays, and ``_recover`` tries again, or elsewhere: ``_retry_start``).
        Fenced goes to the caller."""
        ok = self._act(f"starting {vm} on {node} failed", self.actuator.start_vm, vm, node,
                       term.token)
        if ok:
            term.failed_starts.pop(vm, None)
            term.relocations.pop(vm, None)
        else:
            tries = term.failed_starts.setdefault(vm, {})
            tries[node] = tries.get(node, 0) + 1
        return ok

    def _retry_start(self, term: _Term, vm: str, p: Placement, seen: Assessment,
                     excluded: set[str]) -> None:
        """``vm`` is placed on a healthy node but does not run there: start it again there
        (at most ``max_restart`` times after a failed start), then on another node (at
        most ``max_relocate`` times), then leave it in error."""
        assert p.node is not None
        rules = self.spec.vm(vm)
        tried = term.failed_starts.get(vm, {})
        if tried.get(p.node, 0) <= rules.max_restart:
            if self._start_on(term, vm, p.node):
                self._event(VmRestarted(self.wall(), p.node, vm, p.node, term.token))
            return
        moved = term.relocations.get(vm, 0)
        why = (f"its start failed {tried[p.node]} time(s) on {p.node} (max_restart "
               f"{rules.max_restart})")
        if moved < rules.max_relocate:
            plan = self._where_to_start([vm], seen, excluded | set(tried),
                                        self.state.placements())
            got = plan.actions[0] if plan.actions else None
            if isinstance(got, Restart):
                term.relocations[vm] = moved + 1
                self.say(f"{vm}: {why}; relocating to {got.node} "
                         f"({moved + 1} of max_relocate {rules.max_relocate})")
                self._launch(term, vm, got.node, p)
                return
            why += "; no other node can take it" + (
                f" ({got.reason})" if isinstance(got, CannotPlace) else "")
        else:
            why += f", and it was relocated {moved} time(s) (max_relocate {rules.max_relocate})"
        try:
            self.state.place(vm, None, expect=p.revision, token=term.token, state="error")
        except StoreConflict:
            return
        term.failed_starts.pop(vm, None)
        term.relocations.pop(vm, None)
        term.errors[vm] = why
        self._event(VmError(self.wall(), self.name, vm, why))
        self.say(f"{vm} is in error: {why}")

    def _intents(self, term: _Term) -> None:
        """Carry out what the API recorded (see :mod:`vmcluster.store.intents`), each in a
        worker thread of its own, so that this loop never waits for a migration. An
        intent a deposed manager was running goes on under this one: a migration is
        adopted from its driver (the VM's source host); the kinds in :data:`RESUMED` run
        again from the start once the migrations in flight have ended."""
        for done in [i for i, t in term.workers.items() if not t.is_alive()]:
            del term.workers[done]
        for it in intents.running(self.state):
            if it.record.get("token") != term.token and it.id not in term.workers:
                moving = it.kind == "migrate"
                if moving or it.kind in RESUMED:
                    with contextlib.suppress(StoreConflict, StoreError):
                        taken = intents.update(self.state, it.id, term.token,
                                               token=term.token)
                        if it.kind == "start":
                            term.asked.add(str(it.args.get("vm")))
                        self._spawn(term, taken, "adopt" if moving else "resume")
                        self.say(f"{'adopting' if moving else 'resuming'} {it.kind} {it.args} "
                                 f"(intent {it.id}) from token {it.record.get('token')}")
                    continue
                with contextlib.suppress(StoreConflict, StoreError):
                    intents.update(self.state, it.id, term.token, state="failed",
                                   error=f"interrupted: the manager that ran it (token "
                                   f"{it.record.get('token')}) lost office", ended=self.wall())
        for it in intents.pending(self.state):
            if len(term.workers) >= self.params.max_workers:
                break
            try:
                # A migration says at once that it is under way: the page that asked for
                # it shows "preparing" while the target's QEMU starts.
                first = ({"progress": {"status": "preparing", "target": it.args.get("to")}}
                         if it.kind == "migrate" else {})
                claimed = intents.claim(self.state, it, term.token, **first)
            except StoreConflict:
                continue
            if claimed.kind == "start":  # its own node choice, not the desired-state step's
                term.asked.add(str(claimed.args.get("vm")))
            self._spawn(term, claimed)
            self.say(f"carrying out {it.kind} {it.args} (intent {it.id})")

    def _spawn(self, term: _Term, it: intents.Intent, taken: str = "") -> None:
        worker = threading.Thread(target=self._work, args=(it, term.token, taken),
                                  name=f"intent-{it.id}", daemon=True)
        worker.start()  # listed once alive: see _launch
        term.workers[it.id] = worker

    def _work(self, it: intents.Intent, token: int, taken: str = "") -> None:
        """One intent, start to end, in its own thread. ``taken`` from a deposed manager:
        ``adopt`` (its live migration may still be in flight: watch it to its end), or
        ``resume`` (carry it out again, once the migrations in flight now have ended)."""
        adopt = taken == "adopt"
        last = [0.0]

        def cancelled() -> bool:
            got = intents.get(self.state, it.id)
            return got is not None and got.state == "cancelling"

        passes: list[dict[str, Any]] = []  # a live migration's passes, as they went

        def progress(p: Mapping[str, Any]) -> None:
            now = self.clock.now()
            new_pass = _note_pass(passes, p)
            if new_pass or now - last[0] >= 0.5:  # every pass is seen, the rest twice a second
                last[0] = now
                with contextlib.suppress(StoreError, StoreConflict):
                    intents.update(self.state, it.id, token,
                                   progress={**p, "passes": passes[-PASSES_KEPT:]})

        try:
            if taken == "resume":
                self._await_migrations_in_flight(token, cancelled)
            if adopt:
                try:
                    result = self.actuator.adopt_migration(it.args, token, cancelled, progress)
                except MigrationCancelled:
                    raise
                except MigrationError as exc:
                    raise MigrationError(f"interrupted: the manager that ran it lost office, "
                                         f"and {exc}") from exc
            elif it.kind == "start":
                result = self._carry_start(it.args, token)
            elif it.kind == "stop":
                result = self._carry_stop(it.args, token)
            elif it.kind == "resume":
                result = self._carry_resume(it.args, token)
            elif it.kind == "delete":
                result = self._carry_delete(it.args, token, cancelled, progress)
            else:
                result = self.actuator.carry_out(it.kind, it.args, token, cancelled, progress)
        except Fenced:
            return  # the next manager marks it failed
        except MigrationCancelled as exc:
            self._end(it, token, "cancelled", error=str(exc))
            return
        except VmclusterError as exc:
            if it.kind != "migrate" or it.args.get("vm") not in self.state.migrations():
                self._end(it, token, "failed", error=str(exc))
                return
            # Its driver gave up with the migration still recorded (a store write that
            # failed mid-switchover, say): the manager settles it; report what it settles.
            result = {"vm": it.args["vm"], "target": it.args["to"], "ok": False,
                      "unsettled": True, "error": str(exc)}
        if it.kind == "migrate" and result.get("unsettled"):
            result = self._settled(result, token)
        state = ("cancelled" if result.get("cancelled") else
                 "done" if result.get("ok", True) else "failed")
        if it.kind == "migrate" and result.get("source") and result.get("target"):
            with contextlib.suppress(StoreError):  # the intent's end matters more
                self._event(MigrationDone(
                    self.wall(), self.name, str(result["vm"]),
                    str(result["source"]), str(result["target"]),
                    str(result.get("network") or ""), bool(result.get("ok")),
                    result.get("downtime_ms")))
        self._end(it, token, state, result=result, error=result.get("error"))

    def _settled(self, result: dict[str, Any], token: int) -> dict[str, Any]:
        """A migration whose driver was lost ends as the manager settles its record (from
        QEMU's own state on both ends): wait for that (at most ``resume_wait_s``), then say
        where the VM runs, not the lost driver's guess."""
        vm, target = str(result["vm"]), str(result["target"])
        deadline = self.clock.now() + self.params.resume_wait_s
        while vm in self.state.migrations() and self.clock.now() < deadline:
            term = self.term
            if term is None or term.token != token:
                return result  # deposed: the next manager adopts the intent
            self.clock.sleep(self.params.tick_s)
        if vm in self.state.migrations():
            return result  # not settled yet: the lost driver's word is all there is
        placed = self.state.placements().get(vm)
        node = placed.node if placed is not None else None
        lost = str(result.get("error") or "its driver was lost")
        if node == target:
            return {**result, "ok": True, "unsettled": False, "settled_by": "manager",
                    "error": None, "note": f"{lost}; the manager completed it: {vm} runs "
                    f"on {target}"}
        return {**result, "unsettled": False, "settled_by": "manager",
                "error": f"{lost}; the manager rolled it back: {vm} runs on {node}"}

    def _await_migrations_in_flight(self, token: int, cancelled: Callable[[], bool]) -> None:
        """Before a resumed intent runs again: until every migration in flight now has
        ended (a deposed manager's drive, going on under this term's token, or an orphan
        settled), so that no VM is asked to move twice; at most ``resume_wait_s``."""
        waiting = {(vm, m.id) for vm, m in self.state.migrations().items()}
        deadline = self.clock.now() + self.params.resume_wait_s
        while waiting and self.clock.now() < deadline and not cancelled():
            term = self.term
            if term is None or term.token != token:
                raise Fenced(f"fenced: token {token} lost office while resuming an intent")
            self.clock.sleep(self.params.tick_s)
            waiting &= {(vm, m.id) for vm, m in self.state.migrations().items()}

    def _end(self, it: intents.Intent, token: int, state: str, **fields: Any) -> None:
        try:
            intents.update(self.state, it.id, token, state=state, ended=self.wall(), **fields)
        except (StoreError, StoreConflict) as exc:
            self.say(f"could not record the end of intent {it.id}: {exc}")

    def _act(self, failed: str, call: Callable[..., None], *args: Any) -> bool:
        """One actuator call, ``call(*args)``: Fenced goes up (this manager was deposed);
        any other error is said after ``failed`` (what did not happen) and gives False."""
        try:
            call(*args)
        except Fenced:
            raise
        except VmclusterError as exc:
            self.say(f"{failed}: {exc}")
            return False
        return True

    def _adopt_drives(self, term: _Term) -> None:
        """A migration in flight that a deposed manager asked for (its record carries that
        manager's token) goes on under this one's: its driver, the VM's source host, is
        handed the new token once per term, so that its switchover is not refused (a
        drain's, a consolidation's; an operator's own, without a token, is left alone)."""
        for vm, mig in sorted(self.state.migrations().items()):
            if mig.token is None or mig.token == term.token or mig.id in term.lent:
                continue
            term.lent.add(mig.id)
            self._act(f"cannot hand {vm}'s migration to this term",
                      self.actuator.lend_token, vm, mig.source, term.token)

    def _settle_orphans(self, term: _Term) -> None:
        """End the migrations whose driver died (a killed CLI, a manager gone), from QEMU's
        state at both ends, deciding by compare-and-set on the record (see
        :mod:`vmcluster.control.ledger`): a copy that is complete on a target whose
        source gave its state away (or died) moves there; anything else goes back to the
        source. A record someone else ended meanwhile is left alone."""
        mine = ledger.driving()
        for vm, mig in sorted(self.state.orphaned_migrations().items()):
            if mig.id and mig.id in mine:
                continue  # this process drives it: its lease lapsed, the driver is alive
            try:
                ends = self.actuator.migration_ends(vm, mig.source, mig.target)
            except VmclusterError as exc:
                self.say(f"cannot read {vm}'s migration ends yet: {exc}")
                continue
            forward = ends.target == "complete" and ends.source in ("postmigrate", "gone")
            try:
                if forward:
                    self.state.finish_migration(mig, success=True, token=term.token)
                else:
                    self.state.abort_migration(mig, token=term.token)
            except StoreConflict:
                continue  # its driver (or another manager) ended it after all
            try:
                if forward:
                    self.actuator.complete_migration(vm, mig.source, mig.target, term.token)
                else:
                    self.actuator.roll_back_migration(vm, mig.source, mig.target, term.token)
            except Fenced:
                raise
            except VmclusterError as exc:
                self.say(f"settling {vm}'s orphaned migration failed: {exc}")
                continue
            self.say(f"{vm}'s migration lost its driver ({mig.source} {ends.source}, "
                     f"{mig.target} {ends.target}): "
                     + (f"completed on {mig.target}" if forward else
                        f"rolled back to {mig.source}"))

    def _recover(self, term: _Term, seen: Assessment, excluded: set[str], now: float) -> None:
        """Start again a VM placed on a healthy node that runs nowhere (see module doc)."""
        migrating = set(self.state.migrations())
        for vm, p in self.state.placements().items():
            if p.node is None or p.state != "running" or vm in migrating \
                    or self.desired.get(vm) == "stopped" or vm in term.starting:
                term.missing_since.pop(vm, None)
                continue
            if seen.running.get(vm) or p.node not in seen.healthy:
                term.missing_since.pop(vm, None)
                continue
            # Counted from the placement's last change: a VM just restarted is not missing.
            # The clock read now, not the tick's start: a tick whose starts took seconds
            # must not count them as the VM's absence (it restarted a VM it had just
            # started, seen on the lab after a node's isolation).
            rev, since = term.missing_since.setdefault(vm, (p.revision, self.clock.now()))
            if rev != p.revision:
                term.missing_since[vm] = (p.revision, self.clock.now())
                continue
            waiting = p.node in seen.incoming_fresh.get(vm, frozenset())
            if now - since >= (self.params.switchover_s if waiting else self.params.recover_s):
                term.missing_since.pop(vm, None)
                if waiting:
                    self._finish_switchover(term, vm, p.node, seen)
                else:
                    self._retry_start(term, vm, p, seen, excluded)

    def _finish_switchover(self, term: _Term, vm: str, node: str, seen: Assessment) -> None:
        """``vm`` is placed on ``node``, where a migration's target copy waits, and no
        migration is recorded: the switchover committed, then its driver ended before the
        target ran. A complete copy is taken over (the source, never resumed, quits); an
        incomplete one goes, and the VM starts from its disk there next."""
        source = next(iter(sorted(seen.migrated_fresh.get(vm, frozenset()) - {node})), None)
        ends = self.actuator.migration_ends(vm, source or node, node)
        if ends.target == "complete":
            self.say(f"{vm}'s switchover to {node} committed, but its driver ended before "
                     f"{node} ran it: taking over there")
            if self._act(f"taking over {vm} on {node} failed", self.actuator.complete_migration,
                         vm, source, node, term.token):
                self._event(MigrationDone(self.wall(), self.name, vm, source or "?", node,
                                          "?", True))
            return
        self.say(f"{vm}'s copy on {node} is a migration's target that never got all of it, "
                 "and the switchover committed: it goes, and the VM starts from its disk")
        self._act(f"discarding {vm}'s copy on {node} failed", self.actuator.roll_back_migration,
                  vm, None, node, term.token)

    def _drain_quarantined(
        self, term: _Term, seen: Assessment, nodes: Mapping[str, Mapping[str, Any]]
    ) -> None:
        """Live-migrate VMs off a quarantined node that is up (once per VM per term)."""
        for node, record in sorted(nodes.items()):
            if record.get("state") != "quarantined" or node not in seen.healthy:
                continue
            obs = recorded(self.spec, nodes, self.state.placements(), seen)
            try:
                plan = drain_plan(obs, self.spec, node, self.params.failover,
                                  excluded={n for n, r in nodes.items()
                                            if r.get("state") in EXCLUDED_STATES})
            except UsageError:
                continue  # off or down meanwhile: nothing runs there to drain
            for action in plan.migrations:
                if action.vm in term.drained or node not in seen.running.get(action.vm, ()):
                    continue
                term.drained.add(action.vm)
                self._act(f"draining {action.vm} off {node} failed",
                          self.actuator.migrate_vm, action.vm, action.target, term.token)

    def _event(self, event: Event) -> None:
        try:
            self.state.append_event(event.to_json())
        except StoreConflict as exc:
            self.say(f"event not recorded: {exc}")
