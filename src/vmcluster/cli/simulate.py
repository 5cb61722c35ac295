"""`vmcluster simulate SCENARIO`: run a scenario in virtual time and report what happened."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import click
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from vmcluster.cli.common import console, emit_json, json_option, writable_dir
from vmcluster.cli.evaluate import check_days, show_results
from vmcluster.control.scenario import load_scenario
from vmcluster.control.simulate import Report, run_scenario
from vmcluster.errors import UsageError
from vmcluster.experiments.evaluate import bound_day, sweep
from vmcluster.experiments.scenario import Scenario, is_power_scenario
from vmcluster.experiments.scenario import load_scenario as load_power_scenario
from vmcluster.experiments.traces import list_days
from vmcluster.model.tomlsource import load_toml
from vmcluster.policy.power.registry import parse_policies

__all__ = ["simulate"]


@click.command()
@click.argument("scenario", type=click.Path(path_type=Path))
@json_option
@click.option("--trace", "trace_path", type=click.Path(dir_okay=False, path_type=Path),
              help="Write every event as JSON lines (same seed, same bytes).")
@click.option("--plot", "plot_dir", type=click.Path(file_okay=False, path_type=Path),
              help="Write PNG charts into this directory.")
@click.option("--policy", default=None,
              help="Consolidation policy for a datacenter scenario or trace directory "
                   "(default: the scenario's, or ours).")
def simulate(scenario: Path, as_json: bool, trace_path: Path | None,
             plot_dir: Path | None, policy: str | None) -> None:
    """Simulate SCENARIO and report what happened.

    SCENARIO is a cluster scenario (TOML: a spec, workload, events; migrations,
    traffic, failures and energy are reported), a datacenter consolidation
    scenario (TOML with [datacenter], e.g. examples/scenarios/planetlab-*.toml),
    or a directory of PlanetLab-style day traces (one CSV per day).
    """
    if plot_dir is not None:
        writable_dir(plot_dir)  # before the run, not after it
    if scenario.is_dir() or is_power_scenario(load_toml(scenario).data):
        if trace_path is not None:
            raise UsageError("--trace is for cluster scenarios; a datacenter run has no "
                             "event trace")
        _consolidation(scenario, policy, as_json, plot_dir)
        return
    if policy is not None:
        raise UsageError("--policy is for datacenter scenarios and trace directories; a "
                         "cluster scenario sets its policy in [policy]")
    scn = load_scenario(scenario)
    events: list[dict[str, Any]] = []
    err = Console(stderr=True)
    started = time.perf_counter()
    with Progress(TextColumn("[bold]simulating[/bold] {task.description}"), BarColumn(),
                  TextColumn("{task.percentage:>3.0f}%"), TimeElapsedColumn(), console=err,
                  transient=True, disable=not err.is_terminal) as bar:
        task = bar.add_task(scn.name, total=scn.duration_s)
        report = run_scenario(scn, trace=events.append if trace_path else None,
                              progress=lambda t: bar.update(task, completed=t))
    wall = time.perf_counter() - started
    if trace_path is not None:
        _write(trace_path, "".join(
            json.dumps(e, sort_keys=True, separators=(",", ":")) + "\n" for e in events))
    if plot_dir is not None:
        from vmcluster.cli.simplot import plot  # matplotlib is heavy: only when asked

        try:
            plot(report, plot_dir)
        except OSError as exc:
            raise UsageError(f"cannot write plots to {plot_dir}: {exc}") from exc
    if as_json:
        emit_json(report.to_json())
        return
    _print(report, wall)


def _consolidation(path: Path, policy: str | None, as_json: bool,
                   plot_dir: Path | None) -> None:
    """A datacenter day (or every day of a trace directory) under one consolidation policy."""

    if path.is_dir():
        setup, files = Scenario(name=path.name, policy="ours"), list_days(path)
    else:
        setup = load_power_scenario(path)
        if not setup.trace:
            raise UsageError(f"{path}: [simulation] names no trace; add trace = \"...\"")
        files = [Path(setup.trace)]
    names = parse_policies(policy or setup.policy)
    loaded = check_days(setup, files)  # a bad row or datacenter: before any work starts
    err = Console(stderr=True)
    results = sweep(names, files, workers=1 if len(files) == 1 else None, scenario=setup,
                    clock=time.perf_counter,
                    progress=None if as_json else lambda r: err.print(
                        f"{r.policy} {r.day}: simulated in {r.wall_s:.1f} s"))
    results += [bound_day(day, setup) for day in loaded]
    show_results(results, [f.stem for f in files], as_json=as_json, plot_dir=plot_dir,
                 title=f"{setup.name}: {setup.hosts} hosts, consolidation by {', '.join(names)}")


def _write(path: Path, text: str) -> None:
    try:
        path.write_text(text, encoding="utf-8")
    except OSError as exc:
        raise UsageError(f"cannot write {path}: {exc}") from exc


def _print(report: Report, wall: float) -> None:
    j = report.to_json()
    s = j["migration_summary"]
    console.print(
        f"[bold]{j['scenario']}[/bold]: {j['hosts']} hosts, {j['vms']} VMs,"
        f" {j['duration_s'] / 3600:.2f} h simulated in {wall:.2f} s"
        f" ({j['events_processed']} events), seed {j['seed']}"
    )
    migs = Table(title=f"Migrations: {s['count']} ({s['ok']} ok, {s['failed']} failed)")
    for col in ("At", "VM", "From", "To", "Network", "Passes", "Total s", "Downtime ms",
                "Result", "Why"):
        migs.add_column(col)
    for m in j["migrations"][:25]:
        started = m.get("started_s")
        migs.add_row(
            "-" if started is None else _hms(started), m["vm"], m["source"], m["target"],
            m["network"], str(m["passes"]), f"{m['total_s']:.2f}",
            "-" if m["downtime_ms"] is None else f"{m['downtime_ms']:.1f}",
            m.get("outcome", "") if m["ok"] else f"[red]{m['error']}[/red]", m["reason"],
        )
    if len(j["migrations"]) > 25:
        migs.caption = f"... and {len(j['migrations']) - 25} more (--json has them all)"
    console.print(migs)
    if j["failures"]:
        fails = Table(title="Failures and how they were handled")
        for col in ("At", "Event", "Handled"):
            fails.add_column(col)
        for f in j["failures"]:
            fails.add_row(_hms(f["t"]), f["event"], f["handled"])
        console.print(fails)
    traffic = Table(title="Traffic per class and network")
    for col in ("Class", "Network", "MiB"):
        traffic.add_column(col)
    for t in j["traffic"]["totals_mib"]:
        traffic.add_row(t["class"], t["network"], f"{t['mib']:.1f}")
    console.print(traffic)
    hosts = j["per_host"]
    busiest = sorted(hosts, key=lambda h: -h["mean_util"])[:10]
    ht = Table(title=f"Hosts (energy {j['energy_kwh']:.2f} kWh; busiest {len(busiest)} shown)")
    for col in ("Host", "State", "Mean util", "Up h", "kWh"):
        ht.add_column(col)
    for h in busiest:
        ht.add_row(h["name"], h["state"], f"{h['mean_util'] * 100:.0f} %",
                   f"{h['up_s'] / 3600:.2f}", f"{h['energy_kwh']:.3f}")
    console.print(ht)


def _hms(t: float) -> str:
    s = int(t)
    return f"{s // 3600:02d}:{s % 3600 // 60:02d}:{s % 60:02d}"
