"""`vmcluster evaluate` (consolidation policies on PlanetLab traces) and `vmcluster power`."""

from __future__ import annotations

import time
from dataclasses import replace
from pathlib import Path

import click
from rich.console import Console
from rich.table import Table

from vmcluster.cli.common import console, emit_json, json_option, writable_dir
from vmcluster.errors import UsageError
from vmcluster.experiments import feasibility
from vmcluster.experiments.compare import cloudsim_figures, cloudsim_key
from vmcluster.experiments.evaluate import LOWER_BOUND, Result, bound_day, sweep
from vmcluster.experiments.scenario import BOOT_S, Scenario, load_scenario
from vmcluster.experiments.traces import (
    DayTrace,
    default_trace_dir,
    list_days,
    load_day,
    resample,
)
from vmcluster.policy.power.density import park_cores
from vmcluster.policy.power.registry import parse_policies

__all__ = ["evaluate", "power", "show_results"]

DEFAULT_POLICIES = "npa,dvfs,thr-mmt-0.8,iqr-mmt-1.5,mad-mmt-2.5,lr-mmt-1.2,lrr-mmt-1.2,ours"
METRICS = ("energy_kwh", "slatah", "pdm", "slav", "esv", "migrations")
# what operators read beside CloudSim's metrics (ours only: CloudSim prints none of them)
OPERATOR = ("overload_pct", "mips_lost_pct", "boots", "hosts_active_mean", "hosts_active_peak")


def _means(results: list[Result]) -> dict[str, dict[str, float]]:
    out: dict[str, dict[str, float]] = {}
    for p in dict.fromkeys(r.policy for r in results):
        rs = [r for r in results if r.policy == p]
        out[p] = {m: sum(float(getattr(r, m)) for r in rs) / len(rs)
                  for m in METRICS + OPERATOR}
    return out


def _cloudsim_means(policies: list[str], days: list[str]) -> dict[str, dict[str, float]]:
    figs = cloudsim_figures()
    out: dict[str, dict[str, float]] = {}
    for p in policies:
        rows = [figs[(d, cloudsim_key(p))] for d in days if (d, cloudsim_key(p)) in figs]
        if rows:
            out[p] = {m: sum(r[m] for r in rows) / len(rows) for m in METRICS}
            out[p]["days"] = float(len(rows))
    return out


def _fmt(m: str, v: float) -> str:
    if m in ("overload_pct", "mips_lost_pct"):
        return f"{v:.2f}%"
    if m in ("migrations", "boots", "hosts_active_peak"):
        return f"{v:,.0f}"
    if m == "energy_kwh":
        return f"{v:.2f}"
    if m in ("slatah", "pdm"):
        return f"{v * 100:.3f}%"
    return f"{v:.2e}"


def _plot(results: list[Result], directory: Path) -> list[Path]:
    import matplotlib  # heavy: only when a plot is asked for

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    directory.mkdir(parents=True, exist_ok=True)
    means = _means(results)
    names = list(means)
    paths = []
    for m in METRICS:
        fig, ax = plt.subplots(figsize=(8, 4))
        ax.bar(names, [means[p][m] for p in names])
        ax.set_title(f"mean {m} per policy")
        ax.tick_params(axis="x", rotation=45)
        if m in ("slav", "esv"):
            ax.set_yscale("symlog", linthresh=1e-7)
        fig.tight_layout()
        path = directory / f"{m}.png"
        fig.savefig(path)
        plt.close(fig)
        paths.append(path)
    for r in results:  # each run over the day: a chart and its numbers
        if not r.series:
            continue
        stem = f"series-{r.policy}-{r.day}"
        csv_path = directory / f"{stem}.csv"
        lines = ["time_s,active_hosts,power_kw,overloaded_hosts,migrations"]
        lines += [",".join(f"{v:g}" for v in row) for row in r.series]
        csv_path.write_text("\n".join(lines) + "\n", encoding="utf-8")
        hours = [row[0] / 3600 for row in r.series]
        fig, axes = plt.subplots(4, 1, figsize=(9, 8), sharex=True)
        for ax, col, label in zip(axes, (1, 2, 3, 4), ("active hosts", "power (kW)",
                                  "hosts short of MIPS", "migrations"), strict=True):
            ax.plot(hours, [row[col] for row in r.series], linewidth=0.9)
            ax.set_ylabel(label)
        axes[-1].set_xlabel("hour of the day")
        axes[0].set_title(f"{r.policy} on {r.day}")
        fig.tight_layout()
        png = directory / f"{stem}.png"
        fig.savefig(png)
        plt.close(fig)
        paths += [png, csv_path]
    return paths


@click.command()
@click.option("--traces", type=click.Path(path_type=Path), default=None,
              help="Directory of day CSVs (default: the shipped PlanetLab days).")
@click.option("--policies", default=DEFAULT_POLICIES, show_default=True,
              help="Comma-separated: <detector>-<selection>[-<param>], ours, npa, dvfs.")
@click.option("--days", default="", help="Comma-separated day names (default: all).")
@click.option("--plot", "plot_dir", type=click.Path(path_type=Path), default=None,
              help="Write PNG charts to this directory.")
@click.option("--workers", type=int, default=None, help="Local worker processes.")
@click.option("--scheduler", default=None, help="Dask scheduler address (tcp://host:8786).")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--compare-cloudsim", is_flag=True, help="Show CloudSim 3.0.3's figures too.")
@click.option("--scenario", "scenario_path", type=click.Path(dir_okay=False, path_type=Path),
              default=None, help="A datacenter scenario (TOML with [datacenter]): its host "
              "and VM types, interval and duration (default: the paper's).")
@click.option("--hosts", type=int, default=None,
              help="How many hosts (default: the scenario's, 800 in the paper's).")
@click.option("--charge-boots", "boot_s", type=float, is_flag=False, flag_value=BOOT_S,
              default=None, metavar="[SECONDS]",
              help=f"Charge host boots: each takes SECONDS (default {BOOT_S:g}) at the "
              "host's peak power, its VMs waiting (CloudSim charges none).")
@json_option
def evaluate(traces: Path | None, policies: str, days: str, plot_dir: Path | None,
             workers: int | None, scheduler: str | None, seed: int, compare_cloudsim: bool,
             scenario_path: Path | None, hosts: int | None, boot_s: float | None,
             as_json: bool) -> None:
    """Simulate consolidation policies on PlanetLab traces (800 hosts, 24 h per day)."""
    names = parse_policies(policies)
    if workers is not None and workers < 1:
        raise UsageError(f"--workers must be >= 1, got {workers}")
    if hosts is not None and hosts < 1:
        raise UsageError(f"--hosts must be >= 1, got {hosts}")
    setup = load_scenario(scenario_path) if scenario_path is not None else Scenario()
    if hosts is not None:
        setup = replace(setup, hosts=hosts)
    if boot_s is not None:
        if not boot_s > 0:
            raise UsageError(f"--charge-boots must be a positive number of seconds, got {boot_s:g}")
        setup = replace(setup, boot_s=boot_s)
    if compare_cloudsim and setup.boot_s > 0:
        raise UsageError("--compare-cloudsim: CloudSim charges no host boots; compare without "
                         "--charge-boots (or boot_s in the scenario)")
    if plot_dir is not None:
        writable_dir(plot_dir)
    files = list_days(traces or default_trace_dir())
    wanted = [d.strip() for d in days.split(",") if d.strip()]
    if wanted:
        by = {p.stem: p for p in files}
        unknown = [d for d in wanted if d not in by]
        if unknown:
            raise UsageError(f"--days: no trace for {unknown[0]} (have {', '.join(sorted(by))})")
        files = [by[d] for d in wanted]
    err = Console(stderr=True)
    total = len(names) * len(files)
    done = [0]

    def progress(r: Result) -> None:
        done[0] += 1
        if not as_json:
            err.print(f"[{done[0]}/{total}] {r.policy} {r.day}: {r.wall_s:.1f} s")

    loaded = check_days(setup, files)  # a bad trace or datacenter: one line, before any work
    results = sweep(names, files, workers=workers, scheduler=scheduler, seed=seed,
                    clock=time.perf_counter, progress=progress, scenario=setup)
    results += [bound_day(day, setup) for day in loaded]
    show_results(results, [f.stem for f in files], as_json=as_json,
                 compare_cloudsim=compare_cloudsim, plot_dir=plot_dir,
                 title=f"Consolidation on PlanetLab traces ({setup.hosts} hosts)")


def check_days(setup: Scenario, files: list[Path]) -> list[DayTrace]:
    """Every day's trace, once it reads, fits the scenario's timing, and its VMs fit the
    datacenter: else one line naming what and where, before any simulation starts."""
    days = []
    for f in files:
        day = load_day(f)
        resample(day.util, setup.interval_s, setup.duration_s, str(f))
        feasibility.check(setup, day.n_vms, where=str(f))
        days.append(day)
    return days


def show_results(results: list[Result], day_names: list[str], *, as_json: bool,
                 compare_cloudsim: bool = False, plot_dir: Path | None = None,
                 title: str = "Consolidation on PlanetLab traces (800 hosts)") -> None:
    """The metrics table (or one JSON object), then charts when ``plot_dir`` is given (the
    results are out before a chart can fail)."""
    names = list(dict.fromkeys(r.policy for r in results))
    if as_json:
        out: dict[str, object] = {"results": [r.to_json() for r in results]}
        if compare_cloudsim:
            out["cloudsim_mean"] = _cloudsim_means(names, day_names)
        emit_json(out)
    else:
        _table(results, names, day_names, compare_cloudsim, title)
    if plot_dir is not None:
        err = Console(stderr=True)
        try:
            pngs = _plot(results, plot_dir)
        except OSError as exc:
            raise UsageError(f"--plot {plot_dir}: cannot write the charts ({exc}); the "
                             "results are above") from exc
        if not as_json:
            for png in pngs:
                err.print(f"wrote {png}")


def _table(results: list[Result], names: list[str], day_names: list[str],
           compare_cloudsim: bool, title: str) -> None:
    table = Table(title=title)
    bound = {r.day: r.energy_kwh for r in results if r.policy == LOWER_BOUND}
    mean_bound = sum(bound.values()) / len(bound) if bound else 0.0

    def ratio(energy: float, of: float) -> str:
        return f"{energy / of:.2f}x" if of > 0 else "-"

    # narrow enough for a 140-column log; --json has every key (and hosts_active_mean)
    for col in ("policy", "day", "kWh", "x bound", "SLATAH", "PDM", "SLAV", "ESV", "migr.",
                "overload", "lost", "boots", "peak"):
        left = col in ("policy", "day")
        table.add_column(col, justify="left" if left else "right", no_wrap=left)
    cols = (*METRICS[1:], "overload_pct", "mips_lost_pct", "boots", "hosts_active_peak")
    for r in results:
        table.add_row(r.policy, r.day, _fmt("energy_kwh", r.energy_kwh),
                      ratio(r.energy_kwh, bound.get(r.day, 0.0)),
                      *(_fmt(m, float(getattr(r, m))) for m in cols))
    means = _means(results)
    cs = _cloudsim_means(names, day_names) if compare_cloudsim else {}
    for p, m in means.items():
        table.add_row(f"[bold]{p}[/bold]", "mean", _fmt("energy_kwh", m["energy_kwh"]),
                      ratio(m["energy_kwh"], mean_bound), *(_fmt(k, m[k]) for k in cols))
        if p in cs:
            table.add_row(f"  cloudsim {p}", f"mean/{int(cs[p]['days'])}d",
                          _fmt("energy_kwh", cs[p]["energy_kwh"]), "-",
                          *(_fmt(k, cs[p][k]) for k in METRICS[1:]), "-", "-", "-", "-")
    console.print(table)


@click.group()
def power() -> None:
    """Power tools: core parking (density scheduling)."""


@power.command("density")
@click.argument("loads", nargs=-1, type=float)
@click.option("--headroom", type=float, default=0.2, show_default=True)
@json_option
def density(loads: tuple[float, ...], headroom: float, as_json: bool) -> None:
    """Pack vCPU LOADS (cores, 0..1 each) on a 2-core ML110 G5 and park the rest."""
    plan = park_cores(list(loads), headroom=headroom)
    if as_json:
        emit_json(plan.to_json())
        return
    click.echo(f"active cores: {plan.active_cores}, parked: {plan.parked_cores}")
    click.echo(f"core loads: {', '.join(f'{x:.2f}' for x in plan.core_loads)}")
    click.echo(f"power packed {plan.power_packed_w:.1f} W, spread {plan.power_spread_w:.1f} W, "
               f"saving {plan.saving_w:.1f} W")
