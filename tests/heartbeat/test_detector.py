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


def test_a_route_is_two_way_a_peer_that_stops_listing_us_takes_it_down_at_once() -> None:
    """``a`` still hears ``b`` (a one-way cut: a's heartbeats no longer reach b). Once b's
    heartbeats leave ``a`` out, a's route to b is down at the next evaluation, not a
    window later: a fences itself one heartbeat after b declared it dead."""
    tr = RouteTracker([("b", "n")], P, started=0.0, me="a")
    t = 0.0
    while t < 3.0:  # b hears a, and says so
        tr.receive(("b", "n"), t, hears={"a", "c"}, epoch=1)
        assert tr.evaluate(t) == []
        t += 0.25
    tr.receive(("b", "n"), t, hears={"c"}, epoch=1)  # b lost a
    assert [(c.peer, c.up) for c in tr.evaluate(t)] == [("b", False)]
    tr.receive(("b", "n"), t + 0.25, hears={"c"}, epoch=1)
    assert tr.evaluate(t + 0.25) == []  # still heard, still down
    assert isolated(tr.states())
    tr.receive(("b", "n"), t + 0.5, hears={"a", "c"}, epoch=1)  # mended
    assert [c.up for c in tr.evaluate(t + 0.5)] == [True]


def test_a_peer_that_never_lists_us_goes_down_one_window_after_we_first_heard_it() -> None:
    """Heard but never heard back (cut one way from the start, or a peer that restarted and
    cannot hear us): up during a window of grace, down after it."""
    tr = RouteTracker([("b", "n")], P, started=0.0, me="a")
    for i in range(9):
        tr.receive(("b", "n"), 0.25 * i, hears=set(), epoch=7)
        assert tr.evaluate(0.25 * i) == []  # grace: b has not heard us yet
    tr.receive(("b", "n"), 2.25, hears=set(), epoch=7)
    assert [c.up for c in tr.evaluate(2.25)] == [False]


def test_a_restarted_peer_gets_a_window_to_hear_us_and_an_older_peer_is_one_way() -> None:
    tr = RouteTracker([("b", "n"), ("c", "n")], P, started=0.0, me="a")
    tr.receive(("b", "n"), 1.0, hears={"a"}, epoch=1)
    tr.receive(("c", "n"), 1.0)  # an older sender says nothing about whom it hears
    tr.receive(("b", "n"), 1.5, hears=set(), epoch=2)  # b restarted: it has not heard us yet
    tr.receive(("c", "n"), 3.4)
    assert tr.evaluate(3.4) == []
    tr.receive(("b", "n"), 3.6, hears=set(), epoch=2)
    tr.receive(("c", "n"), 3.6)
    assert [(c.peer, c.up) for c in tr.evaluate(3.6)] == [("b", False)]


def test_heartbeats_list_the_peers_heard_within_the_window_by_network() -> None:
    tr = RouteTracker([("b", "n1"), ("c", "n1"), ("b", "n2")], P, started=0.0, me="a")
    tr.receive(("b", "n1"), 5.0)
    tr.receive(("c", "n1"), 2.0)
    assert tr.heard(5.5) == {"n1": ["b"], "n2": []}


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
