"""Each node's access to a volume (direct / redirected / none) and the coordinator election."""

from __future__ import annotations

from pathlib import Path

from hypothesis import given
from hypothesis import strategies as st

from vmcluster.csv.paths import access_modes, elect_coordinator
from vmcluster.model.spec import load_spec
from vmcluster.policy.networks import Health, cluster_network

SPEC = load_spec(Path(__file__).resolve().parents[2] / "examples" / "lab.toml")
NODES = ("node1", "node2", "node3")
ALL = frozenset(NODES)


def test_all_paths_up_is_direct_everywhere() -> None:
    modes = access_modes(SPEC, Health(), ALL, ALL, "node1", "Storage")
    assert {a.mode for a in modes.values()} == {"direct"}


def test_lost_path_redirects_through_the_coordinator_over_the_csv_network() -> None:
    modes = access_modes(SPEC, Health(), ALL, ALL - {"node1"}, "node3", "Storage")
    a = modes["node1"]
    assert (a.mode, a.via, a.network) == ("redirected", "node3", "Heartbeat")
    assert a.describe() == "redirected via node3 over Heartbeat"


def test_heartbeat_down_moves_redirected_io_to_the_next_network() -> None:
    health = Health.parse(SPEC, ["Heartbeat@node1"])
    a = access_modes(SPEC, health, ALL, ALL - {"node1"}, "node2", "Storage")["node1"]
    assert (a.via, a.network) == ("node2", "Migration")


def test_no_access_when_nobody_has_a_path_or_node_down() -> None:
    modes = access_modes(SPEC, Health(), ALL - {"node3"}, frozenset({"node3"}), None, "Storage")
    assert modes["node3"].mode == "none" and "down" in modes["node3"].reason
    assert modes["node1"].mode == "none" and "no other node" in modes["node1"].reason


def test_election_is_the_lowest_named_able_node() -> None:
    assert elect_coordinator(NODES, ALL, ALL) == "node1"
    assert elect_coordinator(NODES, ALL - {"node1"}, ALL) == "node2"
    assert elect_coordinator(NODES, ALL, frozenset({"node3"})) == "node3"
    assert elect_coordinator(NODES, ALL, frozenset()) is None


@given(st.frozensets(st.sampled_from(NODES)), st.frozensets(st.sampled_from(NODES)),
       st.frozensets(st.tuples(st.sampled_from(["Heartbeat", "Migration", "Public"]),
                               st.sampled_from(NODES))))
def test_modes_follow_the_rules(up: frozenset[str], path: frozenset[str],
                                down: frozenset[tuple[str, str]]) -> None:
    health = Health(down)
    coord = elect_coordinator(NODES, up, path)
    for node, a in access_modes(SPEC, health, up, path, coord, "Storage").items():
        if node not in up:
            assert a.mode == "none"
        elif node in path:
            assert a.mode == "direct"
        elif a.mode == "redirected":
            assert a.via in up & path and a.via != node
            assert a.network == cluster_network(SPEC, health, node, a.via)
        else:
            assert all(cluster_network(SPEC, health, node, o) is None for o in up & path - {node})
