"""A planned drain beside the real one, on the lab: the same targets, and how close the time.

A three-node lab whose first node runs three 256 MiB guests (dirtying 0, 8 and 20 MiB/s
of a 64 MiB working set) over a 1 Gbit/s (tc tbf) migration network. Each round asks
``vmcluster plan drain node1`` (the live cluster's plan: where each VM goes, in which
mode, when each move starts and ends, one at a time as the drain moves them), then
drains node1 for real (``vmcluster node drain``: the manager's intent; its own start and
end times), then resumes node1 and moves the VMs back for the next round. A row per
round: planned and measured seconds, the error, whether every VM went where the plan
said. Prints a table and writes bench/results/drain.json. Needs root.

    python bench/bench_drain.py [--rounds 3] [--out bench/results/drain.json]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from vmcluster.lab.lab import lab_down, lab_up

NODE = """
[[nodes]]
name = "node{i}"
cores = 2
memory_mib = 2048
interfaces = {{ Public = "198.18.1.1{i}", Heartbeat = "198.18.2.1{i}", \
Migration = "198.18.3.1{i}" }}
"""
VM = """
[[vms]]
name = "{name}"
owner = "node1"
memory_mib = 256
wws_mib = 64
dirty_mibps = {rate}
"""
SPEC = """
[cluster]
name = "drain"
[[networks]]
name = "Public"
subnet = "198.18.1.0/24"
gateway = "198.18.1.1"
[[networks]]
name = "Heartbeat"
subnet = "198.18.2.0/24"
[[networks]]
name = "Migration"
subnet = "198.18.3.0/24"
bandwidth_mbps = 1000
""" + "".join(NODE.format(i=i) for i in (1, 2, 3)) + "".join(
    VM.format(name=n, rate=r) for n, r in (("quiet", 0), ("web", 8), ("db", 20)))


def vmc(lab: str, *args: str, timeout: float = 600) -> dict[str, Any]:
    """One vmcluster command on the lab, its JSON; exits the bench on failure."""
    got = subprocess.run([sys.executable, "-m", "vmcluster", *args, "--lab", lab, "--json"],
                         capture_output=True, text=True, timeout=timeout)
    if got.returncode != 0:
        sys.exit(f"bench_drain: vmcluster {' '.join(args)} failed: {got.stderr.strip()}")
    return dict(json.loads(got.stdout))


def one_round(lab: str) -> dict[str, Any]:
    planned = vmc(lab, "plan", "drain", "node1", timeout=60)["plan"]
    t0 = time.monotonic()
    real = vmc(lab, "node", "drain", "node1")
    wall = time.monotonic() - t0
    want = {m["vm"]: m["target"] for m in planned["migrations"]}
    got = {m["vm"]: m["target"] for m in real["moved"]}
    took = float(real["took_s"])
    pred = float(planned["predicted_end_s"])
    return {"planned_s": pred, "measured_s": took, "command_s": round(wall, 2),
            "error_pct": round(100.0 * (pred - took) / took, 1),
            "same_targets": want == got, "planned": want, "moved": got,
            "migrations_s": [m["total_s"] for m in real["moved"]],
            "planned_moves": planned["schedule"], "failed": real["failed"]}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "drain.json")
    args = ap.parse_args()
    if os.geteuid() != 0:
        sys.exit("bench_drain: needs root (the lab uses network namespaces)")
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp:
        spec_path = Path(tmp) / "drain.toml"
        spec_path.write_text(SPEC)
        sub = lab_up(spec_path, f"d{os.getpid()}", say=lambda m: print(m, file=sys.stderr))
        lab = sub.layout.name
        try:
            time.sleep(5.0)  # the hosts' first load reports
            for _ in range(args.rounds):
                row = one_round(lab)
                rows.append(row)
                print(json.dumps(row), file=sys.stderr)
                vmc(lab, "node", "resume", "node1", timeout=60)
                for vm in row["moved"]:
                    vmc(lab, "vm", "migrate", vm, "--to", "node1")
        finally:
            lab_down(sub.layout)
    print(f"{'round':>5} | {'planned s':>9} | {'measured s':>10} | {'error %':>7} | "
          f"{'same targets':>12}")
    for i, r in enumerate(rows, 1):
        print(f"{i:>5} | {r['planned_s']:>9.2f} | {r['measured_s']:>10.2f} | "
              f"{r['error_pct']:>7.1f} | {r['same_targets']!s:>12}")
    errs = [abs(r["error_pct"]) for r in rows]
    if errs:
        print(f"mean |error| {statistics.mean(errs):.1f} %, max {max(errs):.1f} %")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"rounds": rows}, indent=1))
    print(f"wrote {args.out}", file=sys.stderr)


if __name__ == "__main__":
    main()
