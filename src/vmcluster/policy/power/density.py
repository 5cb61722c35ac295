"""Density scheduling on one host: core parking (a pure policy).

Place the vCPUs' loads (in cores: 0.0..1.0 each) on as few physical cores as
the load needs, each core filled to at most ``1 - headroom`` (first-fit
decreasing; a vCPU busier than that gets a core of its own), and park the
rest in a deep C-state. Report active and parked cores and the power saved
against spreading the same load over every core.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from vmcluster.errors import UsageError
from vmcluster.policy.power.models import G5_PER_CORE, PerCorePowerModel

__all__ = ["DensityPlan", "park_cores"]


@dataclass(frozen=True)
class DensityPlan:
    """``assignment[i]`` is the core of vCPU ``i``; cores ``active..cores-1`` are parked."""

    active_cores: int
    parked_cores: int
    assignment: tuple[int, ...]
    core_loads: tuple[float, ...]
    power_packed_w: float
    power_spread_w: float

    @property
    def saving_w(self) -> float:
        return self.power_spread_w - self.power_packed_w

    def to_json(self) -> dict[str, object]:
        return {"active_cores": self.active_cores, "parked_cores": self.parked_cores,
                "assignment": list(self.assignment), "core_loads": list(self.core_loads),
                "power_packed_w": self.power_packed_w, "power_spread_w": self.power_spread_w,
                "saving_w": self.saving_w}


def park_cores(
    vcpu_loads: Sequence[float], model: PerCorePowerModel = G5_PER_CORE, headroom: float = 0.2
) -> DensityPlan:
    """Pack ``vcpu_loads`` onto ``model.cores`` cores; raises UsageError if they cannot fit."""
    if not 0.0 <= headroom < 1.0:
        raise UsageError(f"headroom must be in [0, 1), got {headroom}")
    if any(not 0.0 <= x <= 1.0 for x in vcpu_loads):
        raise UsageError("each vCPU load must be between 0 and 1 core")
    n = model.cores
    total = float(sum(vcpu_loads))
    if total > n + 1e-9:
        raise UsageError(f"load {total:.2f} cores does not fit on {n} cores")
    limit = 1.0 - headroom
    loads: list[float] = []
    assignment = [0] * len(vcpu_loads)
    for i in sorted(range(len(vcpu_loads)), key=lambda j: (-vcpu_loads[j], j)):
        x = vcpu_loads[i]
        for c, used in enumerate(loads):
            if used + x <= limit + 1e-12:
                loads[c] += x
                assignment[i] = c
                break
        else:
            loads.append(x)
            assignment[i] = len(loads) - 1
    need = max(math.ceil(total - 1e-9), 1 if vcpu_loads else 0)
    if len(loads) > n:  # headroom cannot be kept: fall back to filling cores up to 1.0
        loads, assignment = _fill(vcpu_loads, n)
    active = max(len(loads), need)
    while len(loads) < active:
        loads.append(0.0)
    packed = model.power(loads, n - active)
    spread = model.power([total / n] * n, 0)
    return DensityPlan(active, n - active, tuple(assignment), tuple(loads), packed, spread)


def _fill(vcpu_loads: Sequence[float], n: int) -> tuple[list[float], list[int]]:
    loads = [0.0] * n
    assignment = [0] * len(vcpu_loads)
    for i in sorted(range(len(vcpu_loads)), key=lambda j: (-vcpu_loads[j], j)):
        c = min(range(n), key=lambda k: (loads[k], k))
        loads[c] += vcpu_loads[i]
        assignment[i] = c
    return [min(x, 1.0) for x in loads], assignment
