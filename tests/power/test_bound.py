"""The offline lower bound on a day's energy sits below every policy's."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from vmcluster.experiments.bound import lower_bound_kwh, watts_per_mips
from vmcluster.experiments.evaluate import LOWER_BOUND, bound_day, run_day
from vmcluster.experiments.scenario import Scenario
from vmcluster.experiments.traces import default_trace_dir, load_day
from vmcluster.policy.power.models import HP_ML110_G4, HP_ML110_G5

DAY = str(default_trace_dir() / "20110303.csv")


def test_a_servers_best_watts_per_mips_is_at_full_load_for_specpower_tables() -> None:
    g4 = np.asarray(HP_ML110_G4.watts, dtype=np.float64)
    g5 = np.asarray(HP_ML110_G5.watts, dtype=np.float64)
    assert watts_per_mips(g4, 3720) == pytest.approx(g4[-1] / 3720)
    assert watts_per_mips(g5, 5320) == pytest.approx(g5[-1] / 5320)
    assert watts_per_mips(g5, 5320) < watts_per_mips(g4, 3720)  # G5 serves cheaper


def test_the_bound_is_below_every_policy_and_above_nothing() -> None:
    bound = bound_day(load_day(Path(DAY)))
    assert bound.policy == LOWER_BOUND and bound.day == "20110303"
    for policy in ("dvfs", "thr-mmt-0.8", "lr-mmt-1.2", "ours"):
        assert 0 < bound.energy_kwh < run_day(policy, DAY).energy_kwh, policy


def test_the_bound_grows_with_the_demand() -> None:
    trace = load_day(default_trace_dir() / "20110303.csv")
    dc = Scenario().datacenter(trace.n_vms)
    half = (trace.util // 2).astype(np.uint8)
    assert lower_bound_kwh(dc, half) < lower_bound_kwh(dc, trace.util)
    assert lower_bound_kwh(dc, np.zeros_like(trace.util)) == 0.0
