"""vmclusterd in the lab: lab up time, restarting the daemon, and fencing a host whose
daemon stops (SIGSTOP) or dies (SIGKILL, and nothing restarts it).

One lab (examples/lab.toml) with a sampler asking every agent for its VMs every 100 ms:

* up: `lab up` of 3 hosts and 3 VMs, wall time;
* restart: SIGTERM a host's vmclusterd (what `systemctl restart` does first), start it
  again at once; stop = SIGTERM -> daemon gone, back = -> its agent answers again; kept =
  every QEMU of the host still the same process fence_window + 3 s later; spurious =
  node_down / vm_restarted events about it (0 expected: its heartbeats never stop);
* stop / kill: SIGSTOP or SIGKILL a host's vmclusterd; fence = signal -> the watchdog's
  record (every QEMU of the host dead); detect = -> the manager's node_down; restart = ->
  the last vm_restarted of the host's VMs; margin = first restart - fence (must be > 0);
  double runs = samples with one VM running on two hosts (0 expected).

Usage: python bench/bench_daemon.py [--restarts 3] [--stops 2] [--kills 2]
Writes bench/results/daemon.json and prints a table. Run it alone on the machine.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import statistics
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from bench_failover import events_after, last_seq, settle, wait_event  # noqa: E402

from vmcluster.lab.faults import start_node  # noqa: E402
from vmcluster.lab.hosts import daemon_pids  # noqa: E402
from vmcluster.lab.lab import lab_down, lab_up  # noqa: E402
from vmcluster.lab.sampler import RunSampler  # noqa: E402
from vmcluster.lab.services import LabStore, lab_store  # noqa: E402
from vmcluster.model.spec import load_spec  # noqa: E402
from vmcluster.substrate.host.client import AgentClient  # noqa: E402
from vmcluster.substrate.host.layout import LabLayout  # noqa: E402

SPEC = ROOT / "examples" / "lab.toml"


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[-1].split()[0] != "Z"
    except OSError:
        return False


def _qemus(layout: LabLayout, node: str) -> dict[str, int]:
    listed = AgentClient(layout, node).call("list")["vms"]
    return {v["vm"]: int(v["pid"]) for v in listed if v["role"] == "run"}


def _fences(layout: LabLayout, node: str) -> list[dict[str, Any]]:
    path = layout.host_state_dir(node) / "log" / "fenced.jsonl"
    return [json.loads(x) for x in path.read_text().splitlines()] if path.exists() else []


def restart_trial(layout: LabLayout, store: LabStore, sampler: RunSampler, vms: list[str],
                  nodes: list[str], node: str, fence_s: float) -> dict[str, Any]:
    settle(store, sampler, vms, nodes)
    before = _qemus(layout, node)
    seq = last_seq(store)
    (daemon,) = daemon_pids(layout, node)["vmclusterd"]
    t0 = time.monotonic()
    os.kill(daemon, signal.SIGTERM)
    while _alive(daemon):
        time.sleep(0.01)
    stopped = time.monotonic()
    start_node(layout, node)
    back = time.monotonic()
    time.sleep(fence_s + 3.0)
    spurious = [rec for _, rec in events_after(store, seq)
                if rec["kind"] in ("node_down", "vm_restarted")]
    return {"trial": "restart", "node": node, "stop_s": round(stopped - t0, 3),
            "back_s": round(back - stopped, 3), "vms": sorted(before),
            "kept": _qemus(layout, node) == before, "spurious": len(spurious)}


def fence_trial(kind: str, layout: LabLayout, store: LabStore, sampler: RunSampler,
                vms: list[str], nodes: list[str], node: str) -> dict[str, Any]:
    where = settle(store, sampler, vms, nodes)
    lost = sorted(vm for vm, n in where.items() if n == node)
    fenced = len(_fences(layout, node))
    seq = last_seq(store)
    doubles = len(sampler.doubles)
    (daemon,) = daemon_pids(layout, node)["vmclusterd"]
    sig = signal.SIGSTOP if kind == "stop" else signal.SIGKILL
    t0 = time.time()
    os.kill(daemon, sig)
    restarts = [wait_event(store, seq, 90, kind="vm_restarted", vm=vm) for vm in lost]
    down = wait_event(store, seq, 30, kind="node_down", peer=node)
    records = _fences(layout, node)[fenced:]
    with contextlib.suppress(ProcessLookupError):
        os.kill(daemon, signal.SIGCONT)
    fence = records[0]["at"] if records else None
    first = min((r["at"] for r in restarts if r), default=None)
    last = max((r["at"] for r in restarts if r), default=None)
    row = {"trial": kind, "node": node, "vms": lost,
           "fence_s": None if fence is None else round(fence - t0, 3),
           "detect_s": None if down is None else round(down["at"] - t0, 3),
           "restart_s": None if last is None else round(last - t0, 3),
           "margin_s": None if fence is None or first is None else round(first - fence, 3),
           "killed": [k["vm"] for k in records[0]["killed"]] if records else []}
    start_node(layout, node)
    wait_event(store, seq, 60, kind="node_up", peer=node)
    # Trials are independent: forget the failure history (no flapping quarantine).
    store.call(lambda: store.state.set_node_state(node, "up", None, failures=[],
                                                 failed=False))
    row["double_runs"] = len(sampler.doubles) - doubles
    return row


def _summary(rows: list[dict[str, Any]], key: str) -> str:
    got = [r[key] for r in rows if r.get(key) is not None]
    if not got:
        return "-"
    return f"{min(got):.2f} / {statistics.median(got):.2f} / {max(got):.2f}"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--restarts", type=int, default=3)
    ap.add_argument("--stops", type=int, default=2)
    ap.add_argument("--kills", type=int, default=2)
    args = ap.parse_args()
    spec = load_spec(SPEC)
    vms = [v.name for v in spec.vms]
    nodes = [n.name for n in spec.nodes]
    layout = LabLayout(f"bd{os.getpid()}"[:12])
    rows: list[dict[str, Any]] = []
    try:
        t0 = time.monotonic()
        lab_up(SPEC, layout.name, say=lambda _m: None)
        up_s = time.monotonic() - t0
        with lab_store(layout) as store, RunSampler(layout, nodes) as sampler:
            for i in range(args.restarts):
                rows.append(restart_trial(layout, store, sampler, vms, nodes,
                                          nodes[i % len(nodes)], spec.cluster.fence_window_s))
                print(json.dumps(rows[-1]), flush=True)
            for kind, n in (("stop", args.stops), ("kill", args.kills)):
                for i in range(n):
                    where = settle(store, sampler, vms, nodes)
                    victim = sorted(set(where.values()))[i % len(set(where.values()))]
                    rows.append(fence_trial(kind, layout, store, sampler, vms, nodes, victim))
                    print(json.dumps(rows[-1]), flush=True)
            doubles = len(sampler.doubles)
    finally:
        lab_down(layout)
    out = {"lab_up_s": round(up_s, 2), "fence_window_s": spec.cluster.fence_window_s,
           "trials": rows, "double_runs": doubles}
    path = ROOT / "bench" / "results" / "daemon.json"
    path.write_text(json.dumps(out, indent=1))
    restarts = [r for r in rows if r["trial"] == "restart"]
    print(f"\nlab up (3 hosts, 3 VMs): {up_s:.1f} s; fence window "
          f"{spec.cluster.fence_window_s:.1f} s; min / median / max over trials")
    print(f"restart x{len(restarts)}: stop {_summary(restarts, 'stop_s')} s, back "
          f"{_summary(restarts, 'back_s')} s, VMs kept {sum(r['kept'] for r in restarts)}"
          f"/{len(restarts)}, spurious failovers {sum(r['spurious'] for r in restarts)}")
    print(f"{'trial':8} {'n':>2} {'fence s':>18} {'detect s':>18} {'restart s':>18} "
          f"{'margin s':>18} {'doubles':>7}")
    for kind in ("stop", "kill"):
        got = [r for r in rows if r["trial"] == kind]
        if got:
            print(f"{kind:8} {len(got):>2} {_summary(got, 'fence_s'):>18} "
                  f"{_summary(got, 'detect_s'):>18} {_summary(got, 'restart_s'):>18} "
                  f"{_summary(got, 'margin_s'):>18} {sum(r['double_runs'] for r in got):>7}")
    print(f"double runs seen by the sampler: {doubles}; wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
