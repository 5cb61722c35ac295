"""VM selection from an overloaded host (Beloglazov & Buyya, CCPE 2012, section 6.2).

* MMT (minimum migration time): the VM with the least RAM (migration time is
  RAM over the bandwidth available for migration); the first in the host's
  list wins a tie, as in CloudSim.
* RS (random selection): uniform over the host's VMs, from a seeded generator.
* MC (maximum correlation): the VM whose utilisation history is best explained
  (largest R^2 of an ordinary least-squares fit with intercept) by the other
  VMs' histories, computed as commons-math's OLS does (:func:`.kernels.mc_pick`); with
  fewer values than VMs, or a singular fit, falls back to MMT as CloudSim does.

Pure: lists in, index out.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import numpy.typing as npt

from vmcluster.errors import UsageError
from vmcluster.policy.power.lazy import kernels

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
    m = int(min(hist_count[v] for v in vms))
    pick = int(kernels.mc_pick(np.ascontiguousarray(hist[np.asarray(vms), :m])))
    return _mmt(vms, ram) if pick < 0 else vms[pick]


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
