"""Host overload detection (Beloglazov & Buyya, CCPE 2012, section 6.1).

Every detector takes, for a batch of hosts, the host's utilisation history as
CloudSim keeps it and the host's requested utilisation now:

* ``hist[r, i]``: the host's utilisation ``i`` intervals ago (0 = now) as the
  sum over the VMs it holds *now* of each VM's own history times its MIPS over
  the host's MIPS (so a host's history moves with its VMs), at most 30 values;
* ``length[r]``: how many values that history has once trailing zeros (the
  oldest end) are trimmed;
* ``util[r]``: sum of the requested MIPS of its VMs now over the host's MIPS.

Detectors:

* THR: ``util > threshold`` (default 0.8).
* IQR: ``util > 1 - s * IQR(history)`` (s = 1.5), MAD: ``util > 1 - s * MAD(history)``
  (s = 2.5); both need at least 12 values.
* LR: ordinary least squares over the last 10 values (x = 1..10, oldest
  first), predict one migration interval ahead (x = 11) and call it overloaded
  when ``s * prediction >= 1`` (s = 1.2). The paper describes loess with
  tricube weights; CloudSim 3.0.3 builds the weights but only applies them
  when 40 % of them are zero, which tricube weights never are, so its LR is
  plain OLS, and LRR (bisquare-robust) is identical to LR. We do the same, so
  LRR exists and equals LR; ``docs/power.md`` says more.
* Adaptive detectors fall back to THR 0.7 while a history is too short.

All functions are vectorised over hosts and pure.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from vmcluster.errors import UsageError

__all__ = [
    "DETECTORS",
    "HISTORY",
    "Detector",
    "iqr_rows",
    "lr_predict",
    "mad_rows",
    "overloaded",
]

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]
BoolArray = npt.NDArray[np.bool_]

HISTORY = 30  # values kept per VM (PowerVm.HISTORY_LENGTH)
LR_WINDOW = 10
MIN_ROBUST = 12
FALLBACK_THR = 0.7
DETECTORS = {"thr": 0.8, "iqr": 1.5, "mad": 2.5, "lr": 1.2, "lrr": 1.2}


@dataclass(frozen=True)
class Detector:
    """A detector by name (thr, iqr, mad, lr, lrr) and its parameter."""

    kind: str
    param: float

    def __post_init__(self) -> None:
        if self.kind not in DETECTORS:
            raise UsageError(f"unknown overload detector {self.kind!r}; "
                             f"known: {', '.join(DETECTORS)}")
        if not self.param > 0:
            raise UsageError(f"detector {self.kind} needs a parameter > 0, got {self.param}")


def _median_rows(x: FloatArray) -> FloatArray:
    if not x.shape[1]:
        return np.zeros(x.shape[0])
    return np.asarray(np.median(x, axis=1), dtype=np.float64)


def mad_rows(hist: FloatArray, length: IntArray) -> FloatArray:
    """Median absolute deviation of each row's first ``length`` values."""
    out = np.zeros(hist.shape[0])
    for n in np.unique(length):
        rows = np.flatnonzero(length == n)
        data = hist[rows, : int(n)]
        med = _median_rows(data)
        out[rows] = _median_rows(np.abs(data - med[:, None]))
    return out


def iqr_rows(hist: FloatArray, length: IntArray) -> FloatArray:
    """Inter-quartile range as CloudSim's MathUtil.iqr computes it (rounded ranks)."""
    out = np.zeros(hist.shape[0])
    for n in np.unique(length):
        if n == 0:
            continue
        rows = np.flatnonzero(length == n)
        data = np.sort(hist[rows, : int(n)], axis=1)
        q1 = int(np.floor(0.25 * (n + 1) + 0.5)) - 1
        q3 = int(np.floor(0.75 * (n + 1) + 0.5)) - 1
        q1, q3 = min(max(q1, 0), int(n) - 1), min(max(q3, 0), int(n) - 1)
        out[rows] = data[:, q3] - data[:, q1]
    return out


def _lr_weights(window: int, ahead: float) -> FloatArray:
    x = np.arange(1.0, window + 1.0)
    xc = x - x.mean()
    # prediction at x = ahead is a linear function of y: mean(y) + slope * (ahead - mean(x))
    w: FloatArray = 1.0 / window + xc * (ahead - x.mean()) / float((xc**2).sum())
    return w


_LR_W = _lr_weights(LR_WINDOW, LR_WINDOW + 1.0)


def lr_predict(hist: FloatArray) -> FloatArray:
    """OLS prediction one interval ahead from the last 10 values (hist[:, 0] = now)."""
    window = hist[:, :LR_WINDOW][:, ::-1]  # oldest first, x = 1..10
    out: FloatArray = np.asarray(window @ _LR_W, dtype=np.float64)
    return out


def overloaded(det: Detector, hist: FloatArray, length: IntArray, util: FloatArray) -> BoolArray:
    """Which hosts are overloaded now (CloudSim's isHostOverUtilized)."""
    if det.kind == "thr":
        return np.asarray(util > det.param)
    fallback = np.asarray(util > FALLBACK_THR)
    if det.kind in ("lr", "lrr"):
        ok = length >= LR_WINDOW
        pred = lr_predict(hist) * det.param
        return np.where(ok, pred >= 1.0, fallback)
    ok = length >= MIN_ROBUST
    spread = mad_rows(hist, length) if det.kind == "mad" else iqr_rows(hist, length)
    return np.where(ok, util > 1.0 - det.param * spread, fallback)
