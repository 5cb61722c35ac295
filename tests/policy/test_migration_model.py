"""The pre-copy model: its physics (monotonicity), the closed form, the pass bound, the actions."""

from __future__ import annotations

import math
from dataclasses import replace

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from vmcluster.errors import UsageError
from vmcluster.policy.migration_model import (
    PrecopyInput,
    Throttling,
    advise,
    after_pass,
    auto_converge,
    run,
    throttled_rate,
)

pos = st.floats(min_value=1.0, max_value=8192.0, allow_nan=False)
rate = st.floats(min_value=0.0, max_value=500.0, allow_nan=False)
bw = st.floats(min_value=1.0, max_value=2000.0, allow_nan=False)
budget = st.floats(min_value=1.0, max_value=2000.0, allow_nan=False)
passes = st.integers(min_value=1, max_value=40)


@st.composite
def inputs(draw: st.DrawFn) -> PrecopyInput:
    memory = draw(pos)
    return PrecopyInput(
        memory_mib=memory,
        dirty_mibps=draw(rate),
        wws_mib=draw(st.floats(min_value=0.0, max_value=memory)),
        bandwidth_mibps=draw(bw),
        downtime_ms=draw(budget),
        max_passes=draw(passes),
        state_mib=draw(st.floats(min_value=0.0, max_value=16.0)),
    )


def close_le(a: float, b: float) -> bool:
    return a <= b * (1 + 1e-9) + 1e-12


@settings(max_examples=300)
@given(inputs(), st.floats(min_value=1.0, max_value=10.0))
def test_more_bandwidth_never_slower(inp: PrecopyInput, factor: float) -> None:
    slow, fast = run(inp), run(replace(inp, bandwidth_mibps=inp.bandwidth_mibps * factor))
    # Convergence is monotone, and among converging migrations so is the total time.
    assert fast.converged or not slow.converged
    if slow.converged:
        assert close_le(fast.total_s, slow.total_s)
        assert len(fast.passes) <= len(slow.passes)


@settings(max_examples=300)
@given(inputs(), st.floats(min_value=1.0, max_value=10.0))
def test_more_dirtying_never_faster(inp: PrecopyInput, factor: float) -> None:
    calm, busy = run(inp), run(replace(inp, dirty_mibps=inp.dirty_mibps * factor))
    assert calm.converged or not busy.converged
    if busy.converged:
        assert close_le(calm.total_s, busy.total_s)


@settings(max_examples=300)
@given(inputs(), st.floats(min_value=0.0, max_value=1.0))
def test_larger_working_set_never_faster(inp: PrecopyInput, frac: float) -> None:
    bigger_w = inp.wws_mib + (inp.memory_mib - inp.wws_mib) * frac
    small, big = run(inp), run(replace(inp, wws_mib=bigger_w))
    assert small.converged or not big.converged
    if big.converged:
        assert close_le(small.total_s, big.total_s)


@settings(max_examples=300)
@given(inputs())
def test_pass_count_bounded_and_total_consistent(inp: PrecopyInput) -> None:
    for action in ("force", "throttle", "abort"):
        res = run(replace(inp, on_no_convergence=action))
        assert 1 <= len(res.passes) <= inp.max_passes
        assert res.passes[0].sent_mib == inp.memory_mib
        copy = sum(p.seconds for p in res.passes)
        assert math.isclose(res.total_s, copy + res.downtime_ms / 1000, rel_tol=1e-9)
        if res.converged:
            # What was paused for fit the budget (the device state aside).
            assert close_le((res.stop_copy_mib - inp.state_mib) / inp.bandwidth_mibps * 1000,
                            inp.downtime_ms)


def closed_form(m: float, d: float, b: float, L: float, s: float, n: int) -> tuple[int, float]:
    """Passes and total time of pre-copy when W never binds: V_i = M r^i with r = d/b."""
    r = d / b
    k = 0  # the last pass: the first k with M r^(k+1) / b <= L
    while m * r ** (k + 1) / b * 1000 > L:
        k += 1
        assert k < n
    series = m * (k + 1) / b if r == 1 else m * (1 - r ** (k + 1)) / (b * (1 - r))
    return k + 1, series + (m * r ** (k + 1) + s) / b


@settings(max_examples=300)
@given(pos, st.floats(min_value=0.0, max_value=0.9), bw, budget,
       st.floats(min_value=0.0, max_value=16.0))
def test_equals_geometric_series_when_w_does_not_bind(
    m: float, r: float, b: float, L: float, s: float
) -> None:
    inp = PrecopyInput(memory_mib=m, dirty_mibps=r * b, wws_mib=m, bandwidth_mibps=b,
                       downtime_ms=L, max_passes=10_000, state_mib=s)
    # A pass that lands on the budget to the last bit may fall either side of it by
    # rounding (the model multiplies pass by pass, the closed form takes r^k): not that.
    assume(all(not math.isclose(m * r ** (k + 1) / b * 1000, L, rel_tol=1e-9)
               for k in range(64)))
    res = run(inp)
    assert res.converged
    n, total = closed_form(m, r * b, b, L, s, 10_000)
    assert len(res.passes) == n
    assert math.isclose(res.total_s, total, rel_tol=1e-9)
    for i, p in enumerate(res.passes):
        assert math.isclose(p.sent_mib, m * r**i, rel_tol=1e-9)


def test_a_known_migration() -> None:
    # 1 GiB at 100 MiB/s dirtying 50 MiB/s: 1024, 512, 256, 128, 64 MiB ... until <= 30 MiB.
    res = run(PrecopyInput(1024, 50, 1024, 100, 300))
    assert [p.sent_mib for p in res.passes] == [1024, 512, 256, 128, 64, 32]
    assert res.stop_copy_mib == 16
    assert res.downtime_ms == pytest.approx(160)
    assert res.total_s == pytest.approx(20.32)
    assert res.converged and res.outcome == "converged"


def test_working_set_stops_the_shrinking_then_force_abort_throttle() -> None:
    inp = PrecopyInput(1024, 200, 300, 100, 300)
    forced = run(inp)
    # Pass 1 sends W (300), pass 2 would send W again: stuck.
    assert [p.sent_mib for p in forced.passes] == [1024, 300]
    assert not forced.converged and forced.outcome == "forced"
    assert forced.downtime_ms == pytest.approx(3000)
    aborted = run(replace(inp, on_no_convergence="abort"))
    assert aborted.outcome == "aborted" and aborted.downtime_ms == 0
    assert aborted.total_s == pytest.approx(13.24)
    throttled = run(replace(inp, on_no_convergence="throttle"))
    assert throttled.converged and throttled.outcome == "throttled"
    assert 0.2 <= throttled.throttle <= 0.99
    assert throttled.downtime_ms <= 300
    # Throttled to the limit and still too big for the budget: given up, never forced.
    hopeless = run(replace(inp, on_no_convergence="throttle", downtime_ms=0.001,
                           max_passes=8))
    assert hopeless.outcome == "aborted" and hopeless.downtime_ms == 0
    assert hopeless.throttle > 0.2  # throttled harder pass by pass first
    assert len(hopeless.passes) == 8


def test_auto_converge_throttles_like_qemu() -> None:
    """QEMU looks a second or more after its last look; every second window that dirtied
    more than the trigger's share of what it sent adds a step."""
    inp = PrecopyInput(256, 110, 128, 119.2, 100, on_no_convergence="throttle")
    t0 = Throttling()
    short = auto_converge(inp, t0, 0.6, 70, 60)  # under a second: no look yet
    assert (short.throttle, short.high, short.window_s) == (0.0, 0, 0.6)
    once = auto_converge(inp, short, 0.6, 70, 60)  # 1.2 s, 120 of 140 MiB dirtied: counts
    assert (once.throttle, once.high, once.window_s) == (0.0, 1, 0.0)
    twice = auto_converge(inp, once, 1.1, 128, 100)
    assert (twice.throttle, twice.high) == (0.2, 0)  # twice: the first step
    third = auto_converge(inp, Throttling(0.2, 1), 1.1, 128, 100)
    assert third.throttle == pytest.approx(0.3)  # then +10 %
    calm = auto_converge(inp, Throttling(0.2, 1), 2.0, 256, 100)  # under the trigger
    assert (calm.throttle, calm.high) == (0.2, 1)
    assert auto_converge(replace(inp, trigger=0.2), Throttling(0.2, 1), 2.0, 256,
                         100).throttle == pytest.approx(0.3)  # a lower trigger counts it
    assert auto_converge(replace(inp, on_no_convergence="abort"), Throttling(0, 1), 2.0,
                         128, 100) == Throttling(0, 1)  # only when throttling is the action
    res = run(inp)  # pre-copy alone shrinks too slowly to fit 100 ms in 30 passes
    assert res.outcome == "throttled" and res.converged and res.downtime_ms <= 100


def test_a_guest_on_little_cpu_is_slowed_only_by_a_hard_throttle() -> None:
    """Dirtying on 10 % of its vCPUs' time, the guest keeps its rate until it has less."""
    inp = PrecopyInput(256, 100, 128, 114, 100, on_no_convergence="throttle", vcpu_busy=0.1)
    assert throttled_rate(inp, 0.6) == 100
    assert throttled_rate(inp, 0.95) == pytest.approx(50)
    assert throttled_rate(inp, 0.99) == pytest.approx(10)
    soft = run(replace(inp, throttle_initial=0.6))
    hard = run(replace(inp, throttle_initial=0.99))
    assert hard.converged and hard.total_s < soft.total_s
    assert run(replace(inp, vcpu_busy=1.0, throttle_initial=0.6)).total_s < soft.total_s


def test_pass_bound_forces() -> None:
    res = run(PrecopyInput(1024, 90, 1024, 100, 10, max_passes=3))
    assert len(res.passes) == 3 and res.outcome == "forced"


def test_after_pass_rule() -> None:
    inp = PrecopyInput(1024, 10, 1024, 100, 300)
    assert after_pass(inp, 0, 1024, 10.24, 10, 100) == ("continue", pytest.approx(102.4))
    assert after_pass(inp, 1, 102.4, 1.024, 10, 100)[0] == "stop"
    # Shrinking but too big to fit: stuck only when it is the last allowed pass.
    assert after_pass(inp, 0, 1024, 10.24, 10, 1)[0] == "continue"
    assert after_pass(inp, 29, 1024, 10.24, 10, 1)[0] == "stuck"
    # Not shrinking (dirtying faster than sending) is stuck at once.
    assert after_pass(inp, 1, 50, 0.5, 200, 100) == ("stuck", 100)


def test_advice_makes_it_converge() -> None:
    res = run(PrecopyInput(1024, 150, 600, 110, 300))
    assert not res.converged
    kinds = {a.kind: a for a in advise(res)}
    assert set(kinds) == {"downtime", "bandwidth", "throttle"}
    inp = res.input
    assert run(replace(inp, downtime_ms=float(kinds["downtime"].value))).converged
    assert run(replace(inp, bandwidth_mibps=float(kinds["bandwidth"].value))).converged
    slowed = inp.dirty_mibps * (1 - float(kinds["throttle"].value))
    assert run(replace(inp, dirty_mibps=slowed)).converged
    assert not run(replace(inp, bandwidth_mibps=float(kinds["bandwidth"].value) * 0.99)).converged
    assert advise(run(PrecopyInput(1024, 1, 16, 110, 300))) == ()


@settings(max_examples=200)
@given(inputs(), st.floats(min_value=0.6, max_value=3.0), st.floats(min_value=0.1, max_value=50))
def test_advice_is_always_right(inp: PrecopyInput, ratio: float, small_budget: float) -> None:
    inp = replace(inp, dirty_mibps=inp.bandwidth_mibps * ratio, downtime_ms=small_budget)
    res = run(inp)
    assume(not res.converged)
    for a in advise(res):
        if a.kind == "downtime":
            assert run(replace(inp, downtime_ms=float(a.value))).converged
        elif a.kind == "bandwidth":
            assert run(replace(inp, bandwidth_mibps=float(a.value))).converged
        elif a.kind == "throttle":
            slowed = inp.dirty_mibps * (1 - float(a.value))
            assert run(replace(inp, dirty_mibps=slowed)).converged


@pytest.mark.parametrize("bad", [
    {"memory_mib": 0}, {"bandwidth_mibps": 0}, {"dirty_mibps": -1}, {"max_passes": 0},
    {"downtime_ms": -5}, {"on_no_convergence": "pray"},
])
def test_bad_input_is_a_usage_error(bad: dict[str, object]) -> None:
    args: dict[str, object] = {"memory_mib": 1, "dirty_mibps": 1, "wws_mib": 1,
                               "bandwidth_mibps": 1, "downtime_ms": 1, **bad}
    with pytest.raises(UsageError):
        PrecopyInput(**args)  # type: ignore[arg-type]
