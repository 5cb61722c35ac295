"""Route detection from heartbeat receipts, and what it says about nodes and networks."""

from __future__ import annotations

from pathlib import Path

from hypothesis import given
from hypothesis import strategies as st

from vmcluster.heartbeat.detector import (
    HeartbeatParams,
    RouteTracker,
    health_from_views,
    heartbeat_plan,
    isolated,
    network_states,
    peers_down,
    view_from_json,
    view_to_json,
)
from vmcluster.model import ClusterSettings
from vmcluster.model.spec import load_spec
from vmcluster.policy.networks import cluster_network

ROOT = Path(__file__).resolve().parents[2]
LAB = load_spec(ROOT / "examples/lab.toml")
P = HeartbeatParams(0.25, 8)


def test_params_from_spec_settings() -> None:
    assert HeartbeatParams.from_settings(ClusterSettings("x")).window_s == 2.0
    assert HeartbeatParams.from_settings(LAB.cluster) == P


def test_plan_covers_every_peer_on_every_cluster_network_only() -> None:
    binds, targets = heartbeat_plan(LAB, "node1", 3343)
    assert {b.network for b in binds} == {"Public", "Heartbeat", "Migration"}  # not Storage
    assert {(t.peer, t.network) for t in targets} == {
        (p, n) for p in ("node2", "node3") for n in ("Public", "Heartbeat", "Migration")
    }
    assert all(t.address == LAB.node(t.peer).interfaces[t.network] for t in targets)


def test_route_goes_down_after_threshold_misses_and_back_on_one_heartbeat() -> None:
    tr = RouteTracker([("b", "net")], P, started=0.0)
    t = 0.0
    while t < 5.0:
        tr.receive(("b", "net"), t)
        assert tr.evaluate(t) == []
        t += 0.25
    last = t - 0.25
    assert tr.evaluate(last + 2.0) == []  # exactly 8 missed: still up
    ch = tr.evaluate(last + 2.01)
    assert [(c.peer, c.network, c.up) for c in ch] == [("b", "net", False)]
    assert tr.evaluate(last + 3.0) == []  # reported once
    tr.receive(("b", "net"), last + 3.1)
    assert [c.up for c in tr.evaluate(last + 3.1)] == [True]


def test_a_peer_that_never_answers_goes_down_one_window_after_start() -> None:
    tr = RouteTracker([("b", "n1"), ("b", "n2")], P, started=10.0)
    assert tr.evaluate(11.9) == []
    assert len(tr.evaluate(12.1)) == 2
    assert peers_down(tr.states()) == {"b"}
    assert isolated(tr.states())


def test_unknown_route_is_ignored() -> None:
    tr = RouteTracker([("b", "n1")], P, started=0.0)
    assert not tr.receive(("mallory", "n1"), 1.0)


@given(st.lists(st.floats(0, 60, allow_nan=False), max_size=40), st.floats(0, 70))
def test_route_is_up_iff_heard_within_the_window(times: list[float], now: float) -> None:
    tr = RouteTracker([("b", "n")], P, started=0.0)
    heard = [t for t in times if t <= now]
    for t in heard:
        tr.receive(("b", "n"), t)
    tr.evaluate(now)
    assert tr.states()[("b", "n")] == (now - max([0.0, *heard]) <= P.window_s)


def test_peer_down_only_when_no_route_is_left() -> None:
    states = {("b", "Heartbeat"): False, ("b", "Public"): True, ("c", "Heartbeat"): False}
    assert peers_down(states) == {"c"}
    assert not isolated(states)


def test_one_failed_interface_partitions_its_network_and_moves_heartbeats() -> None:
    # node3's Heartbeat interface is down: nobody hears it there, it hears nobody there.
    views = {}
    for obs in ("node1", "node2", "node3"):
        _, targets = heartbeat_plan(LAB, obs, 3343)
        views[obs] = {
            (t.peer, t.network): not (t.network == "Heartbeat" and "node3" in (obs, t.peer))
            for t in targets
        }
    health = health_from_views(LAB, views)
    assert health.down == {("Heartbeat", "node3")}
    assert network_states(LAB, health) == {
        "Public": "up", "Heartbeat": "partitioned", "Migration": "up",
    }  # fmt: skip
    assert cluster_network(LAB, health, "node1", "node3") == "Migration"
    assert cluster_network(LAB, health, "node1", "node2") == "Heartbeat"
    assert view_from_json(view_to_json(views["node1"])) == views["node1"]


def test_an_isolated_observer_sees_every_network_down() -> None:
    _, targets = heartbeat_plan(LAB, "node1", 3343)
    health = health_from_views(LAB, {"node1": {(t.peer, t.network): False for t in targets}})
    assert set(network_states(LAB, health).values()) == {"down"}
