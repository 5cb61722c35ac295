"""Forgetting hosts in a real etcd: the spec, definitions and placements afterwards."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

from vmcluster.model.spec import parse_spec
from vmcluster.node.recover import forget
from vmcluster.store import ClusterState, EtcdClient, EtcdCluster, vms

from .conftest import needs_etcd

pytestmark = [pytest.mark.lab, needs_etcd]
ROOT = Path(__file__).resolve().parents[2]


def test_forgotten_hosts_release_their_vms_and_lose_their_records(etcd1: EtcdCluster) -> None:
    state = ClusterState(EtcdClient(etcd1.endpoints()), "c")
    text = (ROOT / "examples" / "lab.toml").read_text()
    state.put_spec(text)
    for table in tomllib.loads(text)["vms"]:
        vms.define(state, table, desired="running")
    for vm, node in (("web", "node1"), ("db", "node2"), ("batch", "node3")):
        state.place(vm, node, expect=0, token=None)
    state.client.put(state.key("members", "node2"), b'{"serial": 0}')
    said: list[str] = []
    done = forget(state, ["node2", "node3"], said.append)
    assert sorted(done["released"]) == ["batch", "db"]
    assert sorted(done["redefined"]) == ["batch", "db", "web"]
    places = state.placements()
    assert places["web"].node == "node1"
    assert places["db"].node is None and places["batch"].node is None
    spec = state.spec()
    assert [n.name for n in spec.nodes] == ["node1"]
    assert all(v.owner == "node1" for v in spec.vms)
    assert {r.desired for r in vms.records(state).values()} == {"running"}
    assert state.client.get(state.key("members", "node2")) is None
    assert state.node_record("node2").get("state") == "left"
    assert parse_spec(state.spec_text() or "").cluster.name == spec.cluster.name
    events, _ = state.events()
    assert events[-1][1]["kind"] == "hosts_forgotten"
    assert any("db: released from node2" in m for m in said)
