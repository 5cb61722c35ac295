"""The migration mode chosen from the model before a migration starts."""

from __future__ import annotations

from dataclasses import replace

import pytest
from hypothesis import given
from hypothesis import strategies as st

from vmcluster.policy.migration_mode import (
    AUTO_TRIGGER,
    POSTCOPY_AIM,
    PROMPT,
    choose_mode,
    postcopy,
    postcopy_left,
    postcopy_switch,
)
from vmcluster.policy.migration_model import Costs, PrecopyInput

GBIT = 119.2  # MiB/s on a 1 Gbit/s link


def inp(dirty: float, wws: float = 128.0, action: str = "throttle",
        budget: float = 100.0, switch_ms: float = 0.0) -> PrecopyInput:
    return PrecopyInput(256, dirty, wws, GBIT, budget, on_no_convergence=action,  # type: ignore[arg-type]
                        costs=Costs(switch_ms=switch_ms))


def test_an_idle_guest_is_plain_precopy() -> None:
    c = choose_mode(inp(0))
    assert c.mode == "precopy"
    assert c.result.downtime_ms <= 100 and len(c.result.passes) == 1
    assert "converges in 1 pass " in c.reason


def test_qemu_aims_below_the_budget_when_one_more_short_pass_gets_there() -> None:
    quiet = choose_mode(inp(3))  # 6.4 MiB dirty after pass 0: 54 ms, inside 100
    assert quiet.aim_ms == 25 and len(quiet.result.passes) == 2
    assert quiet.result.downtime_ms < 2  # one more pass of 54 ms leaves 0.16 MiB
    assert quiet.result.total_s <= choose_mode(inp(0)).result.total_s + 0.06
    assert quiet.to_json()["aim_ms"] == 25
    busy = choose_mode(inp(100, wws=128, action="abort"))  # every pass costs seconds
    assert busy.aim_ms == 100


def test_a_moderate_guest_is_precopy_within_the_budget() -> None:
    c = choose_mode(inp(20))
    assert (c.mode, c.result.outcome) == ("precopy", "converged")
    assert c.result.downtime_ms <= 100


def test_a_slow_precopy_gives_way_to_postcopy_only_with_consent() -> None:
    slow = inp(100)
    without = choose_mode(slow)
    assert without.mode == "precopy"  # it keeps the budget, slowly: the guest runs on
    assert without.result.total_s > PROMPT * 256 / GBIT
    allowed = choose_mode(slow, allow_postcopy=True)
    assert allowed.mode == "postcopy"
    assert allowed.result.total_s <= POSTCOPY_AIM * 256 / GBIT + 0.01
    # the whole first pass would take 1.5 copies: the switch comes after 76 MiB
    assert allowed.postcopy_after_mib == pytest.approx(76.3, abs=0.1)
    assert "post-copy after 76 MiB of pre-copy" in allowed.reason
    blocked = choose_mode(slow, allow_postcopy=True, blocker="node2's QEMU lacks it")
    assert blocked.mode == "precopy"


def test_a_guest_on_little_cpu_is_throttled_hard_and_early() -> None:
    """Dirtying 300 MiB/s on 6 % of its vCPU time (the lab's guest), only a throttle
    over 94 % slows it: the model starts at 99 %, and QEMU counts a window that dirtied
    a tenth of what it sent, so the throttle starts at its second look."""
    c = choose_mode(replace(inp(300, wws=160), vcpu_busy=0.06))
    assert (c.mode, c.throttle_initial, c.throttle_trigger) == ("auto-converge", 0.99,
                                                                AUTO_TRIGGER)
    assert "on 6 % of its vCPU time" in c.reason
    assert c.to_json()["throttle_trigger"] == AUTO_TRIGGER


def test_throttling_when_it_gets_there() -> None:
    c = choose_mode(inp(300, wws=160))
    assert c.mode == "auto-converge"
    assert c.result.converged and c.result.throttle > 0
    assert "throttling the guest by" in c.reason
    # QEMU's 20 % first step would need more passes: the model starts higher
    assert c.throttle_initial is not None and c.throttle_initial > 0.2
    assert c.result.input.throttle_initial == c.throttle_initial


def test_a_refusal_says_what_would_help() -> None:
    c = choose_mode(inp(300, wws=160, action="abort"))
    assert c.mode == "refuse"
    assert "does not allow it (allow_postcopy)" in c.reason
    assert "raise the downtime budget" in c.reason and c.advice


def test_force_only_when_asked() -> None:
    c = choose_mode(inp(300, wws=160, action="force"))
    assert (c.mode, c.result.outcome) == ("precopy", "forced")
    assert c.result.downtime_ms > 100 and "forced through as asked" in c.reason


def test_postcopy_model() -> None:
    r = postcopy(PrecopyInput(256, 100, 128, GBIT, 100, state_mib=1.0))
    assert r.outcome == "postcopy" and r.converged
    assert r.after_mib == pytest.approx(128)  # the working set, dirtied during pass 0
    assert r.total_s == pytest.approx((256 + 1) / GBIT + 128 / GBIT)
    assert r.downtime_ms == pytest.approx(1 / GBIT * 1000)
    assert r.to_json()["postcopy_mib"] == pytest.approx(128)


def test_postcopy_after_part_of_the_first_pass() -> None:
    i = PrecopyInput(256, 100, 128, GBIT, 100)
    # 128 MiB sent in 1.07 s: the 107 MiB dirtied meanwhile count as sent already
    assert postcopy_left(i, 128, 128 / GBIT, 100) == pytest.approx(128 + 107.4, abs=0.1)
    assert postcopy_left(i, 10, 10 / GBIT, 1000) == 256  # no more than was sent
    r = postcopy(i, 128)
    assert r.passes[0].sent_mib == 128
    assert r.total_s == pytest.approx(128 / GBIT + 235.4 / GBIT, abs=0.01)
    slow = postcopy(replace(i, costs=Costs(postcopy_efficiency=0.5, postcopy_pause_ms=40)), 128)
    assert slow.total_s == pytest.approx(128 / GBIT + 0.04 + 235.4 / (0.5 * GBIT), abs=0.01)
    assert slow.downtime_ms == pytest.approx(40)
    s = postcopy_switch(i)
    assert postcopy(i, s).total_s == pytest.approx(POSTCOPY_AIM * 256 / GBIT, abs=1e-3)
    assert postcopy_switch(PrecopyInput(256, 5, 128, GBIT, 100)) == 256  # whole pass fits


def test_the_switchovers_fixed_cost_comes_out_of_the_budget() -> None:
    c = choose_mode(inp(20, switch_ms=15))
    assert c.aim_ms == pytest.approx(0.25 * 85)  # a quarter of what the copy may take
    assert c.result.downtime_ms <= 100 and c.result.downtime_ms >= 15
    stuck = choose_mode(inp(300, wws=160, action="abort", switch_ms=15))
    plain = choose_mode(inp(300, wws=160, action="abort"))
    need = {a.kind: float(a.value) for a in stuck.advice}["downtime"]
    assert need == pytest.approx({a.kind: float(a.value) for a in plain.advice}["downtime"]
                                 + 15, abs=0.01)


@given(dirty=st.floats(0, 1000), wws=st.floats(1, 256), budget=st.floats(1, 2000),
       action=st.sampled_from(["throttle", "abort", "force"]), allow=st.booleans(),
       switch=st.floats(0, 0.5))
def test_never_over_the_budget_unless_forced(dirty: float, wws: float, budget: float,
                                             action: str, allow: bool, switch: float) -> None:
    c = choose_mode(inp(dirty, wws, action, budget, switch * budget), allow_postcopy=allow)
    assert c.reason
    assert c.aim_ms is None or 0 < c.aim_ms <= budget
    if c.mode == "refuse":
        assert action != "force"
    elif c.result.outcome != "forced":
        assert c.result.downtime_ms <= budget + 1e-6
    else:
        assert action == "force"
    if c.mode == "postcopy":
        assert allow
