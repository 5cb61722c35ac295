"""VM selection from an overloaded host (Beloglazov & Buyya, CCPE 2012, section 6.2).

* MMT (minimum migration time): the VM with the least RAM (migration time is
  RAM over the bandwidth available for migration); the first in the host's
  list wins a tie, as in CloudSim.
* RS (random selection): uniform over the host's VMs, from a seeded generator.
* MC (maximum correlation): the VM whose utilisation history is best explained
  (largest R^2 of an ordinary least-squares fit with intercept) by the other
  VMs' histories; with too little history for the fit, falls back to MMT.

Pure: lists in, index out.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import numpy.typing as npt

from vmcluster.errors import UsageError

__all__ = ["SELECTIONS", "select_vm"]

SELECTIONS = ("mmt", "rs", "mc")


def _mmt(vms: Sequence[int], ram: npt.NDArray[np.float64]) -> int:
    best = vms[0]
    for vm in vms[1:]:
        if ram[vm] < ram[best]:
            best = vm
    return best


def _mc(
    vms: Sequence[int],
    ram: npt.NDArray[np.float64],
    hist: npt.NDArray[np.float64],
    hist_count: npt.NDArray[np.int64],
) -> int:
    n = len(vms)
    m = int(min(hist_count[v] for v in vms))
    if n < 2 or m <= n:  # n parameters (n-1 regressors + intercept) need more than n rows
        return _mmt(vms, ram)
    data = hist[np.asarray(vms), :m]
    best, best_r2 = 0, float(np.finfo(np.float64).tiny)
    for i in range(n):
        y = data[i]
        x = np.column_stack([np.ones(m), np.delete(data, i, axis=0).T])
        coef, *_ = np.linalg.lstsq(x, y, rcond=None)
        resid = y - x @ coef
        sst = float(((y - y.mean()) ** 2).sum())
        if sst <= 0.0:
            continue
        r2 = 1.0 - float((resid**2).sum()) / sst
        if r2 > best_r2:
            best, best_r2 = i, r2
    return vms[best]


def select_vm(
    kind: str,
    vms: Sequence[int],
    ram: npt.NDArray[np.float64],
    hist: npt.NDArray[np.float64],
    hist_count: npt.NDArray[np.int64],
    rng: np.random.Generator,
) -> int | None:
    """One VM to move off a host holding ``vms`` (in placement order), or None."""
    if not vms:
        return None
    if kind == "mmt":
        return _mmt(vms, ram)
    if kind == "rs":
        return vms[int(rng.integers(len(vms)))]
    if kind == "mc":
        return _mc(vms, ram, hist, hist_count)
    raise UsageError(f"unknown VM selection {kind!r}; known: {', '.join(SELECTIONS)}")
