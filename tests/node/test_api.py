"""The API app against a real one-member etcd: tokens by hash, status from the store."""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from tests.helpers import api_app
from vmcluster.control.plans import ClusterPlan
from vmcluster.node import load
from vmcluster.pki import token_hash
from vmcluster.store.election import Election
from vmcluster.store.state import ClusterState

pytestmark = pytest.mark.skipif(shutil.which("etcd") is None, reason="etcd-server not installed")
SPEC = (Path(__file__).resolve().parents[2] / "examples" / "lab.toml").read_text()


@pytest.fixture
def api() -> Iterator[tuple[TestClient, ClusterState]]:
    # The test writes as a host would, through etcd; each write returns once the
    # API's cache holds it, so what the test wrote is what the API reads next.
    with api_app("127.0.0.44") as got:
        yield got


def test_health_needs_no_token_everything_else_a_known_one(
    api: tuple[TestClient, ClusterState],
) -> None:
    client, state = api
    assert client.get("/api/v1/health").json()["node"] == "node1"
    assert client.get("/api/v1/cluster/status").status_code == 401
    bad = client.get("/api/v1/cluster/status", headers={"Authorization": "Bearer nope"})
    assert bad.status_code == 401 and bad.json()["error"]["code"] == "unauthorized"
    state.client.put(state.key("tokens", token_hash("viewer-token")),
                     json.dumps({"role": "viewer"}).encode())
    viewer = client.get("/api/v1/cluster/status",
                        headers={"Authorization": "Bearer viewer-token"})
    assert viewer.status_code == 403  # a role this version does not know reads nothing
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
    # A downtime budget and what to do if it does not fit travel with the intent.
    kept = client.post("/api/v1/vms/web/migrate", headers=admin, json={
        "to": "node3", "downtime_ms": 50, "on_no_convergence": "force"})
    assert kept.status_code == 202 and kept.json()["args"] == {
        "vm": "web", "to": "node3", "downtime_ms": 50, "on_no_convergence": "force"}
    # Refusals: one error object each, naming the field; nothing recorded.
    for path, body, code, field in [
        ("/api/v1/nodes/node9/drain", None, 404, "node"),
        ("/api/v1/vms/novm/migrate", {"to": "node2"}, 404, "vm"),
        ("/api/v1/vms/web/migrate", {"to": "node9"}, 422, "to"),
        ("/api/v1/vms/web/migrate", {}, 422, "to"),
        ("/api/v1/vms/web/migrate", {"to": "node2", "downtime_ms": 0}, 422, "downtime_ms"),
        ("/api/v1/vms/web/migrate", {"to": "node2", "on_no_convergence": "hope"}, 422,
         "on_no_convergence"),
    ]:
        bad = client.post(path, json=body, headers=admin)
        assert bad.status_code == code and bad.json()["error"]["field"] == field, bad.json()
    assert client.get("/api/v1/intents/nope", headers=admin).status_code == 404
    assert client.post("/api/v1/nodes/node3/drain").status_code == 401
    kvs, _ = state.client.get_prefix(state.key("intents", ""))
    assert len(kvs) == 3


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
    assert client.post("/api/v1/vms/app/pause", headers=admin).status_code == 409  # nowhere
    state.place("app", "node2", expect=0, token=None)
    assert client.delete("/api/v1/vms/app", headers=admin).status_code == 409
    assert client.post("/api/v1/vms/app/pause", headers=admin).json()["kind"] == "pause"
    assert client.post("/api/v1/vms/app/resume", headers=admin).json()["kind"] == "unpause"
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


def _admin(state: ClusterState) -> dict[str, str]:
    state.client.put(state.key("tokens", token_hash("admin-token")),
                     json.dumps({"role": "admin", "name": "admin"}).encode())
    return {"Authorization": "Bearer admin-token"}


def test_tokens_have_roles_and_every_write_is_audited_with_its_token(
    api: tuple[TestClient, ClusterState],
) -> None:
    client, state = api
    admin = _admin(state)
    state.put_spec(SPEC)
    made = client.post("/api/v1/tokens", json={"name": "grafana", "role": "read-only"},
                       headers=admin)
    assert made.status_code == 201, made.json()
    secret = made.json()["token"]
    assert made.json()["role"] == "read-only" and made.json()["by"] == "admin (admin)"
    reader = {"Authorization": f"Bearer {secret}"}
    # A read-only token reads everything but the tokens, and writes nothing (403).
    assert client.get("/api/v1/vms", headers=reader).status_code == 200
    assert client.get("/api/v1/nodes", headers=reader).status_code == 200
    assert client.get("/api/v1/tokens", headers=reader).status_code == 403
    refused = client.post("/api/v1/nodes/node2/drain", headers=reader)
    assert refused.status_code == 403 and "read-only" in refused.json()["error"]["message"]
    assert client.post("/api/v1/tokens", json={"name": "x"}, headers=reader).status_code == 403
    # Bad bodies: one error naming the field; nothing made.
    for body, field in [({"name": "grafana"}, "name"), ({"name": "a b"}, "name"),
                        ({"name": "y", "role": "root"}, "role"),
                        ({"name": "y", "colour": "red"}, "colour")]:
        bad = client.post("/api/v1/tokens", json=body, headers=admin)
        assert bad.status_code in (409, 422) and bad.json()["error"]["field"] == field, bad.json()
    listed = client.get("/api/v1/tokens", headers=admin).json()["tokens"]
    assert [t["name"] for t in listed] == ["admin", "grafana"]
    assert all("token" not in t for t in listed)
    kvs, _ = state.client.get_prefix(state.key(""))
    assert all(secret.encode() not in kv.value and secret not in kv.key for kv in kvs)
    # The audit trail: each write, allowed or refused, with the token's name and role.
    drained = client.post("/api/v1/nodes/node2/drain", headers=admin)
    assert drained.status_code == 202 and drained.json()["by"] == "admin (admin)"
    audit = [e for e in client.get("/api/v1/events", headers=admin).json()["events"]
             if e["kind"] == "api_write"]
    assert [(e["method"], e["path"], e["status"], e["token"], e["role"]) for e in audit] == [
        ("POST", "/api/v1/tokens", 201, "admin", "admin"),
        ("POST", "/api/v1/nodes/node2/drain", 403, "grafana", "read-only"),
        ("POST", "/api/v1/tokens", 403, "grafana", "read-only"),
        ("POST", "/api/v1/tokens", 409, "admin", "admin"),
        ("POST", "/api/v1/tokens", 422, "admin", "admin"),
        ("POST", "/api/v1/tokens", 422, "admin", "admin"),
        ("POST", "/api/v1/tokens", 422, "admin", "admin"),
        ("POST", "/api/v1/nodes/node2/drain", 202, "admin", "admin"),
    ]
    # Revoked: refused at once; a token cannot revoke itself.
    assert client.delete("/api/v1/tokens/admin", headers=admin).status_code == 409
    assert client.delete("/api/v1/tokens/grafana", headers=admin).json()["revoked"] is True
    assert client.get("/api/v1/vms", headers=reader).status_code == 401
    assert client.delete("/api/v1/tokens/grafana", headers=admin).status_code == 404


def test_the_cluster_reads_nodes_networks_volumes_migrations_and_metrics(
    api: tuple[TestClient, ClusterState],
) -> None:
    client, state = api
    admin = _placed(client, state, {"web": ("node1", 2)})
    # node1 hears node2 on every network but Migration; node3 reports nothing (never seen).
    state.client.put(state.key("reports", "node1"), json.dumps({"routes": {
        "node2/Public": True, "node2/Heartbeat": True, "node2/Migration": False}}).encode())
    state.client.put(state.key("reports", "node2"), json.dumps({"routes": {
        "node1/Public": True, "node1/Heartbeat": True, "node1/Migration": False}}).encode())
    nodes = {n["name"]: n for n in client.get("/api/v1/nodes", headers=admin).json()["nodes"]}
    assert nodes["node1"]["vms"] == ["web"] and nodes["node1"]["vcpus_used"] == 2
    assert nodes["node1"]["report"]["fresh"] and not nodes["node3"]["report"]["fresh"]
    assert client.get("/api/v1/nodes/node9", headers=admin).status_code == 404
    assert nodes["node1"]["power_driver"] == "lab"  # examples/lab.toml: the lab's switch
    # what-if plans: a failure's restarts, a new VM's place, or one line why not
    fail = client.get("/api/v1/plans/failure?node=node1", headers=admin).json()
    assert fail["lost"] == ["web"] and [r["vm"] for r in fail["restarts"]] == ["web"]
    assert fail["restart_issued_s"] > 2.0 and fail["left_down"] == []
    bad = client.get("/api/v1/plans/failure?node=node9", headers=admin)
    assert bad.status_code == 422 and "unknown node 'node9'" in bad.json()["error"]["message"]
    add = client.post("/api/v1/plans/add-vm", headers=admin,
                      json={"name": "new", "memory_mib": 128}).json()
    assert add["node"] in nodes and add["survives_one_loss"] is True
    huge = client.post("/api/v1/plans/add-vm", headers=admin,
                       json={"name": "huge", "memory_mib": 9000}).json()
    assert huge["node"] is None and "no node has 9000 MiB" in huge["reason"]
    wrong = client.post("/api/v1/plans/add-vm", headers=admin,
                        json={"name": "x", "memory_mib": "lots"})
    assert wrong.status_code == 422 and "memory_mib must be int" in wrong.json()["error"]["message"]
    nets = client.get("/api/v1/networks", headers=admin).json()
    by = {n["name"]: n for n in nets["networks"]}
    assert by["Heartbeat"]["role"] == 1 and by["Heartbeat"]["auto_metric"]
    assert "heartbeat" in by["Heartbeat"]["carries"] and "csv" in by["Heartbeat"]["carries"]
    assert "client" in by["Public"]["carries"]
    assert by["Migration"]["down"] == ["node1", "node2"]
    assert nets["cluster"] == "Heartbeat"
    vols = client.get("/api/v1/volumes", headers=admin).json()["volumes"]
    assert vols[0]["name"] == "CSV1" and vols[0]["vms"] == ["web"]
    assert {a["node"] for a in vols[0]["nodes"]} <= {"node1", "node2", "node3"}
    vm = client.get("/api/v1/vms/web", headers=admin).json()
    assert vm["node"] == "node1" and vm["state"] == "running" and vm["migration"] is None
    assert vm["load"] is None  # its host has published no load yet
    load.publish(state, "node1", {"web": 0.45}, {"web": "guest"})
    vm = client.get("/api/v1/vms/web", headers=admin).json()
    assert vm["load"]["cores"] == 0.45 and vm["load"]["source"] == "guest"
    listed = {v["name"]: v for v in client.get("/api/v1/vms", headers=admin).json()["vms"]}
    assert listed["web"]["load"]["source"] == "guest"
    # A migration: its intent, then its record in flight with the passes so far.
    mig = client.post("/api/v1/vms/web/migrate", json={"to": "node2"}, headers=admin).json()
    listed = client.get("/api/v1/migrations", headers=admin).json()["migrations"]
    assert listed[0]["id"] == mig["id"] and listed[0]["state"] == "pending"
    assert client.get(f"/api/v1/migrations/{mig['id']}", headers=admin).json()["vm"] == "web"
    pred = client.get("/api/v1/plans/migration?vm=web&to=node2", headers=admin).json()
    assert pred["source"] == "node1" and pred["network"] and pred["total_s"] > 0
    bad = client.get("/api/v1/plans/migration?vm=web&to=node9", headers=admin)
    assert bad.status_code == 422 and "node9" in bad.json()["error"]["message"]
    drain = client.get("/api/v1/plans/drain?node=node1", headers=admin).json()
    plan = drain["plan"]  # the same plan model as a consolidation's
    assert plan["kind"] == "drain" and plan["policy"] == "drain:node1"
    move = plan["migrations"][0]
    assert move["vm"] == "web" and move["source"] == "node1"
    assert move["target"] in ("node2", "node3") and move["network"] and move["predicted_s"] > 0
    after = {n["node"]: n for n in plan["nodes"]}
    assert after["node1"]["state_after"] == "draining" and after["node1"]["vms_after"] == []
    assert "web" in after[move["target"]]["vms_after"] and plan["power_off"] == []
    assert ClusterPlan.from_json(plan).migrations[0].target == move["target"]
    cap = client.get("/api/v1/plans/capacity?depth=1", headers=admin).json()
    assert cap["depth"] == 1 and [x["down"] for x in cap["losses"]] == [
        [n] for n in ("node1", "node2", "node3")]
    lost1 = cap["losses"][0]  # web runs on node1: it restarts elsewhere, by the rules
    assert lost1["ok"] and [x["vm"] for x in lost1["restarted"]] == ["web"]
    assert client.get("/api/v1/plans/capacity?depth=7", headers=admin).status_code == 422
    text = client.get("/metrics", headers=admin).text
    assert 'vmcluster_node_state{node="node1",state="up"} 1.0' in text
    assert 'vmcluster_network_state{network="Migration",state="down"} 1.0' in text
    assert 'vmcluster_vms{desired="stopped",state="running"} 1.0' in text
    assert "vmcluster_migration_downtime_seconds_bucket" in text
    assert client.get("/metrics").status_code == 401
    # Its node declared down: the VM is fenced until the manager may restart it (the
    # isolated side stops it meanwhile), then in recovery until it runs elsewhere.
    state.set_node_state("node1", "down", restart_at=time.time() + 1.5)
    fenced = client.get("/api/v1/vms/web", headers=admin).json()
    assert fenced["state"] == "fence" and fenced["restart_at"] > time.time()
    listed = client.get("/api/v1/vms", headers=admin).json()["vms"]
    assert {v["name"]: v["state"] for v in listed}["web"] == "fence"
    time.sleep(1.6)  # nothing in the store changes: the list still follows the clock
    listed = client.get("/api/v1/vms", headers=admin).json()["vms"]
    assert {v["name"]: v["state"] for v in listed}["web"] == "recovery"
    assert client.get("/api/v1/vms/web", headers=admin).json()["state"] == "recovery"


def test_the_stream_sends_the_log_and_each_intent_as_it_changes(
    api: tuple[TestClient, ClusterState],
) -> None:
    client, state = api
    admin = _admin(state)
    state.put_spec(SPEC)
    state.append_event({"kind": "note", "at": 1.0, "node": "node1"})
    with client.stream("GET", "/api/v1/stream?max_s=2", headers=admin) as resp:
        assert resp.status_code == 200
        assert resp.headers["content-type"].startswith("text/event-stream")
        seen: list[str] = []
        for line in resp.iter_lines():  # bounded: the stream ends after max_s
            seen.append(line)
            if line == "event: event":
                client.post("/api/v1/nodes/node2/drain", headers=admin)
    kinds = [line.split(": ", 1)[1] for line in seen if line.startswith("event: ")]
    assert kinds[0] == "event" and "intent" in kinds and "change" in kinds
    data = [json.loads(line[6:]) for line in seen if line.startswith("data: ")]
    assert any(d.get("kind") == "drain" and d.get("state") == "pending" for d in data)


def test_a_vms_definition_is_changed_by_the_rules(api: tuple[TestClient, ClusterState]) -> None:
    client, state = api
    admin = _admin(state)
    state.put_spec(SPEC)
    assert client.post("/api/v1/vms", headers=admin, json={
        "name": "web", "owner": "node1", "memory_mib": 257}).status_code == 201
    got = client.patch("/api/v1/vms/web", headers=admin, json={
        "memory_mib": 512, "vcpus": 2, "preferred_owners": ["node2", "node3"],
        "max_downtime_ms": 100, "shutdown_timeout_s": 5})
    assert got.status_code == 200, got.json()
    d = got.json()["definition"]
    assert (d["memory_mib"], d["vcpus"], d["preferred_owners"]) == (512, 2, ["node2", "node3"])
    assert state.spec().vm("web").max_downtime_ms == 100
    back = client.patch("/api/v1/vms/web", headers=admin, json={"max_downtime_ms": None})
    assert "max_downtime_ms" not in back.json()["definition"]
    # Running: memory and vCPUs wait for a stop; the rest changes at once.
    state.place("web", "node1", expect=0, token=None)
    busy = client.patch("/api/v1/vms/web", headers=admin, json={"memory_mib": 1024})
    assert busy.status_code == 409 and busy.json()["error"]["field"] == "memory_mib"
    assert client.patch("/api/v1/vms/web", headers=admin,
                        json={"priority": 3000}).status_code == 200
    for body, code, field in [({"address": "198.18.1.99"}, 422, "address"),
                              ({"colour": "red"}, 422, "colour"),
                              ({"preferred_owners": ["node9"]}, 422, "preferred_owners"),
                              ({"shutdown_timeout_s": 9999}, 422, "shutdown_timeout_s")]:
        bad = client.patch("/api/v1/vms/web", headers=admin, json=body)
        assert bad.status_code == code and bad.json()["error"]["field"] == field, bad.json()
    assert client.patch("/api/v1/vms/nope", headers=admin, json={"vcpus": 1}).status_code == 404
    final = state.spec().vm("web")
    assert (final.memory_mib, final.priority, final.shutdown_timeout_s) == (512, 3000, 5.0)


def _placed(client: TestClient, state: ClusterState, vms: dict[str, tuple[str, int]]
            ) -> dict[str, str]:
    """The lab's spec, every node up, ``vms`` (name: (node, vCPUs)) defined through the API
    and placed; the admin's headers."""
    admin = _admin(state)
    state.put_spec(SPEC)
    for n in ("node1", "node2", "node3"):
        state.set_node_state(n, "up")
    for name, (node, vcpus) in vms.items():
        made = client.post("/api/v1/vms", headers=admin, json={
            "name": name, "owner": node, "memory_mib": 257, "vcpus": vcpus})
        assert made.status_code == 201, made.text
        state.place(name, node, expect=0, token=None)
    return admin


def test_a_consolidation_plan_is_made_from_the_loads_the_hosts_measured(
    api: tuple[TestClient, ClusterState],
) -> None:
    client, state = api
    admin = _placed(client, state, {"web": ("node1", 1), "db": ("node2", 1)})
    # Each host's node watch writes what its agent measured, in cores busy.
    load.publish(state, "node1", {"web": 0.04})
    load.publish(state, "node2", {"db": 0.3})
    got = client.get("/api/v1/plans/consolidation", headers=admin)
    assert got.status_code == 200, got.text
    body = got.json()
    assert body["load"]["vms_measured"] == 2 and body["load"]["vms_running"] == 2
    plan = body["plan"]
    nodes = {n["node"]: n for n in plan["nodes"]}
    assert nodes["node1"]["util_before"] == pytest.approx(0.02)  # 0.04 of 2 cores
    assert nodes["node2"]["util_before"] == pytest.approx(0.15)
    # Every node is under-loaded: the nearly idle web joins db, node1 and node3 go off
    # (no etcd member and no manager here for the guard to keep on).
    assert [(m["vm"], m["source"], m["target"]) for m in plan["migrations"]] == [
        ("web", "node1", "node2")]
    assert {p["node"] for p in plan["power_off"]} == {"node1", "node3"}
    assert plan["watts_after"] < plan["watts_before"]
    # Nothing changed; the plan is what POST /api/v1/consolidations takes.
    assert state.placement("web").node == "node1"
    # A VM whose load nobody measured counts as busy: nothing is packed on a guess.
    state.client.delete(load.loads_key(state, "node1"))
    body = client.get("/api/v1/plans/consolidation", headers=admin).json()
    assert body["load"]["vms_measured"] == 1
    nodes = {n["node"]: n for n in body["plan"]["nodes"]}
    assert nodes["node1"]["util_before"] == pytest.approx(0.5)  # web's one vCPU of 2 cores
    bad = client.get("/api/v1/plans/consolidation?policy=nonsense", headers=admin)
    assert bad.status_code in (400, 422) and "nonsense" in bad.json()["error"]["message"]


def test_a_body_key_that_is_not_plain_text_is_quoted_in_the_one_line_error(
        api: tuple[TestClient, ClusterState]) -> None:
    client, state = api
    state.client.put(state.key("tokens", token_hash("admin-token")),
                     json.dumps({"role": "admin"}).encode())
    state.put_spec(SPEC)
    admin = {"Authorization": "Bearer admin-token"}
    got = client.post("/api/v1/vms", json={"name": "x", "\n": 1}, headers=admin)
    assert got.status_code == 422
    message = got.json()["error"]["message"]
    assert "\n" not in message and "'\\n'" in message, message
