"""Fit the migration model's hypervisor constants to measured migrations, and check them
on migrations not used for the fit.

Reads the rows ``bench/bench_migration.py`` wrote (each: the guest's measured dirty rate
and working set, the mode chosen, and what QEMU did), splits them into two halves
(alternate runs of each rate and mode: one to fit, one to check), and fits:

* ``switch_ms``: QEMU's downtime beyond copying the last dirty pages (stopping the
  vCPUs, saving and loading the devices): the median, over the pre-copy runs, of the
  measured downtime less the model's copy time;
* ``postcopy_efficiency``: the share of the bandwidth pages move at after a switch to
  post-copy: the one (0.50-1.10, step 0.01) whose predicted totals have the least mean
  absolute error over the post-copy runs;
* ``postcopy_pause_ms``: the median measured pause of the post-copy runs (source STOP
  to target RESUME) less the model's device-state copy;
* ``link_efficiency``: the same grid for the bandwidth itself over the pre-copy runs
  (1.0: the shaped rate is what a migration gets);
* ``pass_s``: each pass's own time (0-0.2 s, step 5 ms), the least error over the
  pre-copy runs.

Then every held-out run is predicted again from its own measured profile with the fitted
constants, and the errors of its total time and downtime are printed per dirty rate and
mode, beside the errors with the constants the code ships (``QEMU_COSTS``). Writes
bench/results/migration_fit.json.

    python bench/fit_migration.py [ROWS.json ...]   (default: bench/results/migration.json)

The rows QEMU_COSTS was fitted from are kept in bench/data/migration-qemu10-*.json.
"""

from __future__ import annotations

import json
import statistics
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from vmcluster.policy.migration_mode import choose_mode, postcopy
from vmcluster.policy.migration_model import Costs, PrecopyInput
from vmcluster.policy.prediction import mbps_to_mibps
from vmcluster.substrate.qemu.substrate import QEMU_COSTS

MEMORY_MIB = 256.0  # bench_migration's guest
LINK_MIBPS = mbps_to_mibps(1000)  # its shaped migration network
BUDGET_MS = 100.0


def predict(row: dict[str, Any], c: dict[str, float]) -> tuple[str, float, float]:
    """(mode, total s, downtime ms) the model predicts for ``row``'s measured profile
    with the constants ``c`` (a post-copy: switched where that run switched)."""
    costs = Costs(switch_ms=c["switch_ms"], pass_s=c["pass_s"],
                  postcopy_pause_ms=c["postcopy_pause_ms"],
                  postcopy_efficiency=c["postcopy_efficiency"])
    inp = PrecopyInput(MEMORY_MIB, float(row["measured_dirty_mibps"]),
                       float(row["measured_wws_mib"]), LINK_MIBPS * c["link_efficiency"],
                       BUDGET_MS, on_no_convergence="throttle", costs=costs)
    choice = choose_mode(inp, allow_postcopy=row["mode"] == "postcopy",
                         delta_ratio=row.get("measured_delta_ratio")
                         if row.get("delta_cache_mib") else None)
    r = choice.result
    if choice.mode == "postcopy" and row.get("postcopy_after_mib") is not None:
        r = postcopy(inp, float(row["postcopy_after_mib"]))
    return choice.mode, r.total_s, r.downtime_ms


def usable(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [r for r in rows if r.get("ok") and r.get("measured_dirty_mibps") is not None
            and r.get("total_s") and r.get("downtime_ms") is not None]


def split(rows: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Alternate runs of each (rate, mode, TLS): even ones fit, odd ones check."""
    fit: list[dict[str, Any]] = []
    check: list[dict[str, Any]] = []
    seen: dict[tuple[Any, ...], int] = {}
    for r in rows:
        key = (r["dirty_mibps"], r["mode"], r.get("tls"))
        n = seen.get(key, 0)
        seen[key] = n + 1
        (fit if n % 2 == 0 else check).append(r)
    return fit, check


def mean_abs_err(rows: list[dict[str, Any]], f: Callable[[dict[str, Any]], float]) -> float:
    return statistics.mean(abs(f(r)) for r in rows) if rows else 0.0


def grid_best(rows: list[dict[str, Any]], err: Callable[[dict[str, Any], float], float]
              ) -> float:
    grid = [round(0.5 + 0.01 * i, 2) for i in range(61)]
    return min(grid, key=lambda x: mean_abs_err(rows, lambda r: err(r, x)))


def fit(rows: list[dict[str, Any]]) -> dict[str, float]:
    pre = [r for r in rows if r["mode"] != "postcopy"]
    post = [r for r in rows if r["mode"] == "postcopy"]
    c = {"switch_ms": 0.0, "pass_s": 0.0, "postcopy_efficiency": 1.0,
         "postcopy_pause_ms": 0.0, "link_efficiency": 1.0}

    def total_err(r: dict[str, Any], **change: float) -> float:
        return (predict(r, {**c, **change})[1] - float(r["total_s"])) / float(r["total_s"])

    if pre:
        c["link_efficiency"] = grid_best(pre, lambda r, x: total_err(r, link_efficiency=x))
        c["pass_s"] = min((round(0.005 * i, 3) for i in range(41)), key=lambda p: mean_abs_err(
            pre, lambda r: total_err(r, pass_s=p)))
        # the copy's share of the measured downtime at no fixed cost: the rest is the fit
        c["switch_ms"] = round(statistics.median(
            float(r["downtime_ms"]) - predict(r, c)[2] for r in pre), 1)
    if post:
        c["postcopy_pause_ms"] = round(statistics.median(
            float(r["downtime_ms"]) - predict(r, c)[2] for r in post), 1)
        c["postcopy_efficiency"] = grid_best(
            post, lambda r, x: total_err(r, postcopy_efficiency=x))
    return c


def check(rows: list[dict[str, Any]], c: dict[str, float]) -> list[dict[str, Any]]:
    out = []
    for key in sorted({(r["dirty_mibps"], r["mode"], r.get("tls")) for r in rows},
                      key=str):
        grp = [r for r in rows if (r["dirty_mibps"], r["mode"], r.get("tls")) == key]
        preds = [predict(r, c) for r in grp]
        t_err = [100 * (p[1] - float(r["total_s"])) / float(r["total_s"])
                 for p, r in zip(preds, grp, strict=True)]
        d_err = [p[2] - float(r["downtime_ms"]) for p, r in zip(preds, grp, strict=True)]
        out.append({"dirty_mibps": key[0], "mode": key[1], "tls": key[2], "runs": len(grp),
                    "mode_agrees": sum(p[0] == r["mode"] for p, r in zip(preds, grp,
                                                                         strict=True)),
                    "total_err_pct_mean_abs": round(statistics.mean(map(abs, t_err)), 1),
                    "total_err_pct_max_abs": round(max(map(abs, t_err)), 1),
                    "downtime_err_ms_mean_abs": round(statistics.mean(map(abs, d_err)), 1),
                    "downtime_err_ms_max_abs": round(max(map(abs, d_err)), 1)})
    return out


def main() -> None:
    paths = [Path(a) for a in sys.argv[1:]] or [
        Path(__file__).parent / "results" / "migration.json"]
    rows: list[dict[str, Any]] = []
    for p in paths:
        try:
            rows += json.loads(p.read_text())["runs"]
        except (OSError, ValueError, KeyError) as exc:
            sys.exit(f"fit_migration: {p}: {exc}")
    rows = usable(rows)
    if len(rows) < 4:
        sys.exit(f"fit_migration: {len(rows)} usable runs in {', '.join(map(str, paths))}; "
                 "run bench/bench_migration.py first")
    fit_rows, check_rows = split(rows)
    fitted = fit(fit_rows)
    shipped = {**QEMU_COSTS.to_json(), "link_efficiency": 1.0}
    print(f"{len(fit_rows)} runs to fit, {len(check_rows)} to check")
    print("fitted: " + ", ".join(f"{k} {v:g}" for k, v in fitted.items()))
    print("shipped: " + ", ".join(f"{k} {v:g}" for k, v in shipped.items()))
    result: dict[str, Any] = {"fitted": fitted, "shipped": shipped, "fit_runs": len(fit_rows),
                              "check_runs": len(check_rows)}
    for name, consts in (("fitted", fitted), ("shipped", shipped)):
        table = check(check_rows, consts)
        result[f"check_{name}"] = table
        print(f"\nheld-out runs, {name} constants:")
        cols = list(table[0])
        print(" | ".join(cols))
        for t in table:
            print(" | ".join(str(t[c]) for c in cols))
    out = Path(__file__).parent / "results" / "migration_fit.json"
    out.write_text(json.dumps(result, indent=1))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
