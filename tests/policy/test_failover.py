"""Failover placement, quorum, isolation timing and flapping: examples and properties."""

from __future__ import annotations

from ipaddress import IPv4Address
from pathlib import Path

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from vmcluster.errors import SpecError
from vmcluster.model import ClusterSettings, ClusterSpec, Node, Vm
from vmcluster.model.spec import spec_with_vms
from vmcluster.policy.failover import (
    STORE_GRACE_S,
    CannotPlace,
    FailoverParams,
    FailoverPlan,
    Migrate,
    Restart,
    drain_plan,
    failover_plan,
    has_quorum,
    must_stop_vms,
    quarantined,
    restart_not_before,
    start_plan,
    stop_reason,
)

P = FailoverParams()


def node(name: str, cores: int = 4, mem: int = 4096) -> Node:
    return Node(name, cores, mem, {"net": IPv4Address("198.18.0.1")})


def spec(
    nodes: list[Node], vms: list[Vm], witness: str | None = None, vcpus_per_core: float = 4.0
) -> ClusterSpec:
    settings = ClusterSettings("t", witness=witness, vcpus_per_core=vcpus_per_core)
    return ClusterSpec(settings, (), tuple(nodes), tuple(vms))


ROOT = Path(__file__).resolve().parents[2]


def test_restart_by_priority_preferred_owner_then_room() -> None:
    s = spec(
        [node("a"), node("b", mem=1024), node("c", mem=8192)],
        [
            Vm("low", "a", 512, priority=1000),
            Vm("high", "a", 1024, priority=3000, preferred_owners=("b", "c")),
            Vm("mid", "a", 512, priority=2000),
            Vm("other", "b", 256),
        ],
    )
    plan = failover_plan(s, {v.name: v.owner for v in s.vms}, {"a"})
    # high wants b but b has 768 MiB free, so c (its next preferred owner); the rest go
    # where most memory is free.
    assert plan.actions == (
        Restart("high", "c", "a"),
        Restart("mid", "c", "a"),
        Restart("low", "c", "a"),
    )


def test_anti_affinity_spreads_a_class_and_gives_way_when_it_must() -> None:
    s = spec(
        [node("a"), node("b"), node("c")],
        [Vm("db1", "a", 512, anti_affinity="db"), Vm("db2", "b", 512, anti_affinity="db"),
         Vm("db3", "c", 512, anti_affinity="db")],
    )  # fmt: skip
    plan = failover_plan(s, {"db1": "a", "db2": "b", "db3": "c"}, {"a"})
    # Both hold one: equal, name wins; the plan says which rule it broke.
    assert plan.actions == (Restart("db1", "b", "a", (
        "anti_affinity db: shares b with db2 (every node with room has one)",)),)
    s2 = spec([node("a"), node("b"), node("c")], list(s.vms[:2]))
    assert failover_plan(s2, {"db1": "a", "db2": "b"}, {"a"}).actions == (Restart("db1", "c", "a"),)


def test_cannot_place_names_the_reason() -> None:
    s = spec([node("a"), node("b", mem=256)], [Vm("big", "a", 1024)])
    (act,) = failover_plan(s, {"big": "a"}, {"a"}).actions
    assert isinstance(act, CannotPlace) and "1024 MiB" in act.reason
    (act2,) = failover_plan(s, {"big": "a"}, {"a", "b"}).actions
    assert act2 == CannotPlace("big", "no node is up")


def test_drain_moves_everything_off_and_skips_excluded() -> None:
    s = spec([node("a"), node("b"), node("c")], [Vm("x", "a", 512), Vm("y", "a", 512)])
    plan = drain_plan(s, {"x": "a", "y": "a"}, "a", excluded={"b"})
    assert plan.actions == (Migrate("x", "a", "c"), Migrate("y", "a", "c"))
    assert plan.to_json()[0] == {"action": "Migrate", "vm": "x", "source": "a", "target": "c",
                                 "broke": []}


def test_quorum_majority_and_witness() -> None:
    assert has_quorum(3, 2, False, False) and not has_quorum(3, 1, False, False)
    assert not has_quorum(2, 1, False, False)  # 1|1 split: nobody, without a witness
    assert has_quorum(2, 1, True, True) and not has_quorum(2, 1, True, False)
    assert has_quorum(4, 2, True, True) and not has_quorum(4, 2, True, False)
    assert must_stop_vms(3, 1, ClusterSettings("t"), False)
    assert not must_stop_vms(3, 3, ClusterSettings("t"), False)


def test_isolated_node_stops_before_the_majority_restarts() -> None:
    st_ = ClusterSettings("t", same_subnet_delay_ms=250, same_subnet_threshold=8)
    last_heard = 100.0
    # The isolated node's last receipt is at most one delay later; it stops after its window
    # and within its stop budget.
    isolated_done = last_heard + 0.25 + 2.0 + P.stop_budget_s
    assert restart_not_before(last_heard, st_) >= isolated_done
    # ... and a host whose daemon hung has been fenced by its watchdog: 2.5 s after its
    # last pet, at most 1.25 s after its last heartbeat, killed within 0.5 s.
    assert restart_not_before(last_heard, st_) >= last_heard + 2.5 + 1.25 + 0.5
    assert restart_not_before(last_heard, st_) == max(100.0 + 2.0 + 0.25 + 1.0, 104.25)
    longer = ClusterSettings("t", fence_window_s=10.0)
    assert restart_not_before(last_heard, longer) == 100.0 + 10.0 + 1.25 + 0.5


def test_flapping_three_failures_in_an_hour() -> None:
    assert quarantined([0, 1000, 3000], now=3500)
    assert not quarantined([0, 1000, 3000], now=3601)  # the first has aged out
    assert not quarantined([10, 20], now=30)
    assert not quarantined([10, 20, 40], now=30)  # a future entry does not count yet


# -- properties over random clusters -------------------------------------------------------

names = [f"n{i}" for i in range(5)]


@st.composite
def clusters(draw: st.DrawFn) -> tuple[ClusterSpec, dict[str, str | None], set[str]]:
    nn = draw(st.integers(2, 5))
    nodes = [
        node(names[i], draw(st.integers(1, 8)), draw(st.sampled_from([512, 1024, 2048, 4096])))
        for i in range(nn)
    ]
    vms = []
    for i in range(draw(st.integers(0, 14))):
        vms.append(
            Vm(
                f"vm{i}",
                draw(st.sampled_from(names[:nn])),
                draw(st.sampled_from([128, 256, 512, 1024])),
                vcpus=draw(st.integers(1, 2)),
                preferred_owners=tuple(draw(st.lists(st.sampled_from(names[:nn]), unique=True))),
                priority=draw(st.sampled_from([1000, 2000, 3000])),
                anti_affinity=draw(st.sampled_from([None, "db", "web"])),
            )
        )
    s = spec(nodes, vms, vcpus_per_core=draw(st.sampled_from([1.0, 2.0, 4.0])))
    placements: dict[str, str | None] = {v.name: v.owner for v in vms}
    down = set(draw(st.lists(st.sampled_from(names[:nn]), min_size=1, max_size=nn - 1)))
    return s, placements, down


def vcpu_cap(s: ClusterSpec, n: Node) -> float:
    """vCPUs a node may hold: its cores times the spec's vcpus_per_core."""
    return n.cores * s.cluster.vcpus_per_core


def replay_checks(
    s: ClusterSpec, placements: dict[str, str | None], plan: FailoverPlan, down: set[str]
) -> None:
    """Replay the plan step by step with independent bookkeeping."""
    cur = {vm: (None if n in down else n) for vm, n in placements.items()}

    def used(n: str) -> tuple[int, int, list[str | None]]:
        on = [v for v in s.vms if cur.get(v.name) == n]
        classes = [v.anti_affinity for v in on]
        return sum(v.memory_mib for v in on), sum(v.vcpus for v in on), classes

    for act in plan.actions:
        if isinstance(act, CannotPlace):
            continue
        target = act.node if isinstance(act, Restart) else act.target
        vm = s.vm(act.vm)
        assert target not in down
        mem, cpu, classes = used(target)
        nd = s.node(target)
        assert mem + vm.memory_mib <= nd.memory_mib and cpu + vm.vcpus <= vcpu_cap(s, nd)
        if vm.anti_affinity is not None and vm.anti_affinity in classes:
            for other in s.nodes:  # every node with room also held that class
                if other.name in down:
                    continue
                m2, c2, cl2 = used(other.name)
                if m2 + vm.memory_mib <= other.memory_mib and c2 + vm.vcpus <= vcpu_cap(s, other):
                    assert vm.anti_affinity in cl2
        cur[act.vm] = target


@settings(max_examples=300, deadline=None)
@given(clusters())
def test_failover_properties(case: tuple[ClusterSpec, dict[str, str | None], set[str]]) -> None:
    s, placements, down = case
    plan = failover_plan(s, placements, down)
    vms = [a.vm for a in plan.actions]
    assert len(vms) == len(set(vms))  # never two actions (restarts) for one VM
    assert set(vms) == {v for v, n in placements.items() if n in down}  # all accounted for
    assert all(a.node not in down for a in plan.actions if isinstance(a, Restart))
    prios = [s.vm(v).priority for v in vms]
    assert prios == sorted(prios, reverse=True)
    # Capacity (memory and vCPUs) on survivors holds after every step, counting VMs that
    # already ran there; anti-affinity is broken only when every node with room had the class.
    for n in s.nodes:
        if n.name not in down:
            on = [v for v in s.vms if placements[v.name] == n.name]
            assume(sum(v.memory_mib for v in on) <= n.memory_mib)
            assume(sum(v.vcpus for v in on) <= vcpu_cap(s, n))
    replay_checks(s, placements, plan, down)


@settings(max_examples=200, deadline=None)
@given(clusters())
def test_drain_properties(case: tuple[ClusterSpec, dict[str, str | None], set[str]]) -> None:
    s, placements, down = case
    src = sorted(down)[0]
    others_down = set(down) - {src}
    plan = drain_plan(s, placements, src, down=others_down)
    moved = [a.vm for a in plan.actions]
    assert sorted(moved) == sorted(v for v, n in placements.items() if n == src)
    for a in plan.actions:
        if isinstance(a, Migrate):
            assert a.source == src and a.target != src and a.target not in others_down


# -- each rule at its edge (these keep scripts/mutation's mutants dead) ---------------------

def test_a_preferred_owner_wins_over_more_free_memory_and_cores_break_ties() -> None:
    s = spec([node("a"), node("b", mem=2048), node("c", mem=8192)],
             [Vm("x", "a", 512, preferred_owners=("b",))])
    assert failover_plan(s, {"x": "a"}, {"a"}).actions == (Restart("x", "b", "a"),)
    s2 = spec([node("a"), node("b", cores=2), node("c", cores=8)], [Vm("x", "a", 512)])
    assert failover_plan(s2, {"x": "a"}, {"a"}).actions == (Restart("x", "c", "a"),)


def test_reserved_memory_is_never_given_and_a_vm_may_use_every_last_vcpu() -> None:
    s = spec([node("a"), node("b", mem=1024)], [Vm("x", "a", 512)])
    reserve = FailoverParams(reserve_memory_mib=600)
    (act,) = failover_plan(s, {"x": "a"}, {"a"}, reserve).actions
    assert isinstance(act, CannotPlace) and "424 MiB" in act.reason
    exact = spec([node("a"), node("b", cores=1)], [Vm("x", "a", 512, vcpus=4)],
                 vcpus_per_core=4.0)
    assert failover_plan(exact, {"x": "a"}, {"a"}).actions == (Restart("x", "b", "a"),)


def test_start_plan_owner_first_then_preferences_by_priority_and_room() -> None:
    s = spec([node("a", mem=1024), node("b", mem=1024), node("c", mem=1024)],
             [Vm("web", "a", 512, preferred_owners=("c", "b")),
              Vm("db", "b", 768, priority=3000),
              Vm("job", "b", 768, priority=1000, preferred_owners=("c",)),
              Vm("big", "a", 2048)])
    plan = start_plan(s, {}, ["web", "job", "db", "big"], down={"a"})
    # By priority (db 3000; big and web the default, by name; job 1000): db takes its
    # owner b; big fits nowhere; web's owner a is down, so its first preference c; job's
    # owner b has 256 MiB left and its preference c 512 MiB: nowhere.
    assert [(type(a).__name__, a.vm, getattr(a, "node", None)) for a in plan.actions] == [
        ("Restart", "db", "b"), ("CannotPlace", "big", None), ("Restart", "web", "c"),
        ("CannotPlace", "job", None)]
    assert plan.actions[0] == Restart("db", "b", "")
    # What already runs counts, and an excluded node takes nothing.
    again = start_plan(s, {"db": "b"}, ["web"], excluded={"c"})
    assert again.actions == (Restart("web", "a", ""),)
    moved = start_plan(s, {}, ["web"], excluded={"a"})
    assert moved.actions == (Restart("web", "c", ""),)  # its first preference
    # Its owner, even where another node has more room (a failover would take that one).
    home = spec([node("a", mem=1024), node("b", mem=8192)], [Vm("x", "a", 256)])
    assert start_plan(home, {}, ["x"]).actions == (Restart("x", "a", ""),)


def test_quorum_at_its_edges() -> None:
    assert not has_quorum(3, 2, True, False)  # 2 of 4 votes: no majority without the witness
    assert not has_quorum(4, 1, True, True)  # the witness is one vote, not two
    with_witness = ClusterSettings("t", witness="w")
    assert not must_stop_vms(2, 1, with_witness, True)  # it holds the witness's vote
    assert must_stop_vms(2, 1, with_witness, False)


def test_why_a_node_stops_its_vms() -> None:
    two = ClusterSettings("t", witness="w")
    assert stop_reason(2, 2, two, True, 0.0, False) is None  # all well
    assert stop_reason(2, 2, two, False, 60.0, False) is None  # the witness gone: a warning
    assert stop_reason(2, 1, two, True, 1.0, False) is None  # a peer lost: the witness's vote
    silent = stop_reason(2, 1, two, True, STORE_GRACE_S + 0.1, False)
    assert silent is not None and "store" in silent  # ... only while it reaches the store
    assert "isolated" in (stop_reason(2, 1, two, False, 0.0, False) or "")
    assert "declared" in (stop_reason(2, 2, two, True, 0.0, True) or "")  # the verdict wins
    three = ClusterSettings("t")
    assert stop_reason(3, 2, three, False, 60.0, False) is None  # no witness: no store rule
    assert stop_reason(3, 1, three, False, 0.0, False) is not None


def test_a_long_heartbeat_window_sets_the_restart_time() -> None:
    slow = ClusterSettings("t", same_subnet_delay_ms=1000, same_subnet_threshold=10)
    # window 10 s + one delay + the stop budget, well past the watchdog's 4.25 s
    assert restart_not_before(100.0, slow) == 100.0 + 10.0 + 1.0 + P.stop_budget_s


def test_flapping_counts_failures_within_the_hour_including_now() -> None:
    assert not quarantined([0, 1000, 3000], now=3600)  # exactly an hour old: out
    assert quarantined([10, 20, 30], now=30)  # one failing right now counts


def test_allowed_nodes_is_strict_affinity_keeps_together_and_breaks_are_named() -> None:
    s = spec(
        [node("a"), node("b"), node("c", mem=1024)],
        [Vm("app", "a", 512, allowed_nodes=("a", "b")),
         Vm("web", "a", 512, affinity="shop"), Vm("cache", "c", 256, affinity="shop"),
         Vm("pinned", "a", 512, allowed_nodes=("a",))],
    )  # fmt: skip
    plan = failover_plan(s, {v.name: v.owner for v in s.vms}, {"a"})
    by = {a.vm: a for a in plan.actions}
    assert isinstance(by["app"], Restart) and by["app"].node == "b"  # never c
    assert isinstance(by["web"], Restart) and by["web"].node == "c"  # with cache
    assert by["web"].broke == ()
    assert isinstance(by["pinned"], CannotPlace) and "allowed_nodes (a)" in by["pinned"].reason
    # No room beside its group: placed elsewhere, and the plan says so.
    full = spec([node("a"), node("b"), node("c", mem=300)], list(s.vms[1:3]))
    (act,) = failover_plan(full, {"web": "a", "cache": "c"}, {"a"}).actions
    assert isinstance(act, Restart) and act.node == "b"
    assert act.broke == ("affinity shop: apart from its group on c (no room there)",)
    assert failover_plan(full, {"web": "a", "cache": "c"}, {"a"}).to_json()[0]["broke"] == [
        "affinity shop: apart from its group on c (no room there)"]


@pytest.mark.parametrize(("table", "key"), [
    ({"allowed_nodes": ["node9"]}, "allowed_nodes"),
    ({"allowed_nodes": []}, "allowed_nodes"),
    ({"allowed_nodes": ["node2"]}, "allowed_nodes"),  # its owner, node1, is not in it
    ({"allowed_nodes": ["node1"], "preferred_owners": ["node2"]}, "preferred_owners"),
])
def test_allowed_nodes_that_cannot_hold_the_vm_are_refused(table: dict[str, object],
                                                            key: str) -> None:
    text = (ROOT / "examples" / "lab.toml").read_text().split("[[vms]]")[0]
    with pytest.raises(SpecError) as err:
        spec_with_vms(text, "t.toml", [{"name": "x", "owner": "node1", "memory_mib": 256,
                                        **table}])
    assert err.value.field == key
