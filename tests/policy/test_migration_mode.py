"""The migration mode chosen from the model before a migration starts."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from vmcluster.policy.migration_mode import PROMPT, choose_mode, postcopy
from vmcluster.policy.migration_model import PrecopyInput

GBIT = 119.2  # MiB/s on a 1 Gbit/s link


def inp(dirty: float, wws: float = 128.0, action: str = "throttle",
        budget: float = 100.0) -> PrecopyInput:
    return PrecopyInput(256, dirty, wws, GBIT, budget, on_no_convergence=action)  # type: ignore[arg-type]


def test_an_idle_guest_is_plain_precopy() -> None:
    c = choose_mode(inp(0))
    assert c.mode == "precopy"
    assert c.result.downtime_ms <= 100 and len(c.result.passes) == 1
    assert "converges in 1 pass " in c.reason


def test_a_moderate_guest_is_precopy_within_the_budget() -> None:
    c = choose_mode(inp(20))
    assert (c.mode, c.result.outcome) == ("precopy", "converged")
    assert c.result.downtime_ms <= 100


def test_a_slow_precopy_gives_way_to_postcopy_only_with_consent() -> None:
    slow = inp(100)
    without = choose_mode(slow)
    assert without.mode == "precopy"  # it keeps the budget, slowly
    assert without.result.total_s > PROMPT * 256 / GBIT
    allowed = choose_mode(slow, allow_postcopy=True)
    assert allowed.mode == "postcopy"
    assert allowed.result.total_s <= PROMPT * 256 / GBIT + 0.01
    assert "post-copy after one pass" in allowed.reason
    blocked = choose_mode(slow, allow_postcopy=True, blocker="node2's QEMU lacks it")
    assert blocked.mode == "precopy"


def test_throttling_when_it_gets_there() -> None:
    c = choose_mode(inp(300, wws=160))
    assert c.mode == "auto-converge"
    assert c.result.converged and c.result.throttle > 0
    assert "throttling the guest by" in c.reason


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
    assert r.total_s == pytest.approx((256 + 1 + 128) / GBIT)
    assert r.downtime_ms == pytest.approx(1 / GBIT * 1000)
    assert r.to_json()["postcopy_mib"] == pytest.approx(128)


@given(dirty=st.floats(0, 1000), wws=st.floats(1, 256), budget=st.floats(1, 2000),
       action=st.sampled_from(["throttle", "abort", "force"]), allow=st.booleans())
def test_never_over_the_budget_unless_forced(dirty: float, wws: float, budget: float,
                                             action: str, allow: bool) -> None:
    c = choose_mode(inp(dirty, wws, action, budget), allow_postcopy=allow)
    assert c.reason
    if c.mode == "refuse":
        assert action != "force"
    elif c.result.outcome != "forced":
        assert c.result.downtime_ms <= budget + 1e-6
    else:
        assert action == "force"
    if c.mode == "postcopy":
        assert allow
