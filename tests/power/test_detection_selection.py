"""Overload detectors and VM selection on small hand-made histories."""

from __future__ import annotations

import numpy as np
import pytest

from vmcluster.errors import UsageError
from vmcluster.policy.power.detection import Detector, iqr_rows, lr_predict, mad_rows, overloaded
from vmcluster.policy.power.selection import select_vm


def _h(values: list[float]) -> tuple[np.ndarray, np.ndarray]:
    hist = np.zeros((1, 30))
    hist[0, : len(values)] = values
    return hist, np.array([len(values)])


def test_thr() -> None:
    hist, n = _h([0.5])
    assert overloaded(Detector("thr", 0.8), hist, n, np.array([0.81]))[0]
    assert not overloaded(Detector("thr", 0.8), hist, n, np.array([0.8]))[0]


def test_lr_rising_trend_is_overloaded() -> None:
    rising = [0.9 - 0.02 * i for i in range(10)]  # now = 0.9, ten intervals ago 0.72
    hist, n = _h(rising)
    pred = lr_predict(hist)[0]
    assert pred == pytest.approx(0.92)  # OLS one step ahead of a straight line
    assert overloaded(Detector("lr", 1.2), hist, n, np.array([0.9]))[0]
    flat, n2 = _h([0.5] * 10)
    assert not overloaded(Detector("lr", 1.2), flat, n2, np.array([0.5]))[0]


def test_short_history_falls_back_to_thr_07() -> None:
    hist, n = _h([0.75] * 5)
    for kind, p in (("lr", 1.2), ("mad", 2.5), ("iqr", 1.5)):
        assert overloaded(Detector(kind, p), hist, n, np.array([0.75]))[0]
        assert not overloaded(Detector(kind, p), hist, n, np.array([0.65]))[0]


def test_mad_and_iqr_values() -> None:
    values = [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0, 0.5, 0.5]
    hist, n = _h(values)
    med = np.median(values)
    assert mad_rows(hist, n)[0] == pytest.approx(np.median(np.abs(np.array(values) - med)))
    s = sorted(values)  # ranks round(0.25*13)-1 = 2 and round(0.75*13)-1 = 9
    assert iqr_rows(hist, n)[0] == pytest.approx(s[9] - s[2])
    mad_thr = 1 - 2.5 * mad_rows(hist, n)[0]
    assert overloaded(Detector("mad", 2.5), hist, n, np.array([mad_thr + 0.01]))[0]
    assert not overloaded(Detector("mad", 2.5), hist, n, np.array([mad_thr - 0.01]))[0]


def test_unknown_detector() -> None:
    with pytest.raises(UsageError):
        Detector("xyz", 1.0)


def test_mmt_picks_min_ram_first_on_ties() -> None:
    ram = np.array([1740.0, 613.0, 870.0, 613.0])
    rng = np.random.default_rng(0)
    hist = np.zeros((4, 30))
    count = np.zeros(4, dtype=np.int64)
    assert select_vm("mmt", [0, 2, 3, 1], ram, hist, count, rng) == 3
    assert select_vm("mmt", [], ram, hist, count, rng) is None


def test_rs_is_seeded() -> None:
    """The same generator state picks the same VMs; the picks follow the generator (a
    policy that ignored it, always taking the first VM, would pass the first check only)."""
    ram = np.ones(5)
    hist = np.zeros((5, 30))
    count = np.zeros(5, dtype=np.int64)

    def picks(seed: int) -> list[int | None]:
        rng = np.random.default_rng(seed)
        return [select_vm("rs", [0, 1, 2, 3, 4], ram, hist, count, rng) for _ in range(20)]

    assert picks(7) == picks(7)
    assert len({p for seed in range(5) for p in picks(seed)}) == 5  # every VM gets picked
    assert len({tuple(picks(seed)) for seed in range(5)}) > 1


def test_mc_picks_the_most_correlated() -> None:
    rng = np.random.default_rng(1)
    base = rng.random(30)
    hist = np.vstack([base, base * 0.5 + 0.01 * rng.random(30), rng.random(30)])
    count = np.full(3, 30, dtype=np.int64)
    ram = np.array([613.0, 870.0, 1740.0])
    assert select_vm("mc", [0, 1, 2], ram, hist, count, rng) in (0, 1)
    # too little history for the regression: falls back to MMT
    assert select_vm("mc", [2, 1, 0], ram, hist, np.full(3, 2, dtype=np.int64), rng) == 0
