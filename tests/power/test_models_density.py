"""Power models and core parking."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from vmcluster.errors import UsageError
from vmcluster.policy.power.density import park_cores
from vmcluster.policy.power.models import G5_PER_CORE, HP_ML110_G4, HP_ML110_G5, LinearPowerModel


@pytest.mark.parametrize("model", [HP_ML110_G4, HP_ML110_G5])
def test_specpower_points_and_midpoints(model) -> None:  # type: ignore[no-untyped-def]
    loads = np.linspace(0, 1, 11)
    assert np.allclose(model.power(loads), model.watts)
    mids = (loads[:-1] + loads[1:]) / 2
    expect = (np.array(model.watts[:-1]) + np.array(model.watts[1:])) / 2
    assert np.allclose(model.power(mids), expect)


def test_g4_g5_known_values() -> None:
    assert float(HP_ML110_G4.power(0.0)) == 86.0
    assert float(HP_ML110_G5.power(1.0)) == 135.0
    assert float(HP_ML110_G5.power(0.55)) == pytest.approx((116 + 121) / 2)


def test_linear_model() -> None:
    m = LinearPowerModel("lin", 100.0, 200.0)
    assert float(m.power(0.25)) == 125.0


loads_st = st.lists(st.floats(0.0, 1.0, allow_nan=False), min_size=0, max_size=2).filter(
    lambda xs: sum(xs) <= 2.0
)


@given(loads_st, st.floats(0.0, 0.5))
def test_parking_never_starves_and_saves(loads: list[float], headroom: float) -> None:
    plan = park_cores(loads, G5_PER_CORE, headroom)
    assert plan.active_cores + plan.parked_cores == G5_PER_CORE.cores
    assert plan.active_cores >= int(np.ceil(sum(loads) - 1e-9))
    assert all(x <= 1.0 + 1e-9 for x in plan.core_loads)
    assert plan.saving_w >= -1e-9
    assert len(plan.assignment) == len(loads)


def test_parking_packs_light_load_on_one_core() -> None:
    plan = park_cores([0.3, 0.2], headroom=0.2)
    assert (plan.active_cores, plan.parked_cores) == (1, 1)
    assert plan.saving_w == pytest.approx(G5_PER_CORE.core_idle_w - G5_PER_CORE.core_parked_w)


def test_parking_rejects_overload() -> None:
    with pytest.raises(UsageError):
        park_cores([1.0, 1.0, 0.5])
