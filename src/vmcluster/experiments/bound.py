"""An offline lower bound on a day's energy: no policy that serves every requested MIPS
can use less.

The relaxation: migrations are free and instant, the future is known, a VM may be split
across hosts, and a host serves demand at the best watts per unit of load its power
model has anywhere (``min P(u)/u`` over its table, which for the SPECpower servers is at
full load). Each instant the demand (every VM the engine still runs, as it counts them:
idle VMs leave as CloudSim destroys them) then costs at least that demand spread over the
cheapest hosts first, up to their capacity, and the next type after. That cost is convex
in the demand, and within an interval the demand moves linearly, so by Jensen the
interval's energy is at least the cost of its mean demand times its length.

It is a bound, not a schedule: real hosts draw idle power, VMs are whole, and a
migration takes time and MIPS. Every policy's energy divided by it says how far from the
physical limit it is.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from vmcluster.experiments.engine import INSTANT_OFFSET_S, Datacenter

__all__ = ["lower_bound_kwh", "watts_per_mips"]


def watts_per_mips(power_table: npt.NDArray[np.float64], mips: float) -> float:
    """The least watts per MIPS served a host with this power table (0, 10, ..., 100 %)
    and capacity can reach: min over its breakpoints of P(u) / (u * capacity)."""
    u = np.linspace(0.0, 1.0, power_table.shape[0])[1:]
    return float(np.min(power_table[1:] / (u * mips)))


def lower_bound_kwh(dc: Datacenter, util_pct: npt.NDArray[np.generic],
                    drop_idle_vms: bool = True, offset_s: float = INSTANT_OFFSET_S) -> float:
    """The bound for ``dc`` running ``util_pct`` (VMs x intervals, percent) as
    :func:`~vmcluster.experiments.engine.simulate` counts the VMs and the time: from the
    first scheduling instant (``interval + offset_s``) over every whole interval after it
    (the last instant's frames, which the engine counts only until its migrations end, are
    left out: they add nothing negative)."""
    n_vm, steps = util_pct.shape
    dt = dc.interval_s
    u = util_pct.astype(np.float64) / 100.0
    u = np.concatenate([u, u[:, -1:]], axis=1)  # the engine repeats the last sample
    caps = dc.host_mips
    cost = np.array([watts_per_mips(dc.power_table[h], float(caps[h]))
                     for h in range(dc.n_hosts)])
    order = np.argsort(cost, kind="stable")
    tiers = np.cumsum(caps[order])  # capacity served at each host's cost, cheapest first
    price = cost[order]
    # a VM's request is capped at the largest PE it could run on
    vm_mips = np.minimum(dc.vm_mips, float(dc.host_pe_mips.max()))
    alive = np.ones(n_vm, dtype=bool)
    energy_ws = 0.0
    lead = offset_s / dt  # how far into an interval its instant reads the trace
    for k in range(1, steps - 1):
        if drop_idle_vms:
            alive &= ~((u[:, k] == 0) & (u[:, k + 1] == 0))
        start = u[:, k] + (u[:, k + 1] - u[:, k]) * lead
        mid = u[:, k + 1]  # the sample between this instant and the next
        end = mid + (u[:, k + 2] - mid) * lead
        # two linear pieces: instant to sample, sample to the next instant
        first = float((vm_mips * (start + mid) / 2.0 * alive).sum())
        second = float((vm_mips * (mid + end) / 2.0 * alive).sum())
        energy_ws += (_cost(first, tiers, price) * (dt - offset_s)
                      + _cost(second, tiers, price) * offset_s)
    return energy_ws / 3.6e6


def _cost(demand: float, tiers: npt.NDArray[np.float64],
          price: npt.NDArray[np.float64]) -> float:
    """Watts to serve ``demand`` MIPS filling the cheapest capacity first (more than the
    whole datacenter: at the dearest host's price)."""
    served = np.minimum(tiers, demand)
    each = np.diff(np.concatenate([[0.0], served]))
    extra = max(0.0, demand - float(tiers[-1]))
    return float((each * price).sum()) + extra * float(price[-1])
