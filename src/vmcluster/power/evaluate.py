"""Policy names, one-day runs and sweeps (policies x days) on a process pool or Dask.

Policy names: ``<detector>-<selection>[-<param>]`` for the paper's policies
(detector thr, iqr, mad, lr, lrr; selection mmt, rs, mc; parameter defaults:
THR 0.8, IQR 1.5, MAD 2.5, LR/LRR 1.2), ``ours``, and the baselines ``npa``
(no power awareness: every host at full power all day) and ``dvfs`` (power
follows load, no migrations).
"""

from __future__ import annotations

import concurrent.futures as cf
import importlib
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from vmcluster.errors import UsageError
from vmcluster.power.detection import DETECTORS, Detector
from vmcluster.power.engine import Metrics, Policy, simulate
from vmcluster.power.ours import OursPolicy
from vmcluster.power.placement import PaperPolicy
from vmcluster.power.scenario import Scenario
from vmcluster.power.selection import SELECTIONS
from vmcluster.power.traces import load_day

__all__ = ["Result", "make_policy", "parse_policies", "run_day", "sweep"]

BASELINES = ("npa", "dvfs")


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

    def to_json(self) -> dict[str, object]:
        d = asdict(self)
        return {k: d[k] for k in ("policy", "day", "energy_kwh", "slatah", "pdm", "slav", "esv",
                                  "migrations")}


def make_policy(name: str) -> Policy | None:
    """The decide function for a policy name (None for the no-migration baselines)."""
    key = name.strip().lower()
    if key in BASELINES:
        return None
    if key == "ours":
        return OursPolicy().decide
    parts = key.split("-")
    if len(parts) not in (2, 3) or parts[0] not in DETECTORS or parts[1] not in SELECTIONS:
        raise UsageError(
            f"unknown policy {name!r}: use <detector>-<selection>[-<param>] with detector in "
            f"{'/'.join(DETECTORS)} and selection in {'/'.join(SELECTIONS)}, or ours, npa, dvfs"
        )
    param = DETECTORS[parts[0]]
    if len(parts) == 3:
        try:
            param = float(parts[2])
        except ValueError as exc:
            raise UsageError(f"policy {name!r}: parameter {parts[2]!r} is not a number") from exc
    return PaperPolicy(Detector(parts[0], param), parts[1]).decide


def parse_policies(text: str) -> list[str]:
    names = [n.strip().lower() for n in text.split(",") if n.strip()]
    if not names:
        raise UsageError("--policies is empty: name at least one policy")
    for n in names:
        make_policy(n)  # validates
    return names


def run_day(policy: str, trace_path: str, seed: int = 0, hosts: int | None = None,
            clock: Callable[[], float] | None = None,
            scenario: Scenario | None = None) -> Result:
    """Simulate one policy on one day's CSV (a top-level function, so pools can pickle it).

    ``scenario`` gives the datacenter (hosts, VM types, interval); the paper's by default.
    """
    trace = load_day(Path(trace_path))
    dc = (scenario or Scenario()).datacenter(trace.n_vms, hosts)
    decide = make_policy(policy)
    t0 = clock() if clock else 0.0
    placement = "first-fit" if decide is None else "pabfd"
    m: Metrics = simulate(dc, trace.util, decide, placement=placement, seed=seed, clock=clock)
    wall = (clock() - t0) if clock else 0.0
    energy = m.energy_kwh
    if policy == "npa":  # every host at its maximum power for the whole run
        energy = float(dc.power_table[:, -1].sum()) * trace.util.shape[1] * dc.interval_s / 3.6e6
    return Result(policy, trace.day, energy, m.slatah, m.pdm, m.slav, energy * m.slav,
                  m.migrations, wall, m.decision_s)


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
