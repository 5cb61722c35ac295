"""The seed's network rules: examples from the blog, and properties over random clusters."""

from __future__ import annotations

import dataclasses
from ipaddress import IPv4Address, IPv4Network
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vmcluster.errors import UsageError
from vmcluster.model import ClusterSettings, ClusterSpec, Network, Node, Role, Vm
from vmcluster.model.spec import load_spec
from vmcluster.policy.networks import (
    Health,
    cluster_network,
    live_migration_order,
    network_props,
    network_state,
    node_cluster_networks,
    routes,
)

ROOT = Path(__file__).resolve().parents[2]


def test_seed_cluster_matches_the_blog() -> None:
    spec = load_spec(ROOT / "examples/seed.toml")
    cn1, cn2 = network_props(spec.networks)
    assert (cn1.role, cn1.metric, cn1.auto_metric) == (3, 10001, False)
    assert (cn2.role, cn2.metric, cn2.auto_metric) == (1, 1000, True)
    r = routes(spec)
    assert r.cluster == r.csv == "Cluster Network 2"
    assert r.live_migration["vm1"][0] == "Cluster Network 1"
    assert r.client == ("Cluster Network 1",)


def test_seed_private_network_fails_and_comes_back() -> None:
    spec = load_spec(ROOT / "examples/seed.toml")
    down = routes(spec, Health.parse(spec, ["Cluster Network 2"]))
    assert down.csv == "Cluster Network 1"
    assert down.live_migration["vm1"] == ["Cluster Network 1"]  # now shares with CSV
    assert routes(spec).csv == "Cluster Network 2"  # back once it returns


def _net(name: str, i: int, public: bool, **kw: object) -> Network:
    gw = IPv4Address(f"198.18.{i}.1") if public else None
    return Network(name, IPv4Network(f"198.18.{i}.0/24"), gw, **kw)  # type: ignore[arg-type]


def test_hand_set_metric_still_counts_its_place() -> None:
    nets = [_net("A", 1, False), _net("B", 2, False, metric=5), _net("C", 3, False)]
    a, b, c = network_props(nets)
    assert (a.metric, b.metric, c.metric) == (1000, 5, 1200)
    assert (a.auto_metric, b.auto_metric, c.auto_metric) == (True, False, True)


def test_public_and_private_are_numbered_separately() -> None:
    nets = [_net("P1", 1, True), _net("Q1", 2, False), _net("P2", 3, True), _net("Q2", 4, False)]
    assert [p.metric for p in network_props(nets)] == [10000, 1000, 10100, 1100]


def test_explicit_role_wins() -> None:
    nets = [_net("P", 1, True, role=Role.NONE), _net("Q", 2, False, role=Role.CLUSTER_AND_CLIENT)]
    assert [int(p.role) for p in network_props(nets)] == [0, 3]


def test_lab_defaults_and_vm_order() -> None:
    spec = load_spec(ROOT / "examples/lab.toml")
    h = Health()
    assert cluster_network(spec, h, "node1", "node2") == "Heartbeat"
    assert live_migration_order(spec, h, spec.vm("web"), "node1", "node2") == [
        "Migration",
        "Public",
        "Heartbeat",
    ]
    # batch lists its own order; the role-0 Storage network is never chosen by default
    assert live_migration_order(spec, h, spec.vm("batch"), "node1", "node3") == [
        "Migration",
        "Public",
    ]
    cut = Health.parse(spec, ["Migration@node3"])
    assert live_migration_order(spec, cut, spec.vm("batch"), "node1", "node3") == ["Public"]
    assert live_migration_order(spec, cut, spec.vm("batch"), "node1", "node2")[0] == "Migration"


def test_partitioned_network_is_used_only_by_pairs_that_have_it() -> None:
    spec = load_spec(ROOT / "examples/lab.toml")
    r = routes(spec, Health.parse(spec, ["Heartbeat@node1"]))
    states = {p.name: s for p, s in r.networks}
    assert states["Heartbeat"] == "partitioned"
    pairs = {p.nodes: p.cluster for p in r.pairs}
    assert pairs[("node1", "node2")] == "Migration"
    assert pairs[("node2", "node3")] == "Heartbeat"


# ---- properties over random clusters ------------------------------------------------


@st.composite
def clusters(draw: st.DrawFn) -> tuple[ClusterSpec, Health]:
    n_nets = draw(st.integers(1, 5))
    nets = []
    for i in range(n_nets):
        public = draw(st.booleans())
        role = draw(st.sampled_from([None, Role.NONE, Role.CLUSTER, Role.CLUSTER_AND_CLIENT]))
        metric = draw(st.one_of(st.none(), st.integers(1, 20000)))
        nets.append(_net(f"net{i}", i + 1, public, role=role, metric=metric))
    n_nodes = draw(st.integers(2, 4))
    nodes = []
    for j in range(n_nodes):
        ifaces = {
            n.name: IPv4Address(f"198.18.{i + 1}.{j + 10}")
            for i, n in enumerate(nets)
            if draw(st.integers(0, 9)) > 0
        }
        nodes.append(Node(f"n{j}", 2, 1024, ifaces))
    lm = draw(st.one_of(st.none(), st.lists(st.sampled_from([n.name for n in nets]), unique=True)))
    vms = (Vm("vm", "n0", 256, live_migration_networks=None if lm is None else tuple(lm)),)
    spec = ClusterSpec(ClusterSettings("p"), tuple(nets), tuple(nodes), vms)
    down = frozenset(
        (net, node.name)
        for node in nodes
        for net in node.interfaces
        if draw(st.integers(0, 3)) == 0
    )
    return spec, Health(down)


@settings(max_examples=200, deadline=None)
@given(clusters())
def test_csv_never_on_role_0_and_never_on_a_down_link(case: tuple[ClusterSpec, Health]) -> None:
    spec, health = case
    props = {p.name: p for p in network_props(spec.networks)}
    r = routes(spec, health)
    if r.csv is not None:
        assert props[r.csv].role >= 1
    for pair in r.pairs:
        a, b = pair.nodes
        if pair.cluster is not None:
            assert props[pair.cluster].role >= 1
            assert health.up(spec, pair.cluster, a) and health.up(spec, pair.cluster, b)
            lower = [
                p
                for p in props.values()
                if p.role >= 1
                and p.key < props[pair.cluster].key
                and health.up(spec, p.name, a)
                and health.up(spec, p.name, b)
            ]
            assert not lower, "a lower-metric available network was skipped"
        for net in pair.live_migration.values():
            if net is not None:
                assert health.up(spec, net, a) and health.up(spec, net, b)


@settings(max_examples=200, deadline=None)
@given(clusters())
def test_default_live_migration_avoids_the_csv_network_when_it_can(
    case: tuple[ClusterSpec, Health],
) -> None:
    spec, health = case
    vm = Vm("d", "n0", 256)
    csv = cluster_network(spec, health, "n0", "n1")
    order = live_migration_order(spec, health, vm, "n0", "n1")
    if csv is None:
        assert order == []
    else:
        assert order[-1] == csv
        assert sorted(order) == sorted(
            p.name
            for p in network_props(spec.networks)
            if p.role >= 1 and health.up(spec, p.name, "n0") and health.up(spec, p.name, "n1")
        )


@settings(max_examples=200, deadline=None)
@given(clusters(), st.integers(1, 20000))
def test_adding_a_network_never_raises_the_csv_metric(
    case: tuple[ClusterSpec, Health], metric: int
) -> None:
    spec, health = case
    props = {p.name: p for p in network_props(spec.networks)}
    before = cluster_network(spec, health, "n0", "n1")
    extra = _net("extra", 200, False, metric=metric)
    nodes = tuple(
        Node(
            n.name,
            n.cores,
            n.memory_mib,
            {**n.interfaces, "extra": IPv4Address(f"198.18.200.{i + 10}")},
        )
        for i, n in enumerate(spec.nodes)
    )
    bigger = ClusterSpec(spec.cluster, (*spec.networks, extra), nodes, spec.vms)
    after = cluster_network(bigger, health, "n0", "n1")
    assert after is not None
    new_props = {p.name: p for p in network_props(bigger.networks)}
    if before is not None:
        assert new_props[after].metric <= props[before].metric


@settings(max_examples=200, deadline=None)
@given(clusters(), st.data())
def test_failing_a_network_never_routes_over_it(
    case: tuple[ClusterSpec, Health], data: st.DataObject
) -> None:
    spec, health = case
    victim = data.draw(st.sampled_from([n.name for n in spec.networks]))
    failed = Health(health.down | Health.parse(spec, [victim]).down)
    r = routes(spec, failed)
    assert r.csv != victim and r.cluster != victim
    assert victim not in r.client
    assert all(victim not in order for order in r.live_migration.values())
    for pair in r.pairs:
        assert pair.cluster != victim
        assert victim not in pair.live_migration.values()


def test_a_nodes_cluster_networks_lowest_metric_first_without_role_0() -> None:
    spec = load_spec(ROOT / "examples/lab.toml")  # Public 10000, Heartbeat 1000,
    props = node_cluster_networks(spec, "node1")   # Migration 1100, Storage role 0
    assert [p.name for p in props] == ["Heartbeat", "Migration", "Public"]


def test_equal_metrics_go_to_the_network_declared_first() -> None:
    """Two networks with the same hand-set metric: the one declared first carries cluster
    traffic, whichever way they are listed."""
    lab = load_spec(ROOT / "examples/lab.toml")
    for first, second in (("Heartbeat", "Migration"), ("Migration", "Heartbeat")):
        by_name = {n.name: n for n in lab.networks}
        nets = tuple(
            [n for n in lab.networks if n.name not in (first, second)]
            + [dataclasses.replace(by_name[first], metric=500),
               dataclasses.replace(by_name[second], metric=500)])
        spec = dataclasses.replace(lab, networks=nets)
        assert cluster_network(spec, Health(), "node1", "node2") == first
        assert routes(spec).cluster == first


def test_a_network_with_one_interface_up_is_down_not_partitioned() -> None:
    """Partitioned means two nodes still talk over it; with one interface up nobody does."""
    lab = load_spec(ROOT / "examples/lab.toml")
    assert network_state(lab, Health.parse(lab, ["Migration@node1"]), "Migration") == \
        "partitioned"
    one_left = Health.parse(lab, ["Migration@node1", "Migration@node2"])
    assert network_state(lab, one_left, "Migration") == "down"
    assert network_state(lab, Health(), "Migration") == "up"


# -- each rule at its edge (these keep scripts/mutation's mutants dead) ---------------------

def test_routes_with_a_partitioned_network_in_full() -> None:
    """node1 lost Heartbeat: fully up networks rank before it cluster-wide (Migration
    carries heartbeats and CSV), the default live-migration order is that ranking with
    the CSV network last, and each pair routes by what both of its nodes have."""
    spec = load_spec(ROOT / "examples/lab.toml")
    got = routes(spec, Health.parse(spec, ["Heartbeat@node1"])).to_json()
    assert got == {
        "networks": [
            {"name": "Public", "role": 3, "metric": 10000, "auto_metric": True, "state": "up"},
            {"name": "Heartbeat", "role": 1, "metric": 1000, "auto_metric": True,
             "state": "partitioned"},
            {"name": "Migration", "role": 1, "metric": 1100, "auto_metric": True, "state": "up"},
            {"name": "Storage", "role": 0, "metric": 1200, "auto_metric": True, "state": "up"},
        ],
        "cluster": "Migration", "csv": "Migration", "client": ["Public"],
        "live_migration": {"web": ["Public", "Heartbeat", "Migration"],
                           "db": ["Public", "Heartbeat", "Migration"],
                           "batch": ["Migration", "Public"]},
        "pairs": [
            {"nodes": ["node1", "node2"], "cluster": "Migration",
             "live_migration": {"web": "Public", "db": "Public", "batch": "Migration"}},
            {"nodes": ["node1", "node3"], "cluster": "Migration",
             "live_migration": {"web": "Public", "db": "Public", "batch": "Migration"}},
            {"nodes": ["node2", "node3"], "cluster": "Heartbeat",
             "live_migration": {"web": "Migration", "db": "Migration", "batch": "Migration"}},
        ],
    }


def test_a_vms_own_list_may_name_a_role_0_network() -> None:
    """The cluster never picks a role-0 network by itself, but an administrator who lists
    one for a VM's migrations gets it."""
    lab = load_spec(ROOT / "examples/lab.toml")
    vm = dataclasses.replace(lab.vm("batch"), live_migration_networks=("Storage", "Migration"))
    assert live_migration_order(lab, Health(), vm, "node1", "node3") == ["Storage", "Migration"]


def test_networks_keep_their_declaration_order() -> None:
    nets = [_net("A", 1, False), _net("B", 2, True), _net("C", 3, False)]
    assert [p.order for p in network_props(nets)] == [0, 1, 2]


def test_a_down_interface_on_a_network_the_node_lacks_is_refused_by_name() -> None:
    lab = load_spec(ROOT / "examples/lab.toml")
    bare = dataclasses.replace(lab, nodes=tuple(
        dataclasses.replace(n, interfaces={k: v for k, v in n.interfaces.items()
                                           if (n.name, k) != ("node3", "Migration")})
        for n in lab.nodes))
    with pytest.raises(UsageError, match="node 'node3' has no interface on 'Migration'"):
        Health.parse(bare, ["Migration@node3"])
