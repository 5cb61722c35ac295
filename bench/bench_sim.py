"""Benchmark the simulator: 24 h of 1000 hosts and 5000 VMs (examples/scenarios/synthetic-1000).

Utilisation updates every 5 minutes; the scenario's consolidation policy (LR-MMT, from the
policy registry, planned as `lab consolidate` plans) decides migrations and power; the
cluster's manager runs in the loop (it sleeps: nothing fails). Reports how much of the wall
time is planning, and how much of that the policy's own decide(). Prints a table
and writes bench/results/sim.json: wall time, events/s, peak memory (max RSS), migrations,
plus a kernel micro-benchmark (this kernel vs SimPy) and where the time goes (cProfile).

    PYTHONPATH=src python bench/bench_sim.py [--profile]
"""

from __future__ import annotations

import argparse
import cProfile
import io
import json
import pstats
import resource
import time
from pathlib import Path

import simpy
from rich.console import Console
from rich.table import Table

from vmcluster.control.scenario import load_scenario
from vmcluster.control.simulate import run_scenario
from vmcluster.substrate.sim.kernel import Kernel

ROOT = Path(__file__).resolve().parents[1]
SCENARIO = ROOT / "examples" / "scenarios" / "synthetic-1000.toml"


def kernel_micro(n: int = 200_000) -> dict[str, float]:
    """Events/s of a self-rescheduling timer chain: ours vs SimPy's timeout process."""
    k = Kernel()
    left = [n]

    def step() -> None:
        left[0] -= 1
        if left[0] > 0:
            k.after(1.0, step)

    k.after(1.0, step)
    t = time.perf_counter()
    k.run_until(float(n + 1))
    ours = n / (time.perf_counter() - t)

    env = simpy.Environment()

    def proc(env: simpy.Environment):  # type: ignore[no-untyped-def]
        for _ in range(n):
            yield env.timeout(1.0)

    env.process(proc(env))
    t = time.perf_counter()
    env.run()
    theirs = n / (time.perf_counter() - t)
    return {"kernel_events_per_s": round(ours), "simpy_events_per_s": round(theirs),
            "speedup": round(ours / theirs, 2)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--profile", action="store_true", help="also print the top functions")
    args = ap.parse_args()
    t0 = time.perf_counter()
    scn = load_scenario(SCENARIO)
    load_s = time.perf_counter() - t0
    t1 = time.perf_counter()
    report = run_scenario(scn)
    run_s = time.perf_counter() - t1
    peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    j = report.to_json()
    ms = j["migration_summary"]
    results = {
        "scenario": scn.name, "hosts": j["hosts"], "vms": j["vms"],
        "simulated_h": scn.duration_s / 3600, "load_s": round(load_s, 3),
        "run_s": round(run_s, 3), "wall_s": round(load_s + run_s, 3),
        "events": j["events_processed"], "events_per_s": round(j["events_processed"] / run_s),
        "vm_util_updates_per_s": round(len(scn.spec.vms) * scn.workload.steps / run_s),
        "migrations": ms["count"], "migrations_ok": ms["ok"],
        "peak_rss_mib": round(peak_mib, 1), "energy_kwh": j["energy_kwh"],
        "min_active_hosts": min(j["series"]["active_hosts"]),
        "policy": scn.policy.kind,
        "planning_s": round(report.planning_s, 3),  # observe + the policy + the mapping
        "policy_decide_s": round(report.policy_s, 3),  # the policy's own decide()
        **kernel_micro(),
    }
    if args.profile:
        prof = cProfile.Profile()
        prof.enable()
        run_scenario(load_scenario(SCENARIO))
        prof.disable()
        out = io.StringIO()
        pstats.Stats(prof, stream=out).sort_stats("tottime").print_stats(15)
        print(out.getvalue())
        stats = pstats.Stats(prof).sort_stats("tottime")
        top = sorted(stats.stats.items(), key=lambda kv: -kv[1][2])[:8]  # type: ignore[attr-defined]
        results["profile_top_tottime_s"] = {
            f"{Path(f).name}:{fn}": round(v[2], 3) for (f, _, fn), v in top
        }
    table = Table(title="Simulator benchmark: 24 h, 1000 hosts, 5000 VMs, 5-min updates")
    table.add_column("Metric")
    table.add_column("Value", justify="right")
    for key, value in results.items():
        if not isinstance(value, dict):
            table.add_row(key, str(value))
    Console(width=120).print(table)
    out_path = ROOT / "bench" / "results" / "sim.json"
    out_path.parent.mkdir(parents=True, exist_ok=True)
    out_path.write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {out_path}")


if __name__ == "__main__":
    main()
