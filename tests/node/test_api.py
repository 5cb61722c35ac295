"""The API app against a real one-member etcd: tokens by hash, status from the store."""

from __future__ import annotations

import json
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from vmcluster.node.api import ApiContext, create_app
from vmcluster.node.config import NodeConfig
from vmcluster.pki import token_hash
from vmcluster.store import EtcdClient, embedded
from vmcluster.store.election import Election
from vmcluster.store.state import ClusterState

pytestmark = pytest.mark.skipif(shutil.which("etcd") is None, reason="etcd-server not installed")
SPEC = (Path(__file__).resolve().parents[2] / "examples" / "lab.toml").read_text()


@pytest.fixture
def api() -> Iterator[tuple[TestClient, ClusterState]]:
    base = Path(tempfile.mkdtemp(prefix="vmc-api-"))
    cluster = embedded(base / "etcd", host="127.0.0.44", timeout=60)
    try:
        state = ClusterState(EtcdClient(cluster.endpoints()), "t")
        cfg = NodeConfig(path=base / "vmclusterd.toml", node="node1", cluster="t",
                         run_dir=base / "run", endpoints=tuple(cluster.endpoints()),
                         api_listen=("198.18.1.11",))
        with TestClient(create_app(ApiContext(cfg, state))) as client:
            yield client, state
    finally:
        cluster.close()
        shutil.rmtree(base, ignore_errors=True)


def test_health_needs_no_token_everything_else_an_admin_one(
    api: tuple[TestClient, ClusterState],
) -> None:
    client, state = api
    assert client.get("/api/v1/health").json()["node"] == "node1"
    assert client.get("/api/v1/cluster/status").status_code == 401
    bad = client.get("/api/v1/cluster/status", headers={"Authorization": "Bearer nope"})
    assert bad.status_code == 403
    state.client.put(state.key("tokens", token_hash("viewer-token")),
                     json.dumps({"role": "viewer"}).encode())
    viewer = client.get("/api/v1/cluster/status",
                        headers={"Authorization": "Bearer viewer-token"})
    assert viewer.status_code == 403
    # The store holds the token's hash only: the token itself is nowhere in it.
    kvs, _ = state.client.get_prefix(state.key(""))
    assert all(b"viewer-token" not in kv.value and "viewer-token" not in kv.key for kv in kvs)


def test_status_is_what_the_store_says(api: tuple[TestClient, ClusterState]) -> None:
    client, state = api
    state.client.put(state.key("tokens", token_hash("admin-token")),
                     json.dumps({"role": "admin"}).encode())
    state.put_spec(SPEC)
    state.set_node_state("node1", "up")
    state.set_node_state("node2", "down")
    state.client.put(state.key("daemons", "node1"), json.dumps(
        {"api_url": "https://198.18.1.11:8443", "qemu_version": "10.0.2", "at": 0}).encode())
    held = Election(state.client, "t", "node1", ttl=5).campaign(10)
    got = client.get("/api/v1/cluster/status",
                     headers={"Authorization": "Bearer admin-token"}).json()
    nodes = {n["name"]: n for n in got["nodes"]}
    assert list(nodes) == ["node1", "node2", "node3"]
    assert nodes["node1"]["state"] == "up" and nodes["node2"]["state"] == "down"
    assert nodes["node3"]["state"] == "unknown" and nodes["node3"]["api_url"] is None
    assert nodes["node1"]["qemu_version"] == "10.0.2"
    assert got["manager"] == {"node": "node1", "token": held.token}
    assert got["etcd"]["leader"] == "solo"
    assert got["etcd"]["members"][0]["client_urls"]
    doc = client.get("/api/v1/openapi.json").json()
    assert "/api/v1/cluster/status" in doc["paths"]


def test_writes_are_intents_the_manager_carries_out(api: tuple[TestClient, ClusterState]) -> None:
    client, state = api
    state.client.put(state.key("tokens", token_hash("admin-token")),
                     json.dumps({"role": "admin"}).encode())
    state.put_spec(SPEC)
    admin = {"Authorization": "Bearer admin-token"}
    got = client.post("/api/v1/nodes/node3/drain", headers=admin)
    assert got.status_code == 202 and got.json()["state"] == "pending"
    assert got.headers["location"] == f"/api/v1/intents/{got.json()['id']}"
    assert got.json()["kind"] == "drain" and got.json()["args"] == {"node": "node3"}
    seen = client.get(got.headers["location"], headers=admin).json()
    assert seen["id"] == got.json()["id"] and seen["state"] == "pending"
    cancelled = client.post(got.headers["location"] + "/cancel", headers=admin).json()
    assert cancelled["state"] == "cancelled"
    made = client.post("/api/v1/vms", json={"name": "web", "owner": "node1", "memory_mib": 257},
                       headers=admin)
    assert made.status_code == 201, made.json()
    mig = client.post("/api/v1/vms/web/migrate", json={"to": "node2"}, headers=admin)
    assert mig.status_code == 202 and mig.json()["args"] == {"vm": "web", "to": "node2"}
    # Refusals: one error object each, naming the field; nothing recorded.
    for path, body, code, field in [
        ("/api/v1/nodes/node9/drain", None, 404, "node"),
        ("/api/v1/vms/novm/migrate", {"to": "node2"}, 404, "vm"),
        ("/api/v1/vms/web/migrate", {"to": "node9"}, 422, "to"),
        ("/api/v1/vms/web/migrate", {}, 422, "to"),
    ]:
        bad = client.post(path, json=body, headers=admin)
        assert bad.status_code == code and bad.json()["error"]["field"] == field, bad.json()
    assert client.get("/api/v1/intents/nope", headers=admin).status_code == 404
    assert client.post("/api/v1/nodes/node3/drain").status_code == 401
    kvs, _ = state.client.get_prefix(state.key("intents", ""))
    assert len(kvs) == 2


def test_vms_are_defined_started_stopped_and_deleted_through_the_store(
    api: tuple[TestClient, ClusterState],
) -> None:
    client, state = api
    state.client.put(state.key("tokens", token_hash("admin-token")),
                     json.dumps({"role": "admin"}).encode())
    state.put_spec(SPEC)
    admin = {"Authorization": "Bearer admin-token"}
    assert client.get("/api/v1/vms", headers=admin).json() == {"vms": []}
    made = client.post("/api/v1/vms", headers=admin, json={
        "name": "app", "owner": "node2", "memory_mib": 257, "vcpus": 1})
    assert made.status_code == 201 and made.headers["location"] == "/api/v1/vms/app"
    body = made.json()
    assert body["desired"] == "stopped" and body["node"] is None and body["state"] == "stopped"
    # Its address was assigned and is now part of its definition: a VM defined later can
    # never shift it.
    assert body["definition"]["address"].startswith("198.18.")
    # Its disk goes on the cluster's shared volume unless it says otherwise.
    assert body["definition"]["volume"] == "CSV1"
    second = client.post("/api/v1/vms", headers=admin, json={
        "name": "api", "owner": "node1", "memory_mib": 257, "start": True, "volume": None})
    assert "volume" not in second.json()["definition"]  # a plain disk: the file storage
    assert second.status_code == 201 and second.json()["intent"]["kind"] == "start"
    assert second.json()["definition"]["address"] != body["definition"]["address"]
    assert [v["name"] for v in client.get("/api/v1/vms", headers=admin).json()["vms"]] == [
        "app", "api"]
    assert state.spec().vm("app").owner == "node2"  # the cluster's spec has it
    # Refusals: a bad definition names its key; a taken name is a conflict; nothing kept.
    for body_, code, field in [
        ({"name": "x", "owner": "node9", "memory_mib": 257}, 422, "owner"),
        ({"name": "x", "owner": "node1", "memory_mib": -1}, 422, "memory_mib"),
        ({"name": "x", "owner": "node1", "memory_mib": 257, "colour": "red"}, 422, "colour"),
        ({"owner": "node1", "memory_mib": 257}, 422, "name"),
        ({"name": "app", "owner": "node1", "memory_mib": 257}, 409, "name"),
    ]:
        bad = client.post("/api/v1/vms", headers=admin, json=body_)
        assert bad.status_code == code, bad.json()
        assert bad.json()["error"]["field"] == field, bad.json()
    assert len(client.get("/api/v1/vms", headers=admin).json()["vms"]) == 2
    # start and stop are intents, and record the desired state at once.
    started = client.post("/api/v1/vms/app/start", json={"on": "node3"}, headers=admin)
    assert started.status_code == 202 and started.json()["args"] == {"vm": "app", "on": "node3"}
    assert client.get("/api/v1/vms/app", headers=admin).json()["desired"] == "running"
    assert client.post("/api/v1/vms/app/start", json={"on": "node9"},
                       headers=admin).json()["error"]["field"] == "on"
    stopped = client.post("/api/v1/vms/app/stop", headers=admin)
    assert stopped.status_code == 202 and stopped.json()["kind"] == "stop"
    assert client.get("/api/v1/vms/app", headers=admin).json()["desired"] == "stopped"
    assert client.post("/api/v1/vms/nope/stop", headers=admin).status_code == 404
    # Deleting: refused while it has an owner; once it has none, an intent the manager
    # carries out (its disk, then its definition: the manager's tests show that part).
    state.place("app", "node2", expect=0, token=None)
    assert client.delete("/api/v1/vms/app", headers=admin).status_code == 409
    p = state.placement("app")
    state.place("app", None, expect=p.revision, token=None, state="stopped")
    deleting = client.delete("/api/v1/vms/app?keep_disk=true", headers=admin)
    assert deleting.status_code == 202 and deleting.json()["kind"] == "delete"
    assert deleting.json()["args"] == {"vm": "app", "keep_disk": True}
    assert client.delete("/api/v1/vms/nope", headers=admin).status_code == 404


def test_the_event_log_is_read_and_long_polled_through_the_api(
    api: tuple[TestClient, ClusterState],
) -> None:
    client, state = api
    state.client.put(state.key("tokens", token_hash("admin-token")),
                     json.dumps({"role": "admin"}).encode())
    auth = {"Authorization": "Bearer admin-token"}
    assert client.get("/api/v1/events").status_code == 401
    for i in range(3):
        state.append_event({"kind": "note", "at": 1.0 + i, "text": f"e{i}"})
    got = client.get("/api/v1/events?after=1", headers=auth).json()
    assert [e["seq"] for e in got["events"]] == [2, 3] and got["last"] == 3
    assert got["events"][0]["text"] == "e1"
    # Nothing new: a long poll waits (bounded) and says where to ask from next.
    empty = client.get("/api/v1/events?after=3&wait_s=0.5", headers=auth).json()
    assert empty == {"events": [], "last": 3}
    bad = client.get("/api/v1/events?wait_s=99", headers=auth)
    assert bad.status_code == 422 and bad.json()["error"]["field"] == "wait_s"
