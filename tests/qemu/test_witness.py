"""Two nodes and a witness on the lab (examples/lab-witness.toml): the seed's kind of
cluster, which two votes alone cannot keep running when it loses a node.

Each host is a namespace: node1 and node2 run VMs; the witness runs an etcd member and
heartbeats only. A sampler asks both nodes' agents for their VMs every 100 ms
throughout: no VM may ever run twice. One lab per module ("w<pid>"), torn down (and
checked gone) even when a test fails.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from tests.qemu.test_failover import (
    check_disks,
    events_after,
    last_seq,
    leader,
    wait_event,
    wait_settled,
)

from vmcluster.lab.faults import crash_node, cut_between, isolate_node, rejoin_node, start_node
from vmcluster.lab.sampler import RunSampler
from vmcluster.lab.services import LabStore
from vmcluster.lab.substrate import LabSubstrate

if TYPE_CHECKING:
    from conftest import LabStarter

pytestmark = [
    pytest.mark.lab,
    pytest.mark.skipif(os.geteuid() != 0, reason="the lab needs root"),
]

ROOT = Path(__file__).resolve().parents[2]
SPEC = ROOT / "examples" / "lab-witness.toml"
NODES = ("node1", "node2")
BOUND_S = 60.0  # generous: the machine may be loaded


@pytest.fixture(scope="module")
def lab(start_lab: LabStarter) -> LabSubstrate:
    sub = start_lab(SPEC, "w")
    assert sub.spec.witness is not None and [n.name for n in sub.spec.nodes] == list(NODES)
    return sub


def settled(lab: LabSubstrate, sampler: RunSampler, store: LabStore) -> dict[str, str]:
    """Every VM runs once and both nodes serve (vm -> node); a trial's failure is
    forgotten (no flapping quarantine from one test to the next)."""
    where = wait_settled(lab, sampler, store)
    for n in NODES:
        store.call(lambda n=n: store.state.set_node_state(n, "up", None, failures=[],
                                                          failed=False))
    return where


def test_a_split_the_witness_sees_both_sides_of_leaves_every_vm_running_once(
    lab: LabSubstrate, store: LabStore, sampler: RunSampler
) -> None:
    """node1 and node2 lose each other (every path between them cut), both still reach
    the witness, so each alone holds quorum by its own count: the manager's side keeps
    the VMs; the other is declared down, reads that verdict in the store and stops its
    VMs, and only then do they start on the manager's side."""
    where = settled(lab, sampler, store)
    held = leader(store)
    assert held is not None
    keeper = held.name
    yielder = next(n for n in NODES if n != keeper)
    lost = [vm for vm, n in where.items() if n == yielder]
    seq = last_seq(store)
    t0 = time.monotonic()
    cut_between(lab.layout, "node1", "node2", True)
    try:
        down = wait_event(store, seq, 30, kind="node_down", peer=yielder)
        assert down["node"] == keeper
        if lost:
            stopped = wait_event(store, seq, 30, kind="node_isolated", node=yielder)
            assert sorted(stopped["vms_stopped"]) == sorted(lost)
            assert sampler.wait(lost, since=t0, timeout_s=BOUND_S, avoid=yielder) is not None
            restarted = {e["vm"]: e for e in events_after(store, seq)
                         if e["kind"] == "vm_restarted"}
            assert sorted(restarted) == sorted(lost)
            assert all(e["node"] == keeper and e["at"] >= stopped["at"]
                       for e in restarted.values())  # never before the other side stopped
        time.sleep(4)  # the split lasts: nothing else moves, nothing runs twice
        s = sampler.latest()
        assert s is not None and all(ns == (keeper,) for ns in s.running.values()), s.running
    finally:
        cut_between(lab.layout, "node1", "node2", False)
    wait_event(store, seq, 30, kind="node_up", peer=yielder)
    check_disks(lab)


def test_losing_the_witness_alone_changes_nothing_but_a_warning(
    lab: LabSubstrate, store: LabStore, sampler: RunSampler
) -> None:
    where = settled(lab, sampler, store)
    seq = last_seq(store)
    crash_node(lab.layout, "witness")
    try:
        wait_event(store, seq, 30, kind="witness_lost", witness="witness")
        time.sleep(6)  # past detection and any restart wait
        kinds = [e["kind"] for e in events_after(store, seq)]
        assert not {"node_down", "vm_restarted", "node_isolated"} & set(kinds), kinds
        s = sampler.latest()
        assert s is not None and {vm: ns[0] for vm, ns in s.running.items()} == where
    finally:
        start_node(lab.layout, "witness")
    wait_event(store, seq, 30, kind="witness_back", witness="witness")


def test_a_crashed_node_of_two_fails_over_to_the_other(
    lab: LabSubstrate, store: LabStore, sampler: RunSampler
) -> None:
    """The survivor and the witness hold two of three votes: the crashed node's VMs run
    on the survivor (with the manager's own node crashed, the hardest case)."""
    settled(lab, sampler, store)
    held = leader(store)
    assert held is not None
    victim = held.name
    survivor = next(n for n in NODES if n != victim)
    where = settled(lab, sampler, store)
    lost = [vm for vm, n in where.items() if n == victim]
    seq = last_seq(store)
    t_wall, t0 = time.time(), time.monotonic()
    crash_node(lab.layout, victim)
    try:
        took = sampler.wait(lost, since=t0, timeout_s=BOUND_S, avoid=victim)
        assert took is not None, f"{lost} did not run again within {BOUND_S:.0f} s"
        down = wait_event(store, seq, 10, kind="node_down", peer=victim)
        assert down["node"] == survivor and down["at"] - t_wall < 10
        restarted = [e for e in events_after(store, seq) if e["kind"] == "vm_restarted"]
        assert sorted(e["vm"] for e in restarted) == sorted(lost)
        assert all(e["node"] == survivor for e in restarted)
        check_disks(lab)
    finally:
        start_node(lab.layout, victim)
    wait_event(store, seq, 30, kind="node_up", peer=victim)


def test_an_isolated_node_stops_its_vms_and_the_other_keeps_them(
    lab: LabSubstrate, store: LabStore, sampler: RunSampler
) -> None:
    """Every cluster interface of one node down: it hears neither its peer nor the
    witness and stops its VMs; the other and the witness restart them."""
    where = settled(lab, sampler, store)
    victim = max(NODES, key=lambda n: (sum(1 for v in where.values() if v == n), n))
    other = next(n for n in NODES if n != victim)
    lost = [vm for vm, n in where.items() if n == victim]
    seq = last_seq(store)
    t0 = time.monotonic()
    isolate_node(lab.layout, victim)
    try:
        assert sampler.wait(lost, since=t0, timeout_s=BOUND_S, avoid=victim) is not None
        restarted = [e for e in events_after(store, seq) if e["kind"] == "vm_restarted"]
        assert {e["vm"] for e in restarted} == set(lost)
        assert all(e["node"] == other for e in restarted)
    finally:
        rejoin_node(lab.layout, victim)
    # Cut off, it could not say so: its event reaches the store once it is back.
    stopped = wait_event(store, seq, 30, kind="node_isolated", node=victim)
    assert sorted(stopped["vms_stopped"]) == sorted(lost)
    wait_event(store, seq, 30, kind="node_up", peer=victim)
    check_disks(lab)
