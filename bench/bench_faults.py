"""The whole fault campaign on a lab of its own: one row per scenario, JSON for the record.

Brings up examples/lab.toml (or --spec), runs every scenario of
:mod:`vmcluster.lab.chaos` (or those named) ``--passes`` times from a settled lab,
with a sampler asking every host's QEMUs every 50 ms throughout, checks every VM's
disk after each, and takes the lab down. Prints the table and, per scenario, the
median and worst of each figure over the passes.

Usage: python bench/bench_faults.py [--passes 1] [--scenario NAME ...] [--ci]
Writes bench/results/faults.json.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from vmcluster.lab.chaos import pick, run_campaign, table  # noqa: E402
from vmcluster.lab.lab import lab_down, lab_up  # noqa: E402
from vmcluster.lab.services import lab_store  # noqa: E402
from vmcluster.substrate.host.layout import LabLayout  # noqa: E402


def summary(rows: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per scenario: passes, failures, and each figure's median and worst over the passes."""
    out: dict[str, dict[str, Any]] = {}
    for r in rows:
        s = out.setdefault(r["scenario"], {"runs": 0, "failed": 0, "double_runs": 0,
                                           "lost_writes": 0, "figures": {}})
        s["runs"] += 1
        s["failed"] += not r["passed"]
        s["double_runs"] += r["double_runs"]
        s["lost_writes"] += r["lost_writes"]
        for k, v in r["figures"].items():
            if isinstance(v, (int, float)):
                s["figures"].setdefault(k, []).append(v)
    for s in out.values():
        s["figures"] = {k: {"median": round(statistics.median(v), 3), "max": max(v)}
                        for k, v in s["figures"].items()}
    return out


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--passes", type=int, default=1)
    ap.add_argument("--scenario", action="append", default=[])
    ap.add_argument("--ci", action="store_true", help="only the CI subset")
    ap.add_argument("--spec", type=Path, default=ROOT / "examples" / "lab.toml")
    args = ap.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("the lab needs root")
    scenarios = pick(args.scenario, args.ci)
    layout = LabLayout(f"bq{os.getpid() % 100000}")
    rows: list[dict[str, Any]] = []
    t0 = time.monotonic()
    try:
        sub = lab_up(args.spec.resolve(), layout.name, say=lambda m: print(m, file=sys.stderr))
        with lab_store(layout) as store:
            for i in range(args.passes):
                print(f"pass {i + 1} of {args.passes}", file=sys.stderr)
                got = run_campaign(sub, store, scenarios,
                                   say=lambda m: print(m, file=sys.stderr, flush=True))
                for line in table(got):
                    print(line)
                rows += [{"pass": i + 1, **r.to_json()} for r in got]
    finally:
        lab_down(layout)
    took = round(time.monotonic() - t0, 1)
    doc = {"spec": str(args.spec), "passes": args.passes, "seconds": took, "rows": rows,
           "summary": summary(rows), "passed": all(r["passed"] for r in rows)}
    res = ROOT / "bench" / "results" / "faults.json"
    res.parent.mkdir(parents=True, exist_ok=True)
    res.write_text(json.dumps(doc, indent=1))
    print(f"{'scenario':<22}{'runs':>5}{'failed':>7}{'doubles':>8}{'lost':>6}  figures "
          "(median / max)")
    for name, s in doc["summary"].items():
        figs = ", ".join(f"{k} {v['median']}/{v['max']}" for k, v in s["figures"].items())
        print(f"{name:<22}{s['runs']:>5}{s['failed']:>7}{s['double_runs']:>8}"
              f"{s['lost_writes']:>6}  {figs or '-'}")
    print(f"{len(rows)} rows in {took} s; passed: {doc['passed']}")
    print(f"wrote {res}")
    return 0 if doc["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
