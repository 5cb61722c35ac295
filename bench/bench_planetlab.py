"""PlanetLab benchmark: wall time per day per policy, decision time at 800 and 10 000
hosts, peak memory of a 10 000-host day, and the evaluation table vs CloudSim 3.0.3.

Run: PYTHONPATH=src python bench/bench_planetlab.py [--quick]
Writes bench/results/planetlab.json.
"""

from __future__ import annotations

import json
import multiprocessing as mp
import resource
import sys
import time
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.table import Table

from vmcluster.experiments.compare import cloudsim_figures, cloudsim_key
from vmcluster.experiments.engine import simulate
from vmcluster.experiments.evaluate import run_day
from vmcluster.experiments.scenario import Scenario
from vmcluster.experiments.traces import default_trace_dir, load_day
from vmcluster.policy.power.registry import make_policy

POLICIES = ["npa", "dvfs", "thr-mmt-0.8", "iqr-mmt-1.5", "mad-mmt-2.5", "lr-mmt-1.2",
            "lrr-mmt-1.2", "thr-rs-0.8", "thr-mc-0.8", "lr-rs-1.2", "lr-mc-1.2", "ours"]
SCALE_POLICIES = ["thr-mmt-0.8", "lr-mmt-1.2", "mad-mmt-2.5", "ours"]


def _scaled(policy: str, hosts: int, steps: int) -> dict[str, float]:
    """Run ``steps`` intervals on ``hosts`` hosts, traces replicated to keep the VM/host ratio."""
    base = load_day(default_trace_dir() / "20110303.csv")
    reps = int(np.ceil(hosts / 800))
    util = np.tile(base.util, (reps, 1))[: int(base.n_vms * hosts / 800)]
    dc = Scenario(hosts=hosts).datacenter(util.shape[0])
    t0 = time.perf_counter()
    m = simulate(dc, util[:, :steps], make_policy(policy), clock=time.perf_counter)
    wall = time.perf_counter() - t0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
    return {"wall_s": wall, "decision_s": m.decision_s, "peak_mib": peak,
            "vms": float(util.shape[0]), "steps": float(steps)}


def _in_child(policy: str, hosts: int, steps: int) -> dict[str, float]:
    with mp.get_context("spawn").Pool(1) as pool:
        return pool.apply(_scaled, (policy, hosts, steps))


def main() -> None:
    quick = "--quick" in sys.argv
    console = Console(width=160)  # a wide table; logs would otherwise get 80 columns
    days = sorted(p for p in default_trace_dir().glob("*.csv"))
    if quick:
        days = days[:1]
    runs = []
    for p in POLICIES:
        for d in days:
            r = run_day(p, str(d), clock=time.perf_counter)
            runs.append(r)
            console.print(f"{p} {r.day}: {r.wall_s:.2f} s", highlight=False)
    scale = []
    for p in SCALE_POLICIES:
        for hosts in (800, 10000):
            steps = 288 if hosts == 800 or p in ("lr-mmt-1.2",) else (24 if quick else 48)
            s = _in_child(p, hosts, steps)
            scale.append({"policy": p, "hosts": hosts, **s})
            console.print(f"scale {p} {hosts} hosts {steps} steps: {s}", highlight=False)
    figs = cloudsim_figures()
    table = Table(title="PlanetLab evaluation: mean over days (ours | CloudSim 3.0.3)")
    for c in ("policy", "days", "wall s/day", "energy kWh", "SLATAH %", "PDM %", "SLAV",
              "ESV", "migrations"):
        table.add_column(c, justify="left" if c == "policy" else "right")
    summary = []
    for p in POLICIES:
        rs = [r for r in runs if r.policy == p]
        mean = {k: float(np.mean([getattr(r, k) for r in rs]))
                for k in ("energy_kwh", "slatah", "pdm", "slav", "esv", "migrations", "wall_s")}
        cs = [figs[(r.day, cloudsim_key(p))] for r in rs if (r.day, cloudsim_key(p)) in figs]
        cmean = {k: float(np.mean([c[k] for c in cs])) for k in cs[0]} if cs else {}
        cs_days = [r.day for r in rs if (r.day, cloudsim_key(p)) in figs]
        ours_on_cs_days = {k: float(np.mean([getattr(r, k) for r in rs if r.day in cs_days]))
                           for k in ("energy_kwh", "slatah", "pdm", "slav", "esv", "migrations")
                           } if cs_days else {}
        summary.append({"policy": p, "days": len(rs), "mean": mean, "cloudsim_days": cs_days,
                        "mean_on_cloudsim_days": ours_on_cs_days, "cloudsim_mean": cmean})

        def both(k: str, scale_: float, fmt: str, m: dict[str, float] = mean,
                 c: dict[str, float] = cmean) -> str:
            a = format(m[k] * scale_, fmt)
            return a + (f" | {format(c[k] * scale_, fmt)}" if c else "")

        table.add_row(p, str(len(rs)), f"{mean['wall_s']:.2f}", both("energy_kwh", 1, ".1f"),
                      both("slatah", 100, ".2f"), both("pdm", 100, ".3f"),
                      both("slav", 1, ".2e"), both("esv", 1, ".2e"),
                      both("migrations", 1, ".0f"))
    console.print(table)
    out = {
        "results": [{**r.to_json(), "wall_s": r.wall_s, "decision_s": r.decision_s}
                    for r in runs],
        "summary": summary, "scale": scale,
        "cloudsim_wall_s_per_day": 46.0,
    }
    path = Path(__file__).parent / "results" / "planetlab.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(out, indent=2), encoding="utf-8")
    console.print(f"wrote {path}")


if __name__ == "__main__":
    main()
