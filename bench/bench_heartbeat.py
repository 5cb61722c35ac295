"""Heartbeat detection time and spurious route-downs under CPU load, on loopback.

Three heartbeat daemons (separate processes, ``python -m vmcluster.heartbeat.daemon``)
on two networks (127.70.1.x and 127.70.2.x). For each setting (delay x threshold):

* detection: SIGKILL one daemon; time until each survivor reports every route to
  it down (i.e. the node down), from the kill (CLOCK_MONOTONIC in all processes);
* spurious: with no fault, busy loops on every core for ``--load-s`` seconds;
  count route-down events (any is a spurious failover trigger).

Usage: python bench/bench_heartbeat.py [--trials 5] [--load-s 20] [--quick]
Writes bench/results/heartbeat.json and prints a table.
"""

from __future__ import annotations

import argparse
import json
import os
import queue
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from vmcluster.heartbeat.auth import new_key_file

ROOT = Path(__file__).resolve().parents[1]
NODES = ("n1", "n2", "n3")
NETS = ("A", "B")


def addr(node: str, net: str) -> str:
    return f"127.70.{NETS.index(net) + 1}.{NODES.index(node) + 1}"


def free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind((addr("n1", "A"), 0))
        return int(s.getsockname()[1])


# The cluster's heartbeat key: every daemon seals and checks its datagrams with it
# (written by main() into a temporary directory it removes).
KEY_FILE = Path("heartbeat.key")


class Daemon:
    def __init__(self, node: str, port: int, delay_ms: int, threshold: int) -> None:
        argv = [sys.executable, "-m", "vmcluster.heartbeat.daemon", "--cluster", "bench",
                "--node", node, "--delay-ms", str(delay_ms), "--threshold", str(threshold),
                "--duration", "600", "--key-file", str(KEY_FILE)]  # fmt: skip
        for net in NETS:
            argv += ["--bind", f"{net}={addr(node, net)}:{port}"]
            for peer in NODES:
                if peer != node:
                    argv += ["--peer", f"{peer}@{net}={addr(peer, net)}:{port}"]
        env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
        self.node = node
        self.proc = subprocess.Popen(argv, stdout=subprocess.PIPE, text=True, env=env)
        self.events: queue.Queue[dict[str, Any]] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.events.put(json.loads(line))

    def drain(self) -> list[dict[str, Any]]:
        out = []
        while True:
            try:
                out.append(self.events.get_nowait())
            except queue.Empty:
                return out

    def wait_for(self, pred: Any, timeout: float) -> dict[str, Any] | None:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            try:
                ev = self.events.get(timeout=0.05)
            except queue.Empty:
                continue
            if pred(ev):
                return ev
        return None

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=5)


def start_all(delay_ms: int, threshold: int) -> list[Daemon]:
    port = free_udp_port()
    ds = [Daemon(n, port, delay_ms, threshold) for n in NODES]
    for d in ds:
        if d.wait_for(lambda e: e["event"] == "started", 20) is None:
            raise SystemExit(f"daemon {d.node} did not start")
    return ds


def detection_trial(delay_ms: int, threshold: int) -> list[float]:
    ds = start_all(delay_ms, threshold)
    try:
        time.sleep(delay_ms * threshold / 1000 + 1.0)  # past the start-up grace window
        pre = [e for d in ds for e in d.drain() if e["event"] == "route" and not e["up"]]
        if pre:
            raise SystemExit(f"route went down before the fault: {pre}")
        victim = ds[2]
        t_kill = time.monotonic()
        victim.proc.send_signal(signal.SIGKILL)
        victim.proc.wait(timeout=5)
        out = []
        for d in ds[:2]:
            seen: dict[str, float] = {}
            while len(seen) < len(NETS):
                ev = d.wait_for(
                    lambda e: e["event"] == "route" and e["peer"] == victim.node and not e["up"],
                    delay_ms * threshold / 1000 * 3 + 10,
                )
                if ev is None:
                    raise SystemExit(f"{d.node} never saw {victim.node} down")
                seen[ev["network"]] = ev["mono"]
            out.append(max(seen.values()) - t_kill)
        return out
    finally:
        for d in ds:
            d.stop()


def load_trial(delay_ms: int, threshold: int, load_s: float) -> dict[str, Any]:
    ds = start_all(delay_ms, threshold)
    burners: list[subprocess.Popen[bytes]] = []
    try:
        time.sleep(delay_ms * threshold / 1000 + 0.5)
        for d in ds:
            d.drain()
        code = f"import time\nend = time.monotonic() + {load_s}\nwhile time.monotonic() < end: pass"
        burners = [
            subprocess.Popen([sys.executable, "-c", code]) for _ in range(os.cpu_count() or 2)
        ]
        for b in burners:
            b.wait(timeout=load_s + 30)
        time.sleep(0.5)
        downs = [e for d in ds for e in d.drain() if e["event"] == "route" and not e["up"]]
        return {"load_s": load_s, "burners": len(burners), "spurious_route_downs": len(downs)}
    finally:
        for b in burners:
            if b.poll() is None:
                b.kill()
                b.wait(timeout=5)
        for d in ds:
            d.stop()


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--trials", type=int, default=5)
    ap.add_argument("--load-s", type=float, default=20.0)
    ap.add_argument("--quick", action="store_true", help="only the default 250 ms x 8")
    args = ap.parse_args()
    global KEY_FILE
    keys = tempfile.TemporaryDirectory(prefix="vmc-bench-hb-")
    KEY_FILE = Path(keys.name) / "heartbeat.key"
    new_key_file(KEY_FILE)
    try:
        return _run(args)
    finally:
        keys.cleanup()


def _run(args: argparse.Namespace) -> int:
    configs = [(250, 8)] if args.quick else [(250, 8), (1000, 10), (100, 5)]
    rows = []
    for delay_ms, threshold in configs:
        print(f"{delay_ms} ms x {threshold}: detection", end="", flush=True)
        times: list[float] = []
        for _ in range(args.trials):
            times += detection_trial(delay_ms, threshold)
            print(".", end="", flush=True)
        print(" load", end="", flush=True)
        load = load_trial(delay_ms, threshold, args.load_s)
        print(" done", flush=True)
        rows.append(
            {
                "delay_ms": delay_ms,
                "threshold": threshold,
                "window_s": delay_ms * threshold / 1000,
                "detection_s": {
                    "n": len(times),
                    "min": round(min(times), 3),
                    "median": round(statistics.median(times), 3),
                    "max": round(max(times), 3),
                },
                **load,
            }
        )
    print()
    print(f"{'setting':>12} {'window':>7} {'detect min':>10} {'median':>7} {'max':>6} "
          f"{'spurious (load)':>16}")  # fmt: skip
    for r in rows:
        d = r["detection_s"]
        print(
            f"{r['delay_ms']:>6} ms x{r['threshold']:>2} {r['window_s']:>6.2f}s "
            f"{d['min']:>9.3f}s {d['median']:>6.3f}s {d['max']:>5.3f}s "
            f"{r['spurious_route_downs']:>7} in {r['load_s']:.0f}s"
        )
    out = ROOT / "bench/results/heartbeat.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    result = {
        "bench": "heartbeat",
        "machine": {"cpus": os.cpu_count()},
        "nodes": len(NODES),
        "networks": len(NETS),
        "trials": args.trials,
        "results": rows,
    }
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"\nwrote {out.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
