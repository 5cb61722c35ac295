"""Whether a datacenter can hold a day's VMs at all, said in one line before any work.

Two ways it cannot: a VM type that fits no host type (its MIPS above every host's PE,
its RAM or bandwidth above every host's), or too few hosts for every VM to be created
(CloudSim creates each at its full MIPS, by PABFD: :func:`~.engine.place_initial`).
For the second, the message says how many hosts would do, found by bisection.
"""

from __future__ import annotations

from vmcluster.errors import UsageError
from vmcluster.experiments.engine import place_initial
from vmcluster.experiments.scenario import Scenario

__all__ = ["check"]

MAX_HOSTS = 1_000_000  # the bisection's ceiling


def check(scenario: Scenario, n_vms: int, hosts: int | None = None, *,
          placement: str = "pabfd", where: str = "") -> None:
    """Raise UsageError (one line, prefixed ``where``) unless ``n_vms`` VMs of the
    scenario's types can all be created on its hosts (``hosts``: another count)."""
    n_h = scenario.hosts if hosts is None else hosts
    at = f"{where}: " if where else ""
    if n_h < 1:
        raise UsageError(f"{at}a datacenter needs at least one host, got {n_h}")
    for i, vt in enumerate(scenario.vm_types):
        if not any(vt.mips <= ht.pe_mips and vt.ram_mb <= ht.ram_mb and vt.bw_mbit <= ht.bw_mbit
                   for ht in scenario.host_types):
            biggest = max(scenario.host_types, key=lambda h: (h.pe_mips, h.ram_mb))
            raise UsageError(
                f"{at}VM type {i + 1} ({vt.mips:g} MIPS, {vt.ram_mb:g} MB, {vt.bw_mbit:g} "
                f"Mbit/s) fits no host type (the largest PE: {biggest.pe_mips:g} MIPS, "
                f"{biggest.ram_mb:g} MB, {biggest.bw_mbit:g} Mbit/s); shrink it or add a "
                "host type")
    if n_vms == 0:
        return

    def unplaced(count: int) -> int:
        return int((place_initial(scenario.datacenter(n_vms, count), placement) < 0).sum())

    missing = unplaced(n_h)
    if missing == 0:
        return
    lo, hi = n_h, n_h * 2
    while unplaced(hi) > 0:
        lo, hi = hi, hi * 2
        if hi > MAX_HOSTS:
            raise UsageError(f"{at}{missing} of {n_vms} VMs cannot be created on {n_h} hosts, "
                             f"nor on {MAX_HOSTS:,}")
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if unplaced(mid) > 0:
            lo = mid
        else:
            hi = mid
    raise UsageError(f"{at}{missing} of {n_vms} VMs cannot be created on {n_h} hosts: "
                     f"{hi} are needed ({hi - n_h} more); raise [datacenter] hosts or "
                     "--hosts")
