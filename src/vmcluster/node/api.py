"""The cluster API: HTTPS under ``/api/v1`` on every host (FastAPI on uvicorn).

``python -m vmcluster.node.api --config vmclusterd.toml`` is the ``api`` part of
:mod:`vmcluster.node.daemon`. It listens on the host's addresses in ``[api]
listen`` (its cluster and client networks) with the host's certificate from the
cluster CA; a client certificate is not required, but one from another CA is
refused in the handshake. Every request but ``/api/v1/health`` carries a bearer
token; the store keeps only each token's SHA-256 (``tokens/<hash>`` with its
role), so a token read from a host's disk or from etcd cannot be replayed.

Any host answers for the whole cluster: what it says comes from etcd (the spec,
node states, the daemons' own records, etcd's members, the manager's lease).
Each API part also publishes its host's record (``daemons/<node>``: API URL,
vmcluster and QEMU versions, parts) every ``PUBLISH_S``, and writes the CA's
revocation list from the store (``crl``) into its host's ``tls/crl.pem``.

The API issue extends this skeleton (VMs, migrations, the dashboard); the
OpenAPI document is at ``/api/v1/openapi.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import socket
import ssl
import sys
import threading
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

import uvicorn
from fastapi import Depends, FastAPI, HTTPException, Query, Request, WebSocket, WebSocketDisconnect
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, RedirectResponse, Response, StreamingResponse
from fastapi.staticfiles import StaticFiles
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import BaseModel, ConfigDict, Field
from starlette.exceptions import HTTPException as StarletteHTTPException

import vmcluster
from vmcluster.control.consolidate import Observation, drain_plan, make_plan
from vmcluster.control.consolidate_apply import store_guard
from vmcluster.control.events import ApiWrite
from vmcluster.control.failure import plan_add_vm, plan_failure
from vmcluster.control.plans import ClusterPlan
from vmcluster.errors import InputError, PolicyError, SpecError, UsageError, VmclusterError
from vmcluster.model import ClusterSpec
from vmcluster.model.spec import VM_KEYS, parse_spec
from vmcluster.node import load, metrics, views
from vmcluster.node.access import api_url
from vmcluster.node.bootstrap import (
    JOIN_TOKEN_TTL_S,
    JoinRefused,
    admit,
    join_command,
    leave,
    new_join_token,
    promote_if_learner,
)
from vmcluster.node.cache import CachedKV, StoreCache
from vmcluster.node.config import NodeConfig, load_config
from vmcluster.pki import NodeCredentials, ca_hash
from vmcluster.policy.capacity import capacity
from vmcluster.policy.prediction import predict
from vmcluster.store import intents, tokens, vms
from vmcluster.store.election import current_leader
from vmcluster.store.errors import StoreConflict
from vmcluster.store.etcd import EtcdClient
from vmcluster.store.state import ClusterState
from vmcluster.substrate.host.client import (
    AgentClient,
    AgentDown,
    AgentError,
    LocalAgent,
    addresses_from,
    speak_as,
)
from vmcluster.substrate.host.layout import LabLayout, shared_layout
from vmcluster.substrate.qemu.diskimage import image_info
from vmcluster.substrate.qemu.facts import QemuFacts
from vmcluster.substrate.qemu.substrate import QEMU_COSTS, measure_profile

__all__ = ["PUBLISH_S", "ApiContext", "Caller", "create_app", "main"]

PUBLISH_S = 5.0
CRL_S = 1.0  # a revoked certificate is refused everywhere within about this


@dataclass(frozen=True)
class Caller:
    """Who made a request: the token's name and role."""

    name: str
    role: str

    @property
    def label(self) -> str:
        return f"{self.name} ({self.role})"


@dataclass
class ApiContext:
    """``state`` reads and writes etcd itself (joins, members, the status's etcd view);
    ``view`` is the same cluster read through the API's watch-fed cache (every other read,
    and the writes whose result a client reads back)."""

    cfg: NodeConfig
    state: ClusterState
    cache: StoreCache | None = None
    layout: LabLayout | None = None  # where the hosts' agents are (None: no agent calls)
    _spec_memo: tuple[tuple[int, int, int], ClusterSpec] | None = field(default=None,
                                                                         repr=False)

    @property
    def client(self) -> EtcdClient:
        return self.state.etcd

    @property
    def view(self) -> ClusterState:
        if self.cache is None:
            return self.state
        return ClusterState(CachedKV(self.cache), self.state.cluster)

    def age(self, key: str) -> float | None:
        return None if self.cache is None else self.cache.age_s(key)

    def start(self) -> None:
        if self.cache is None and isinstance(self.state.client, EtcdClient):
            self.cache = StoreCache(self.state.client, self.state.root).start()

    def stop(self) -> None:
        if self.cache is not None:
            self.cache.close()

    def spec(self, view: ClusterState) -> ClusterSpec:
        """The cluster's spec with its VMs, parsed once per change of the spec or a VM."""
        text = view.client.get(view.key("spec"))
        if text is None:
            raise HTTPException(503, "the cluster has no spec yet")
        defs, _ = view.client.get_prefix(view.key("vms", ""))
        key = (text.mod_revision, max((kv.mod_revision for kv in defs), default=0), len(defs))
        if self._spec_memo is None or self._spec_memo[0] != key:
            self._spec_memo = (key, view.spec())
        return self._spec_memo[1]

    def daemon_record(self) -> dict[str, Any]:
        return {"node": self.cfg.node, "api_url": api_url(self.cfg.api_listen[0],
                                                          self.cfg.api_port)
                if self.cfg.api_listen else None,
                "version": vmcluster.__version__, "qemu_version": _local_qemu(self.cfg),
                "parts": list(self.cfg.parts), "at": time.time()}

    def publish(self) -> None:
        self.client.put(self.state.key("daemons", self.cfg.node),
                        json.dumps(self.daemon_record(), sort_keys=True).encode())

    def sync_crl(self) -> bool:
        """The cluster CA's revocation list travels through the store (``crl``); write it
        into this host's ``tls/crl.pem`` and QEMU's copy (atomically) when it changed; the
        agent checks its callers against it, QEMU each migration's peer. True when it
        was written."""
        kv = self.client.get(self.state.key("crl"))
        if kv is None:
            return False
        return NodeCredentials(self.cfg.tls_dir).write_crl(kv.value)

    def caller(self, token: str) -> Caller | None:
        """The token's name and role; None when the cluster does not know it. The cache
        answers a known token; an unknown one is looked up in etcd itself (a token made a
        moment ago on another host)."""
        rec = tokens.lookup(self.view, token)
        if rec is None and self.cache is not None:
            rec = tokens.lookup(self.state, token)
        return None if rec is None else Caller(rec.name, rec.role)

    def status(self) -> dict[str, Any]:
        """What ``vmcluster cluster status --json`` prints."""
        spec_text = self.state.spec_text()
        spec = parse_spec(spec_text, "<the spec in etcd>") if spec_text else None
        states = self.state.node_states()
        daemons = {kv.key.rsplit("/", 1)[-1]: kv.json()
                   for kv in self.client.get_prefix(self.state.key("daemons", ""))[0]}
        names = [n.name for n in spec.nodes] if spec else sorted(set(states) | set(daemons))
        now = time.time()
        nodes = []
        for name in names:
            d = daemons.get(name, {})
            nodes.append({
                "name": name, "state": states.get(name, {}).get("state", "unknown"),
                "api_url": d.get("api_url"), "qemu_version": d.get("qemu_version"),
                "version": d.get("version"), "parts": d.get("parts", []),
                "daemon_seen_s_ago": round(now - float(d["at"]), 1) if "at" in d else None,
            })
        members = self.client.member_list()
        leader_id = None
        for url in self.client.endpoints:
            with contextlib.suppress(VmclusterError, OSError):
                leader_id = self.client.status(url).get("leader")
                break
        etcd = {"leader": next((m.get("name") for m in members if m.get("ID") == leader_id),
                               None),
                "members": [{"name": m.get("name", ""), "client_urls": m.get("clientURLs", []),
                             "learner": bool(m.get("isLearner", False))} for m in members]}
        held = current_leader(self.client, self.state.cluster)
        return {"cluster": self.state.cluster, "nodes": nodes, "etcd": etcd,
                "manager": {"node": held.name if held else None,
                            "token": held.token if held else None},
                "witness": None if spec is None else views.witness(self.view, spec, self.age)}


def _local_agent(cfg: NodeConfig) -> LocalAgent:
    """This host's own agent, over its unix socket."""
    return LocalAgent(cfg.node, cfg.agent_socket)


def _local_qemu(cfg: NodeConfig) -> str | None:
    """This host's QEMU version, from its own agent (its unix socket)."""
    try:
        version = _local_agent(cfg).call("ping", timeout_s=5).get("qemu_version")
    except VmclusterError:
        return None
    return None if version is None else str(version)


class JoinRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    node: str = Field(min_length=1, max_length=63, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
    csr: str = Field(min_length=1, max_length=16384, description="PEM certificate request")
    witness: bool = Field(False, description="join as the spec's witness (no VM, a vote)")


class MigrateRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    to: str = Field(min_length=1, max_length=63, description="the target node")
    mode: Literal["live", "quick"] = Field("live", description="live (pre-copy) or quick "
                                           "(pause, save to the shared path, restore)")
    downtime_ms: float | None = Field(None, gt=0, le=60000, description="the downtime "
                                      "budget (default: the VM's max_downtime_ms)")
    on_no_convergence: Literal["throttle", "abort", "force"] | None = Field(
        None, description="if it does not fit the budget: throttle the guest, then give up "
        "(default); give up; or force it through with a longer pause")


class PlanRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    plan: dict[str, Any] = Field(description="a consolidation plan's JSON")


class StartRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    on: str | None = Field(None, min_length=1, max_length=63,
                           description="the node to start on (default: its owner, or where "
                           "the placement rules say)")


class StopRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    force: bool = Field(False, description="power off at once, without asking the guest")
    timeout_s: float | None = Field(None, ge=0, le=600, description="seconds the guest has to "
                                    "shut down (default: the VM's shutdown_timeout_s)")


class TokenRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    ttl_s: float = Field(JOIN_TOKEN_TTL_S, gt=0, le=30 * 24 * 3600.0)


class ApiTokenRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = Field(min_length=1, max_length=63, pattern=tokens.NAME.pattern)
    role: Literal["admin", "read-only"] = Field("read-only", description="admin: everything; "
                                                "read-only: every read but the tokens")


_CODES = {400: "invalid", 401: "unauthorized", 403: "forbidden", 404: "not_found",
          409: "conflict", 422: "invalid", 503: "unavailable"}
WRITES = frozenset({"POST", "PUT", "PATCH", "DELETE"})
# What `vm set` may not change, and why; what it changes only while the VM is stopped.
FIXED_KEYS = {"name": "define a new VM", "volume": "its disk lives there",
              "address": "clients know it by it", "disk_mib": "its disk is that size"}
STOPPED_KEYS = frozenset({"memory_mib", "vcpus", "machine", "boot"})
IMPORT_S = 3600.0  # the longest an image's conversion onto its volume may take
MAX_UPLOAD = 1 << 40  # 1 TiB: an upload larger than this is refused as it arrives
STREAM_MAX_S = 300.0  # an event stream ends by itself after this; the client reconnects
CONSOLE_WS_S = 3600.0  # a console websocket ends by itself after this
DASHBOARD = Path(__file__).resolve().parent / "dashboard"


def _problem(status: int, message: str, code: str | None = None,
             field: str | None = None) -> JSONResponse:
    """Every error: ``{"error": {"code", "message", "field"}}`` with its HTTP status."""
    return JSONResponse({"error": {"code": code or _CODES.get(status, "error"),
                                   "message": message, "field": field}}, status_code=status)


def _not_found(what: str, name: str, field: str) -> JoinRefused:
    return JoinRefused(404, "not_found", f"no {what} {name!r} in the cluster", field)


def _bearer(request: Request) -> str:
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise HTTPException(401, "no bearer token; pass Authorization: Bearer TOKEN "
                            "(`vmcluster` reads it from ~/.config/vmcluster/)")
    return token.strip()


def _sse(kind: str, data: Any, ident: int | None = None) -> str:
    head = f"id: {ident}\n" if ident is not None else ""
    return f"{head}event: {kind}\ndata: {json.dumps(data, sort_keys=True)}\n\n"


def create_app(ctx: ApiContext) -> FastAPI:
    @contextlib.asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        await asyncio.to_thread(ctx.start)
        try:
            yield
        finally:
            await asyncio.to_thread(ctx.stop)

    app = FastAPI(title="vmcluster", version=vmcluster.__version__, lifespan=lifespan,
                  openapi_url="/api/v1/openapi.json", docs_url="/api/v1/docs", redoc_url=None)

    async def reader(request: Request) -> Caller:
        """Any token the cluster knows (401 otherwise)."""
        token = _bearer(request)
        try:
            who = await asyncio.to_thread(ctx.caller, token)
        except VmclusterError as exc:
            raise HTTPException(503, f"the store does not answer: {exc}") from exc
        if who is None:
            raise HTTPException(401, "this token is not one of this cluster's tokens "
                                "(`vmcluster token create` makes one)")
        request.state.caller = who
        if who.role not in tokens.ROLES:
            raise HTTPException(403, f"token {who.name!r} has role {who.role!r}, which this "
                                f"cluster does not know ({', '.join(tokens.ROLES)})")
        return who

    async def admin(request: Request) -> Caller:
        """An admin token (403 for a read-only one)."""
        who = await reader(request)
        if who.role != "admin":
            raise HTTPException(403, f"token {who.name!r} is {who.role}; this needs an admin "
                                "token")
        return who

    @app.middleware("http")
    async def audit(request: Request, call_next: Callable[[Request], Awaitable[Response]]
                    ) -> Response:
        """The audit trail: every write a known token asked, with its answer, is an event."""
        response = await call_next(request)
        who = getattr(request.state, "caller", None)
        if request.method in WRITES and isinstance(who, Caller):
            event = ApiWrite(time.time(), ctx.cfg.node, request.method, request.url.path,
                             response.status_code, who.name, who.role)
            with contextlib.suppress(VmclusterError):
                await asyncio.to_thread(ctx.view.append_event, event.to_json())
        return response

    @app.exception_handler(JoinRefused)
    async def on_refused(_request: Request, exc: JoinRefused) -> JSONResponse:
        return _problem(exc.status, str(exc), exc.code, exc.field)

    @app.exception_handler(VmclusterError)
    async def on_error(_request: Request, exc: VmclusterError) -> JSONResponse:
        if isinstance(exc, SpecError):  # a bad definition: what, which key, what to do
            hint = f" ({exc.hint})" if exc.hint else ""
            return _problem(422, exc.what + hint, "invalid", exc.field)
        if isinstance(exc, (InputError, UsageError, PolicyError)):
            return _problem(422, str(exc), "invalid")
        if isinstance(exc, StoreConflict):
            return _problem(409, str(exc))
        return _problem(503, str(exc))

    @app.exception_handler(StarletteHTTPException)
    async def on_http(_request: Request, exc: StarletteHTTPException) -> JSONResponse:
        return _problem(exc.status_code, str(exc.detail))

    @app.exception_handler(RequestValidationError)
    async def on_invalid(_request: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0] if exc.errors() else {}
        # a body's own keys name the place: shown quoted when they are not plain text (a
        # key may hold a newline), so the answer stays one line
        loc = [str(p) if str(p).isprintable() and str(p).strip() == str(p) and str(p)
               else repr(str(p))
               for p in first.get("loc", ()) if p not in ("body", "query", "path")]
        msg = " ".join(str(first.get("msg", "invalid")).split())
        return _problem(422, f"{'.'.join(loc) or 'body'}: {msg}", "invalid",
                        ".".join(loc) or None)

    # -- joining --------------------------------------------------------------------

    @app.get("/api/v1/join/ca")
    async def join_ca() -> dict[str, Any]:
        """The cluster CA's certificate: what a joining host fetches before it trusts the
        cluster, and checks against the ``--ca-hash`` it was given."""
        pem = NodeCredentials(ctx.cfg.tls_dir).ca.read_bytes()
        return {"ca": pem.decode(), "ca_hash": ca_hash(pem)}

    @app.post("/api/v1/join")
    async def join(body: JoinRequest, request: Request) -> dict[str, Any]:
        """Admit a host: its certificate request signed, etcd membership as a learner."""
        token = _bearer(request)
        got: dict[str, Any] = await asyncio.to_thread(admit, ctx.state, token, body.node,
                                                      body.csr.encode(), body.witness)
        print(f"admitted {body.node} (etcd {'learner' if got['member'] else 'client'})",
              flush=True)
        return got

    @app.post("/api/v1/cluster/join-tokens")
    async def join_token(body: TokenRequest | None = None,
                         _who: Caller = Depends(admin)) -> dict[str, Any]:
        ttl = body.ttl_s if body is not None else JOIN_TOKEN_TTL_S
        token, expires = await asyncio.to_thread(new_join_token, ctx.state, ttl)
        digest = ca_hash(NodeCredentials(ctx.cfg.tls_dir).ca.read_bytes())
        url = api_url(ctx.cfg.api_listen[0], ctx.cfg.api_port)
        return {"token": token, "expires": expires, "ca_hash": digest,
                "join_command": join_command(url, token, digest)}

    @app.post("/api/v1/nodes/{node}/leave")
    async def node_leave(node: str, _who: Caller = Depends(admin)) -> dict[str, Any]:
        got: dict[str, Any] = await asyncio.to_thread(leave, ctx.state, node)
        return got

    # -- API tokens -----------------------------------------------------------------

    @app.get("/api/v1/tokens")
    async def token_list(_who: Caller = Depends(admin)) -> dict[str, Any]:
        """The cluster's API tokens: name, role, when and by whom made (never the secret,
        which the store does not have)."""
        got = await asyncio.to_thread(tokens.records, ctx.view)
        return {"tokens": [r.to_json() for r in got]}

    @app.post("/api/v1/tokens", status_code=201)
    async def token_create(body: ApiTokenRequest, who: Caller = Depends(admin)
                           ) -> dict[str, Any]:
        """A new API token; its secret is in this answer only."""
        if any(r.name == body.name for r in await asyncio.to_thread(tokens.records, ctx.view)):
            raise JoinRefused(409, "conflict", f"a token named {body.name!r} exists; revoke "
                              "it first or pick another name", "name")
        secret, rec = await asyncio.to_thread(tokens.create, ctx.view, body.name, body.role,
                                              who.label)
        return {**rec.to_json(), "token": secret}

    @app.delete("/api/v1/tokens/{name}")
    async def token_revoke(name: str, who: Caller = Depends(admin)) -> dict[str, Any]:
        """Revoke a token: refused at once on every host."""
        if name == who.name:
            raise JoinRefused(409, "conflict", f"token {name!r} is the one making this "
                              "request; revoke it with another admin token", "name")
        if not any(r.name == name for r in await asyncio.to_thread(tokens.records, ctx.view)):
            raise _not_found("token", name, "name")
        rec = await asyncio.to_thread(tokens.revoke, ctx.view, name)
        return {**rec.to_json(), "revoked": True}

    # -- reads ----------------------------------------------------------------------

    def _spec() -> ClusterSpec:
        return ctx.spec(ctx.view)

    @app.get("/api/v1/cluster")
    async def cluster_get(_who: Caller = Depends(reader)) -> dict[str, Any]:
        """The cluster: its name, hosts, etcd members and leader, the elected manager."""
        return await asyncio.to_thread(ctx.status)

    @app.get("/api/v1/cluster/status")
    async def cluster_status(_who: Caller = Depends(reader)) -> dict[str, Any]:
        """What ``vmcluster cluster status`` shows (the same as ``/api/v1/cluster``)."""
        return await asyncio.to_thread(ctx.status)

    def _nodes() -> dict[str, Any]:
        view, spec = ctx.view, _spec()
        seen = views.assessment(view, spec, ctx.age)
        return {"nodes": views.nodes(view, spec, seen, ctx.age)}

    def _networks() -> dict[str, Any]:
        view, spec = ctx.view, _spec()
        return views.networks(view, spec, views.assessment(view, spec, ctx.age))

    @app.get("/api/v1/nodes")
    async def node_list(_who: Caller = Depends(reader)) -> dict[str, Any]:
        """Every node: state, resources, the VMs on it, its report and its daemon."""
        return await asyncio.to_thread(_nodes)

    @app.get("/api/v1/nodes/{node}")
    async def node_get(node: str, _who: Caller = Depends(reader)) -> dict[str, Any]:
        got = await asyncio.to_thread(_nodes)
        for n in got["nodes"]:
            if n["name"] == node:
                return dict(n)
        raise _not_found("node", node, "node")

    @app.get("/api/v1/networks")
    async def network_list(_who: Caller = Depends(reader)) -> dict[str, Any]:
        """Each cluster network: role, metric (``auto_metric``), state, what it carries now
        (heartbeat, csv, client, live_migration) and the route per node pair."""
        return await asyncio.to_thread(_networks)

    @app.get("/api/v1/volumes")
    async def volume_list(_who: Caller = Depends(reader)) -> dict[str, Any]:
        """Each shared volume: coordinator, VMs on it, every node's access (direct, or
        redirected via a node over a network)."""
        return {"volumes": await asyncio.to_thread(lambda: views.volumes(ctx.view, _spec()))}

    @app.get("/api/v1/migrations")
    async def migration_list(limit: int = Query(50, ge=1, le=1000),
                             _who: Caller = Depends(reader)) -> dict[str, Any]:
        """Migrations, newest first: in flight (with the passes so far) and finished."""
        return {"migrations": await asyncio.to_thread(views.migrations, ctx.view, limit)}

    @app.get("/api/v1/migrations/{intent_id}")
    async def migration_get(intent_id: str, _who: Caller = Depends(reader)) -> dict[str, Any]:
        for m in await asyncio.to_thread(views.migrations, ctx.view, 1000):
            if m["id"] == intent_id:
                return dict(m)
        raise _not_found("migration", intent_id, "id")

    @app.post("/api/v1/migrations/{intent_id}/cancel")
    async def migration_cancel(intent_id: str, _who: Caller = Depends(admin)
                               ) -> dict[str, Any]:
        """Cancel a migration: the VM stays on its source."""
        return await intent_cancel(intent_id, _who)

    # -- plans ----------------------------------------------------------------------

    def _placements() -> dict[str, str | None]:
        return {vm: p.node for vm, p in ctx.view.placements().items()}

    def _predict(vm: str, to: str, downtime_ms: float | None = None,
                 on_no_convergence: str | None = None) -> dict[str, Any]:
        spec = _spec()
        spec.node(to)
        source = _placements().get(spec.vm(vm).name)
        if source is None:
            raise JoinRefused(409, "conflict", f"{vm} does not run; start it before "
                              "predicting its migration", "vm")
        seen = views.assessment(ctx.view, spec, ctx.age)
        flows: dict[str, int] = {}
        for m in ctx.view.migrations().values():
            flows[m.network] = flows.get(m.network, 0) + 1
        profile = None
        if ctx.layout is not None:  # the guest's dirty rate measured by its QEMU now
            layout = ctx.layout
            facts: dict[str, QemuFacts] = {}

            def agent(node: str) -> AgentClient:
                return AgentClient(layout, node)

            def facts_of(node: str) -> QemuFacts:
                if node not in facts:
                    facts[node] = QemuFacts.from_json(agent(node).call("facts")["facts"])
                return facts[node]

            profile = measure_profile(spec, vm, source, to, agent, facts_of)
        pred = predict(spec, seen.health, vm, to, source=source, flows=flows,
                       profile=profile,
                       downtime_ms=downtime_ms,
                       on_no_convergence=on_no_convergence)  # type: ignore[arg-type]
        return {"vm": vm, "source": source, "target": to, **pred.to_json()}

    @app.get("/api/v1/plans/migration")
    async def plan_migration(
            vm: str = Query(min_length=1), to: str = Query(min_length=1),
            downtime_ms: float | None = Query(None, gt=0, le=60000, description="the "
                                              "downtime budget (default: the VM's)"),
            on_no_convergence: Literal["throttle", "abort", "force"] | None = Query(
                None, description="if it will not fit the budget (default: the VM's)"),
            _who: Caller = Depends(reader)) -> dict[str, Any]:
        """The prediction of migrating ``vm`` to ``to`` now: the network the policy picks,
        the guest's dirty rate as its QEMU measures it, the mode it would take
        (``precopy``, ``auto-converge``, ``postcopy`` or ``refuse``) and why, the model
        pass by pass, total time and downtime, before anything starts."""
        return await asyncio.to_thread(_predict, vm, to, downtime_ms, on_no_convergence)

    def _planned(make: Callable[[Observation, ClusterSpec], ClusterPlan]) -> dict[str, Any]:
        """A plan of the cluster as the API's cache sees it, with how its load was known."""
        spec = _spec()
        seen = views.assessment(ctx.view, spec, ctx.age)
        busy, oldest, sources = load.read(ctx.view, ctx.age)
        # a cluster's hosts run QEMU: its costs, and the time each migration takes besides
        obs = replace(views.consolidation(ctx.view, spec, seen, busy), costs=QEMU_COSTS)
        plan = make(obs, spec)
        running = [v for n in obs.nodes for v in n.vms]
        return {"plan": plan.to_json(),
                "load": {"vms_measured": sum(1 for v in running if v in busy),
                         "vms_running": len(running),
                         "oldest_s": None if oldest is None else round(oldest, 1),
                         # how each VM's load was measured by its host (node.load)
                         "sources": {v: s for v, s in sources.items() if v in running}}}

    def _drain(node: str) -> dict[str, Any]:
        _spec().node(node)
        return {"node": node, **_planned(lambda obs, spec: drain_plan(obs, spec, node))}

    def _capacity(depth: int) -> dict[str, Any]:
        spec = _spec()
        placed = {vm: node for vm, node in _placements().items()
                  if vm in {v.name for v in spec.vms}}
        return capacity(spec, placed, depth).to_json()

    @app.get("/api/v1/plans/capacity")
    async def plan_capacity(depth: int = Query(2, ge=1, le=3),
                            _who: Caller = Depends(reader)) -> dict[str, Any]:
        """Whether the cluster can lose any one node (any ``depth`` nodes at once) and
        restart every VM by the failover rules the manager runs: for each loss, where the
        VMs restart, which stay down and why (no room, anti-affinity, lost quorum), and
        the room left per resource (least and total free memory and vCPUs)."""
        return await asyncio.to_thread(_capacity, depth)

    def _failure(node: str) -> dict[str, Any]:
        spec = _spec()
        placed = {vm: n for vm, n in _placements().items()
                  if vm in {v.name for v in spec.vms}}
        return plan_failure(spec, placed, node).to_json()

    @app.get("/api/v1/plans/failure")
    async def plan_fail(node: str = Query(min_length=1),
                        _who: Caller = Depends(reader)) -> dict[str, Any]:
        """What a failure of ``node`` would do now: the restarts the manager would make
        (simulated with its own code and the cluster's heartbeat settings: where, and how
        long after the failure they are issued), which VMs would stay down and why, the
        rules bent, and the room left per resource."""
        return await asyncio.to_thread(_failure, node)

    def _add_vm(table: dict[str, Any]) -> dict[str, Any]:
        text = ctx.view.spec_text()
        if text is None:
            raise JoinRefused(409, "conflict", "the store holds no spec yet", "spec")
        defs = [r.definition for r in vms.records(ctx.view).values()]
        return plan_add_vm(text, "<the spec in etcd, with the VM>", defs, _placements(),
                           table).to_json()

    @app.post("/api/v1/plans/add-vm")
    async def plan_add(body: dict[str, Any], _who: Caller = Depends(reader)) -> dict[str, Any]:
        """Where a new VM would start (the body: a spec's ``[[vms]]`` keys, checked as the
        spec is; ``owner`` optional: without one the plan chooses): the node by the rules
        a start follows, the rules it bends, and whether any one node's loss would still
        restart every VM (which would stay down). ``node`` is null when it fits nowhere,
        ``reason`` says why. Nothing is defined."""
        return await asyncio.to_thread(_add_vm, dict(body))

    @app.get("/api/v1/plans/drain")
    async def plan_drain(node: str = Query(min_length=1),
                         _who: Caller = Depends(reader)) -> dict[str, Any]:
        """What a drain of ``node`` would do, by the manager's own rules: the plan (the
        same model as a consolidation's) of where each VM moves, over which network,
        in what predicted time and downtime, what it cannot place, watts before/after."""
        return await asyncio.to_thread(_drain, node)

    def _consolidation_plan(policy: str, seed: int) -> dict[str, Any]:
        return _planned(lambda obs, spec: make_plan(obs, spec, policy, seed,
                                                    guard=store_guard(ctx.state)))

    @app.get("/api/v1/plans/consolidation")
    async def plan_consolidation(policy: str = Query("ours", min_length=1, max_length=64),
                                 seed: int = Query(0, ge=0),
                                 _who: Caller = Depends(reader)) -> dict[str, Any]:
        """What the power policy would do now, from each VM's CPU as the host running it
        measured it: which VMs move where (network, predicted time and downtime), which
        nodes go off or on, watts before and after. Nothing is changed: apply it with
        ``POST /api/v1/consolidations``."""
        return await asyncio.to_thread(_consolidation_plan, policy, seed)

    # -- actions: intents the elected manager carries out -----------------------------

    def _submit(kind: str, args: dict[str, Any], who: Caller) -> JSONResponse:
        it = intents.submit(ctx.view, kind, args, by=who.label)
        return JSONResponse(it.to_json(), status_code=202,
                            headers={"Location": f"/api/v1/intents/{it.id}"})

    def _node_intent(kind: str, node: str, who: Caller) -> JSONResponse:
        if node not in {n.name for n in _spec().nodes}:
            raise _not_found("node", node, "node")
        return _submit(kind, {"node": node}, who)

    @app.post("/api/v1/nodes/{node}/drain", status_code=202)
    async def node_drain(node: str, who: Caller = Depends(admin)) -> JSONResponse:
        """Ask the manager to live-migrate every VM off ``node`` (an intent; 202)."""
        return await asyncio.to_thread(_node_intent, "drain", node, who)

    @app.post("/api/v1/nodes/{node}/resume", status_code=202)
    async def node_resume(node: str, who: Caller = Depends(admin)) -> JSONResponse:
        """Put a drained or quarantined node back in service (an intent; 202)."""
        return await asyncio.to_thread(_node_intent, "resume", node, who)

    def _migrate(vm: str, body: MigrateRequest, who: Caller) -> JSONResponse:
        spec = _spec()
        if vm not in {v.name for v in spec.vms}:
            raise _not_found("VM", vm, "vm")
        if body.to not in {n.name for n in spec.nodes}:
            raise JoinRefused(422, "invalid", f"no node {body.to!r} in the cluster", "to")
        args: dict[str, Any] = {"vm": vm, "to": body.to,
                                **({"mode": "quick"} if body.mode == "quick" else {})}
        if body.downtime_ms is not None:
            args["downtime_ms"] = body.downtime_ms
        if body.on_no_convergence is not None:
            args["on_no_convergence"] = body.on_no_convergence
        return _submit("migrate", args, who)

    @app.post("/api/v1/vms/{vm}/migrate", status_code=202)
    async def vm_migrate(vm: str, body: MigrateRequest,
                         who: Caller = Depends(admin)) -> JSONResponse:
        """Ask the manager to live-migrate ``vm`` to ``to`` (an intent; 202); its progress
        is at ``/api/v1/migrations/{id}`` and in the stream."""
        return await asyncio.to_thread(_migrate, vm, body, who)

    def _vm_view(name: str) -> dict[str, Any]:
        got = views.vm_get(ctx.view, name)
        if got is None:
            raise JoinRefused(404, "not_found", f"no VM {name!r} is defined", "vm")
        return got

    def _define(body: dict[str, Any], who: Caller) -> dict[str, Any]:
        name = body.get("name")
        if not isinstance(name, str) or not name:
            raise JoinRefused(422, "invalid", "a VM needs a name", "name")
        start = body.pop("start", False)
        if not isinstance(start, bool):
            raise JoinRefused(422, "invalid", "start must be true or false", "start")
        view = ctx.view
        known = vms.records(view)
        if name in known:
            raise JoinRefused(409, "conflict", f"a VM named {name!r} is already defined", "name")
        defs = [r.definition for r in known.values()]
        default_volume = "volume" not in body
        if body.get("volume", "") is None:  # `"volume": null`: its disk in the file storage
            body = {k: v for k, v in body.items() if k != "volume"}
        spec = view.spec(definitions=[*defs, body])  # SpecError: 422, naming the key
        if default_volume and spec.volumes:
            # On the cluster's shared storage unless it says otherwise: a VM there can
            # migrate and fail over (a declared volume cannot make the definition invalid).
            body = {**body, "volume": spec.volumes[0].name}
        if spec.vm(name).address is not None:  # pinned, so later VMs never shift it
            body = {**body, "address": str(spec.vm(name).address)}
        rec = vms.define(view, body)
        out = views.vm_json(rec, None)
        if start:
            vms.set_desired(view, name, "running")
            out["intent"] = intents.submit(view, "start", {"vm": name}, by=who.label).to_json()
        return out

    memo: dict[str, tuple[int, float, bytes]] = {}

    def _vm_list_body() -> bytes:
        # One encoding per change of the cluster (not per request): with a thousand VMs,
        # building and encoding the list is what a read costs.
        # A VM in "fence" turns to "recovery" with time, not with a change: such a body
        # is kept only until the first fence ends.
        changed = ctx.cache.changed if ctx.cache is not None and ctx.cache.healthy else -1
        hit = memo.get("vms")
        if hit is not None and changed >= 0 and hit[0] == changed and time.time() < hit[1]:
            return hit[2]
        listed = views.vm_list(ctx.view)
        body = json.dumps({"vms": listed}).encode()
        if changed >= 0:
            ends = [float(v["restart_at"]) for v in listed if v["state"] == "fence"]
            memo["vms"] = (changed, min(ends, default=float("inf")), body)
        return body

    @app.get("/api/v1/vms")
    async def vm_list(_who: Caller = Depends(reader)) -> Response:
        """Every VM: its definition, desired and observed state, machine type, where it
        runs and the migration it is in, if any."""
        return Response(await asyncio.to_thread(_vm_list_body), media_type="application/json")

    @app.post("/api/v1/vms", status_code=201)
    async def vm_define(body: dict[str, Any], who: Caller = Depends(admin)) -> JSONResponse:
        """Define a VM: the keys of a spec file's ``[[vms]]`` table (``name``, ``owner``,
        ``memory_mib`` required), checked as the spec is; ``"start": true`` also starts it
        (an intent, under ``intent``). Without ``volume`` its disk goes on the cluster's
        first shared volume, if it has one (``"volume": null``: the file storage)."""
        got = await asyncio.to_thread(_define, dict(body), who)
        return JSONResponse(got, status_code=201,
                            headers={"Location": f"/api/v1/vms/{got['name']}"})

    def _import(path: Path, upload: str, body: dict[str, Any], start: bool,
                who: Caller) -> dict[str, Any]:
        try:
            info = image_info(path, "the uploaded image")
        except InputError as exc:
            raise JoinRefused(422, "invalid", str(exc), "image") from exc
        out = _define({**body, "disk_mib": info.disk_mib}, who)
        name = out["name"]
        try:
            got = _local_agent(ctx.cfg).call("import_disk", timeout_s=IMPORT_S, vm=name,
                                             upload=upload)
        except AgentError as exc:
            vms.undefine(ctx.view, name)  # nothing is left half made
            status = 422 if exc.code == "invalid" else 503
            raise JoinRefused(status, "invalid" if status == 422 else "unavailable",
                              f"importing the image of {name}: {exc}", "image") from exc
        except BaseException:
            vms.undefine(ctx.view, name)
            raise
        out["import"] = {k: v for k, v in got.items() if k not in ("ok",)}
        if start:
            vms.set_desired(ctx.view, name, "running")
            out["desired"] = "running"
            out["intent"] = intents.submit(ctx.view, "start", {"vm": name},
                                           by=who.label).to_json()
        return out

    @app.post("/api/v1/vms/import", status_code=201)
    async def vm_import(request: Request, name: str = Query(min_length=1, max_length=63),
                        owner: str = Query(min_length=1, max_length=63),
                        memory_mib: int = Query(ge=1), vcpus: int = Query(1, ge=1),
                        volume: str | None = Query(None), address: str | None = Query(None),
                        start: bool = Query(False),
                        boot: str = Query("bios", pattern="^(bios|uefi|kernel)$"),
                        who: Caller = Depends(admin)) -> JSONResponse:
        """Import a disk image (the request's body: raw, qcow2, vmdk, vhd or vhdx, as
        qemu-img reads it) as the disk of a new VM: the image is converted onto its shared
        volume (default: the first) or its disk file, then the VM is defined (and, with
        ``start``, started). A file qemu-img cannot read, or one that does not fit its
        volume, is refused (422, field ``image``) and nothing is created. ``boot``: how it
        boots, by default ``bios`` (the disk's own boot loader, under SeaBIOS; ``uefi``:
        under OVMF; ``kernel``: the hosts' guest kernel, as the lab's test guests do)."""
        upload = uuid.uuid4().hex
        path = ctx.cfg.upload_dir / f"{upload}.img"
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            size = 0
            with path.open("wb") as f:
                async for chunk in request.stream():
                    size += len(chunk)
                    if size > MAX_UPLOAD:
                        raise JoinRefused(413, "too_large", f"an image over {MAX_UPLOAD >> 30} "
                                          "GiB is not imported this way", "image")
                    f.write(chunk)
            if size == 0:
                raise JoinRefused(422, "invalid", "the request carries no image (send the "
                                  "file as the body)", "image")
            body = {"name": name, "owner": owner, "memory_mib": memory_mib, "vcpus": vcpus,
                    "boot": boot, **({"address": address} if address else {})}
            if volume is not None:
                body["volume"] = None if volume in ("", "none") else volume
            got = await asyncio.to_thread(_import, path, upload, body, start, who)
        finally:
            path.unlink(missing_ok=True)
        return JSONResponse(got, status_code=201, headers={"Location": f"/api/v1/vms/{name}"})

    def _set(vm: str, changes: dict[str, Any]) -> dict[str, Any]:
        view = ctx.view
        rec = vms.get(view, vm)
        if rec is None:
            raise JoinRefused(404, "not_found", f"no VM {vm!r} is defined", "vm")
        if not changes:
            raise JoinRefused(422, "invalid", "nothing to set: send the keys to change", None)
        for key in changes:
            if key in FIXED_KEYS:
                raise JoinRefused(422, "invalid", f"{key} of a VM does not change once it is "
                                  f"defined ({FIXED_KEYS[key]})", key)
            if key not in VM_KEYS:
                raise JoinRefused(422, "invalid", f"unknown key {key!r}; a VM has "
                                  f"{', '.join(sorted(VM_KEYS - set(FIXED_KEYS)))}", key)
        node = view.placement(vm).node
        for key in changes:
            if key in STOPPED_KEYS and node is not None:
                raise JoinRefused(409, "conflict", f"{key} changes only while {vm} is stopped "
                                  f"(it runs on {node}; `vmcluster vm stop {vm}` first)", key)
        new = {**rec.definition, **changes}
        new = {k: v for k, v in new.items() if v is not None}  # null: back to the default
        others = [r.definition for n, r in vms.records(view).items() if n != vm]
        view.spec(definitions=[*others, new])  # SpecError: 422, naming the key
        vms.redefine(view, rec, new)
        return _vm_view(vm)

    @app.patch("/api/v1/vms/{vm}")
    async def vm_set(vm: str, changes: dict[str, Any], _who: Caller = Depends(admin)
                     ) -> dict[str, Any]:
        """Change a VM's definition (``vmcluster vm set``): memory_mib, vcpus and machine
        while it is stopped; preferred owners, live-migration networks, downtime budget,
        priority, anti-affinity, shutdown timeout and the rest at any time. ``null`` puts
        a key back to its default. Checked as a spec's [[vms]] table is."""
        return await asyncio.to_thread(_set, vm, dict(changes))

    @app.get("/api/v1/vms/{vm}")
    async def vm_get(vm: str, _who: Caller = Depends(reader)) -> dict[str, Any]:
        return await asyncio.to_thread(_vm_view, vm)

    @app.delete("/api/v1/vms/{vm}", status_code=202)
    async def vm_delete(vm: str, keep_disk: bool = False,
                        who: Caller = Depends(admin)) -> JSONResponse:
        """Delete a stopped VM: its disk (unless ``keep_disk``), then its definition; an
        intent the manager carries out. 409 at once while it is placed on a node."""
        return await asyncio.to_thread(_delete, vm, keep_disk, who)

    def _delete(vm: str, keep_disk: bool, who: Caller) -> JSONResponse:
        view = _vm_view(vm)
        if view.get("node"):
            raise StoreConflict(f"{vm} runs on {view['node']}; stop it first "
                                f"(`vmcluster vm stop {vm}`)")
        return _submit("delete", {"vm": vm, "keep_disk": keep_disk}, who)

    def _desire(vm: str, desired: str, kind: str, args: dict[str, Any],
                who: Caller) -> JSONResponse:
        _vm_view(vm)
        vms.set_desired(ctx.view, vm, desired)
        return _submit(kind, args, who)

    @app.post("/api/v1/vms/{vm}/start", status_code=202)
    async def vm_start(vm: str, body: StartRequest | None = None,
                       who: Caller = Depends(admin)) -> JSONResponse:
        """Run ``vm`` (desired state: running): the manager places and starts it (202)."""
        on = body.on if body is not None else None
        if on is not None and on not in {n.name for n in (await asyncio.to_thread(_spec)).nodes}:
            raise JoinRefused(422, "invalid", f"no node {on!r} in the cluster", "on")
        args = {"vm": vm, **({"on": on} if on else {})}
        return await asyncio.to_thread(_desire, vm, "running", "start", args, who)

    def _stop(vm: str, body: StopRequest, who: Caller) -> JSONResponse:
        _vm_view(vm)
        if body.force:
            args: dict[str, Any] = {"vm": vm, "force": True}
        else:
            timeout = body.timeout_s
            if timeout is None:
                timeout = _spec().vm(vm).shutdown_timeout_s
            args = {"vm": vm, "shutdown_s": timeout}
        return _desire(vm, "stopped", "stop", args, who)

    @app.post("/api/v1/vms/{vm}/stop", status_code=202)
    async def vm_stop(vm: str, body: StopRequest | None = None,
                      who: Caller = Depends(admin)) -> JSONResponse:
        """Stop ``vm`` (desired state: stopped; nothing restarts it): its guest is asked to
        shut down (ACPI) and given ``timeout_s`` (default: its ``shutdown_timeout_s``)
        before its QEMU is made to quit; ``force``: at once (202)."""
        body = body or StopRequest(force=False, timeout_s=None)
        return await asyncio.to_thread(_stop, vm, body, who)

    def _pause(vm: str, kind: str, who: Caller) -> JSONResponse:
        view = _vm_view(vm)
        if not view.get("node"):
            raise StoreConflict(f"{vm} runs nowhere; start it first")
        return _submit(kind, {"vm": vm}, who)

    @app.post("/api/v1/vms/{vm}/pause", status_code=202)
    async def vm_pause(vm: str, who: Caller = Depends(admin)) -> JSONResponse:
        """Pause the VM's guest where it runs (its memory stays; nothing fails over)."""
        return await asyncio.to_thread(_pause, vm, "pause", who)

    @app.post("/api/v1/vms/{vm}/resume", status_code=202)
    async def vm_resume(vm: str, who: Caller = Depends(admin)) -> JSONResponse:
        """Resume a paused VM's guest."""
        return await asyncio.to_thread(_pause, vm, "unpause", who)

    def _consolidation(plan: dict[str, Any], who: Caller) -> JSONResponse:
        parsed = ClusterPlan.from_json(plan)
        spec = _spec()
        vms_, nodes = {v.name for v in spec.vms}, {n.name for n in spec.nodes}
        for m in parsed.migrations:
            if m.vm not in vms_:
                raise JoinRefused(422, "invalid", f"plan: no VM {m.vm!r} in the cluster", "plan")
            for node in (m.source, m.target):
                if node not in nodes:
                    raise JoinRefused(422, "invalid", f"plan: no node {node!r} in the cluster",
                                      "plan")
        for node in [*parsed.power_on, *(n for n, _ in parsed.power_off)]:
            if node not in nodes:
                raise JoinRefused(422, "invalid", f"plan: no node {node!r} in the cluster",
                                  "plan")
        return _submit("consolidate", {"plan": plan}, who)

    @app.post("/api/v1/consolidations", status_code=202)
    async def consolidation_apply(body: PlanRequest,
                                  who: Caller = Depends(admin)) -> JSONResponse:
        """Apply a consolidation plan (as ``lab consolidate --json`` prints it): the
        manager migrates, then powers the emptied nodes off (an intent; 202)."""
        return await asyncio.to_thread(_consolidation, body.plan, who)

    @app.get("/api/v1/intents")
    async def intent_list(limit: int = Query(50, ge=1, le=1000),
                          _who: Caller = Depends(reader)) -> dict[str, Any]:
        """What the API was asked to do, newest first, with each one's state and result."""
        got = await asyncio.to_thread(intents.every, ctx.view)
        return {"intents": [i.to_json() for i in reversed(got)][:limit]}

    @app.get("/api/v1/intents/{intent_id}")
    async def intent_get(intent_id: str, _who: Caller = Depends(reader)) -> dict[str, Any]:
        it = await asyncio.to_thread(intents.get, ctx.view, intent_id)
        if it is None:
            raise JoinRefused(404, "not_found", f"no intent {intent_id}", "id")
        return it.to_json()

    @app.post("/api/v1/intents/{intent_id}/cancel")
    async def intent_cancel(intent_id: str, _who: Caller = Depends(admin)) -> dict[str, Any]:
        """Cancel: a pending intent at once, a running one at its next safe point (the VM
        in flight stays on its source)."""
        if await asyncio.to_thread(intents.get, ctx.view, intent_id) is None:
            raise JoinRefused(404, "not_found", f"no intent {intent_id}", "id")
        it = await asyncio.to_thread(intents.cancel, ctx.view, intent_id)
        return it.to_json()

    # -- the event log, and everything that changes, as it happens -----------------------

    @app.get("/api/v1/events")
    async def events(after: int = 0, wait_s: float = 0.0, limit: int = 1000,
                     _who: Caller = Depends(reader)) -> Any:
        """The event log after sequence number ``after`` (at most ``limit``, oldest first);
        ``wait_s`` (up to 30): when there is none yet, wait that long for one. ``last``: the
        sequence number to ask ``after`` next."""
        for name, bad in (("after", after < 0), ("limit", limit < 1),
                          ("wait_s", not 0.0 <= wait_s <= 30.0)):
            if bad:
                return _problem(422, f"query parameter {name} is out of range (after >= 0, "
                                "limit >= 1, 0 <= wait_s <= 30)", "invalid", name)
        got: dict[str, Any] = await asyncio.to_thread(_events, after, wait_s, limit)
        return got

    def _events(after: int, wait_s: float, limit: int) -> dict[str, Any]:
        deadline = time.monotonic() + wait_s
        view = ctx.view
        while True:  # bounded by wait_s
            got, rev = view.events(after)
            left = deadline - time.monotonic()
            if got or left <= 0:
                break
            if ctx.cache is not None:
                ctx.cache.wait_change(rev, min(left, 1.0))
            else:
                time.sleep(min(left, 0.25))
        got = got[:limit]
        return {"events": [{"seq": seq, **rec} for seq, rec in got],
                "last": got[-1][0] if got else after}

    def _changes(after_seq: int, after_rev: int) -> tuple[list[str], int, int]:
        """Server-sent events for what changed after ``after_rev``: new log events, the
        intents (with migrations' progress) that changed, and one ``change`` with the
        revision so that a page knows to refresh its views."""
        view = ctx.view
        got, rev = view.events(after_seq)
        out = [_sse("event", {"seq": seq, **rec}, seq) for seq, rec in got]
        last = got[-1][0] if got else after_seq
        for it in intents.every(view):
            if it.revision > after_rev:
                out.append(_sse("intent", it.to_json()))
        if ctx.cache is not None and ctx.cache.changed > after_rev:
            out.append(_sse("change", {"revision": rev}))
        return out, last, rev

    @app.get("/api/v1/stream")
    async def stream(request: Request, after: int = Query(0, ge=0),
                     max_s: float = Query(STREAM_MAX_S, gt=0, le=3600),
                     _who: Caller = Depends(reader)) -> StreamingResponse:
        """Server-sent events: ``event`` (the log after ``after``), ``intent`` (an intent
        changed: a migration's passes as they go), ``change`` (something in the cluster
        changed: refresh the views). Ends by itself after ``max_s``; reconnect with
        ``after`` = the last event's id."""
        if ctx.cache is None:
            raise HTTPException(503, "this API has no store cache to stream from")
        cache = ctx.cache

        async def gen() -> AsyncIterator[str]:
            deadline = time.monotonic() + max_s
            rev = cache.revision
            out, seq, _ = await asyncio.to_thread(_changes, after, rev)  # the log so far
            for chunk in out:
                yield chunk
            while time.monotonic() < deadline and not await request.is_disconnected():
                now = await asyncio.to_thread(cache.wait_change, rev, 1.0)
                if now > rev:
                    out, seq, rev = await asyncio.to_thread(_changes, seq, rev)
                    for chunk in out:
                        yield chunk
                else:
                    yield ": keepalive\n\n"

        return StreamingResponse(gen(), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-store"})

    # -- a VM's serial console, from the agent of the host it runs on --------------------

    def _console(vm: str, offset: int, node: str | None = None) -> dict[str, Any]:
        if ctx.layout is None:
            raise HTTPException(503, "this API reaches no agents")
        if vms.get(ctx.view, vm) is None:
            raise _not_found("VM", vm, "vm")
        node = node or ctx.view.placement(vm).node or _spec().vm(vm).owner
        try:
            got = AgentClient(ctx.layout, node).call("console", timeout_s=5, vm=vm,
                                                     offset=offset)
        except AgentDown as exc:
            raise HTTPException(503, str(exc)) from exc
        return {"vm": vm, "node": node, "data": got["data"], "offset": got["offset"],
                "running": got["running"]}

    @app.get("/api/v1/vms/{vm}/console")
    async def vm_console(vm: str, tail: int = Query(4096, ge=0, le=65536),
                         offset: int | None = Query(None, ge=0),
                         _who: Caller = Depends(reader)) -> dict[str, Any]:
        """The last ``tail`` bytes of the VM's serial console, from the host it runs on, or
        what follows ``offset`` (the ``offset`` a previous answer gave); ``/console/ws``
        follows it live."""
        return await asyncio.to_thread(_console, vm, offset if offset is not None else -tail)

    @app.websocket("/api/v1/vms/{vm}/console/ws")
    async def vm_console_ws(websocket: WebSocket, vm: str) -> None:
        """The VM's serial console, live: send ``{"token": T}`` first (a browser cannot
        set headers on a websocket); then text frames as the console prints, following the
        VM when it moves. Ends by itself after CONSOLE_WS_S."""
        await websocket.accept()
        try:
            first = json.loads(await asyncio.wait_for(websocket.receive_text(), 10))
            who = await asyncio.to_thread(ctx.caller, str(first.get("token", "")))
        except (TimeoutError, ValueError, AttributeError, WebSocketDisconnect):
            who = None
        if who is None or who.role not in tokens.ROLES:
            with contextlib.suppress(RuntimeError):
                await websocket.close(code=4401, reason="send a token of this cluster first")
            return
        deadline = time.monotonic() + CONSOLE_WS_S
        node, offset = None, -4096
        try:
            while time.monotonic() < deadline:
                now = await asyncio.to_thread(lambda: ctx.view.placement(vm).node)
                if now is not None and now != node:
                    if node is not None:
                        await websocket.send_text(f"\r\n[vmcluster: {vm} now runs on {now}]\r\n")
                    node, offset = now, -4096
                if node is not None:
                    try:
                        got = await asyncio.to_thread(_console, vm, offset, node)
                        offset = int(got["offset"])
                        if got["data"]:
                            await websocket.send_text(got["data"])
                    except HTTPException as exc:
                        await websocket.send_text(f"\r\n[vmcluster: {exc.detail}]\r\n")
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(websocket.receive_text(), 0.5)  # input is ignored
        except WebSocketDisconnect:
            return
        with contextlib.suppress(RuntimeError):
            await websocket.close()

    # -- health, metrics, the dashboard ----------------------------------------------

    @app.get("/api/v1/health")
    async def health() -> dict[str, Any]:
        return {"ok": True, "node": ctx.cfg.node, "version": vmcluster.__version__}

    def _metrics() -> bytes:
        view = ctx.view
        return generate_latest(metrics.registry(view, ctx.spec(view), ctx.age))

    @app.get("/metrics")
    async def prometheus(_who: Caller = Depends(reader)) -> Response:
        """The cluster in Prometheus' text format (a read-only token is enough)."""
        body = await asyncio.to_thread(_metrics)
        return Response(body, media_type=CONTENT_TYPE_LATEST)

    @app.get("/", include_in_schema=False)
    async def root() -> RedirectResponse:
        return RedirectResponse("/ui/")

    app.mount("/ui", StaticFiles(directory=DASHBOARD, html=True), name="dashboard")
    return app


def _sockets(cfg: NodeConfig) -> list[socket.socket]:
    out = []
    for addr in cfg.api_listen:
        # proto IPPROTO_TCP, not 0: asyncio sets TCP_NODELAY only on sockets that say they
        # are TCP; without it every small answer on a kept-alive connection waited for the
        # client's delayed ACK (40 ms a request).
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((addr, cfg.api_port))
        except OSError as exc:
            s.close()
            raise VmclusterError(f"cannot listen on {addr}:{cfg.api_port}: {exc}") from exc
        s.listen(128)
        out.append(s)
    return out


def _publisher(ctx: ApiContext, done: threading.Event) -> None:
    """The host's record every PUBLISH_S, the revocation list every CRL_S; this host's etcd
    member promoted once it caught up (a host that joined)."""
    last = -PUBLISH_S
    voter = ctx.cfg.member is None
    while True:
        now = time.monotonic()
        with contextlib.suppress(VmclusterError, OSError):
            if not voter and promote_if_learner(ctx.cfg, ctx.state):
                voter = True
                print(f"etcd member of {ctx.cfg.node} is a voter", flush=True)
            if now - last >= PUBLISH_S:
                ctx.publish()
                last = now
            if ctx.sync_crl():
                print(f"revocation list updated in {ctx.cfg.tls_dir}", flush=True)
        if done.wait(CRL_S):
            return


class _ServerConfig(uvicorn.Config):
    """uvicorn's configuration, and the admin's own certificate for clients that ask for
    a name (SNI) other than the host's: a browser at https://pve1.example.com gets the
    certificate the admin's browsers trust; a host or CLI that connects by address (no
    SNI) or asks for the node's name gets the cluster CA's, as before."""

    own: ssl.SSLContext | None = None
    node = ""

    def load(self) -> None:
        super().load()
        if self.own is not None and self.ssl is not None:
            self.ssl.sni_callback = sni_switch(self.node, self.own)


def own_context(cert: Path, key: Path) -> ssl.SSLContext:
    """A server context with the admin's certificate (no client certificates asked)."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        ctx.load_cert_chain(cert, key)
    except (OSError, ssl.SSLError) as exc:
        raise InputError(f"[api] certificate {cert} / key {key}: {exc}") from exc
    return ctx


def sni_switch(node: str, own: ssl.SSLContext) -> Callable[[ssl.SSLObject, str | None,
                                                             ssl.SSLContext], None]:
    mine = node.lower()

    def pick(sock: ssl.SSLObject, name: str | None, _ctx: ssl.SSLContext) -> None:
        if name and name.lower().rstrip(".") != mine:  # clients send names in lower case
            sock.context = own
    return pick


def server_config(app: Any, cfg: NodeConfig) -> uvicorn.Config:
    """The API's HTTPS: the host's cluster certificate (client certificates checked
    against the cluster CA when given), and the admin's own for named clients."""
    creds = NodeCredentials(cfg.tls_dir)
    config = _ServerConfig(
        app, ssl_certfile=str(creds.cert), ssl_keyfile=str(creds.key),
        ssl_ca_certs=str(creds.ca), ssl_cert_reqs=ssl.CERT_OPTIONAL, log_level="info",
        timeout_graceful_shutdown=5)
    if cfg.api_certificate is not None and cfg.api_key is not None:
        # Loaded here, once: a bad pair is one line at start, not an error inside uvicorn.
        config.own, config.node = own_context(cfg.api_certificate, cfg.api_key), cfg.node
    return config


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m vmcluster.node.api")
    ap.add_argument("--config", required=True)
    args = ap.parse_args(argv)
    try:
        cfg = load_config(args.config)
        speak_as(cfg.node, cfg.tls_dir)  # this host's certificate, for the agents it calls
        ctx = ApiContext(cfg, cfg.store(timeout_s=2.0, retry_s=5.0),
                         layout=shared_layout(cfg.shared, cfg.state_dir, cfg.run_dir,
                                              cfg.lab_dir))
        addresses_from(lambda: ctx.spec(ctx.view))
        socks = _sockets(cfg)
        config = server_config(create_app(ctx), cfg)
    except VmclusterError as exc:
        print(f"vmcluster api: {exc}", file=sys.stderr)
        return exc.exit_code
    done = threading.Event()
    threading.Thread(target=_publisher, args=(ctx, done), daemon=True).start()
    uvicorn.Server(config).run(sockets=socks)
    done.set()
    return 0


if __name__ == "__main__":
    sys.exit(main())
