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
from dataclasses import dataclass
from typing import Any, Literal

import uvicorn
from fastapi import Depends, FastAPI, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field
from starlette.exceptions import HTTPException as StarletteHTTPException

import vmcluster
from vmcluster.control.consolidate import ConsolidationPlan
from vmcluster.errors import InputError, SpecError, VmclusterError
from vmcluster.model import ClusterSpec
from vmcluster.model.spec import parse_spec
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
from vmcluster.node.config import NodeConfig, load_config
from vmcluster.pki import NodeCredentials, ca_hash, token_hash
from vmcluster.store import intents, vms
from vmcluster.store.election import current_leader
from vmcluster.store.errors import StoreConflict
from vmcluster.store.etcd import EtcdClient
from vmcluster.store.state import ClusterState, Placement
from vmcluster.substrate.host.wire import exchange

__all__ = ["PUBLISH_S", "ApiContext", "create_app", "main"]

PUBLISH_S = 5.0
CRL_S = 1.0  # a revoked certificate is refused everywhere within about this


@dataclass
class ApiContext:
    cfg: NodeConfig
    state: ClusterState

    @property
    def client(self) -> EtcdClient:
        return self.state.etcd

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

    def role_of(self, token: str) -> str | None:
        kv = self.client.get(self.state.key("tokens", token_hash(token)))
        if kv is None:
            return None
        return str(kv.json().get("role", ""))

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
                            "token": held.token if held else None}}


def _local_qemu(cfg: NodeConfig) -> str | None:
    """This host's QEMU version, from its own agent (its unix socket)."""
    with socket.socket(socket.AF_UNIX) as s:
        s.settimeout(5)
        try:
            s.connect(str(cfg.agent_socket))
            reply = json.loads(exchange(s, b'{"op": "ping"}\n'))
        except (OSError, ValueError):
            return None
    return reply.get("qemu_version") if reply.get("ok") else None


class JoinRequest(BaseModel):
    node: str = Field(min_length=1, max_length=63, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
    csr: str = Field(min_length=1, max_length=16384, description="PEM certificate request")


class MigrateRequest(BaseModel):
    to: str = Field(min_length=1, max_length=63, description="the target node")
    mode: Literal["live", "quick"] = Field("live", description="live (pre-copy) or quick "
                                           "(pause, save to the shared path, restore)")


class PlanRequest(BaseModel):
    plan: dict[str, Any] = Field(description="a consolidation plan's JSON")


class StartRequest(BaseModel):
    on: str | None = Field(None, min_length=1, max_length=63,
                           description="the node to start on (default: its owner, or where "
                           "the placement rules say)")


class TokenRequest(BaseModel):
    ttl_s: float = Field(JOIN_TOKEN_TTL_S, gt=0, le=30 * 24 * 3600.0)


_CODES = {400: "invalid", 401: "unauthorized", 403: "forbidden", 404: "not_found",
          409: "conflict", 422: "invalid", 503: "unavailable"}


def _vm_json(rec: vms.VmRecord, placement: Placement | None) -> dict[str, Any]:
    """A VM as the API shows it: what it is, what is wanted of it, where it runs."""
    return {"name": rec.name, "definition": rec.definition, "desired": rec.desired,
            "machine": rec.machine, "node": placement.node if placement else None,
            "state": placement.state if placement and placement.node else "stopped"}


def _problem(status: int, message: str, code: str | None = None,
             field: str | None = None) -> JSONResponse:
    """Every error: ``{"error": {"code", "message", "field"}}`` with its HTTP status."""
    return JSONResponse({"error": {"code": code or _CODES.get(status, "error"),
                                   "message": message, "field": field}}, status_code=status)


def _bearer(request: Request) -> str:
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise HTTPException(401, "no bearer token; pass Authorization: Bearer TOKEN "
                            "(`vmcluster` reads it from ~/.config/vmcluster/)")
    return token.strip()


def create_app(ctx: ApiContext) -> FastAPI:
    app = FastAPI(title="vmcluster", version=vmcluster.__version__,
                  openapi_url="/api/v1/openapi.json", docs_url="/api/v1/docs", redoc_url=None)

    async def admin(request: Request) -> str:
        token = _bearer(request)
        try:
            role = await asyncio.to_thread(ctx.role_of, token)
        except VmclusterError as exc:
            raise HTTPException(503, f"the store does not answer: {exc}") from exc
        if role != "admin":
            raise HTTPException(403, "this token is not an admin token of this cluster")
        return role

    @app.exception_handler(JoinRefused)
    async def on_refused(_request: Request, exc: JoinRefused) -> JSONResponse:
        return _problem(exc.status, str(exc), exc.code, exc.field)

    @app.exception_handler(VmclusterError)
    async def on_error(_request: Request, exc: VmclusterError) -> JSONResponse:
        if isinstance(exc, SpecError):  # a bad definition: what, which key, what to do
            hint = f" ({exc.hint})" if exc.hint else ""
            return _problem(422, exc.what + hint, "invalid", exc.field)
        if isinstance(exc, InputError):
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
        loc = [str(p) for p in first.get("loc", ()) if p != "body"]
        return _problem(422, f"{'.'.join(loc) or 'body'}: {first.get('msg', 'invalid')}",
                        "invalid", ".".join(loc) or None)

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
                                                      body.csr.encode())
        print(f"admitted {body.node} (etcd {'learner' if got['member'] else 'client'})",
              flush=True)
        return got

    @app.post("/api/v1/cluster/join-tokens")
    async def join_token(body: TokenRequest | None = None,
                         _role: str = Depends(admin)) -> dict[str, Any]:
        ttl = body.ttl_s if body is not None else JOIN_TOKEN_TTL_S
        token, expires = await asyncio.to_thread(new_join_token, ctx.state, ttl)
        digest = ca_hash(NodeCredentials(ctx.cfg.tls_dir).ca.read_bytes())
        url = api_url(ctx.cfg.api_listen[0], ctx.cfg.api_port)
        return {"token": token, "expires": expires, "ca_hash": digest,
                "join_command": join_command(url, token, digest)}

    def _spec() -> ClusterSpec:
        if ctx.state.spec_text() is None:
            raise HTTPException(503, "the cluster has no spec yet")
        return ctx.state.spec()

    def _submit(kind: str, args: dict[str, Any]) -> JSONResponse:
        it = intents.submit(ctx.state, kind, args, by="admin")
        return JSONResponse(it.to_json(), status_code=202,
                            headers={"Location": f"/api/v1/intents/{it.id}"})

    def _node_intent(kind: str, node: str) -> JSONResponse:
        if node not in {n.name for n in _spec().nodes}:
            raise JoinRefused(404, "not_found", f"no node {node!r} in the cluster", "node")
        return _submit(kind, {"node": node})

    @app.post("/api/v1/nodes/{node}/drain", status_code=202)
    async def node_drain(node: str, _role: str = Depends(admin)) -> JSONResponse:
        """Ask the manager to live-migrate every VM off ``node`` (an intent; 202)."""
        return await asyncio.to_thread(_node_intent, "drain", node)

    @app.post("/api/v1/nodes/{node}/resume", status_code=202)
    async def node_resume(node: str, _role: str = Depends(admin)) -> JSONResponse:
        """Put a drained or quarantined node back in service (an intent; 202)."""
        return await asyncio.to_thread(_node_intent, "resume", node)

    @app.post("/api/v1/vms/{vm}/migrate", status_code=202)
    async def vm_migrate(vm: str, body: MigrateRequest,
                         _role: str = Depends(admin)) -> JSONResponse:
        """Ask the manager to live-migrate ``vm`` to ``to`` (an intent; 202)."""
        spec = await asyncio.to_thread(_spec)
        if vm not in {v.name for v in spec.vms}:
            raise JoinRefused(404, "not_found", f"no VM {vm!r} in the cluster", "vm")
        if body.to not in {n.name for n in spec.nodes}:
            raise JoinRefused(422, "invalid", f"no node {body.to!r} in the cluster", "to")
        args = {"vm": vm, "to": body.to, **({"mode": "quick"} if body.mode == "quick" else {})}
        return await asyncio.to_thread(_submit, "migrate", args)

    def _vm_view(name: str) -> dict[str, Any]:
        rec = vms.get(ctx.state, name)
        if rec is None:
            raise JoinRefused(404, "not_found", f"no VM {name!r} is defined", "vm")
        return _vm_json(rec, ctx.state.placement(name))

    def _vm_list() -> dict[str, Any]:
        placements = ctx.state.placements()
        return {"vms": [_vm_json(r, placements.get(n))
                        for n, r in vms.records(ctx.state).items()]}

    def _define(body: dict[str, Any]) -> dict[str, Any]:
        name = body.get("name")
        if not isinstance(name, str) or not name:
            raise JoinRefused(422, "invalid", "a VM needs a name", "name")
        start = body.pop("start", False)
        if not isinstance(start, bool):
            raise JoinRefused(422, "invalid", "start must be true or false", "start")
        known = vms.records(ctx.state)
        if name in known:
            raise JoinRefused(409, "conflict", f"a VM named {name!r} is already defined", "name")
        defs = [r.definition for r in known.values()]
        default_volume = "volume" not in body
        if body.get("volume", "") is None:  # `"volume": null`: its disk in the file storage
            body = {k: v for k, v in body.items() if k != "volume"}
        spec = ctx.state.spec(definitions=[*defs, body])  # SpecError: 422, naming the key
        if default_volume and spec.volumes:
            # On the cluster's shared storage unless it says otherwise: a VM there can
            # migrate and fail over (a declared volume cannot make the definition invalid).
            body = {**body, "volume": spec.volumes[0].name}
        if spec.vm(name).address is not None:  # pinned, so later VMs never shift it
            body = {**body, "address": str(spec.vm(name).address)}
        rec = vms.define(ctx.state, body)
        out = _vm_json(rec, None)
        if start:
            vms.set_desired(ctx.state, name, "running")
            out["intent"] = intents.submit(ctx.state, "start", {"vm": name}, by="admin").to_json()
        return out

    @app.get("/api/v1/vms")
    async def vm_list(_role: str = Depends(admin)) -> dict[str, Any]:
        """Every VM: its definition, desired state, machine type and where it runs."""
        got: dict[str, Any] = await asyncio.to_thread(_vm_list)
        return got

    @app.post("/api/v1/vms", status_code=201)
    async def vm_define(body: dict[str, Any], _role: str = Depends(admin)) -> JSONResponse:
        """Define a VM: the keys of a spec file's ``[[vms]]`` table (``name``, ``owner``,
        ``memory_mib`` required), checked as the spec is; ``"start": true`` also starts it
        (an intent, under ``intent``). Without ``volume`` its disk goes on the cluster's
        first shared volume, if it has one (``"volume": null``: the file storage)."""
        got = await asyncio.to_thread(_define, dict(body))
        return JSONResponse(got, status_code=201,
                            headers={"Location": f"/api/v1/vms/{got['name']}"})

    @app.get("/api/v1/vms/{vm}")
    async def vm_get(vm: str, _role: str = Depends(admin)) -> dict[str, Any]:
        return await asyncio.to_thread(_vm_view, vm)

    @app.delete("/api/v1/vms/{vm}", status_code=202)
    async def vm_delete(vm: str, keep_disk: bool = False,
                        _role: str = Depends(admin)) -> JSONResponse:
        """Delete a stopped VM: its disk (unless ``keep_disk``), then its definition; an
        intent the manager carries out. 409 at once while it is placed on a node."""
        return await asyncio.to_thread(_delete, vm, keep_disk)

    def _delete(vm: str, keep_disk: bool) -> JSONResponse:
        view = _vm_view(vm)
        if view.get("node"):
            raise StoreConflict(f"{vm} runs on {view['node']}; stop it first "
                                f"(`vmcluster vm stop {vm}`)")
        return _submit("delete", {"vm": vm, "keep_disk": keep_disk})

    def _desire(vm: str, desired: str, kind: str, args: dict[str, Any]) -> JSONResponse:
        _vm_view(vm)
        vms.set_desired(ctx.state, vm, desired)
        return _submit(kind, args)

    @app.post("/api/v1/vms/{vm}/start", status_code=202)
    async def vm_start(vm: str, body: StartRequest | None = None,
                       _role: str = Depends(admin)) -> JSONResponse:
        """Run ``vm`` (desired state: running): the manager places and starts it (202)."""
        on = body.on if body is not None else None
        if on is not None and on not in {n.name for n in (await asyncio.to_thread(_spec)).nodes}:
            raise JoinRefused(422, "invalid", f"no node {on!r} in the cluster", "on")
        args = {"vm": vm, **({"on": on} if on else {})}
        return await asyncio.to_thread(_desire, vm, "running", "start", args)

    @app.post("/api/v1/vms/{vm}/stop", status_code=202)
    async def vm_stop(vm: str, _role: str = Depends(admin)) -> JSONResponse:
        """Stop ``vm`` (desired state: stopped): its QEMU quits, nothing restarts it (202)."""
        return await asyncio.to_thread(_desire, vm, "stopped", "stop", {"vm": vm})

    def _consolidation(plan: dict[str, Any]) -> JSONResponse:
        parsed = ConsolidationPlan.from_json(plan)
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
        return _submit("consolidate", {"plan": plan})

    @app.post("/api/v1/consolidations", status_code=202)
    async def consolidation_apply(body: PlanRequest,
                                  _role: str = Depends(admin)) -> JSONResponse:
        """Apply a consolidation plan (as ``lab consolidate --json`` prints it): the
        manager migrates, then powers the emptied nodes off (an intent; 202)."""
        return await asyncio.to_thread(_consolidation, body.plan)

    @app.get("/api/v1/intents/{intent_id}")
    async def intent_get(intent_id: str, _role: str = Depends(admin)) -> dict[str, Any]:
        it = await asyncio.to_thread(intents.get, ctx.state, intent_id)
        if it is None:
            raise JoinRefused(404, "not_found", f"no intent {intent_id}", "id")
        return it.to_json()

    @app.post("/api/v1/intents/{intent_id}/cancel")
    async def intent_cancel(intent_id: str, _role: str = Depends(admin)) -> dict[str, Any]:
        """Cancel: a pending intent at once, a running one at its next safe point (the VM
        in flight stays on its source)."""
        if await asyncio.to_thread(intents.get, ctx.state, intent_id) is None:
            raise JoinRefused(404, "not_found", f"no intent {intent_id}", "id")
        it = await asyncio.to_thread(intents.cancel, ctx.state, intent_id)
        return it.to_json()

    @app.post("/api/v1/nodes/{node}/leave")
    async def node_leave(node: str, _role: str = Depends(admin)) -> dict[str, Any]:
        got: dict[str, Any] = await asyncio.to_thread(leave, ctx.state, node)
        return got

    @app.get("/api/v1/events")
    async def events(after: int = 0, wait_s: float = 0.0, limit: int = 1000,
                     _role: str = Depends(admin)) -> Any:
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
        while True:  # bounded by wait_s
            got, _rev = ctx.state.events(after)
            if got or time.monotonic() >= deadline:
                break
            time.sleep(0.25)
        got = got[:limit]
        return {"events": [{"seq": seq, **rec} for seq, rec in got],
                "last": got[-1][0] if got else after}

    @app.get("/api/v1/health")
    async def health() -> dict[str, Any]:
        return {"ok": True, "node": ctx.cfg.node, "version": vmcluster.__version__}

    @app.get("/api/v1/cluster/status")
    async def cluster_status(_role: str = Depends(admin)) -> dict[str, Any]:
        return await asyncio.to_thread(ctx.status)

    return app


def _sockets(cfg: NodeConfig) -> list[socket.socket]:
    out = []
    for addr in cfg.api_listen:
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
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


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m vmcluster.node.api")
    ap.add_argument("--config", required=True)
    args = ap.parse_args(argv)
    try:
        cfg = load_config(args.config)
        creds = NodeCredentials(cfg.tls_dir)
        ctx = ApiContext(cfg, cfg.store(timeout_s=2.0, retry_s=5.0))
        socks = _sockets(cfg)
    except VmclusterError as exc:
        print(f"vmcluster api: {exc}", file=sys.stderr)
        return exc.exit_code
    done = threading.Event()
    threading.Thread(target=_publisher, args=(ctx, done), daemon=True).start()
    config = uvicorn.Config(
        create_app(ctx), ssl_certfile=str(creds.cert), ssl_keyfile=str(creds.key),
        ssl_ca_certs=str(creds.ca), ssl_cert_reqs=ssl.CERT_OPTIONAL, log_level="info",
        timeout_graceful_shutdown=5)
    uvicorn.Server(config).run(sockets=socks)
    done.set()
    return 0


if __name__ == "__main__":
    sys.exit(main())
