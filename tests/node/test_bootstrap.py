"""``cluster join`` as a member's API answers it, against a real one-member etcd.

The joining host's side (its key, its request, the CA hash it pins) is real too;
what is not started here is a second etcd member (the lab's ``cluster init``/
``join`` test does that with three hosts).
"""

from __future__ import annotations

import re
import shutil
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from fastapi.testclient import TestClient

from vmcluster.errors import InputError
from vmcluster.model.spec import parse_spec
from vmcluster.node.api import ApiContext, create_app
from vmcluster.node.bootstrap import (
    join_cluster,
    new_join_token,
    promote_if_learner,
    seed_cluster,
)
from vmcluster.node.config import EtcdMemberConfig, NodeConfig, load_base_config
from vmcluster.pki import CertificateAuthority, NodeCredentials, make_csr, new_key
from vmcluster.store import EtcdClient, embedded
from vmcluster.store.state import ClusterState

pytestmark = pytest.mark.skipif(shutil.which("etcd") is None, reason="etcd-server not installed")
ROOT = Path(__file__).resolve().parents[2]
SPEC = (ROOT / "examples" / "lab.toml").read_text()


@dataclass
class Member:
    client: TestClient
    state: ClusterState
    admin: str
    ca: CertificateAuthority
    base: Path


def _member(spec_text: str, host: str) -> Iterator[Member]:
    base = Path(tempfile.mkdtemp(prefix="vmc-join-"))
    cluster = embedded(base / "etcd", host=host, timeout=60)
    try:
        state = ClusterState(EtcdClient(cluster.endpoints()), "t")
        ca = CertificateAuthority.create("t")
        cfg = NodeConfig(path=base / "vmclusterd.toml", node="node1", cluster="t",
                         config_dir=base / "etc", run_dir=base / "run",
                         endpoints=tuple(cluster.endpoints()), api_listen=("198.18.1.11",))
        NodeCredentials(cfg.tls_dir).issue(ca, "node1", ["198.18.1.11"])
        admin = seed_cluster(state, parse_spec(spec_text), spec_text.encode(), ca,
                             b"00" * 32 + b"\n", "node1", serial=1)
        with TestClient(create_app(ApiContext(cfg, state))) as client:
            yield Member(client, state, admin, ca, base)
    finally:
        cluster.close()
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture
def member() -> Iterator[Member]:
    yield from _member(SPEC, "127.0.0.45")


def _join(m: Member, token: str, node: str, witness: bool = False
          ) -> tuple[int, dict[str, Any]]:
    body = {"node": node, "csr": make_csr(new_key(), node).decode(), "witness": witness}
    reply = m.client.post("/api/v1/join", json=body,
                          headers={"Authorization": f"Bearer {token}"})
    return reply.status_code, reply.json()


def test_a_join_needs_a_live_token_a_spec_node_and_a_free_name(member: Member) -> None:
    token, _ = new_join_token(member.state, 3600)
    code, got = _join(member, "abcdef.0123456789abcdef", "node2")
    assert code == 401 and got["error"]["field"] == "token"
    code, got = _join(member, token, "node9")
    assert code == 404 and "not in the cluster's spec" in got["error"]["message"]
    code, got = _join(member, token, "node1")  # the first host's name is taken
    assert code == 409 and got["error"]["code"] == "conflict"
    expired, _ = new_join_token(member.state, 0.001)
    time.sleep(0.05)
    assert _join(member, expired, "node2")[0] == 401
    # Nothing of the refused joins is in the store.
    assert set(member.state.node_states()) == {"node1", "node2", "node3"}
    assert member.state.client.get(member.state.key("members", "node2")) is None


def test_an_admitted_host_is_a_learner_with_its_own_addresses(member: Member) -> None:
    token, _ = new_join_token(member.state, 3600)
    code, got = _join(member, token, "node2")
    assert code == 200, got
    cert = x509.load_pem_x509_certificate(got["cert"].encode())
    sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert "198.18.1.12" in {str(ip) for ip in sans.get_values_for_type(x509.IPAddress)}
    assert got["member"]["state"] == "existing"
    assert "solo=http://127.0.0.45:" in got["member"]["initial_cluster"]  # the member here
    assert "node2=https://198.18.1.12:2380" in got["member"]["initial_cluster"]
    learners = [m for m in member.state.client.member_list() if m.get("isLearner")]
    assert len(learners) == 1 and "https://198.18.1.12:2380" in learners[0]["peerURLs"]
    assert member.state.node_states()["node2"]["state"] == "joining"
    # A second host waits while the first catches up (etcd takes one learner at a time).
    code, got = _join(member, token, "node3")
    assert code == 503 and "catching up" in got["error"]["message"]
    # The learner cannot reach the leader here: it is not promoted, and says so.
    learner = NodeConfig(path=member.base / "n2.toml", node="node2", cluster="t",
                         member=EtcdMemberConfig(("https://198.18.1.12:2380",),
                                                 ("https://198.18.1.12:2379",), "", "t"))
    assert promote_if_learner(learner, member.state) is False


def test_beyond_the_voter_cap_hosts_join_as_clients() -> None:
    text = re.sub(r"(\[cluster\]\n)", r"\1etcd_voters = 1\n", SPEC, count=1)
    for m in _member(text, "127.0.0.46"):
        token, _ = new_join_token(m.state, 3600)
        code, got = _join(m, token, "node2")
        assert code == 200 and got["member"] is None
        assert len(m.state.client.member_list()) == 1
        assert got["endpoints"] == m.state.client.member_list()[0]["clientURLs"]


def test_only_the_specs_witness_joins_as_witness_and_it_always_votes() -> None:
    text = (ROOT / "examples" / "lab-witness.toml").read_text()
    for m in _member(text, "127.0.0.47"):
        token, _ = new_join_token(m.state, 3600)
        code, got = _join(m, token, "node2", witness=True)
        assert code == 422 and "not the witness" in got["error"]["message"]
        code, got = _join(m, token, "witness")
        assert code == 422 and "join it with --witness" in got["error"]["message"]
        assert m.state.client.get(m.state.key("members", "witness")) is None
        code, got = _join(m, token, "witness", witness=True)
        assert code == 200 and got["role"] == "witness" and got["member"] is not None
        assert got["api_listen"] == []  # no API on a witness
        assert "witness" not in m.state.node_states()  # nothing for the manager to bring up


def test_leave_revokes_and_refuses_a_host_that_owns_vms(member: Member) -> None:
    admin = {"Authorization": f"Bearer {member.admin}"}
    token, _ = new_join_token(member.state, 3600)
    code, got = _join(member, token, "node2")
    assert code == 200
    serial = x509.load_pem_x509_certificate(got["cert"].encode()).serial_number
    member.state.place("web", "node2", expect=0, token=None)
    refused = member.client.post("/api/v1/nodes/node2/leave", headers=admin)
    assert refused.status_code == 409 and "drain it first" in refused.json()["error"]["message"]
    member.state.client.delete(member.state.key("placements", "web"))
    left = member.client.post("/api/v1/nodes/node2/leave", headers=admin)
    assert left.status_code == 200 and left.json()["etcd_member_removed"] is True
    crl = member.state.client.get(member.state.key("crl"))
    assert crl is not None
    assert serial in {r.serial_number for r in x509.load_pem_x509_crl(crl.value)}
    assert len(member.state.client.member_list()) == 1
    assert member.state.node_states()["node2"]["state"] == "left"
    # The name is free again.
    code, got = _join(member, token, "node2")
    assert code == 200, got
    assert member.client.post("/api/v1/nodes/node7/leave", headers=admin).status_code == 404


def test_token_create_is_for_admins_and_prints_a_join_command(member: Member) -> None:
    assert member.client.post("/api/v1/cluster/join-tokens").status_code == 401
    got = member.client.post("/api/v1/cluster/join-tokens", json={"ttl_s": 60},
                             headers={"Authorization": f"Bearer {member.admin}"}).json()
    assert re.match(r"^[a-z0-9]{6}\.[a-z0-9]{16}$", got["token"])
    assert got["join_command"].startswith("vmcluster cluster join https://198.18.1.11:8443 ")
    assert f"--ca-hash {got['ca_hash']}" in got["join_command"]
    assert _join(member, got["token"], "node2")[0] == 200
    bad = member.client.post("/api/v1/cluster/join-tokens", json={"ttl_s": -1},
                             headers={"Authorization": f"Bearer {member.admin}"})
    assert bad.status_code == 422 and bad.json()["error"]["field"] == "ttl_s"


def test_join_checks_its_arguments_before_it_touches_anything(tmp_path: Path) -> None:
    cfg = tmp_path / "c.toml"
    good = "abcdef.0123456789abcdef"
    digest = "sha256:" + "0" * 64
    for url, token, ca_hash, what in [
        ("http://198.18.1.11:8443", good, digest, "is not https://HOST:PORT"),
        ("https://198.18.1.11:8443", "nope", digest, "is not a join token"),
        ("https://198.18.1.11:8443", good, "md5:00", "is not sha256:"),
    ]:
        with pytest.raises(InputError, match=what):
            join_cluster(url, token, ca_hash, "node2", cfg, start="none")
    assert not cfg.exists()
    # A host that is already a member refuses to join again.
    etc = tmp_path / "etc"
    cfg.write_text(f'[node]\nname = "node2"\n[paths]\nconfig_dir = "{etc}"\n')
    NodeCredentials(load_base_config(cfg).tls_dir).issue(CertificateAuthority.create("x"),
                                                         "node2", [])
    with pytest.raises(InputError, match="already holds this host's certificate"):
        join_cluster("https://198.18.1.11:8443", good, digest, "node2", cfg, start="none")
    with pytest.raises(InputError, match="is the config of node 'node2'"):
        join_cluster("https://198.18.1.11:8443", good, digest, "node3", cfg, start="none")
