"""Links shared max-min fairly among the flows crossing them (progressive filling).

A flow crosses a tuple of links (a migration: the source's transmit side and
the target's receive side of one network) and may have a demand cap (a
redirected-I/O stream wants only so much; a migration wants all it can get,
or its bandwidth limit). Rates are recomputed whenever a flow starts, ends or
a link changes; the few flows alive at once make a full recompute cheap.
"""

from __future__ import annotations

import math
from collections.abc import Hashable
from dataclasses import dataclass

__all__ = ["Flow", "max_min_rates"]

_EPS = 1e-12


@dataclass(frozen=True)
class Flow:
    id: int
    links: tuple[Hashable, ...]
    demand: float = math.inf  # MiB/s


def max_min_rates(flows: list[Flow], capacity: dict[Hashable, float]) -> dict[int, float]:
    """Max-min fair rates (MiB/s) of ``flows`` over links of ``capacity`` (MiB/s)."""
    rates = {f.id: 0.0 for f in flows}
    active = [f for f in flows if f.demand > 0 and all(capacity.get(k, 0.0) > 0 for k in f.links)]
    remaining = {k: capacity.get(k, 0.0) for f in active for k in f.links}
    while active:
        users: dict[Hashable, int] = {}
        for f in active:
            for k in f.links:
                users[k] = users.get(k, 0) + 1
        inc = min(remaining[k] / n for k, n in users.items())
        inc = min(inc, min(f.demand - rates[f.id] for f in active))
        for f in active:
            rates[f.id] += inc
        for k, n in users.items():
            remaining[k] -= inc * n
        active = [
            f for f in active
            if f.demand - rates[f.id] > _EPS * max(1.0, f.demand if f.demand < math.inf else 1.0)
            and all(remaining[k] > _EPS * max(1.0, capacity[k]) for k in f.links)
        ]
    return rates
