"""Two live migrations sharing one link: the simulator's prediction beside the real ones.

A two-node lab (1 Gbit/s tc tbf migration network, TLS) with two 256 MiB guests on
node1. Each round both are migrated to the other node at once, by two ``vmcluster vm
migrate --lab --json`` processes started together (the real path: each measures its
guest, chooses its mode and drives its own migration). Each migration's start is
read back from QEMU's own times (its STOP event less what it ran before the pause),
and the simulator (:func:`vmcluster.control.timing.concurrent`: max-min sharing of the
link, each migration's mode chosen as the cluster chooses it, on the dirty profile its
QEMU measured) is given the same starts. Printed per migration: the real total, the
simulator's with the link shared, and the model's alone (what each migration predicted
for itself). Writes bench/results/shared_link.json. Needs root.

    python bench/bench_shared_link.py [--rounds 5] [--rate 0]
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
from typing import Any

from bench_migration import SPEC as ONE_VM
from bench_migration import set_rate

from vmcluster.control.timing import Move, concurrent
from vmcluster.lab.lab import lab_down, lab_up
from vmcluster.substrate.host.layout import LabLayout

# bench_migration's two hosts and networks (TLS on, one channel, the 1 Gbit/s link), two VMs
SPEC = (ONE_VM[:ONE_VM.index("[[vms]]")].replace("{tls}", "true").replace("{channels}", "1")
        .replace("{bandwidth}", "bandwidth_mbps = 1000") + "".join(
            f'[[vms]]\nname = "{vm}"\nowner = "node1"\nmemory_mib = 256\nwws_mib = 128\n'
            for vm in ("vm1", "vm2")))
SRC = str(Path(__file__).resolve().parents[1] / "src")


def migrate_both(lab: str, moves: list[tuple[str, str]]) -> list[dict[str, Any]]:
    """Start one CLI migration per move at once; their JSON results, in order."""
    procs = [subprocess.Popen(
        [sys.executable, "-m", "vmcluster", "vm", "migrate", vm, "--to", target, "--json",
         "--lab", lab], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**os.environ, "PYTHONPATH": SRC}) for vm, target in moves]
    out = []
    for p, (vm, _) in zip(procs, moves, strict=True):
        stdout, stderr = p.communicate(timeout=300)
        try:
            out.append(json.loads(stdout.strip().splitlines()[-1]))
        except (ValueError, IndexError):
            out.append({"vm": vm, "ok": False,
                        "error": (stderr.strip().splitlines() or ["no output"])[-1]})
    return out


def started_at(r: dict[str, Any]) -> float | None:
    """When QEMU began migrating (wall clock): its STOP less what ran before it."""
    paused, total, down = r.get("paused_at"), r.get("total_s"), r.get("downtime_ms")
    if paused is None or total is None or down is None:
        return None
    return float(paused) - (float(total) - float(r.get("qemu_downtime_ms") or down) / 1000.0)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--rate", type=float, default=0.0, help="each guest's dirty rate, MiB/s")
    args = ap.parse_args()
    if os.geteuid() != 0:
        sys.exit("bench_shared_link: needs root (the lab uses network namespaces)")
    name = f"s{os.getpid()}"
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp:
        spec_path = Path(tmp) / "shared.toml"
        spec_path.write_text(SPEC)
        sub = lab_up(spec_path, name, say=lambda m: print(m, file=sys.stderr))
        try:
            for vm in ("vm1", "vm2"):
                set_rate(sub.layout, str(sub.spec.vm(vm).address), args.rate)
            time.sleep(2.0)
            for rnd in range(args.rounds):
                where = {vm: sub.owner(vm) or "node1" for vm in ("vm1", "vm2")}
                moves = [(vm, "node2" if where[vm] == "node1" else "node1")
                         for vm in ("vm1", "vm2")]
                got = migrate_both(name, moves)
                starts = [started_at(r) for r in got]
                if not all(r.get("ok") for r in got) or None in starts:
                    for r in got:
                        print(json.dumps({"round": rnd, **r}), file=sys.stderr)
                    rows += [{"round": rnd, "vm": r.get("vm"), "ok": False,
                              "error": r.get("error")} for r in got]
                    continue
                t0 = min(s for s in starts if s is not None)
                spec = replace(sub.spec, vms=tuple(
                    replace(v, owner=where[v.name],
                            dirty_mibps=float(r["profile"]["dirty_mibps"]),
                            wws_mib=float(r["profile"]["wws_mib"]))
                    for v, r in zip(sub.spec.vms, got, strict=True)))
                sim = concurrent(spec, [Move(vm, tgt, (s or t0) - t0)
                                        for (vm, tgt), s in zip(moves, starts, strict=True)])
                for r, s, t in zip(got, starts, sim, strict=True):
                    rows.append({
                        "round": rnd, "vm": r["vm"], "ok": True, "mode": r.get("mode"),
                        "sim_mode": t.mode, "start_s": round((s or t0) - t0, 3),
                        "total_s": round(float(r["total_s"]), 3),
                        "shared_pred_s": round(t.total_s, 3),
                        "alone_pred_s": r.get("predicted_total_s"),
                        "shared_err_pct": round(100 * (t.total_s - float(r["total_s"]))
                                                / float(r["total_s"]), 1),
                        "alone_err_pct": round(100 * (float(r["predicted_total_s"])
                                                      - float(r["total_s"]))
                                               / float(r["total_s"]), 1)
                        if r.get("predicted_total_s") else None,
                        "downtime_ms": r.get("downtime_ms"),
                        "measured_dirty_mibps": r["profile"]["dirty_mibps"],
                        "memory_ok": r.get("memory_ok"),
                    })
                    print(json.dumps(rows[-1]), file=sys.stderr)
        finally:
            lab_down(LabLayout(name))
    ok = [r for r in rows if r["ok"]]
    cols = ["round", "vm", "mode", "start_s", "total_s", "shared_pred_s", "shared_err_pct",
            "alone_pred_s", "alone_err_pct", "downtime_ms", "memory_ok"]
    print(" | ".join(cols))
    for r in ok:
        print(" | ".join(str(r.get(c)) for c in cols))
    summary = {
        "rate_mibps": args.rate, "rounds": args.rounds, "migrations": len(rows),
        "ok": len(ok),
        "shared_mean_abs_err_pct": round(statistics.mean(abs(r["shared_err_pct"])
                                                         for r in ok), 1) if ok else None,
        "alone_mean_abs_err_pct": round(statistics.mean(abs(r["alone_err_pct"]) for r in ok
                                                        if r["alone_err_pct"] is not None), 1)
        if ok else None,
    }
    print(f"{summary['ok']}/{summary['migrations']} migrations ok; mean |error| of the total: "
          f"shared link (simulator) {summary['shared_mean_abs_err_pct']} %, "
          f"as if alone (model) {summary['alone_mean_abs_err_pct']} %")
    out = Path(__file__).parent / "results" / "shared_link.json"
    out.write_text(json.dumps({"summary": summary, "runs": rows}, indent=1))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
