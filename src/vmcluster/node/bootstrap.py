"""``cluster init`` and ``cluster join``: a cluster made from nothing, one host at a time.

``init`` on the first host makes the cluster's CA (or takes the one an
organisation put in ``<config_dir>/ca/``, as kubeadm does), this host's key and
certificate, the heartbeat key, and a one-member etcd; it writes
``vmclusterd.toml``, starts ``vmclusterd`` and puts into etcd the spec, the CA
and the first admin token, then makes a join token.

``join`` on every other host fetches the CA's certificate from a member's API,
checks its hash against ``--ca-hash`` (so a joining host knows whom it joins),
makes its key locally and sends only a certificate request, with the join
token. Any member's API signs it (the CA is in etcd, see below) and adds the
host to etcd as a *learner*: it votes only once promoted, which its own API
part does as soon as etcd says it has caught up (:func:`promote_if_learner`),
so a host that fails half-way through its join never costs the cluster its
quorum. Once ``etcd_voters`` members vote, further hosts join as clients of
the others' members.

What this keeps in etcd (under ``/vmcluster/<cluster>/``)::

    pki/ca                  {"key", "cert", "revoked": [serials]}  the cluster CA
    pki/heartbeat-key       the heartbeat HMAC key (hex)
    join-tokens/<sha256>    {"expires": wall time}  on a lease that ends with it
    members/<node>          {"joined", "serial", "etcd": "voter" | "learner" | "client"}

The CA's key is in etcd so that any member can admit a host while others are
down. etcd serves only clients with a certificate of this CA, and any such
host can already write every key of the cluster, so this gives a host nothing
it did not have; the price is that an etcd backup holds the CA key.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import re
import secrets
import shutil
import ssl
import subprocess
import sys
import time
import tomllib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
from cryptography import x509

from vmcluster.errors import InputError, StoreError, VmclusterError
from vmcluster.heartbeat.auth import new_key_file
from vmcluster.model import ClusterSpec
from vmcluster.model.spec import load_spec, parse_spec
from vmcluster.node.access import API_URL, api_url, credentials_file, error_message
from vmcluster.node.config import (
    DEFAULT_CONFIG,
    PARTS,
    WITNESS_PARTS,
    EtcdMemberConfig,
    NodeConfig,
    load_base_config,
    load_config,
)
from vmcluster.node.daemon import child_env
from vmcluster.pki import (
    CertificateAuthority,
    NodeCredentials,
    ca_hash,
    make_csr,
    new_key,
    token_hash,
    write_file,
)
from vmcluster.policy.networks import node_cluster_networks
from vmcluster.store import tokens
from vmcluster.store.errors import StoreConflict
from vmcluster.store.etcd import Compare, Put
from vmcluster.store.members import MemberSpec, spec_members
from vmcluster.store.state import SCHEMA_VERSION, ClusterState

__all__ = [
    "JOIN_TOKEN_TTL_S",
    "JoinRefused",
    "admit",
    "api_addresses",
    "cluster_name",
    "drop_host_records",
    "init_cluster",
    "join_cluster",
    "join_command",
    "leave",
    "new_join_token",
    "promote_if_learner",
    "revoke_certificate",
    "seed_cluster",
    "store_ca",
]

JOIN_TOKEN_TTL_S = 24 * 3600.0
_TOKEN = re.compile(r"^[a-z0-9]{6}\.[a-z0-9]{16}$")  # kubeadm's shape: ID.SECRET
_HASH = re.compile(r"^sha256:[0-9a-f]{64}$")
Say = Callable[[str], None]


class JoinRefused(VmclusterError):
    """A member refused a join (or a token): ``status`` is the HTTP status the API
    answers with, ``field`` the request field at fault."""

    def __init__(self, status: int, code: str, message: str, field: str | None = None):
        super().__init__(message)
        self.status, self.code, self.field = status, code, field
        self.exit_code = 2


# -- what the spec says of a host -------------------------------------------------------

def cluster_name(spec: ClusterSpec) -> str:
    """The cluster's name in etcd and in host configs: the spec's, made a plain name."""
    return re.sub(r"[^A-Za-z0-9_.-]", "-", spec.cluster.name).strip("-.")[:63] or "cluster"


def api_addresses(spec: ClusterSpec, node: str) -> tuple[str, ...]:
    """Where a host's API answers: its addresses on the cluster networks, those on
    client-facing (role 3) networks first (an operator's workstation reaches those)."""
    nets = sorted(node_cluster_networks(spec, node), key=lambda p: (-int(p.role), p.metric))
    mine = spec.node(node).interfaces
    return tuple(str(mine[p.name]) for p in nets)


def _addresses(spec: ClusterSpec, node: str) -> list[str]:
    """The IP SANs of a host's certificate: every address the spec gives it."""
    return [str(a) for a in spec.host(node).interfaces.values()]


def _member(spec: ClusterSpec, node: str) -> MemberSpec:
    """A host's etcd member URLs: its address on every role >= 1 network, https."""
    marker = NodeCredentials(Path("/"))
    return next(m for m in spec_members(spec, Path("/"), tls=lambda n: marker) if m.name == node)


def _node_in(spec: ClusterSpec, node: str, where: str, witness: bool = False) -> None:
    """``node`` is a host of the spec, and a witness exactly when the spec says so (the
    spec is the one source of truth: ``--witness`` adds only the host it names)."""
    w = spec.cluster.witness
    if witness and node != w:
        raise JoinRefused(422, "invalid", f"{node!r} is not the witness {where} names ("
                          + (f"it names {w!r}" if w else "it names none: [cluster] witness")
                          + "); join it as a node, without --witness", "node")
    if not witness and node == w:
        raise JoinRefused(422, "invalid", f"{node!r} is the witness of {where}: it runs no "
                          "VM; join it with --witness", "node")
    if node not in {n.name for n in spec.hosts}:
        raise JoinRefused(404, "not_found", f"node {node!r} is not in {where} (nodes: "
                          f"{', '.join(n.name for n in spec.nodes)}); pass one of them as "
                          "--node, or add it to the spec", "node")


# -- the cluster's PKI in the store -----------------------------------------------------

def store_ca(state: ClusterState) -> tuple[CertificateAuthority, int]:
    """The cluster CA from the store, and the revision of its key (for a compare)."""
    kv = state.client.get(state.key("pki", "ca"))
    if kv is None:
        raise StoreError(f"the store of {state.cluster} holds no CA (pki/ca); was the "
                         "cluster made by `vmcluster cluster init`?")
    rec = kv.json()
    return (CertificateAuthority(rec["key"].encode(), rec["cert"].encode(),
                                 tuple(int(s) for s in rec.get("revoked", []))),
            kv.mod_revision)


def _ca_record(ca: CertificateAuthority) -> bytes:
    return json.dumps({"key": ca.key_pem.decode(), "cert": ca.cert_pem.decode(),
                       "revoked": list(ca.revoked)}, sort_keys=True).encode()


def revoke_certificate(state: ClusterState, cert: bytes | int, tries: int = 20) -> bytes:
    """Revoke one certificate of the cluster CA (its PEM or its serial): the serial joins
    ``pki/ca`` and the new list goes to ``crl`` in one compare-and-set (every host's API
    part copies it into its ``tls/crl.pem``). Returns the list (PEM)."""
    for _ in range(tries):
        ca, rev = store_ca(state)
        ca = ca.revoke(cert)
        crl = ca.crl_pem()
        got = state.client.txn([Compare.modified(state.key("pki", "ca"), rev)],
                               [Put(state.key("pki", "ca"), _ca_record(ca)),
                                Put(state.key("crl"), crl)])
        if got.succeeded:
            return crl
    raise StoreError("the cluster CA changed under every try; revoke again")


def new_join_token(state: ClusterState, ttl_s: float = JOIN_TOKEN_TTL_S) -> tuple[str, float]:
    """A join token (``abcdef.0123456789abcdef``) valid ``ttl_s``; the store keeps only its
    hash, on a lease that ends with it. Returns the token and when it expires."""
    token = f"{_rand(6)}.{_rand(16)}"
    expires = time.time() + ttl_s
    lease = state.client.lease_grant(max(1, int(ttl_s)))
    state.client.put(state.key("join-tokens", token_hash(token)),
                     json.dumps({"expires": expires}).encode(), lease)
    return token, expires


def join_command(url: str, token: str, digest: str, node: str = "NODE") -> str:
    """What a host runs to join (``cluster init`` and ``cluster token create`` print it)."""
    return f"vmcluster cluster join {url} --token {token} --ca-hash {digest} --node {node}"


def _rand(n: int) -> str:
    alphabet = "abcdefghijklmnopqrstuvwxyz0123456789"
    return "".join(secrets.choice(alphabet) for _ in range(n))


def _check_join_token(state: ClusterState, token: str) -> None:
    kv = state.client.get(state.key("join-tokens", token_hash(token))) if token else None
    if kv is None or float(kv.json().get("expires", 0)) < time.time():
        raise JoinRefused(401, "unauthorized", "the join token is wrong or has expired; "
                          "`vmcluster cluster token create` makes a new one", "token")


def admit(state: ClusterState, token: str, node: str, csr_pem: bytes,
          witness: bool = False) -> dict[str, Any]:
    """A member's side of ``cluster join`` (the API's ``POST /api/v1/join``): check the
    token and the name, sign the host's request, add it to etcd as a learner while fewer
    than ``etcd_voters`` members vote (a witness always: its vote is what it is for).
    Returns what the host needs to start."""
    _check_join_token(state, token)
    text = state.spec_text()
    if text is None:
        raise JoinRefused(503, "unavailable", "the cluster has no spec yet; retry once "
                          "`vmcluster cluster init` has finished")
    spec = parse_spec(text, "<the spec in etcd>")
    _node_in(spec, node, "the cluster's spec", witness)
    ca, _ = store_ca(state)
    try:
        cert = ca.sign(csr_pem, node, _addresses(spec, node))
    except InputError as exc:
        raise JoinRefused(422, "invalid", str(exc), "csr") from exc
    members = state.etcd.member_list()
    voters = [m for m in members if not m.get("isLearner")]
    learners = [m for m in members if m.get("isLearner")]
    mine = _member(spec, node)
    joins_etcd = len(voters) < spec.cluster.etcd_voters
    if witness and not joins_etcd:
        raise JoinRefused(409, "conflict", f"etcd already has {len(voters)} voters "
                          f"(etcd_voters = {spec.cluster.etcd_voters}) and a witness must be "
                          "one: join the witness before the last voting node, or raise "
                          "etcd_voters", "node")
    if joins_etcd and learners:
        who = learners[0].get("name") or "a new member"
        raise JoinRefused(503, "unavailable", f"another host ({who}) is still catching up "
                          "in etcd; retry in a few seconds")
    record = {"joined": time.time(), "serial": x509.load_pem_x509_certificate(cert)
              .serial_number, "etcd": "learner" if joins_etcd else "client"}
    ops = [Put(state.key("members", node), json.dumps(record).encode())]
    if not witness:  # a node the manager sees heard, then "up"; a witness runs nothing
        ops.append(Put(state.key("nodes", node), json.dumps({"state": "joining"}).encode()))
    got = state.client.txn([Compare.absent(state.key("members", node))], ops)
    if not got.succeeded:
        raise JoinRefused(409, "conflict", f"node name {node!r} is already taken by a member "
                          f"of {state.cluster}; pick another --node, or `vmcluster cluster "
                          f"leave {node}` first", "node")
    member: dict[str, Any] | None = None
    if joins_etcd:
        try:
            _add_learner(state, mine.peer_urls)
        except VmclusterError:
            state.client.delete(state.key("members", node))
            raise
        initial = [f"{m['name']}={u}" for m in members if m.get("name")
                   for u in m.get("peerURLs", [])]
        initial += [f"{node}={u}" for u in mine.peer_urls]
        member = {"peer_urls": list(mine.peer_urls), "client_urls": list(mine.client_urls),
                  "initial_cluster": ",".join(initial), "token": state.cluster,
                  "state": "existing"}
    key = state.client.get(state.key("pki", "heartbeat-key"))
    crl = state.client.get(state.key("crl"))
    endpoints = [u for m in voters for u in m.get("clientURLs", [])]
    return {"cluster": state.cluster, "node": node, "cert": cert.decode(),
            "ca": ca.cert_pem.decode(), "crl": (crl.value if crl else ca.crl_pem()).decode(),
            "heartbeat_key": key.value.decode() if key else "", "endpoints": endpoints,
            "member": member, "role": "witness" if witness else "node",
            "api_listen": [] if witness else list(api_addresses(spec, node)),
            "fence_window_s": spec.cluster.fence_window_s}


def leave(state: ClusterState, node: str) -> dict[str, Any]:
    """``cluster leave NODE`` (the API's ``POST /api/v1/nodes/{node}/leave``): the host's
    certificate is revoked, its etcd member removed, its records dropped. Refused while a
    VM is placed on it (drain it first) or when it is not a member."""
    rec = state.client.get(state.key("members", node))
    if rec is None:
        raise JoinRefused(404, "not_found", f"{node} is not a member of {state.cluster}",
                          "node")
    on = sorted(vm for vm, p in state.placements().items() if p.node == node)
    if on:
        raise JoinRefused(409, "conflict", f"{node} still owns {', '.join(on)}; drain it "
                          f"first (`vmcluster node drain {node}`)", "node")
    text = state.spec_text()
    removed = None
    if text is not None:
        spec = parse_spec(text, "<the spec in etcd>")
        if node in {n.name for n in spec.hosts}:
            urls = set(_member(spec, node).peer_urls)
            for m in state.etcd.member_list():
                if urls & set(m.get("peerURLs", [])):
                    state.etcd.member_remove(str(m["ID"]))
                    removed = m.get("name") or node
    serial = drop_host_records(state, node)
    return {"node": node, "revoked_serial": serial, "etcd_member_removed": removed is not None}


def drop_host_records(state: ClusterState, node: str) -> int:
    """A host that left (or was given up): its certificate revoked, its member and daemon
    records deleted, its node record ``left``. Returns the revoked serial (0: none)."""
    rec = state.client.get(state.key("members", node))
    serial = int(rec.json().get("serial", 0)) if rec is not None else 0
    if serial:
        revoke_certificate(state, serial)
    state.client.delete(state.key("members", node))
    state.client.delete(state.key("daemons", node))
    state.client.put(state.key("nodes", node), b'{"state": "left"}')
    return serial


def _add_learner(state: ClusterState, peer_urls: Sequence[str], tries: int = 10) -> None:
    """etcd's member add, again a few times while it answers "member not found": it
    does for a moment after a member was removed (a host that left and joins again)."""
    for attempt in range(tries):
        try:
            state.etcd.member_add(peer_urls, learner=True)
            return
        except StoreError as exc:
            if "member not found" not in str(exc) or attempt == tries - 1:
                raise
        time.sleep(0.3)


def promote_if_learner(cfg: NodeConfig, state: ClusterState) -> bool:
    """Promote this host's etcd member once etcd says it caught up (the API part calls this
    every few seconds). True when it is a voter (now or already), False while it is not."""
    if cfg.member is None:
        return True
    mine = set(cfg.member.peer_urls)
    for m in state.etcd.member_list():
        if not mine & set(m.get("peerURLs", [])):
            continue
        if not m.get("isLearner"):
            return True
        try:
            state.etcd.member_promote(str(m["ID"]))
        except StoreError as exc:
            if "in sync" in str(exc) or "not ready" in str(exc):
                return False
            raise
        with contextlib.suppress(VmclusterError):
            rec = state.client.get(state.key("members", cfg.node))
            if rec is not None:
                state.client.put(state.key("members", cfg.node),
                                 json.dumps({**rec.json(), "etcd": "voter"}).encode())
        return True
    return False


# -- this host's side -------------------------------------------------------------------

def _base(config: Path, node: str) -> NodeConfig:
    base = load_base_config(config)
    if base.node and base.node != node:
        raise InputError(f"{config} is the config of node {base.node!r}, not {node!r}; pass "
                         f"--node {base.node} or another --config")
    if NodeCredentials(base.tls_dir).cert.exists():
        raise InputError(f"{base.tls_dir} already holds this host's certificate: it is a "
                         f"member of cluster {base.cluster or '?'}; `vmcluster cluster leave "
                         f"{node}` it first, or remove {base.config_dir} and "
                         f"{base.state_dir} to start over")
    return base


def _write_config(cfg: NodeConfig) -> NodeConfig:
    cfg.path.parent.mkdir(parents=True, exist_ok=True)
    tmp = cfg.path.with_suffix(".tmp")
    tmp.write_text(cfg.render())
    tmp.replace(cfg.path)
    return load_config(cfg.path)  # what the daemon will read must read back


def start_host_daemon(cfg: NodeConfig, how: str) -> str:
    """Start this host's ``vmclusterd``: ``systemd`` (``systemctl enable --now``; the unit
    reads the default config path), ``detach`` (a process of its own session, logging to
    ``<state_dir>/log/vmclusterd.log``), ``none`` (someone else starts it), ``auto``
    (systemd when it runs this host and the config is at the default path)."""
    if how == "auto":
        how = ("systemd" if Path("/run/systemd/system").is_dir()
               and cfg.path == DEFAULT_CONFIG and shutil.which("systemctl") else "detach")
    if how == "systemd":
        if cfg.path != DEFAULT_CONFIG:
            raise InputError(f"--start systemd needs the config at {DEFAULT_CONFIG} (the "
                             f"unit reads it); this one is {cfg.path}: use --start detach")
        rc = subprocess.run(["systemctl", "enable", "--now", "vmclusterd"],
                            check=False, timeout=60).returncode
        if rc != 0:
            raise VmclusterError("`systemctl enable --now vmclusterd` failed; see "
                                 "`journalctl -u vmclusterd`")
    elif how == "detach":
        log = cfg.log_dir / "vmclusterd.log"
        log.parent.mkdir(parents=True, exist_ok=True)

        with log.open("ab") as out:
            subprocess.Popen([sys.executable, "-m", "vmcluster.node.daemon", "--config",
                              str(cfg.path)], stdin=subprocess.DEVNULL, stdout=out,
                             stderr=out, env=child_env(), start_new_session=True)
    elif how != "none":
        raise InputError(f"--start {how!r}: use auto, systemd, detach or none")
    return how


def _api_ready(url: str, ca_pem: bytes, deadline: float) -> None:
    ctx = ssl.create_default_context(cadata=ca_pem.decode())
    last = ""
    while time.monotonic() < deadline:
        try:
            if httpx.get(url + "/api/v1/health", verify=ctx, timeout=2.0).status_code == 200:
                return
        except httpx.HTTPError as exc:
            last = str(exc) or type(exc).__name__
        time.sleep(0.2)
    raise VmclusterError(f"this host's API at {url} did not answer ({last}); see "
                         "its vmclusterd log")


def _write_credentials(path: Path, urls: Sequence[str], token: str, ca_pem: bytes,
                       cluster: str) -> None:
    """The admin's credentials for every URL of the cluster, merged into ``path``."""
    ca_file = path.parent / f"{cluster}-ca.pem"
    write_file(ca_file, ca_pem, secret=False)
    try:
        known = json.loads(path.read_text())
    except (OSError, ValueError):
        known = {}
    clusters = dict(known.get("clusters", {}))
    for url in urls:
        clusters[url] = {"token": token, "ca": str(ca_file), "cluster": cluster}
    write_file(path, json.dumps({**known, "clusters": clusters}, indent=1).encode())


@dataclass(frozen=True)
class InitResult:
    cluster: str
    node: str
    api_url: str
    ca_hash: str
    join_token: str
    join_expires: float
    credentials: Path
    admin_token: str

    def join_command(self, node: str = "NODE") -> str:
        return join_command(self.api_url, self.join_token, self.ca_hash, node)

    def to_json(self) -> dict[str, Any]:
        out = {k: str(v) if isinstance(v, Path) else v
               for k, v in dataclasses.asdict(self).items() if k != "admin_token"}
        return {**out, "join_command": self.join_command()}


def seed_cluster(state: ClusterState, spec: ClusterSpec, spec_text: bytes,
                 ca: CertificateAuthority, heartbeat_key: bytes, node: str, serial: int) -> str:
    """A new cluster's first records, in one transaction that needs an empty store: the
    schema and spec, the CA, the heartbeat key, ``node`` as its first member (up, the
    others joining), an admin token, and the spec file's VMs as definitions, to run (the
    manager starts each on its owner once that host is up). Returns the token (the store
    keeps its hash)."""
    admin_token = secrets.token_urlsafe(32)
    others = [n.name for n in spec.nodes if n.name != node]
    # Each VM's address as the spec gave it or assigned it, so that VMs defined later
    # never shift the address of one defined now.
    tables = [{**t, "address": str(spec.vm(t["name"]).address)}
              if spec.vm(t["name"]).address is not None else t
              for t in tomllib.loads(spec_text.decode()).get("vms", [])]
    ops = [Put(state.key("schema"), json.dumps({"version": SCHEMA_VERSION}).encode()),
           Put(state.key("spec"), spec_text),
           Put(state.key("pki", "ca"), _ca_record(ca)),
           Put(state.key("crl"), ca.crl_pem()),
           Put(state.key("pki", "heartbeat-key"), heartbeat_key),
           Put(state.key("tokens", token_hash(admin_token)),
               tokens.record("admin", "admin", f"cluster init on {node}")),
           Put(state.key("members", node), json.dumps(
               {"joined": time.time(), "etcd": "voter", "serial": serial}).encode()),
           Put(state.key("nodes", node), b'{"state": "up"}'),
           *(Put(state.key("nodes", n), b'{"state": "joining"}') for n in others),
           *(Put(state.key("vms", t["name"]), json.dumps(
               {"definition": t, "desired": "running", "machine": None, "seq": i}).encode())
             for i, t in enumerate(tables))]
    got = state.client.txn([Compare.absent(state.key("spec"))], ops)
    if not got.succeeded:
        raise StoreConflict(f"the store already holds cluster {state.cluster}")
    return admin_token


def init_cluster(spec_path: Path, node: str, config: Path = DEFAULT_CONFIG, *,
                 name: str | None = None, start: str = "auto",
                 credentials: Path | None = None, token_ttl_s: float = JOIN_TOKEN_TTL_S,
                 timeout_s: float = 60.0, say: Say = print) -> InitResult:
    """Make a cluster of this one host (see the module docstring)."""
    spec = load_spec(spec_path)
    try:
        _node_in(spec, node, str(spec_path))
    except JoinRefused as exc:
        raise InputError(str(exc)) from None
    base = _base(config, node)
    cluster = name or cluster_name(spec)
    deadline = time.monotonic() + timeout_s
    ca_dir = base.config_dir / "ca"
    if (ca_dir / "ca-key.pem").is_file() and (ca_dir / "ca.pem").is_file():
        ca = CertificateAuthority((ca_dir / "ca-key.pem").read_bytes(),
                                  (ca_dir / "ca.pem").read_bytes())
        say(f"using the CA in {ca_dir}")
    else:
        ca = CertificateAuthority.create(cluster)
        write_file(ca_dir / "ca-key.pem", ca.key_pem)
        write_file(ca_dir / "ca.pem", ca.cert_pem, secret=False)
    creds = NodeCredentials(base.tls_dir)
    key = new_key()
    creds.write(ca.cert_pem, ca.sign(make_csr(key, node), node, _addresses(spec, node)), key,
                ca.crl_pem())
    if not base.heartbeat_key.exists():
        new_key_file(base.heartbeat_key)
    mine = _member(spec, node)
    member = EtcdMemberConfig(mine.peer_urls, mine.client_urls,
                              ",".join(f"{node}={u}" for u in mine.peer_urls),
                              f"vmc-{cluster}-{secrets.token_hex(4)}", "new")
    cfg = _write_config(dataclasses.replace(
        base, node=node, cluster=cluster, parts=base.parts or PARTS,
        endpoints=mine.client_urls, member=member, api_listen=api_addresses(spec, node),
        fence_window_s=spec.cluster.fence_window_s))
    say(f"wrote {cfg.path}; this host's certificate in {cfg.tls_dir}")
    how = start_host_daemon(cfg, start)
    say(f"vmclusterd started ({how}); waiting for its etcd member")
    state = cfg.store(timeout_s=2.0, retry_s=max(1.0, deadline - time.monotonic()))
    serial = x509.load_pem_x509_certificate(creds.cert.read_bytes()).serial_number
    try:
        admin_token = seed_cluster(state, spec, Path(spec_path).read_bytes(), ca,
                                   base.heartbeat_key.read_bytes(), node, serial)
    except StoreConflict as exc:
        raise InputError(f"the store at {', '.join(cfg.endpoints)} already holds cluster "
                         f"{cluster}; join it instead (`vmcluster cluster join`)") from exc
    token, expires = new_join_token(state, token_ttl_s)
    url = api_url(cfg.api_listen[0], cfg.api_port)
    _api_ready(url, ca.cert_pem, deadline)
    credentials = credentials or credentials_file()
    urls = [api_url(api_addresses(spec, n.name)[0], cfg.api_port) for n in spec.nodes]
    _write_credentials(credentials, urls, admin_token, ca.cert_pem, cluster)
    return InitResult(cluster, node, url, ca_hash(ca.cert_pem), token, expires, credentials,
                      admin_token)


def fetch_ca(url: str, expected_hash: str, timeout_s: float = 10.0) -> bytes:
    """The CA certificate a member's API offers, checked against ``expected_hash``: the one
    request made before the cluster is trusted (it carries nothing secret)."""
    try:
        reply = httpx.get(url + "/api/v1/join/ca", verify=False, timeout=timeout_s)
    except httpx.HTTPError as exc:
        raise InputError(f"cannot reach {url}: {exc or type(exc).__name__}; check the "
                         "address and that vmclusterd runs there") from exc
    try:
        ca_pem = str(reply.json()["ca"]).encode()
        got = ca_hash(ca_pem)
    except (ValueError, KeyError, TypeError) as exc:
        raise InputError(f"{url} is not a vmcluster API (no CA at /api/v1/join/ca)") from exc
    if got != expected_hash:
        raise InputError(f"the CA at {url} has hash {got}, not the --ca-hash given "
                         f"({expected_hash}); refusing to join: check the address, or "
                         "copy the join command again from `cluster init`")
    return ca_pem


def join_cluster(url: str, token: str, expected_hash: str, node: str,
                 config: Path = DEFAULT_CONFIG, *, start: str = "auto",
                 timeout_s: float = 120.0, say: Say = print,
                 witness: bool = False) -> dict[str, Any]:
    """Join the cluster whose member answers at ``url`` (see the module docstring)."""
    url = url.rstrip("/")
    if not API_URL.match(url):
        raise InputError(f"join URL {url!r} is not https://HOST:PORT (a member's API)")
    if not _TOKEN.match(token):
        raise InputError(f"--token {token!r} is not a join token (like abcdef.0123456789abcdef"
                         "); `vmcluster cluster token create` prints one")
    if not _HASH.match(expected_hash):
        raise InputError(f"--ca-hash {expected_hash!r} is not sha256:<64 hex digits>")
    base = _base(config, node)
    deadline = time.monotonic() + timeout_s
    ca_pem = fetch_ca(url, expected_hash)
    ctx = ssl.create_default_context(cadata=ca_pem.decode())
    key = new_key()
    body = {"node": node, "csr": make_csr(key, node).decode(), "witness": witness}
    while True:
        try:
            reply = httpx.post(url + "/api/v1/join", json=body, verify=ctx, timeout=30.0,
                               headers={"Authorization": f"Bearer {token}"})
        except httpx.HTTPError as exc:
            raise InputError(f"{url}: the join request failed: {exc}") from exc
        data = _json(reply)
        if reply.status_code == 503 and time.monotonic() < deadline:
            say(f"{url}: {error_message(data)}; retrying")
            time.sleep(1.0)
            continue
        if reply.status_code != 200:
            raise InputError(f"{url} refused the join: {error_message(data)}")
        break
    creds = NodeCredentials(base.tls_dir)
    creds.write(data["ca"].encode(), data["cert"].encode(), key, data["crl"].encode())
    write_file(base.heartbeat_key, data["heartbeat_key"].encode())
    m = data.get("member")
    member = (EtcdMemberConfig(tuple(m["peer_urls"]), tuple(m["client_urls"]),
                               m["initial_cluster"], m["token"], m["state"]) if m else None)
    own = list(member.client_urls) if member else []
    role = str(data.get("role", "node"))
    parts = WITNESS_PARTS if role == "witness" else tuple(
        p for p in (base.parts or PARTS) if member or p != "etcd")
    cfg = _write_config(dataclasses.replace(
        base, node=node, cluster=data["cluster"], parts=parts, role=role,
        endpoints=tuple(own + [u for u in data["endpoints"] if u not in own]), member=member,
        api_listen=base.api_listen or tuple(data["api_listen"]),
        fence_window_s=float(data["fence_window_s"])))
    say(f"admitted as {node}; wrote {cfg.path}")
    how = start_host_daemon(cfg, start)
    etcd_role = "client"
    if member is not None:
        say(f"vmclusterd started ({how}); waiting for its etcd member to catch up")
        state = cfg.store(timeout_s=2.0, retry_s=5.0)
        while not _is_voter(cfg, state):
            if time.monotonic() > deadline:
                raise VmclusterError(f"{node}'s etcd member was not promoted within "
                                     f"{timeout_s:.0f} s; see its vmclusterd log (it "
                                     "goes on trying)")
            time.sleep(0.5)
        etcd_role = "voter"
    if role == "witness":  # no API: it votes and is heard, nothing more
        return {"cluster": cfg.cluster, "node": node, "etcd": etcd_role, "role": role,
                "api_url": None, "daemon": how}
    api = api_url(cfg.api_listen[0], cfg.api_port)
    _api_ready(api, ca_pem, deadline)
    return {"cluster": cfg.cluster, "node": node, "etcd": etcd_role, "role": role,
            "api_url": api, "daemon": how}


def _is_voter(cfg: NodeConfig, state: ClusterState) -> bool:
    assert cfg.member is not None
    mine = set(cfg.member.peer_urls)
    try:
        return any(mine & set(m.get("peerURLs", [])) and not m.get("isLearner")
                   for m in state.etcd.member_list())
    except VmclusterError:
        return False


def _json(reply: httpx.Response) -> dict[str, Any]:
    try:
        data = reply.json()
    except ValueError:
        return {"error": {"message": reply.text[:200]}}
    return data if isinstance(data, dict) else {"error": {"message": str(data)[:200]}}
