"""One-day runs and sweeps (policies x days) on a process pool or Dask, by policy name
(:mod:`vmcluster.policy.power.registry`)."""

from __future__ import annotations

import concurrent.futures as cf
import importlib
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from vmcluster.errors import UsageError
from vmcluster.experiments.bound import lower_bound_kwh
from vmcluster.experiments.engine import Metrics, simulate
from vmcluster.experiments.scenario import Scenario
from vmcluster.experiments.traces import DayTrace, load_day, resample
from vmcluster.policy.power.registry import make_policy

__all__ = ["LOWER_BOUND", "Result", "bound_day", "run_day", "sweep"]

LOWER_BOUND = "lower-bound"  # the name of the day's offline energy bound among results

@dataclass(frozen=True)
class Result:
    """One policy on one day."""

    policy: str
    day: str
    energy_kwh: float
    slatah: float
    pdm: float
    slav: float
    esv: float
    migrations: int
    wall_s: float = 0.0
    decision_s: float = 0.0
    overload_pct: float = 0.0  # see engine.Metrics
    mips_lost_pct: float = 0.0
    boots: int = 0
    hosts_active_mean: float = 0.0
    hosts_active_peak: int = 0
    boot_kwh: float = 0.0  # host boots charged, included in energy_kwh (0: not charged)
    series: tuple[tuple[float, float, float, float, float], ...] = ()  # engine.Metrics

    def to_json(self) -> dict[str, object]:
        d = asdict(self)
        return {k: d[k] for k in ("policy", "day", "energy_kwh", "slatah", "pdm", "slav", "esv",
                                  "migrations", "overload_pct", "mips_lost_pct", "boots",
                                  "hosts_active_mean", "hosts_active_peak", "boot_kwh")}


def run_day(policy: str, trace_path: str, seed: int = 0, hosts: int | None = None,
            clock: Callable[[], float] | None = None,
            scenario: Scenario | None = None) -> Result:
    """Simulate one policy on one day's CSV (a top-level function, so pools can pickle it).

    ``scenario`` gives the datacenter (hosts, VM types, interval); the paper's by default.
    """
    trace = load_day(Path(trace_path))
    setup = scenario or Scenario()
    dc = setup.datacenter(trace.n_vms, hosts)
    util = resample(trace.util, setup.interval_s, setup.duration_s, trace_path)
    decide = make_policy(policy)
    t0 = clock() if clock else 0.0
    placement = "first-fit" if decide is None else "pabfd"
    m: Metrics = simulate(dc, util, decide, placement=placement, seed=seed, clock=clock,
                          boot_s=setup.boot_s)
    wall = (clock() - t0) if clock else 0.0
    energy = m.energy_kwh
    if policy == "npa":  # every host at its maximum power for the whole run
        energy = float(dc.power_table[:, -1].sum()) * util.shape[1] * dc.interval_s / 3.6e6
    return Result(policy, trace.day, energy, m.slatah, m.pdm, m.slav, energy * m.slav,
                  m.migrations, wall, m.decision_s, m.overload_pct, m.mips_lost_pct, m.boots,
                  m.active_hosts_mean, m.active_hosts_peak, m.boot_kwh, m.series)


def bound_day(trace: DayTrace, scenario: Scenario | None = None) -> Result:
    """The day's offline lower bound on energy (:mod:`.bound`), as a result whose policy
    is ``lower-bound`` (its other metrics 0: it is no schedule)."""
    setup = scenario or Scenario()
    dc = setup.datacenter(trace.n_vms)
    util = resample(trace.util, setup.interval_s, setup.duration_s, trace.day)
    return Result(LOWER_BOUND, trace.day, lower_bound_kwh(dc, util), 0.0, 0.0, 0.0, 0.0, 0)


def sweep(
    policies: Sequence[str], trace_paths: Sequence[Path], *, workers: int | None = None,
    scheduler: str | None = None, seed: int = 0, clock: Callable[[], float] | None = None,
    progress: Callable[[Result], None] | None = None, scenario: Scenario | None = None,
) -> list[Result]:
    """Every policy on every day, in parallel; results in (policy, day) input order."""
    jobs = [(p, str(t)) for p in policies for t in trace_paths]
    results: dict[tuple[str, str], Result] = {}
    if scheduler:
        try:
            distributed = importlib.import_module("dask.distributed")
        except ImportError as exc:
            raise UsageError("--scheduler needs Dask: pip install 'dask[distributed]'") from exc
        try:
            client = distributed.Client(scheduler, timeout="10s")
        except (OSError, TimeoutError, ValueError) as exc:
            raise UsageError(
                f"cannot reach the Dask scheduler at {scheduler!r}: {exc}; "
                "check the address (tcp://HOST:PORT) and that the scheduler runs"
            ) from exc
        try:
            futs = [
                client.submit(run_day, p, t, seed, None, clock, scenario, pure=False)
                for p, t in jobs
            ]
            for (p, t), fut in zip(jobs, futs, strict=True):
                results[(p, t)] = fut.result()
                if progress:
                    progress(results[(p, t)])
        finally:
            client.close()
    elif workers == 1:
        for p, t in jobs:
            results[(p, t)] = run_day(p, t, seed, None, clock, scenario)
            if progress:
                progress(results[(p, t)])
    else:
        with cf.ProcessPoolExecutor(max_workers=workers) as pool:
            fmap = {
                pool.submit(run_day, p, t, seed, None, clock, scenario): (p, t) for p, t in jobs
            }
            for fut in cf.as_completed(fmap):
                results[fmap[fut]] = fut.result()
                if progress:
                    progress(results[fmap[fut]])
    return [results[j] for j in jobs]
