"""PlanetLab benchmark: every policy on every shipped day against CloudSim 3.0.3, `ours`
against the three aims, boots free and charged, and the simulator's speed at 800 and
10 000 hosts (one core, the compiled kernels warm).

Run: PYTHONPATH=src python bench/bench_planetlab.py [--quick]
Writes bench/results/planetlab.json; prints the tables.
"""

from __future__ import annotations

import json
import multiprocessing as mp
import resource
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.table import Table

from vmcluster.experiments.compare import cloudsim_figures, cloudsim_key
from vmcluster.experiments.engine import simulate
from vmcluster.experiments.evaluate import Result, run_day
from vmcluster.experiments.scenario import BOOT_S, Scenario
from vmcluster.experiments.traces import default_trace_dir, load_day
from vmcluster.policy.power.registry import make_policy

POLICIES = ["dvfs", "thr-mmt-0.8", "iqr-mmt-1.5", "mad-mmt-2.5", "lr-mmt-1.2", "lrr-mmt-1.2",
            "thr-mc-0.8", "lr-mc-1.2", "thr-rs-0.8", "lr-rs-1.2", "ours"]
BOOTS = ["thr-mmt-0.8", "iqr-mmt-1.5", "lr-mmt-1.2", "ours"]  # also run with boots charged
SCALE_POLICIES = ["thr-mmt-0.8", "iqr-mmt-1.5", "mad-mmt-2.5", "lr-mmt-1.2", "ours"]
AIMS = {800: 1.0, 10000: 15.0}  # wall seconds for a day on one core
MEMORY_AIM_MIB = 1024.0


def _warm() -> None:
    """Compile (or load) the kernels before anything is timed."""
    dc = Scenario(hosts=8).datacenter(8)
    util = np.full((8, 40), 30, dtype=np.uint8)
    for p in ("thr-mmt-0.8", "iqr-mmt-1.5", "mad-mmt-2.5", "lr-mmt-1.2", "thr-mc-0.8", "ours"):
        simulate(dc, util, make_policy(p))


def _scaled(policy: str, hosts: int) -> dict[str, float]:
    """A day on ``hosts`` hosts, the 20110303 traces tiled to keep the VM/host ratio."""
    _warm()
    base = load_day(default_trace_dir() / "20110303.csv")
    reps = int(np.ceil(hosts / 800))
    util = np.tile(base.util, (reps, 1))[: int(base.n_vms * hosts / 800)]
    dc = Scenario(hosts=hosts).datacenter(util.shape[0])
    t0 = time.perf_counter()
    m = simulate(dc, util, make_policy(policy), clock=time.perf_counter)
    wall = time.perf_counter() - t0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
    return {"wall_s": wall, "decision_s": m.decision_s, "peak_mib": peak,
            "vms": float(util.shape[0]), "migrations": float(m.migrations)}


def _in_child(policy: str, hosts: int) -> dict[str, float]:
    with mp.get_context("spawn").Pool(1) as pool:
        return pool.apply(_scaled, (policy, hosts))


def _days(quick: bool) -> list[Path]:
    days = sorted(default_trace_dir().glob("*.csv"))
    return days[:1] if quick else days


def _fidelity(console: Console, runs: list[Result]) -> list[dict[str, object]]:
    figs = cloudsim_figures()
    table = Table(title="Every paper policy against CloudSim 3.0.3 (ours - CloudSim, per cent)")
    for c in ("policy", "day", "energy kWh", "Δ energy", "migrations", "Δ migr.", "SLAV %",
              "Δ SLAV", "wall s"):
        table.add_column(c, justify="left" if c in ("policy", "day") else "right")
    rows = []
    for r in runs:
        theirs = figs.get((r.day, cloudsim_key(r.policy)))
        if theirs is None:
            continue

        def delta(ours: float, cs: float) -> float:
            return 100.0 * (ours / cs - 1.0) if cs else 0.0

        d = {"policy": r.policy, "day": r.day, "energy_kwh": r.energy_kwh,
             "cloudsim_energy_kwh": theirs["energy_kwh"], "migrations": r.migrations,
             "cloudsim_migrations": theirs["migrations"], "slav": r.slav,
             "cloudsim_slav": theirs["slav"], "wall_s": r.wall_s,
             "d_energy_pct": delta(r.energy_kwh, theirs["energy_kwh"]),
             "d_migrations_pct": delta(r.migrations, theirs["migrations"]),
             "d_slav_pct": delta(r.slav, theirs["slav"])}
        rows.append(d)
        table.add_row(r.policy, r.day, f"{r.energy_kwh:.2f}", f"{d['d_energy_pct']:+.2f}",
                      f"{r.migrations}", f"{d['d_migrations_pct']:+.2f}",
                      f"{r.slav * 100:.5f}", f"{d['d_slav_pct']:+.2f}", f"{r.wall_s:.2f}")
    console.print(table)
    return rows


def _aims(console: Console, runs: list[Result], label: str) -> list[dict[str, object]]:
    by = {(r.policy, r.day): r for r in runs}
    table = Table(title=f"ours against the aims, {label}")
    for c in ("day", "kWh ours | LR-MMT", "overload % ours | IQR-MMT",
              "MIPS lost % ours | IQR-MMT", "migr. ours | LR-MMT/5", "all"):
        table.add_column(c, justify="left" if c == "day" else "right")
    rows = []
    for day in sorted({r.day for r in runs}):
        o, lr, iqr = by[("ours", day)], by[("lr-mmt-1.2", day)], by[("iqr-mmt-1.5", day)]
        met = (o.energy_kwh < lr.energy_kwh and o.overload_pct < iqr.overload_pct
               and o.mips_lost_pct < iqr.mips_lost_pct and o.migrations <= lr.migrations / 5)
        rows.append({"day": day, "ours": o.to_json(), "lr_mmt": lr.to_json(),
                     "iqr_mmt": iqr.to_json(), "all_aims_met": met})
        table.add_row(day, f"{o.energy_kwh:.1f} | {lr.energy_kwh:.1f}",
                      f"{o.overload_pct:.3f} | {iqr.overload_pct:.3f}",
                      f"{o.mips_lost_pct:.3f} | {iqr.mips_lost_pct:.3f}",
                      f"{o.migrations} | {lr.migrations / 5:.0f}", "yes" if met else "no")
    console.print(table)
    return rows


def main() -> None:
    quick = "--quick" in sys.argv
    console = Console(width=160)  # a wide table; logs would otherwise get 80 columns
    _warm()
    days = _days(quick)
    runs = [run_day(p, str(d), clock=time.perf_counter) for p in POLICIES for d in days]
    charged_setup = replace(Scenario(), boot_s=BOOT_S)
    charged = [run_day(p, str(d), clock=time.perf_counter, scenario=charged_setup)
               for p in BOOTS for d in days]
    fidelity = _fidelity(console, runs)
    aims_free = _aims(console, runs, "boots free (as CloudSim)")
    aims_charged = _aims(console, charged, f"boots charged ({BOOT_S:g} s at peak power)")
    scale = []
    table = Table(title="A day's wall time on one core (kernels warm) and peak memory")
    for c in ("policy", "hosts", "VMs", "wall s", "aim s", "peak MiB", "migrations"):
        table.add_column(c, justify="left" if c == "policy" else "right")
    for p in SCALE_POLICIES:
        for hosts in (800, 10000):
            s = _in_child(p, hosts)
            ok = s["wall_s"] < AIMS[hosts] and s["peak_mib"] < MEMORY_AIM_MIB
            scale.append({"policy": p, "hosts": hosts, "aim_s": AIMS[hosts], "met": ok, **s})
            table.add_row(p, str(hosts), f"{s['vms']:.0f}", f"{s['wall_s']:.2f}",
                          f"{AIMS[hosts]:g}", f"{s['peak_mib']:.0f}",
                          f"{s['migrations']:.0f}")
    console.print(table)
    out = {
        "results": [{**r.to_json(), "wall_s": r.wall_s, "decision_s": r.decision_s}
                    for r in runs],
        "results_boots_charged": [r.to_json() for r in charged],
        "boot_s": BOOT_S, "cloudsim": fidelity, "aims_boots_free": aims_free,
        "aims_boots_charged": aims_charged, "scale": scale,
    }
    path = Path(__file__).parent / "results" / "planetlab.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(out, indent=2), encoding="utf-8")
    console.print(f"wrote {path}")


if __name__ == "__main__":
    main()
