"""Who is dead, who is healthy, and which network carries the cluster, from node reports."""

from __future__ import annotations

from collections.abc import Set
from pathlib import Path
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from vmcluster.control.liveness import NodeReport, ReportTracker, assess, split_off
from vmcluster.model.spec import load_spec
from vmcluster.policy.failover import has_quorum

ROOT = Path(__file__).resolve().parents[2]
LAB = load_spec(ROOT / "examples/lab.toml")
NODES = ("node1", "node2", "node3")
NETS = ("Public", "Heartbeat", "Migration")


def report(node: str, down: Set[tuple[str, str]] = frozenset(), **kw: Any) -> NodeReport:
    """``node``'s report with every route up except ``down`` = {(peer, net)}."""
    routes = {(p, n): (p, n) not in down for p in NODES if p != node for n in NETS}
    return NodeReport(node, routes, **kw)


def all_down(peer: str) -> set[tuple[str, str]]:
    return {(peer, n) for n in NETS}


def test_all_well() -> None:
    seen = assess(LAB, {n: report(n, vms=(f"vm-{n}",)) for n in NODES})
    assert seen.dead == frozenset()
    assert seen.healthy == frozenset(NODES)
    assert set(seen.network_states.values()) == {"up"}
    assert seen.cluster_network == "Heartbeat"
    assert seen.running == {"vm-node1": {"node1"}, "vm-node2": {"node2"}, "vm-node3": {"node3"}}


def test_crashed_node_is_dead_even_with_its_stale_report() -> None:
    reports = {
        "node1": report("node1", vms=("web",), fresh=False),  # it stopped writing
        "node2": report("node2", all_down("node1")),
        "node3": report("node3", all_down("node1")),
    }
    seen = assess(LAB, reports)
    assert seen.dead == {"node1"}
    assert "node1" not in seen.healthy
    assert "web" not in seen.running  # a dead node runs nothing


def test_one_network_down_kills_nobody_and_moves_cluster_traffic() -> None:
    cut = {(p, "Heartbeat") for p in NODES}
    seen = assess(LAB, {n: report(n, cut) for n in NODES})
    assert seen.dead == frozenset()
    assert seen.network_states["Heartbeat"] == "down"
    assert seen.cluster_network == "Migration"  # the lowest metric that is left


def test_isolated_node_thinks_well_of_itself_but_is_dead() -> None:
    reports = {
        "node1": report("node1", all_down("node2") | all_down("node3"), isolated=True),
        "node2": report("node2", all_down("node1")),
        "node3": report("node3", all_down("node1")),
    }
    seen = assess(LAB, reports)
    assert seen.dead == {"node1"}
    assert seen.healthy == {"node2", "node3"}


def test_one_observer_still_hearing_a_node_keeps_it_alive() -> None:
    reports = {
        "node1": report("node1"),
        "node2": report("node2", all_down("node1")),
        "node3": report("node3", {("node1", "Heartbeat")}),
    }
    assert assess(LAB, reports).dead == frozenset()


def test_no_fresh_observer_means_no_verdict_and_a_lone_node_has_no_quorum() -> None:
    assert assess(LAB, {}).dead == frozenset()
    assert assess(LAB, {"node1": report("node1", fresh=False)}).dead == frozenset()
    lone = assess(LAB, {"node1": report("node1", all_down("node2") | all_down("node3"))})
    assert lone.dead == {"node2", "node3"}  # as node1 sees it ...
    assert not has_quorum(3, 3 - len(lone.dead), witness=False, sees_witness=False)  # ... alone


def test_a_split_is_the_nodes_no_chain_of_hearing_joins_to_the_managers() -> None:
    """node1 and node2 lose each other: with node3 hearing both, nobody is split off (a
    chain joins them); alone (a third party that is no node, the witness), they are."""
    cut = {"node1": report("node1", all_down("node2")), "node2": report("node2", all_down("node1")),
           "node3": report("node3")}
    assert split_off(LAB, cut, "node1") == frozenset() and assess(LAB, cut).dead == frozenset()
    cut.pop("node3")
    assert split_off(LAB, cut, "node1") == {"node2"}
    assert split_off(LAB, cut, "node2") == {"node1"}  # exactly one side: the manager's
    cut["node1"] = report("node1", all_down("node2"), fresh=False)
    assert split_off(LAB, cut, "node1") == frozenset()  # its own report stale: no verdict


@given(st.sets(st.sampled_from(NODES)), st.sets(st.sampled_from(NODES)))
def test_a_node_is_dead_iff_every_fresh_other_lost_it(cut: set[str], stale: set[str]) -> None:
    """Nodes in ``cut`` are unheard by everyone; reports of ``stale`` nodes are not fresh."""
    reports = {}
    for n in NODES:
        down: set[tuple[str, str]] = set()
        for peer in cut:
            down |= all_down(peer)
        if n in cut:  # a cut-off node hears nobody
            down = {(p, net) for p in NODES for net in NETS}
        reports[n] = report(n, down, fresh=n not in stale)
    seen = assess(LAB, reports)
    for n in NODES:
        observers = [o for o in NODES if o != n and o not in stale]
        expect = bool(observers) and all(o in cut or n in cut for o in observers)
        assert (n in seen.dead) == expect
    assert seen.healthy <= {n for n in NODES if n not in stale} - seen.dead


def test_tracker_staleness_by_revision() -> None:
    t = ReportTracker(stale_s=3.0)
    assert t.update("a", 10, now=0.0)
    assert t.update("a", 10, now=3.0)
    assert not t.update("a", 10, now=3.1)
    assert t.update("a", 11, now=3.2)  # written again: fresh
    assert t.update("b", 5, now=100.0)  # first sight counts as fresh
