"""Cluster shared volume I/O on the lab: direct vs redirected, the switch, and lost writes.

A two-node lab (Public, a 1 Gbit/s Heartbeat network that carries CSV
traffic, a 1 Gbit/s role-0 Storage network with the SAN on it) and one guest
whose disk is a region of the CSV LUN served over NBD. The guest's disk
writer writes 4 KiB blocks with O_DIRECT|O_DSYNC as fast as it can (its
``RATE 0`` command) and reports throughput and per-write latency (p50/p99)
from inside the guest (its ``STATS`` command). Phases: direct; node1's storage
path cut (I/O redirected through node2 over Heartbeat); path restored
(direct again). The longest I/O stall around each switch is the guest's own
``DISKSTALL`` report (or, if no write took over 200 ms, the window's max
latency); acknowledged writes lost = missing + corrupt blocks of
``check-disk`` at the end (must be 0). Prints a table and writes
bench/results/csv.json. Needs root.

    python bench/bench_csv.py [--seconds 10] [--rounds 2]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from vmcluster.csv.checkdisk import check_vm_disk
from vmcluster.lab.guestctl import DISKWRITER_PORT, guest_request
from vmcluster.lab.lab import lab_down, lab_up
from vmcluster.substrate.host.layout import LabLayout

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
bandwidth_mbps = 1000
[[networks]]
name = "Storage"
subnet = "198.18.4.0/24"
role = 0
bandwidth_mbps = 1000
[[nodes]]
name = "node1"
cores = 2
memory_mib = 2048
interfaces = { Public = "198.18.1.11", Heartbeat = "198.18.2.11", Storage = "198.18.4.11" }
[[nodes]]
name = "node2"
cores = 2
memory_mib = 2048
interfaces = { Public = "198.18.1.12", Heartbeat = "198.18.2.12", Storage = "198.18.4.12" }
[[volumes]]
name = "CSV1"
size_gib = 1
[[vms]]
name = "web"
owner = "node1"
memory_mib = 256
volume = "CSV1"
disk_mib = 64
dirty_mibps = 1
wws_mib = 8
"""
ROOT = Path(__file__).resolve().parents[1]
STALL = re.compile(rb"DISKSTALL ms=(\d+)")


def request(layout: LabLayout, addr: str, line: str, port: int = DISKWRITER_PORT) -> str:
    """One request line to the guest's disk writer, from the client namespace."""
    return guest_request(layout, addr, line, port)


def stats(layout: LabLayout, addr: str) -> dict[str, float]:
    reply = request(layout, addr, "STATS")
    return {k: float(v) for k, v in (kv.split("=") for kv in reply.split()[1:])}


def stalls(layout: LabLayout, since: dict[str, int]) -> list[int]:
    out = []
    for node in ("node1", "node2"):
        log = layout.serial_log("web", node)
        data = log.read_bytes() if log.exists() else b""
        out += [int(m.group(1)) for m in STALL.finditer(data[since.get(node, 0):])]
    return out


def sizes(layout: LabLayout) -> dict[str, int]:
    return {n: (layout.serial_log("web", n).stat().st_size
                if layout.serial_log("web", n).exists() else 0) for n in ("node1", "node2")}


def phase(layout: LabLayout, addr: str, seconds: float) -> dict[str, float]:
    stats(layout, addr)  # restart the guest's window
    time.sleep(seconds)
    s = stats(layout, addr)
    return {"kibps": s["kibps"], "iops": s["n"] / seconds, "p50_ms": s["p50_us"] / 1000,
            "p99_ms": s["p99_us"] / 1000, "max_ms": s["max_us"] / 1000}


def switch(sub: Any, layout: LabLayout, addr: str, up: bool) -> dict[str, Any]:
    before = sizes(layout)
    stats(layout, addr)
    sub.set_storage_path("node1", up)
    sw = list(sub.last_switches)
    time.sleep(2.0)
    window = stats(layout, addr)
    st = stalls(layout, before)
    return {"to": "direct" if up else "redirected",
            "switch_ms": round(sw[0]["ms"], 1) if sw else None,
            "paused_on_io_error": bool(sw and sw[0]["resumed"]),
            "longest_stall_ms": max([*st, window["max_us"] / 1000])}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--rounds", type=int, default=2)
    args = ap.parse_args()
    if os.geteuid() != 0:
        sys.exit("bench_csv needs root (the lab)")
    name = f"bc{os.getpid() % 100000}"
    layout = LabLayout(name)
    with tempfile.TemporaryDirectory() as tmp:
        spec = Path(tmp) / "bench.toml"
        spec.write_text(SPEC)
        try:
            sub = lab_up(spec, name, say=lambda m: print(m, file=sys.stderr))
            addr = str(sub.spec.vm("web").address)
            print(request(layout, addr, "RATE 0"), file=sys.stderr)
            rows: list[dict[str, Any]] = []
            switches: list[dict[str, Any]] = []
            for r in range(args.rounds):
                print(f"round {r + 1}: direct", file=sys.stderr)
                rows.append({"mode": "direct", "round": r + 1,
                             **phase(layout, addr, args.seconds)})
                switches.append(switch(sub, layout, addr, up=False))
                print(f"round {r + 1}: redirected", file=sys.stderr)
                rows.append({"mode": "redirected via node2 over Heartbeat", "round": r + 1,
                             **phase(layout, addr, args.seconds)})
                switches.append(switch(sub, layout, addr, up=True))
            request(layout, addr, "RATE 256")
            time.sleep(1.0)
            check = check_vm_disk(layout.lun("CSV1"), "CSV1", "web",
                                  [layout.serial_log("web", n) for n in ("node1", "node2")])
        finally:
            lab_down(layout)
    result = {
        "lab": "2 nodes, TCG guest 256 MiB, 4 KiB O_DIRECT|O_DSYNC writes, 1 Gbit/s tbf links",
        "phases": rows, "switches": switches,
        "longest_stall_ms": max(s["longest_stall_ms"] for s in switches),
        "acked": check.acked, "acked_lost": check.missing + check.corrupt,
        "missing": check.missing, "corrupt": check.corrupt,
    }
    print(f"{'mode':<38} {'KiB/s':>8} {'IOPS':>7} {'p50 ms':>7} {'p99 ms':>7} {'max ms':>7}")
    for row in rows:
        print(f"{row['mode']:<38} {row['kibps']:>8.0f} {row['iops']:>7.0f} {row['p50_ms']:>7.2f} "
              f"{row['p99_ms']:>7.2f} {row['max_ms']:>7.1f}")
    for s in switches:
        print(f"switch to {s['to']:<11} took {s['switch_ms']} ms, longest guest I/O stall "
              f"{s['longest_stall_ms']:.0f} ms, paused on I/O error: {s['paused_on_io_error']}")
    print(f"acknowledged blocks {check.acked}, lost {result['acked_lost']} "
          f"(missing {check.missing}, corrupt {check.corrupt})")
    out = ROOT / "bench" / "results" / "csv.json"
    out.write_text(json.dumps(result, indent=1) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
