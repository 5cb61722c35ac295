"""The manager against a real one-member etcd, with a manual clock and a recording actuator.

The actuator stands for the node agents (the lab tests drive real ones); here it
records what the manager asked, so each decision can be checked in isolation:
wait for the isolated side, restart by placement policy, never act without
quorum, and a deposed manager is fenced by the store.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import ManualClock
from vmcluster.control.ledger import StoreLedger
from vmcluster.control.manager import Manager, ManagerParams, MigrationEnds, report_key
from vmcluster.control.simulate import predict_crash
from vmcluster.errors import MigrationCancelled, MigrationError, SubstrateError
from vmcluster.model.spec import load_spec
from vmcluster.policy.failover import STORE_GRACE_S, restart_not_before
from vmcluster.store import ClusterState, EtcdClient, EtcdCluster, Fenced, embedded, intents, vms

ROOT = Path(__file__).resolve().parents[2]
LAB = load_spec(ROOT / "examples/lab.toml")
NODES = ("node1", "node2", "node3")
NETS = ("Public", "Heartbeat", "Migration")
OWNERS = {"web": "node1", "db": "node2", "batch": "node3"}

needs_etcd = pytest.mark.skipif(shutil.which("etcd") is None, reason="etcd-server not installed")
pytestmark = needs_etcd


class Recorder:
    def __init__(self) -> None:
        self.started: list[tuple[str, str, int]] = []
        self.ends: dict[str, MigrationEnds] = {}
        self.settled: list[tuple[str, str]] = []

    def start_vm(self, vm: str, node: str, token: int) -> None:
        self.started.append((vm, node, token))

    def stop_vm(self, vm: str, node: str, token: int, shutdown_s: float = 0.0) -> str | None:
        self.stopped = [*getattr(self, "stopped", []), (vm, node, token)]
        self.shutdowns = [*getattr(self, "shutdowns", []), shutdown_s]
        return "shutdown" if shutdown_s else "quit"

    def migrate_vm(self, vm: str, target: str, token: int) -> None:
        self.migrated = [*getattr(self, "migrated", []), (vm, target, token)]

    def lend_token(self, vm: str, source: str, token: int) -> None:
        self.lent = [*getattr(self, "lent", []), (vm, source, token)]

    adoptable: dict[str, dict[str, Any]]  # by VM: what a deposed manager's driver ends with

    def adopt_migration(self, args: Mapping[str, Any], token: int,
                        cancelled: Callable[[], bool],
                        progress: Callable[[Mapping[str, Any]], None]) -> dict[str, Any]:
        self.adopted = [*getattr(self, "adopted", []), (dict(args), token)]
        got = getattr(self, "adoptable", {}).get(str(args["vm"]))
        if got is None:
            raise MigrationError(f"no host drives the migration of {args['vm']} any more")
        return got

    def migration_ends(self, vm: str, source: str, target: str) -> MigrationEnds:
        return self.ends[vm]

    def complete_migration(self, vm: str, source: str | None, target: str,
                           token: int) -> None:
        self.settled.append((vm, f"on {target}"))

    def roll_back_migration(self, vm: str, source: str | None, target: str,
                            token: int) -> None:
        self.settled.append((vm, f"back to {source}"))

    carried: list[tuple[str, dict[str, Any], int]]

    def carry_out(self, kind: str, args: Mapping[str, Any], token: int,
                  cancelled: Callable[[], bool],
                  progress: Callable[[Mapping[str, Any]], None]) -> dict[str, Any]:
        self.carried = [*getattr(self, "carried", []), (kind, dict(args), token)]
        progress({"vm": args.get("vm"), "status": "active"})
        deadline = time.monotonic() + 10
        while args.get("wait") and not cancelled():  # a long one, until cancelled
            assert time.monotonic() < deadline
            time.sleep(0.05)
        if args.get("wait"):
            raise MigrationCancelled("cancelled")
        if args.get("vm") == "fails":
            return {"ok": False, "error": "no network"}
        return {"ok": True, "moved": [args.get("vm")]}


@pytest.fixture(scope="module")
def etcd() -> Iterator[EtcdCluster]:
    base = Path(tempfile.mkdtemp(prefix="vmc-mgr-"))
    cluster = embedded(base, host="127.0.0.41", timeout=60)
    try:
        yield cluster
    finally:
        cluster.close()
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture
def state(etcd: EtcdCluster, request: pytest.FixtureRequest) -> Iterator[ClusterState]:
    st = ClusterState(EtcdClient(etcd.endpoints()), f"m{abs(hash(request.node.name)) % 10**8}")
    for vm, node in OWNERS.items():
        st.place(vm, node, expect=0, token=None)
    yield st
    st.client.delete(st.root, prefix=True)


def publish(state: ClusterState, dead: set[str], vms: dict[str, list[str]] | None = None,
            migrated: dict[str, list[str]] | None = None,
            incoming: dict[str, list[str]] | None = None,
            vms_age_s: dict[str, float] | None = None) -> None:
    """Every live node reports: routes to ``dead`` nodes down, the rest up; ``migrated``:
    copies left paused after migrating out, ``incoming``: migration targets, by node;
    ``vms_age_s``: how old a node's VM list is (its agent did not answer since)."""
    for node in NODES:
        if node in dead:
            continue
        routes = {f"{p}/{n}": p not in dead for p in NODES if p != node for n in NETS}
        running = (vms or {}).get(node, [vm for vm, o in OWNERS.items() if o == node])
        body = {"routes": routes, "vms": running, "isolated": False,
                "migrated": (migrated or {}).get(node, []),
                "incoming": (incoming or {}).get(node, []),
                "vms_age_s": (vms_age_s or {}).get(node, 0.2)}
        state.client.put(report_key(state, node), json.dumps(body).encode())


def manager(state: ClusterState, name: str = "node2") -> tuple[Manager, ManualClock, Recorder]:
    clock, rec = ManualClock(), Recorder()
    m = Manager(state, LAB, name, rec, clock, lambda: 1000.0 + clock.t, ManagerParams())
    return m, clock, rec


def kinds(state: ClusterState) -> list[str]:
    return [str(e["kind"]) for _, e in state.events()[0]]


def test_restarts_a_dead_nodes_vm_only_after_the_isolation_wait(state: ClusterState) -> None:
    m, clock, rec = manager(state)
    token = m.take_office(10)
    publish(state, set())
    m.tick()
    assert rec.started == [] and "node_down" not in kinds(state)
    publish(state, {"node1"})
    m.tick()
    assert state.node_states()["node1"]["state"] == "down"
    assert "node_down" in kinds(state) and rec.started == []
    # restart_not_before = last heard (now - 2 s window) + window + delay + stop budget
    wait = 0.25 + m.params.failover.stop_budget_s
    clock.t += wait - 0.05
    publish(state, {"node1"})
    m.tick()
    assert rec.started == []  # the isolated side may still be stopping it
    clock.t += 0.1
    publish(state, {"node1"})
    m.tick()
    assert rec.started == [("web", "node2", token)]  # web's preferred owners: node1, node2
    assert state.placement("web").node == "node2"
    assert kinds(state).count("vm_restarted") == 1
    publish(state, {"node1"}, {"node2": ["db", "web"], "node3": ["batch"]})
    clock.t += 10
    m.tick()
    assert len(rec.started) == 1  # done once, not again


def test_no_quorum_no_action(state: ClusterState) -> None:
    m, clock, rec = manager(state, "node3")
    m.take_office(10)
    publish(state, {"node1", "node2"})
    m.tick()
    clock.t += 30
    publish(state, {"node1", "node2"})
    m.tick()
    assert rec.started == []
    assert state.node_states() == {}  # not even a node state was written


def test_a_deposed_manager_is_fenced_by_the_store(state: ClusterState) -> None:
    old, _, rec_old = manager(state, "node1")
    old.take_office(10)
    old.election.resign()  # as if its lease ran out while it was frozen
    new, _, _ = manager(state, "node2")
    new_token = new.take_office(10)
    assert old.term is not None and new_token > old.term.token
    publish(state, {"node3"})
    with pytest.raises(Fenced):
        old.tick()  # its first write (node3 down) is refused
    assert rec_old.started == []
    assert "node3" not in state.node_states()


def test_a_placed_vm_that_runs_nowhere_is_started_again(state: ClusterState) -> None:
    m, clock, rec = manager(state)
    token = m.take_office(10)
    running = {"node1": ["web"], "node2": [], "node3": ["batch"]}  # db stopped
    publish(state, set(), running)
    m.tick()
    clock.t += m.params.recover_s + 0.1
    publish(state, set(), running)
    m.tick()
    assert rec.started == [("db", "node2", token)]


def test_a_vm_whose_starts_fail_is_tried_max_restart_times_relocated_then_in_error(
    state: ClusterState,
) -> None:
    """Proxmox's max_restart and max_relocate (1 and 1 by default): db does not start on
    node2 (tried again once), nor on the node it is relocated to (tried again once);
    then it is in error, and nothing starts it again."""
    m, clock, rec = manager(state)
    token = m.take_office(10)

    def refuse(vm: str, node: str, token: int) -> None:
        rec.started.append((vm, node, token))
        raise SubstrateError(f"QEMU of {vm} exited at once on {node}")

    rec.start_vm = refuse  # type: ignore[method-assign]
    running = {"node1": ["web"], "node2": [], "node3": ["batch"]}

    def later() -> None:
        clock.t += m.params.recover_s + 0.1
        publish(state, set(), running)
        m.tick()
        _settle(m)

    def until(starts: int) -> None:  # a VM missing for recover_s is tried again
        for _ in range(6):
            if len(rec.started) >= starts:
                return
            later()

    publish(state, set(), running)
    m.tick()
    until(2)
    assert [n for v, n, _ in rec.started] == ["node2", "node2"]  # the start, one more
    until(3)  # relocated: placed on another node, started there in a thread
    elsewhere = rec.started[-1][1]
    assert elsewhere != "node2" and len(rec.started) == 3
    assert state.placement("db").node == elsewhere
    until(4)  # one more there
    assert [n for _, n, _ in rec.started[3:]] == [elsewhere]
    for _ in range(3):  # max_relocate spent: in error
        later()
    db = state.placement("db")
    assert db.node is None and db.state == "error"
    errors = [e for _, e in state.events()[0] if e["kind"] == "vm_error"]
    assert len(errors) == 1 and "max_restart 1" in errors[0]["reason"] \
        and "max_relocate 1" in errors[0]["reason"], errors
    for _ in range(4):
        later()
    assert len(rec.started) == 4 and all(t == token for _, _, t in rec.started)


def test_verdict_needs_evidence_both_ways(state: ClusterState) -> None:
    """A dead node comes back only when someone hears it, not when reports go stale."""
    m, clock, _ = manager(state)
    m.take_office(10)
    publish(state, {"node1"})
    m.tick()
    clock.t += m.params.stale_s + 1  # nobody writes (the store is electing, say)
    m.tick()
    assert "node_up" not in kinds(state)
    publish(state, set())
    m.tick()
    assert kinds(state).count("node_up") == 1


def test_third_failure_within_the_window_quarantines(state: ClusterState) -> None:
    m, clock, _ = manager(state)
    m.take_office(10)
    for _ in range(3):
        publish(state, {"node3"})
        m.tick()
        clock.t += 5
        publish(state, {"node3"}, {"node1": ["web", "batch"], "node2": ["db"]})
        m.tick()
        publish(state, set(), {"node1": ["web", "batch"], "node2": ["db"]})
        m.tick()
    record = state.node_states()["node3"]
    assert record["state"] == "quarantined" and len(record["failures"]) == 3
    assert kinds(state).count("node_quarantined") == 1
    # A new leader knows the history (it is in the store, not in the old leader's memory)
    # and does not count the failure it inherits twice.
    publish(state, {"node3"})
    m.tick()
    m.election.resign()
    m2, _, _ = manager(state, "node1")
    m2.take_office(10)
    publish(state, {"node3"})
    m2.tick()
    assert state.node_states()["node3"]["state"] == "quarantined"
    assert len(state.node_states()["node3"]["failures"]) == 4
    assert kinds(state).count("node_down") == 4


def test_a_quarantined_host_that_is_up_is_emptied_without_waiting(
        state: ClusterState) -> None:
    """Its VMs are handed to their source host to drive, once each; the manager does
    not wait for the copy, and does not move a placement itself (the switchover does)."""
    m, _clock, rec = manager(state)
    token = m.take_office(10)
    state.set_node_state("node3", "quarantined", failures=[1.0, 2.0, 3.0], failed=False)
    publish(state, set())
    before = {vm: p.node for vm, p in state.placements().items()}
    m.tick()
    m.tick()
    on3 = sorted(vm for vm, node in OWNERS.items() if node == "node3")
    assert on3 and sorted(vm for vm, _t, _k in rec.migrated) == on3
    assert all(t != "node3" and k == token for _vm, t, k in rec.migrated)
    assert {vm: p.node for vm, p in state.placements().items()} == before


def test_a_standby_deposes_a_leader_whose_node_is_dead(state: ClusterState) -> None:
    old, _, _ = manager(state, "node1")
    old_token = old.take_office(10)
    standby, _, _ = manager(state, "node2")
    publish(state, set())
    assert not standby.depose_dead_leader()  # node1 is heard: it keeps leading
    assert standby.election.try_acquire() is None
    publish(state, {"node1"})
    assert standby.depose_dead_leader()
    won = standby.election.try_acquire()
    assert won is not None and won.token > old_token
    publish(state, {"node3"})
    with pytest.raises(Fenced):
        old.tick()  # the deposed one, should it still run, is refused


def test_placement_follows_a_vm_that_runs_elsewhere_once_it_lasts(state: ClusterState) -> None:
    m, clock, rec = manager(state)
    m.take_office(10)
    moved = {"node1": [], "node2": ["db"], "node3": ["batch", "web"]}  # web migrated by hand
    publish(state, set(), moved)
    m.tick()
    assert state.placement("web").node == "node1"  # reports may just lag a switchover
    clock.t += m.params.adopt_s + 0.1
    publish(state, set(), moved)
    m.tick()
    assert state.placement("web").node == "node3"
    # ... so that losing node1 now restarts no second copy of web.
    publish(state, {"node1"}, moved)
    m.tick()
    clock.t += 10
    publish(state, {"node1"}, moved)
    m.tick()
    assert rec.started == []


def test_a_stray_second_copy_is_powered_off_where_the_store_does_not_place_it(
        state: ClusterState) -> None:
    """After a one-way partition heals, the cut-off host still runs a VM the others
    restarted: the copy the store does not place goes, once the sight has lasted."""
    m, clock, rec = manager(state)
    token = m.take_office(10)
    twice = {"node1": ["web"], "node2": ["db"], "node3": ["batch", "web"]}
    publish(state, set(), twice)
    m.tick()
    assert getattr(rec, "stopped", []) == []  # reports may lag a switchover
    clock.t += m.params.adopt_s + 0.1
    publish(state, set(), twice)
    m.tick()
    assert rec.stopped == [("web", "node3", token)]  # web is placed on node1
    assert state.placement("web").node == "node1"


def test_a_source_left_paused_after_a_switchover_goes_and_never_pulls_the_placement(
        state: ClusterState) -> None:
    """web moved node1 -> node3; node1's agent restarted as the switchover committed, so
    its paused copy was never released. That copy is not web: web stays placed on node3,
    and node1's copy is powered off once the sight has lasted."""
    m, clock, rec = manager(state)
    token = m.take_office(10)
    p = state.placement("web")
    state.place("web", "node3", expect=p.revision, token=token)
    after = {"node1": [], "node2": ["db"], "node3": ["batch", "web"]}
    for _ in range(2):
        publish(state, set(), after, migrated={"node1": ["web"]})
        m.tick()
        clock.t += m.params.adopt_s + 0.1
    publish(state, set(), after, migrated={"node1": ["web"]})
    m.tick()
    assert rec.stopped == [("web", "node1", token)]
    assert state.placement("web").node == "node3"


def test_a_vm_list_its_agent_no_longer_answers_for_never_moves_a_placement(
        state: ClusterState) -> None:
    """node1's agent restarts as web's switchover to node3 commits: node1 reports its last
    list (web) for a while; that is no reason to place web back on node1."""
    m, clock, _rec = manager(state)
    token = m.take_office(10)
    p = state.placement("web")
    state.place("web", "node3", expect=p.revision, token=token)
    after = {"node1": ["web"], "node2": ["db"], "node3": ["batch"]}
    for age in (2.0, 2.0 + m.params.adopt_s + 0.1):
        publish(state, set(), after, incoming={"node3": ["web"]}, vms_age_s={"node1": age})
        m.tick()
        clock.t += m.params.adopt_s + 0.1
    assert state.placement("web").node == "node3"


def test_a_committed_switchover_whose_driver_died_is_taken_over_on_the_target(
        state: ClusterState) -> None:
    """The store places web on node3 (the switchover committed), node3 holds the complete
    incoming copy, node1 the paused source, and no migration is recorded: the driver died
    between the two. The manager takes over on node3; the source is never resumed."""
    m, clock, rec = manager(state)
    token = m.take_office(10)
    p = state.placement("web")
    state.place("web", "node3", expect=p.revision, token=token)
    rec.ends = {"web": MigrationEnds("gone", "complete")}
    rec.settled = []
    after = {"node1": [], "node2": ["db"], "node3": ["batch"]}
    for _ in range(3):
        publish(state, set(), after, migrated={"node1": ["web"]}, incoming={"node3": ["web"]})
        m.tick()
        clock.t += m.params.recover_s + 0.1
    assert rec.settled[:1] == [("web", "on node3")]
    assert getattr(rec, "started", []) == []  # never a second copy from disk
    assert state.placement("web").node == "node3"


# -- migrations whose driver died ---------------------------------------------------
def _orphan(state: ClusterState, vm: str, target: str) -> StoreLedger:
    """A migration recorded by a driver (the CLI: no token) that then died."""
    from vmcluster.substrate.protocol import MigrationHandle

    ledger = StoreLedger(state)
    ledger.begin(MigrationHandle(vm, OWNERS[vm], target, "Migration", f"id-{vm}"))
    ledger._drop_lease()  # what a SIGKILL does to it, DRIVER_TTL_S later
    return ledger


@pytest.mark.parametrize(("source", "target", "outcome"), [
    ("postmigrate", "complete", "on node2"),   # the copy is done: it moves forward
    ("gone", "complete", "on node2"),          # the source died after the copy
    ("migrating", "receiving", "back to node1"),
    ("postmigrate", "receiving", "back to node1"),  # the target never got all of it
    ("running", "gone", "back to node1"),
])
def test_an_orphaned_migration_is_settled_from_both_ends(
    state: ClusterState, source: str, target: str, outcome: str,
) -> None:
    m, _clock, rec = manager(state)
    m.take_office(10)
    _orphan(state, "web", "node2")
    rec.ends["web"] = MigrationEnds(source, target)
    publish(state, set())
    m.tick()
    assert rec.settled == [("web", outcome)]
    assert state.migrations() == {}
    assert state.placement("web").node == ("node2" if outcome == "on node2" else "node1")
    m.tick()
    assert rec.settled == [("web", outcome)]  # once


def test_a_live_driver_is_left_alone_and_its_commit_beats_a_late_settle(
    state: ClusterState,
) -> None:
    from vmcluster.errors import MigrationError
    from vmcluster.substrate.protocol import MigrationHandle

    m, _clock, rec = manager(state)
    m.take_office(10)
    ledger = StoreLedger(state)
    handle = MigrationHandle("db", "node2", "node3", "Migration", "live")
    ledger.begin(handle)
    rec.ends["db"] = MigrationEnds("postmigrate", "complete")
    publish(state, set())
    m.tick()
    assert rec.settled == [] and "db" in state.migrations()  # its driver renews its lease
    with pytest.raises(MigrationError, match="already migrating"):
        StoreLedger(state).begin(handle)  # one migration per VM
    ledger.commit()
    assert state.placement("db").node == "node3" and state.migrations() == {}
    # A driver whose record was settled by the manager may neither commit nor abort.
    late = _orphan(state, "batch", "node1")
    rec.ends["batch"] = MigrationEnds("migrating", "receiving")
    m.tick()
    assert rec.settled == [("batch", "back to node3")]
    from vmcluster.store import StoreConflict

    with pytest.raises(StoreConflict):
        late.commit()
    with pytest.raises(StoreConflict):
        late.abort()
    assert state.placement("batch").node == "node3"


def test_a_driver_whose_lease_lapsed_claims_its_record_again(state: ClusterState) -> None:
    """etcd answers the keepalive of an expired lease with TTL 0: a driver starved for a
    few seconds claims its record again on a new lease, and the manager in the same
    process never takes the migration it is driving for an orphan."""
    from vmcluster.substrate.protocol import MigrationHandle

    ledger = StoreLedger(state)
    ledger.begin(MigrationHandle("db", "node2", "node3", "Migration", "starved"))
    old = ledger._lease
    state.client.lease_revoke(old)  # what a starved driver's lapse looks like
    assert "db" in state.orphaned_migrations()
    deadline = time.monotonic() + 10
    while "db" in state.orphaned_migrations() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert "db" not in state.orphaned_migrations() and ledger._lease != old
    ledger.abort()
    assert state.migrations() == {}
    # A record settled by someone else meanwhile is not claimed again.
    ledger = StoreLedger(state)
    ledger.begin(MigrationHandle("db", "node2", "node3", "Migration", "settled"))
    mig = state.migrations()["db"]
    state.abort_migration(mig)
    assert state.reclaim_migration(mig, state.client.lease_grant(5)) is False
    assert state.migrations() == {}
    ledger.stop_keeping()


# -- intents: what the API asked for ------------------------------------------------
def _wait_end(state: ClusterState, intent_id: str) -> dict[str, Any]:
    deadline = time.monotonic() + 10
    while True:
        got = intents.get(state, intent_id)
        assert got is not None
        if got.state in intents.DONE:
            return got.to_json()
        assert time.monotonic() < deadline, got
        time.sleep(0.05)


def test_the_manager_carries_out_intents_in_workers_and_cancels_them(
    state: ClusterState,
) -> None:
    m, _clock, rec = manager(state)
    token = m.take_office(10)
    ok = intents.submit(state, "migrate", {"vm": "web", "to": "node2"}, "admin")
    bad = intents.submit(state, "migrate", {"vm": "fails", "to": "node2"}, "admin")
    slow = intents.submit(state, "drain", {"node": "node3", "wait": True}, "admin")
    publish(state, set())
    m.tick()  # claims all three; the loop itself does not wait for any of them
    assert _wait_end(state, ok.id)["state"] == "done"
    assert _wait_end(state, bad.id)["state"] == "failed"
    running = intents.get(state, slow.id)
    assert running is not None and running.state == "running"
    assert running.record["token"] == token
    intents.cancel(state, slow.id)
    assert _wait_end(state, slow.id)["state"] == "cancelled"
    assert sorted(k for k, _a, _t in rec.carried) == ["drain", "migrate", "migrate"]
    assert {t for _k, _a, t in rec.carried} == {token}
    m.tick()
    assert len(rec.carried) == 3  # each once
    # A pending intent is cancelled at once, and never carried out.
    later = intents.submit(state, "migrate", {"vm": "db", "to": "node1"}, "admin")
    assert intents.cancel(state, later.id).state == "cancelled"
    m.tick()
    assert len(rec.carried) == 3


def test_a_migration_a_deposed_manager_asked_for_is_adopted_by_the_next(
        state: ClusterState) -> None:
    """Its driver (the VM's source host) outlives the manager: the next one goes on
    watching it under its own token and ends the intent with the driver's result; one
    whose driver is gone too is marked failed."""
    alive = intents.submit(state, "migrate", {"vm": "db", "to": "node2"}, "admin")
    gone = intents.submit(state, "migrate", {"vm": "web", "to": "node3"}, "admin")
    for it in (alive, gone):
        intents.update(state, it.id, None, state="running", token=1)
    m, _clock, rec = manager(state)
    rec.adoptable = {"db": {"vm": "db", "source": "node1", "target": "node2", "ok": True,
                            "network": "Migration"}}
    m.take_office(10)
    publish(state, set())
    m.tick()
    done = _wait_end(state, alive.id)
    token = done["token"]
    assert done["state"] == "done" and token not in (None, 1), done
    assert done["result"]["target"] == "node2"
    failed = _wait_end(state, gone.id)
    assert failed["state"] == "failed" and "lost office" in failed["error"], failed
    assert sorted((a["vm"], t) for a, t in rec.adopted) == [("db", token), ("web", token)]
    assert not getattr(rec, "carried", [])


def test_a_drive_a_deposed_manager_started_is_handed_the_new_token_once(
        state: ClusterState) -> None:
    """A drain's migration in flight (no intent of its own to adopt): the next manager
    hands its driver the new token, once per term; an operator's (no token) is left."""
    old, _, _ = manager(state, "node1")
    old_token = old.take_office(10)
    lease = state.client.lease_grant(60)  # the drivers are alive: no orphans here
    state.begin_migration("db", "node3", "Migration", expect=state.placement("db"),
                          token=old_token, attempt="a1", driver_lease=lease)
    state.begin_migration("web", "node3", "Migration", expect=state.placement("web"),
                          token=None, attempt="a2", driver_lease=lease)
    old.election.resign()
    m, _clock, rec = manager(state)
    token = m.take_office(10)
    publish(state, set())
    m.tick()
    m.tick()
    assert rec.lent == [("db", "node2", token)]


def test_a_drain_a_deposed_manager_was_running_is_resumed_once_its_migration_ends(
        state: ClusterState) -> None:
    """The drain runs again, from a fresh plan, under the new token, but only once the
    migration it had in flight has ended (its VM is never asked to move twice); a quick
    migration whose driver is gone too is marked failed."""
    old, _, _ = manager(state, "node1")
    old_token = old.take_office(10)
    drain_it = intents.submit(state, "drain", {"node": "node1"}, "admin")
    quick_it = intents.submit(state, "migrate", {"vm": "web", "to": "node3", "mode": "quick"},
                              "admin")
    for it in (drain_it, quick_it):
        intents.update(state, it.id, None, state="running", token=old_token)
    lease = state.client.lease_grant(60)  # its driver is alive: no orphan
    state.begin_migration("db", "node3", "Migration", expect=state.placement("db"),
                          token=old_token, attempt="a1", driver_lease=lease)
    old.election.resign()
    clock, rec = ManualClock(), Recorder()
    m = Manager(state, LAB, "node2", rec, clock, lambda: 1000.0 + clock.t,
                ManagerParams(resume_wait_s=1e9))
    token = m.take_office(10)
    publish(state, set())
    m.tick()
    failed = _wait_end(state, quick_it.id)
    assert failed["state"] == "failed" and "lost office" in failed["error"], failed
    assert [(a["vm"], a.get("mode")) for a, _t in rec.adopted] == [("web", "quick")]
    time.sleep(0.5)
    assert not getattr(rec, "carried", [])  # the drain waits for db's migration
    resumed = intents.get(state, drain_it.id)
    assert resumed is not None and resumed.state == "running"
    assert resumed.record["token"] == token
    state.abort_migration(state.migrations()["db"], token)  # the drive, lent this token
    done = _wait_end(state, drain_it.id)
    assert done["state"] == "done", done
    assert rec.carried == [("drain", {"node": "node1"}, token)]


def _settle(m: Manager) -> None:
    """Wait for the manager's start threads and intent workers of this term."""
    assert m.term is not None
    for t in [*m.term.starting.values(), *m.term.workers.values()]:
        t.join(10)


def _define_lab_vms(state: ClusterState, running: set[str]) -> None:
    """The lab spec's VMs defined in the store (those in ``running`` desired running),
    none placed."""
    state.client.delete(state.key("placements", ""), prefix=True)
    state.put_spec((ROOT / "examples/lab.toml").read_text())
    for vm in LAB.vms:
        vms.define(state, {"name": vm.name, "owner": vm.owner, "memory_mib": vm.memory_mib},
                   desired="running" if vm.name in running else "stopped")


def test_vms_defined_to_run_start_on_their_owner_and_a_stopped_one_stays_stopped(
    state: ClusterState,
) -> None:
    _define_lab_vms(state, running={"web", "db"})
    m, clock, rec = manager(state)
    token = m.take_office(10)
    # node1 (web's owner) is not heard yet: a young term waits for it rather than
    # starting web elsewhere; db's owner is up, so db starts there.
    publish(state, {"node1"}, {"node2": [], "node3": []})
    m.tick()
    _settle(m)
    assert rec.started == [("db", "node2", token)]
    assert state.placement("db").node == "node2" and state.placement("web").node is None
    publish(state, set(), {"node1": [], "node2": ["db"], "node3": []})
    m.tick()
    _settle(m)
    assert rec.started[1:] == [("web", "node1", token)]
    assert "vm_started" in kinds(state)
    # batch is desired stopped: never started. A stop intent stops db for good.
    vms.set_desired(state, "db", "stopped")
    it = intents.submit(state, "stop", {"vm": "db", "shutdown_s": 45.0}, by="test")
    publish(state, set(), {"node1": ["web"], "node2": ["db"], "node3": []})
    m.tick()
    _settle(m)
    done = intents.get(state, it.id)
    assert done is not None and done.state == "done"
    assert done.record["result"]["how"] == "shutdown"  # its guest was asked, and did
    assert rec.stopped == [("db", "node2", token)] and rec.shutdowns == [45.0]
    stopped = [e for e in state.events()[0] if e[1]["kind"] == "vm_stopped"]
    assert "ACPI" in stopped[-1][1]["reason"]
    assert state.placement("db").node is None
    clock.t += 30
    publish(state, set(), {"node1": ["web"], "node2": [], "node3": []})
    m.tick()
    _settle(m)
    assert [v for v, _, _ in rec.started] == ["db", "web"]  # neither db nor batch again
    # A start intent with a node: placed and started there, done once a report shows it.
    vms.set_desired(state, "batch", "running")
    it = intents.submit(state, "start", {"vm": "batch", "on": "node2"}, by="test")
    publish(state, set(), {"node1": ["web"], "node2": ["batch"], "node3": []})
    m.tick()
    _settle(m)
    got = intents.get(state, it.id)
    assert got is not None and got.state == "done", got
    assert state.placement("batch").node == "node2"
    assert ("batch", "node2", token) in rec.started


def test_a_vm_waits_for_an_owner_that_never_joined_and_fails_over_once_it_ran(
    state: ClusterState,
) -> None:
    """After `cluster init`, hosts join one by one: a VM whose owner has not joined yet
    waits for it (it does not pile onto the first hosts once the term is old); an owner
    that ran and died is failed over from as before."""
    _define_lab_vms(state, running={"web"})
    for node in ("node2", "node3"):  # their daemons ran; node1 (web's owner) never did
        state.client.put(state.key("daemons", node), b"{}")
    m, clock, rec = manager(state)
    m.take_office(10)
    publish(state, {"node1"}, {"node2": [], "node3": []})
    m.tick()
    clock.t += ManagerParams().start_grace_s + 1  # the term is old now
    publish(state, {"node1"}, {"node2": [], "node3": []})
    m.tick()
    _settle(m)
    assert rec.started == [] and state.placement("web").node is None
    state.client.put(state.key("daemons", "node1"), b"{}")  # node1 joined, then died
    publish(state, {"node1"}, {"node2": [], "node3": []})
    m.tick()
    _settle(m)
    assert [(v, n) for v, n, _ in rec.started] == [("web", "node2")] or \
        [(v, n) for v, n, _ in rec.started] == [("web", "node3")]


def test_a_resume_intent_puts_a_drained_node_back_and_refuses_a_down_one(
    state: ClusterState,
) -> None:
    m, _clock, _rec = manager(state)
    m.take_office(10)
    state.set_node_state("node3", "quarantined", failures=[1.0, 2.0, 3.0], failed=False)
    state.set_node_state("node1", "down")
    ok = intents.submit(state, "resume", {"node": "node3"}, by="test")
    bad = intents.submit(state, "resume", {"node": "node1"}, by="test")
    publish(state, {"node1"})
    m.tick()
    _settle(m)
    done, refused = intents.get(state, ok.id), intents.get(state, bad.id)
    assert done is not None and done.state == "done", done
    assert done.record["result"] == {"ok": True, "node": "node3", "was": "quarantined",
                                     "state": "up"}
    assert state.node_states()["node3"]["state"] == "up"
    assert state.node_states()["node3"]["failures"] == []
    assert refused is not None and refused.state == "failed" and "down" in refused.record["error"]


def test_a_delete_intent_removes_the_disk_then_the_definition_never_of_a_running_vm(
    state: ClusterState,
) -> None:
    _define_lab_vms(state, running={"web"})
    state.place("web", "node1", expect=0, token=None)
    m, _clock, rec = manager(state)
    token = m.take_office(10)
    running = intents.submit(state, "delete", {"vm": "web"}, by="test")
    gone = intents.submit(state, "delete", {"vm": "db"}, by="test")
    kept = intents.submit(state, "delete", {"vm": "batch", "keep_disk": True}, by="test")
    publish(state, set(), {"node1": ["web"], "node2": [], "node3": []})
    m.tick()
    _settle(m)
    refused = intents.get(state, running.id)
    assert refused is not None and refused.state == "failed"
    assert "stop it first" in refused.record["error"]
    assert vms.get(state, "web") is not None  # nothing of it went
    done = intents.get(state, gone.id)
    assert done is not None and done.state == "done", done
    assert ("delete", {"vm": "db"}, token) in rec.carried  # its disk, by a host
    assert vms.get(state, "db") is None and vms.get(state, "batch") is None
    assert [k for k, a, _ in rec.carried if a.get("vm") == "batch"] == []  # disk kept
    assert intents.get(state, kept.id).state == "done"  # type: ignore[union-attr]


@pytest.mark.parametrize("victim", NODES)
def test_the_simulator_restarts_a_crashed_nodes_vms_where_the_manager_does(
        state: ClusterState, victim: str) -> None:
    """One manager for both: the simulator runs it too. Priorities, anti-affinity over
    preference, room: web and db must not share a host, so web (preferring node2) goes
    elsewhere when node1 dies."""
    spec = dataclasses.replace(LAB, vms=tuple(
        dataclasses.replace(v, anti_affinity="front" if v.name in ("web", "db") else None,
                            priority=3 if v.name == "db" else 2)
        for v in LAB.vms))
    clock, rec = ManualClock(), Recorder()
    m = Manager(state, spec, next(n for n in NODES if n != victim), rec, clock,
                lambda: 1000.0 + clock.t, ManagerParams())
    m.take_office(10)
    publish(state, set())
    m.tick()
    publish(state, {victim})
    m.tick()  # it is down now; its VMs wait for the isolated side to stop them
    clock.t += 30
    publish(state, {victim})
    m.tick()
    predicted = predict_crash(spec, OWNERS, victim)
    assert {vm: node for vm, node, _t in rec.started} == predicted.restarts
    if victim == "node1":
        assert predicted.restarts == {"web": "node3"}  # not node2: db is there
    # The simulator runs this same manager: its hosts' reports show the crash a heartbeat
    # window late, its ticks come every tick_s, so the restarts are issued no earlier than
    # the isolation wait and at most two ticks after it.
    earliest = restart_not_before(0.0, spec.cluster, m.params.failover)
    assert predicted.after_s is not None
    assert earliest <= predicted.after_s <= earliest + 2 * m.params.tick_s + 1e-9


# -- two nodes and a witness (examples/lab-witness.toml) -------------------------------

TWO = load_spec(ROOT / "examples/lab-witness.toml")
W_HOSTS = ("node1", "node2", "witness")
W_NETS = ("Public", "Heartbeat")


@pytest.fixture
def wstate(etcd: EtcdCluster, request: pytest.FixtureRequest) -> Iterator[ClusterState]:
    st = ClusterState(EtcdClient(etcd.endpoints()), f"w{abs(hash(request.node.name)) % 10**8}")
    for vm, node in (("web", "node1"), ("db", "node2")):
        st.place(vm, node, expect=0, token=None)
    yield st
    st.client.delete(st.root, prefix=True)


def wpublish(state: ClusterState, cut: set[frozenset[str]], silent: set[str] = frozenset(),
             vms: dict[str, list[str]] | None = None) -> None:
    """Every host not ``silent`` reports: a route is down when its pair is in ``cut`` or
    its peer is silent (crashed)."""
    owners = {"node1": ["web"], "node2": ["db"], "witness": []}
    for host in W_HOSTS:
        if host in silent:
            continue
        routes = {f"{p}/{n}": p not in silent and frozenset((host, p)) not in cut
                  for p in W_HOSTS if p != host for n in W_NETS}
        body = {"routes": routes, "vms": (vms or owners).get(host, []), "isolated": False}
        state.client.put(report_key(state, host), json.dumps(body).encode())


def wmanager(state: ClusterState, name: str) -> tuple[Manager, ManualClock, Recorder]:
    clock, rec = ManualClock(), Recorder()
    return Manager(state, TWO, name, rec, clock, lambda: 1000.0 + clock.t,
                   ManagerParams()), clock, rec


SPLIT = frozenset(("node1", "node2"))


def split_started(state: ClusterState) -> tuple[Manager, ManualClock, Recorder, int]:
    """node1's manager in office, all well for a tick, then node1 and node2 cut apart
    (both still hearing the witness) for a tick."""
    m, clock, rec = wmanager(state, "node1")
    token = m.take_office(10)
    wpublish(state, set())
    m.tick()
    wpublish(state, {SPLIT})
    m.tick()
    return m, clock, rec, token


def test_two_nodes_and_a_witness_restart_a_crashed_nodes_vms(wstate: ClusterState) -> None:
    """node1 crashes: node2 plus the witness hold 2 of 3 votes and restart web; the same
    crash with the witness silent too leaves node2 alone, 1 of 3: nothing restarts."""
    m, clock, rec = wmanager(wstate, "node2")
    token = m.take_office(10)
    wpublish(wstate, set())
    m.tick()
    wpublish(wstate, set(), silent={"node1"})
    m.tick()
    assert wstate.node_states()["node1"]["state"] == "down"
    clock.t += 0.25 + m.params.failover.stop_budget_s + 0.05
    wpublish(wstate, set(), silent={"node1"})
    m.tick()
    assert rec.started == [("web", "node2", token)]


def test_without_the_witness_one_node_of_two_never_acts(wstate: ClusterState) -> None:
    m, clock, rec = wmanager(wstate, "node2")
    m.take_office(10)
    wpublish(wstate, set())
    m.tick()
    for _ in range(3):
        clock.t += 5
        wpublish(wstate, set(), silent={"node1", "witness"})
        m.tick()
    assert rec.started == [] and "node1" not in wstate.node_states()
    assert "witness_lost" in kinds(wstate)


def test_losing_the_witness_alone_is_a_warning(wstate: ClusterState) -> None:
    m, clock, rec = wmanager(wstate, "node1")
    m.take_office(10)
    wpublish(wstate, set())
    m.tick()
    clock.t += 10
    wpublish(wstate, set(), silent={"witness"})
    m.tick()
    wpublish(wstate, set())
    m.tick()
    assert rec.started == [] and wstate.node_states() == {}
    assert kinds(wstate).count("witness_lost") == 1 and "witness_back" in kinds(wstate)


def test_a_split_the_witness_sees_both_sides_of_keeps_one(wstate: ClusterState) -> None:
    """node1 and node2 lose each other, both still reach the witness (and the store):
    the manager's side (node1) keeps the VMs; node2 is declared down and db restarts on
    node1 only once node2's own report no longer lists it (it read the verdict)."""
    m, clock, rec, token = split_started(wstate)
    split = {SPLIT}
    record = wstate.node_states()["node2"]
    assert record["state"] == "down" and record["failed"] is True  # the verdict node2 reads
    assert "node1" not in wstate.node_states()  # the manager's side is not touched
    clock.t += 30  # however long: node2 still says it runs db
    wpublish(wstate, split)
    m.tick()
    assert rec.started == []
    wpublish(wstate, split, vms={"node1": ["web"], "node2": []})  # it stopped db
    m.tick()
    assert rec.started == [("db", "node1", token)]
    # The links come back: node2 is up again (and db stays where it now runs).
    wpublish(wstate, set(), vms={"node1": ["web", "db"], "node2": []})
    m.tick()
    assert wstate.node_states()["node2"]["state"] == "up"
    assert wstate.node_states()["node2"]["failed"] is False


def test_a_split_node_gone_silent_is_restarted_only_after_the_store_grace(
    wstate: ClusterState,
) -> None:
    """A split-off node that cannot reach the store cannot read the verdict: it stops its
    VMs itself within the store grace of its last write; the manager waits that out."""
    m, clock, rec, token = split_started(wstate)
    assert wstate.node_states()["node2"]["state"] == "down"
    # node2 writes nothing more (its store is gone); the witness still hears it.
    for host in ("node1", "witness"):
        body = {"routes": {f"{p}/{n}": not (host == "node1" and p == "node2")
                           for p in W_HOSTS if p != host for n in W_NETS},
                "vms": ["web"] if host == "node1" else [], "isolated": False}
        wstate.client.put(report_key(wstate, host), json.dumps(body).encode())
    clock.t += m.params.stale_s + 0.5
    m.tick()
    assert rec.started == []
    clock.t += STORE_GRACE_S + m.params.failover.stop_budget_s
    for host in ("node1", "witness"):  # a fresh round of the others' reports
        kv = wstate.client.get(report_key(wstate, host))
        assert kv is not None
        wstate.client.put(report_key(wstate, host), kv.value)
    m.tick()
    assert rec.started == [("db", "node1", token)]
