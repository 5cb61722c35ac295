"""Live migration on the lab, measured, beside the model's prediction.

A two-node lab with one 256 MiB guest and a 1 Gbit/s (tc tbf) migration
network; the guest dirties its 128 MiB working set at three rates (idle,
moderate, near the link's bandwidth, set at run time with the workload's
``RATE`` command). For each rate the VM is migrated back and forth ``--runs``
times while the client namespace's echo loop measures the longest silence.
Prints a table and writes bench/results/migration.json. Needs root.

    python bench/bench_migration.py [--runs 2] [--rates 0,20,100]
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
from dataclasses import replace
from pathlib import Path

from vmcluster.lab.lab import lab_down, lab_up
from vmcluster.lab.layout import LabLayout
from vmcluster.lab.observe import migrate_observed
from vmcluster.policy.networks import Health
from vmcluster.policy.prediction import predict

SPEC = """
[cluster]
name = "bench"
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
[[nodes]]
name = "node1"
cores = 2
memory_mib = 2048
interfaces = { Public = "198.18.1.11", Heartbeat = "198.18.2.11", Migration = "198.18.3.11" }
[[nodes]]
name = "node2"
cores = 2
memory_mib = 2048
interfaces = { Public = "198.18.1.12", Heartbeat = "198.18.2.12", Migration = "198.18.3.12" }
[[vms]]
name = "vm"
owner = "node1"
memory_mib = 256
wws_mib = 128
dirty_mibps = 0
max_downtime_ms = 300
"""


def set_rate(layout: LabLayout, addr: str, mibps: float) -> None:
    code = ("import socket,sys;s=socket.create_connection((sys.argv[1],7777),5);"
            "s.sendall(('RATE %s\\n'%sys.argv[2]).encode());print(s.recv(100).decode().strip())")
    subprocess.run(["ip", "netns", "exec", layout.client_ns, sys.executable, "-c", code, addr,
                    str(mibps)], check=True, capture_output=True, timeout=20)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=2)
    ap.add_argument("--rates", default="0,20,100")
    args = ap.parse_args()
    if os.geteuid() != 0:
        sys.exit("bench_migration: needs root (the lab uses network namespaces)")
    rates = [float(r) for r in args.rates.split(",")]
    name = f"b{os.getpid()}"
    with tempfile.TemporaryDirectory() as tmp:
        spec_path = Path(tmp) / "bench.toml"
        spec_path.write_text(SPEC)
        t0 = time.monotonic()
        sub = lab_up(spec_path, name, say=lambda m: print(m, file=sys.stderr))
        up_s = time.monotonic() - t0
        rows = []
        try:
            addr = str(sub.spec.vm("vm").address)
            for rate in rates:
                set_rate(sub.layout, addr, rate)
                time.sleep(2.0)  # let the dirty rate settle
                for _ in range(args.runs):
                    source = sub.owner("vm") or "node1"
                    target = "node2" if source == "node1" else "node1"
                    spec = replace(sub.spec, vms=tuple(
                        replace(v, dirty_mibps=rate) for v in sub.spec.vms))
                    pred = predict(spec, Health(), "vm", target, source=source).result
                    r = migrate_observed(sub, "vm", target)
                    rows.append({
                        "dirty_mibps": rate, "ok": r.ok, "network": r.network,
                        "passes": r.passes, "sent_mib": round(r.sent_mib, 1),
                        "total_s": round(r.total_s, 3), "downtime_ms": r.downtime_ms,
                        "client_gap_ms": r.extra.get("client_gap_ms"),
                        "tcp_session_survived": r.extra.get("tcp_session_survived"),
                        "memory_ok": r.extra.get("memory_ok"),
                        "client_errors": r.extra.get("client_errors"),
                        "pred_total_s": round(pred.total_s, 3),
                        "pred_downtime_ms": round(pred.downtime_ms, 1),
                        "pred_passes": len(pred.passes),
                        "total_error_pct": round(100 * (pred.total_s - r.total_s) / r.total_s, 1)
                        if r.ok and r.total_s else None,
                    })
                    print(json.dumps(rows[-1]), file=sys.stderr)
        finally:
            lab_down(LabLayout(name))
    hdr = ("dirty MiB/s", "passes", "total s", "downtime ms", "client gap ms", "pred total s",
           "pred downtime ms", "total err %", "tcp", "mem")
    print(" | ".join(hdr))
    for r in rows:
        print(" | ".join(str(r[k]) for k in (
            "dirty_mibps", "passes", "total_s", "downtime_ms", "client_gap_ms", "pred_total_s",
            "pred_downtime_ms", "total_error_pct", "tcp_session_survived", "memory_ok")))
    summary = {}
    for rate in rates:
        errs = [abs(r["total_error_pct"]) for r in rows
                if r["dirty_mibps"] == rate and r["total_error_pct"] is not None]
        summary[str(rate)] = {"mean_abs_total_error_pct": round(statistics.mean(errs), 1)
                              if errs else None}
    out = Path(__file__).parent / "results" / "migration.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps({"lab_up_s": round(up_s, 2), "runs": rows, "summary": summary},
                              indent=1))
    print(f"lab up {up_s:.1f} s; wrote {out}")


if __name__ == "__main__":
    main()
