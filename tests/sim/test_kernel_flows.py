"""The event kernel's ordering and the max-min fair sharing of links."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from vmcluster.substrate.sim.flows import Flow, max_min_rates
from vmcluster.substrate.sim.kernel import Kernel, SimClock


def test_kernel_orders_by_time_priority_then_fifo() -> None:
    k, seen = Kernel(), []
    k.at(2.0, lambda: seen.append("late"))
    k.at(1.0, lambda: seen.append("b"), priority=1)
    k.at(1.0, lambda: seen.append("a"), priority=0)
    k.at(1.0, lambda: seen.append("c"), priority=1)
    cancelled = k.at(1.5, lambda: seen.append("never"))
    Kernel.cancel(cancelled)
    SimClock(k).sleep(1.5)
    assert seen == ["a", "b", "c"] and k.now == 1.5
    k.run_until(3.0)
    assert seen[-1] == "late" and k.processed == 4
    with pytest.raises(ValueError):
        SimClock(k).sleep(-1)


def test_max_min_shares_a_bottleneck_and_gives_the_rest() -> None:
    cap = {"a": 100.0, "b": 100.0, "c": 30.0}
    flows = [Flow(1, ("a", "b")), Flow(2, ("a",)), Flow(3, ("a", "c")), Flow(4, ("b",), 10.0)]
    r = max_min_rates(flows, cap)
    # f3 is held to 30 by c; f1 and f2 split the 70 left on a; f4 wants only 10.
    assert r[3] == pytest.approx(30) and r[1] == pytest.approx(35) and r[2] == pytest.approx(35)
    assert r[4] == pytest.approx(10)


@given(st.lists(st.tuples(st.lists(st.sampled_from("abcd"), min_size=1, max_size=3, unique=True),
                          st.one_of(st.just(math.inf), st.floats(0.1, 50))),
                min_size=1, max_size=8))
def test_max_min_is_feasible_and_every_flow_is_bottlenecked(
    spec: list[tuple[list[str], float]]
) -> None:
    cap = {"a": 100.0, "b": 60.0, "c": 10.0, "d": 1000.0}
    flows = [Flow(i, tuple(links), demand) for i, (links, demand) in enumerate(spec)]
    r = max_min_rates(flows, cap)
    load = {k: sum(r[f.id] for f in flows if k in f.links) for k in cap}
    assert all(load[k] <= cap[k] * (1 + 1e-9) for k in cap)
    for f in flows:
        assert r[f.id] <= f.demand * (1 + 1e-9)
        if r[f.id] < f.demand * (1 - 1e-6):
            # Some link of f is full and f has the largest rate on it (max-min optimality).
            assert any(load[k] >= cap[k] * (1 - 1e-6)
                       and r[f.id] >= max(r[g.id] for g in flows if k in g.links) * (1 - 1e-6)
                       for k in f.links)
