"""The engine reproduces CloudSim 3.0.3's figures for the paper's policies with MMT and
for DVFS: the same migrations, the energy and SLAV to the digits CloudSim prints. (RS is
left out: CloudSim draws it from an unseeded java.util.Random, no two of its runs agree.)"""

from __future__ import annotations

import pytest

from vmcluster.experiments.compare import cloudsim_figures, cloudsim_key
from vmcluster.experiments.evaluate import run_day
from vmcluster.experiments.traces import default_trace_dir

CASES = [("dvfs", "20110306"), ("thr-mmt-0.8", "20110303"), ("iqr-mmt-1.5", "20110306"),
         ("mad-mmt-2.5", "20110309"), ("lr-mmt-1.2", "20110325"), ("lr-mc-1.2", "20110303")]


@pytest.mark.parametrize(("policy", "day"), CASES)
def test_same_figures_as_cloudsim(policy: str, day: str) -> None:
    theirs = cloudsim_figures()[(day, cloudsim_key(policy))]
    ours = run_day(policy, str(default_trace_dir() / f"{day}.csv"))
    assert ours.migrations == theirs["migrations"]
    assert round(ours.energy_kwh, 2) == pytest.approx(theirs["energy_kwh"], abs=0.011)
    # CloudSim prints SLAV in percent with five decimals
    assert ours.slav * 100 == pytest.approx(theirs["slav"] * 100, abs=0.000006)
