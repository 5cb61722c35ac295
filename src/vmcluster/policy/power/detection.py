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
  first), predict as many intervals ahead as the host's longest VM migration takes
  (x = 11 for the paper's VMs) and call it overloaded
  when ``s * prediction >= 1`` (s = 1.2). The paper describes loess with
  tricube weights; CloudSim 3.0.3 builds the weights but only applies them
  when 40 % of them are zero, which tricube weights never are, so its LR is
  plain OLS, and LRR (bisquare-robust) is identical to LR. We do the same, so
  LRR exists and equals LR; ``docs/power.md`` says more.
* Adaptive detectors fall back to THR 0.7 while a history is too short.

All functions are vectorised over hosts and pure; the arithmetic is CloudSim's
(:mod:`.kernels`), so the same histories give the same answers to the last bit.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from vmcluster.errors import UsageError
from vmcluster.policy.power.lazy import kernels

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


def mad_rows(hist: FloatArray, length: IntArray) -> FloatArray:
    """Median absolute deviation of each row's first ``length`` values (MathUtil.mad)."""
    return np.asarray(kernels.spread_rows(kernels.MAD, hist, length), dtype=np.float64)


def iqr_rows(hist: FloatArray, length: IntArray) -> FloatArray:
    """Inter-quartile range as CloudSim's MathUtil.iqr computes it (rounded ranks)."""
    return np.asarray(kernels.spread_rows(kernels.IQR, hist, length), dtype=np.float64)


def lr_predict(hist: FloatArray, ahead: float = 1.0) -> FloatArray:
    """OLS prediction ``ahead`` intervals past the last 10 values (hist[:, 0] = now)."""
    return np.asarray(kernels.lr_forecast(np.ascontiguousarray(hist), float(ahead)),
                      dtype=np.float64)


def overloaded(det: Detector, hist: FloatArray, length: IntArray, util: FloatArray,
               ahead: FloatArray | None = None) -> BoolArray:
    """Which hosts are overloaded now (CloudSim's isHostOverUtilized); ``ahead``: LR's
    intervals to the end of each host's longest migration (1 by default)."""
    n = hist.shape[0]
    steps = np.ones(n) if ahead is None else np.asarray(ahead, dtype=np.float64)
    return np.asarray(kernels.overloaded_rows(
        kernels.KINDS[det.kind], float(det.param), np.ascontiguousarray(hist),
        np.asarray(length, dtype=np.int64), np.asarray(util, dtype=np.float64), steps),
        dtype=np.bool_)
