"""The whole fault campaign on a lab of its own: one row per scenario, JSON for the record.

Brings up examples/lab.toml (or --spec), runs every scenario of
:mod:`vmcluster.lab.chaos` (or those named) ``--passes`` times from a settled lab, with
a sampler asking every host's QEMUs every 50 ms throughout, checks every VM's disk after
each, and takes the lab down; scenarios that need a lab of another size (the 2+2 split:
examples/lab4.toml) run on a second lab afterwards. Prints the table and, per scenario,
the median and worst of each figure over the passes. The migration fault matrix (process
x signal x phase, 45 cells) is shared out among the passes, so that each cell runs in
one of them (``--every-cell``: in every pass); every other scenario runs in every pass.

Usage: python bench/bench_faults.py [--passes 1] [--scenario NAME ...] [--ci] [--every-cell]
Writes bench/results/faults.json.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from vmcluster.lab.chaos import Scenario, pick, run_campaign, table  # noqa: E402
from vmcluster.lab.lab import lab_down, lab_up  # noqa: E402
from vmcluster.lab.services import lab_store  # noqa: E402
from vmcluster.model.spec import load_spec  # noqa: E402
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


def run_lab(spec: Path, passes: int, select: Callable[[int], list[Scenario]]
            ) -> list[dict[str, Any]]:
    """Bring a lab of ``spec`` up, run ``select(i)``'s scenarios in pass ``i`` of
    ``passes``, take it down; the rows."""
    layout = LabLayout(f"bq{os.getpid() % 100000}")
    rows: list[dict[str, Any]] = []
    try:
        sub = lab_up(spec.resolve(), layout.name, say=lambda m: print(m, file=sys.stderr))
        with lab_store(layout) as store:
            for i in range(passes):
                print(f"{spec.name}: pass {i + 1} of {passes}", file=sys.stderr)
                got = run_campaign(sub, store, select(i),
                                   say=lambda m: print(m, file=sys.stderr, flush=True))
                for line in table(got):
                    print(line)
                rows += [{"pass": i + 1, "lab": spec.name, **r.to_json()} for r in got]
    finally:
        lab_down(layout)
    return rows


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--passes", type=int, default=1)
    ap.add_argument("--scenario", action="append", default=[])
    ap.add_argument("--ci", action="store_true", help="only the CI subset")
    ap.add_argument("--every-cell", action="store_true",
                    help="run the whole migration fault matrix in every pass (default: the "
                         "passes share its cells out, each runs in one)")
    ap.add_argument("--spec", type=Path, default=ROOT / "examples" / "lab.toml")
    args = ap.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("the lab needs root")
    wanted = pick(args.scenario, args.ci)  # a bad name fails before the lab starts
    main_hosts = len(load_spec(args.spec).nodes)
    # Scenarios that need a lab of another size (the 2+2 split: four hosts) run after the
    # main lab's, on examples/lab<N>.toml, one pass each time the main lab makes one.
    labs = [(args.spec, main_hosts, False)] + [
        (ROOT / "examples" / f"lab{h}.toml", h, True)
        for h in sorted({s.hosts for s in wanted if s.hosts not in (None, main_hosts)})]
    rows: list[dict[str, Any]] = []
    t0 = time.monotonic()
    for spec, hosts, only_theirs in labs:
        def select(i: int, hosts: int = hosts, only_theirs: bool = only_theirs
                   ) -> list[Scenario]:
            part = (0, 1) if args.every_cell else (i, args.passes)
            names = [s.name for s in wanted if s.hosts in (None, hosts)] \
                if args.scenario else []
            if args.scenario and not names:
                return []
            got = pick(names, args.ci, part, hosts=hosts)
            return [s for s in got if s.hosts == hosts] if only_theirs else got

        if not any(select(i) for i in range(args.passes)):
            continue
        rows += run_lab(spec, args.passes, select)
    took = round(time.monotonic() - t0, 1)
    doc = {"spec": str(args.spec), "passes": args.passes, "seconds": took, "rows": rows,
           "summary": summary(rows), "passed": all(r["passed"] for r in rows)}
    res = ROOT / "bench" / "results" / "faults.json"
    res.parent.mkdir(parents=True, exist_ok=True)
    res.write_text(json.dumps(doc, indent=1))
    print(f"{'scenario':<30}{'runs':>5}{'failed':>7}{'doubles':>8}{'lost':>6}  figures "
          "(median / max)")
    for name, s in doc["summary"].items():
        figs = ", ".join(f"{k} {v['median']}/{v['max']}" for k, v in s["figures"].items())
        print(f"{name:<30}{s['runs']:>5}{s['failed']:>7}{s['double_runs']:>8}"
              f"{s['lost_writes']:>6}  {figs or '-'}")
    print(f"{len(rows)} rows in {took} s; passed: {doc['passed']}")
    print(f"wrote {res}")
    return 0 if doc["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
