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
from typing import Any

import uvicorn
from fastapi import Depends, FastAPI, HTTPException, Request
from fastapi.responses import JSONResponse

import vmcluster
from vmcluster.errors import VmclusterError
from vmcluster.model.spec import parse_spec
from vmcluster.node.config import NodeConfig, load_config
from vmcluster.node.wire import exchange
from vmcluster.pki import NodeCredentials, token_hash
from vmcluster.store.election import current_leader
from vmcluster.store.etcd import EtcdClient
from vmcluster.store.state import ClusterState

__all__ = ["PUBLISH_S", "ApiContext", "create_app", "main"]

PUBLISH_S = 5.0
CRL_S = 1.0  # a revoked certificate is refused everywhere within about this


def api_url(address: str, port: int) -> str:
    return f"https://{address}:{port}"


@dataclass
class ApiContext:
    cfg: NodeConfig
    state: ClusterState

    @property
    def client(self) -> EtcdClient:
        return self.state.client

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
        into this host's ``tls/crl.pem`` (atomically) when it changed; the agent checks
        its callers against that file. True when it was written."""
        kv = self.client.get(self.state.key("crl"))
        if kv is None:
            return False
        path = NodeCredentials(self.cfg.tls_dir).crl
        try:
            if path.read_bytes() == kv.value:
                return False
        except OSError:
            pass
        tmp = path.with_suffix(".tmp")
        tmp.write_bytes(kv.value)
        tmp.replace(path)
        return True

    def role_of(self, token: str) -> str | None:
        kv = self.client.get(self.state.key("tokens", token_hash(token)))
        if kv is None:
            return None
        return str(kv.json().get("role", ""))

    def status(self) -> dict[str, Any]:
        """What ``vmcluster cluster status --json`` prints."""
        spec_text = self.state.spec_text()
        spec = parse_spec(spec_text, "<spec in etcd>") if spec_text else None
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


def create_app(ctx: ApiContext) -> FastAPI:
    app = FastAPI(title="vmcluster", version=vmcluster.__version__,
                  openapi_url="/api/v1/openapi.json", docs_url="/api/v1/docs", redoc_url=None)

    async def admin(request: Request) -> str:
        header = request.headers.get("authorization", "")
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token:
            raise HTTPException(401, "no bearer token; pass Authorization: Bearer TOKEN "
                                "(`vmcluster` reads it from ~/.config/vmcluster/)")
        try:
            role = await asyncio.to_thread(ctx.role_of, token.strip())
        except VmclusterError as exc:
            raise HTTPException(503, f"the store does not answer: {exc}") from exc
        if role != "admin":
            raise HTTPException(403, "this token is not an admin token of this cluster")
        return role

    @app.exception_handler(VmclusterError)
    async def on_error(_request: Request, exc: VmclusterError) -> JSONResponse:
        return JSONResponse({"detail": str(exc)}, status_code=503)

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
    """The host's record every PUBLISH_S, the revocation list every CRL_S."""
    last = -PUBLISH_S
    while True:
        now = time.monotonic()
        with contextlib.suppress(VmclusterError, OSError):
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
