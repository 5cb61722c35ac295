"""The cluster API's read latency with many VMs defined.

A one-member etcd on loopback holds examples/lab.toml's cluster with ``--vms`` VM
definitions (and a placement each); the real API app (FastAPI on uvicorn, HTTPS with
a host certificate of a fresh cluster CA, its reads from the watch-fed cache) serves
it on 127.0.0.1. One client on a kept-alive HTTPS connection asks ``GET /api/v1/vms``
(and the other list reads) ``--requests`` times each, one request at a time.

Usage: python bench/bench_api.py [--vms 1000] [--requests 300]
Writes bench/results/api.json and prints a table. Measure on an unloaded machine.
"""

from __future__ import annotations

import argparse
import json
import shutil
import socket
import ssl
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import uvicorn

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from vmcluster.node.api import ApiContext, create_app  # noqa: E402
from vmcluster.node.config import NodeConfig  # noqa: E402
from vmcluster.pki import CertificateAuthority, NodeCredentials, token_hash  # noqa: E402
from vmcluster.store import EtcdClient, embedded  # noqa: E402
from vmcluster.store.etcd import Put  # noqa: E402
from vmcluster.store.state import ClusterState  # noqa: E402
from vmcluster.store.tokens import record  # noqa: E402

READS = ("/api/v1/vms", "/api/v1/nodes", "/api/v1/networks", "/api/v1/migrations")


def _populate(state: ClusterState, n_vms: int) -> None:
    state.put_spec((ROOT / "examples" / "lab.toml").read_text().split("[[vms]]")[0])
    ops: list[Put] = []
    for i in range(n_vms):
        name = f"vm{i:04d}"
        owner = f"node{1 + i % 3}"
        ops.append(Put(state.key("vms", name), json.dumps({
            "definition": {"name": name, "owner": owner, "memory_mib": 256, "vcpus": 1,
                           "address": f"198.18.1.{(i % 200) + 20}"},
            "desired": "running", "machine": "pc-q35-10.0", "seq": i}).encode()))
        ops.append(Put(state.key("placements", name),
                       json.dumps({"node": owner, "state": "running"}).encode()))
        if len(ops) >= 100:  # etcd's default max ops per transaction is 128
            state.client.txn([], ops)
            ops = []
    if ops:
        state.client.txn([], ops)
    for node in ("node1", "node2", "node3"):
        state.set_node_state(node, "up")
    state.client.put(state.key("tokens", token_hash("bench-token")),
                     record("bench", "read-only", "bench"))


def _percentile(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, round(q * (len(xs) - 1)))]


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--vms", type=int, default=1000)
    ap.add_argument("--requests", type=int, default=300)
    args = ap.parse_args()
    base = Path(tempfile.mkdtemp(prefix="vmc-bench-api-"))
    cluster = embedded(base / "etcd", host="127.0.0.1", timeout=60)
    server: uvicorn.Server | None = None
    try:
        state = ClusterState(EtcdClient(cluster.endpoints()), "bench")
        _populate(state, args.vms)
        ca = CertificateAuthority.create("bench")
        creds = NodeCredentials(base / "tls")
        creds.issue(ca, "node1", ["127.0.0.1"])
        cfg = NodeConfig(path=base / "vmclusterd.toml", node="node1", cluster="bench",
                         run_dir=base / "run", endpoints=tuple(cluster.endpoints()),
                         api_listen=("127.0.0.1",))
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
        config = uvicorn.Config(create_app(ApiContext(cfg, state)), ssl_certfile=str(creds.cert),
                                ssl_keyfile=str(creds.key), log_level="warning")
        server = uvicorn.Server(config)
        threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True).start()
        ctx = ssl.create_default_context(cafile=str(creds.ca))
        rows: list[dict[str, Any]] = []
        with httpx.Client(base_url=f"https://127.0.0.1:{port}", verify=ctx, timeout=30,
                          headers={"Authorization": "Bearer bench-token"}) as client:
            for _ in range(300):  # bounded: the server is up within a few seconds
                try:
                    if client.get("/api/v1/health").status_code == 200:
                        break
                except httpx.TransportError:
                    time.sleep(0.05)
            got = client.get("/api/v1/vms").json()["vms"]
            assert len(got) == args.vms, len(got)
            churn = threading.Event()

            def changer() -> None:  # a placement changes every 50 ms, as in a busy cluster
                i = 0
                while not churn.wait(0.05):
                    state.client.put(state.key("placements", "vm0000"), json.dumps(
                        {"node": f"node{1 + i % 3}", "state": "running"}).encode())
                    i += 1

            for path, busy in [(p, False) for p in READS] + [(READS[0], True)]:
                if busy:
                    churn.clear()
                    threading.Thread(target=changer, daemon=True).start()
                for _ in range(10):  # warm: the cache, the spec memo, the connection
                    warm = client.get(path)
                    if warm.status_code != 200:
                        raise SystemExit(f"{path}: {warm.status_code} {warm.text[:300]}")
                times = []
                for _ in range(args.requests):
                    t0 = time.perf_counter()
                    r = client.get(path)
                    times.append((time.perf_counter() - t0) * 1000)
                    r.raise_for_status()
                churn.set()
                rows.append({"path": path + (" (a change / 50 ms)" if busy else ""),
                             "requests": args.requests,
                             "p50_ms": round(statistics.median(times), 2),
                             "p99_ms": round(_percentile(times, 0.99), 2),
                             "max_ms": round(max(times), 2), "bytes": len(r.content)})
    finally:
        if server is not None:
            server.should_exit = True
            time.sleep(0.5)
        cluster.close()
        shutil.rmtree(base, ignore_errors=True)
    print(f"cluster API reads, {args.vms} VMs defined, one kept-alive HTTPS client")
    print(f"{'GET':<40} {'p50 ms':>8} {'p99 ms':>8} {'max ms':>8} {'bytes':>9}")
    for r in rows:
        print(f"{r['path']:<40} {r['p50_ms']:>8} {r['p99_ms']:>8} {r['max_ms']:>8} "
              f"{r['bytes']:>9}")
    out = ROOT / "bench" / "results" / "api.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"vms": args.vms, "reads": rows}, indent=2) + "\n")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
