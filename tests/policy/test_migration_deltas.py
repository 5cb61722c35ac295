"""Pre-copy with XBZRLE deltas: QEMU's encoding's length, the model's passes on the wire,
and when the mode chooser sends re-sent pages as deltas."""

from __future__ import annotations

import os
from dataclasses import replace
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from vmcluster.errors import UsageError
from vmcluster.model.spec import load_spec
from vmcluster.policy.migration_mode import (
    DELTA_GAIN,
    PROMPT,
    MigrationProfile,
    choose_mode,
    delta_cache_mib,
)
from vmcluster.policy.migration_model import DELTA_FROM_PASS, Costs, PrecopyInput, run, wire_mib
from vmcluster.policy.prediction import delta_ratio_for, deltas_allowed
from vmcluster.substrate.qemu.xbzrle import HEADER, MIN_CHANGED, PAGE, delta_ratio, encoded_len

GBIT = 119.2
ROOT = Path(__file__).resolve().parents[2]


def inp(dirty: float, wws: float = 128.0, **kw: object) -> PrecopyInput:
    return PrecopyInput(256, dirty, wws, GBIT, 100.0, on_no_convergence="throttle",
                        costs=Costs(switch_ms=2.0), **kw)  # type: ignore[arg-type]


def page(**changes: bytes) -> bytes:
    b = bytearray(PAGE)
    for at, data in changes.items():
        off = int(at[1:])
        b[off:off + len(data)] = data
    return bytes(b)


def test_the_encoding_counts_runs_as_qemus_xbzrle_does() -> None:
    old = page()
    assert encoded_len(old, old) == 0  # unchanged: nothing
    # the workload's counter: the zero run before (0: one byte), the run's length, its byte
    assert encoded_len(old, page(o0=b"\x01")) == 1 + 1 + 1
    # a run 200 bytes in: its offset needs two ULEB128 bytes, the 8 changed bytes follow
    assert encoded_len(old, page(o200=b"abcdefgh")) == 2 + 1 + 8
    # two runs; the unchanged tail costs nothing
    assert encoded_len(old, page(o0=b"x", o10=b"yy")) == (1 + 1 + 1) + (1 + 1 + 2)
    # a page that changed throughout does not fit: QEMU sends it whole
    assert encoded_len(os.urandom(PAGE), os.urandom(PAGE)) is None
    with pytest.raises(ValueError):
        encoded_len(old, old[:100])


def test_the_ratio_is_over_the_pages_that_changed() -> None:
    old, counter = page(), page(o0=b"\x01")
    pairs = [(old, counter)] * MIN_CHANGED + [(old, old)] * 100
    ratio, changed = delta_ratio(pairs)
    assert changed == MIN_CHANGED
    assert ratio == pytest.approx((HEADER + 3) / PAGE)
    assert delta_ratio([(old, counter)] * (MIN_CHANGED - 1))[0] is None  # too few to say
    noisy, _ = delta_ratio([(os.urandom(PAGE), os.urandom(PAGE))] * MIN_CHANGED)
    assert noisy == 1.0  # whole pages (with their header) are never more than a page


def test_deltas_go_from_the_third_pass_and_in_the_stop_copy() -> None:
    d = inp(100, delta_ratio=0.01)
    assert [wire_mib(d, n, 100.0) for n in range(4)] == [100.0, 100.0, 1.0, 1.0]
    assert DELTA_FROM_PASS == 2
    r = run(d)
    assert [p.sent_mib for p in r.passes[:2]] == [256, 128]  # whole: cached as they go
    assert r.passes[2].wire == pytest.approx(r.passes[2].sent_mib * 0.01)
    assert r.passes[2].seconds == pytest.approx(r.passes[2].wire / GBIT)
    assert r.converged and len(r.passes) == 3
    assert r.total_s == pytest.approx(sum(p.seconds for p in r.passes) + r.downtime_ms / 1000)
    assert r.sent_mib == pytest.approx(256 + 128 + r.passes[2].wire + r.stop_copy_wire_mib)
    whole = run(inp(100))
    assert whole.total_s > 2 * r.total_s  # 15 whole passes against 3
    with pytest.raises(UsageError, match="delta ratio"):
        inp(100, delta_ratio=0)


def test_a_fast_writer_of_few_bytes_a_page_goes_as_deltas() -> None:
    c = choose_mode(inp(100), delta_ratio=0.0035)
    assert c.mode == "precopy" and c.delta_cache_mib == 256
    assert "XBZRLE deltas" in c.reason and "15 passes" in c.reason, c.reason
    assert c.result.input.delta_ratio == 0.0035
    assert c.result.total_s <= PROMPT * 256 / GBIT + 0.01  # (M + W) / b: 3.22 s
    assert c.to_json()["delta_cache_mib"] == 256
    # the VM's own allow_postcopy still wins where deltas leave it past the prompt
    slow = choose_mode(inp(100, wws=200), delta_ratio=0.0035, allow_postcopy=True)
    assert slow.mode == "postcopy" and slow.delta_cache_mib is None


def test_deltas_only_where_they_end_it_clearly_sooner() -> None:
    for dirty in (0.0, 3.0, 20.0):  # one to three passes: nothing to gain
        c = choose_mode(inp(dirty), delta_ratio=0.0035)
        assert c.delta_cache_mib is None and "XBZRLE" not in c.reason, (dirty, c.reason)
    assert choose_mode(inp(100), delta_ratio=None).delta_cache_mib is None  # not measured
    assert choose_mode(inp(100), delta_ratio=1.0).delta_cache_mib is None  # whole pages
    # pages that change throughout compress to nearly nothing less: not worth a cache
    c = choose_mode(inp(100), delta_ratio=0.98)
    assert c.delta_cache_mib is None
    assert DELTA_GAIN > 0


def test_the_cache_is_a_power_of_two_of_twice_the_working_set_within_memory() -> None:
    assert delta_cache_mib(inp(100, wws=128)) == 256
    assert delta_cache_mib(inp(100, wws=20)) == 64
    assert delta_cache_mib(inp(100, wws=0.1)) == 1
    assert delta_cache_mib(replace(inp(100, wws=300), memory_mib=300)) == 256


@given(dirty=st.floats(0, 1000), wws=st.floats(1, 256), ratio=st.floats(0.0001, 1),
       action=st.sampled_from(["throttle", "abort", "force"]), allow=st.booleans())
def test_deltas_never_break_the_budget_or_the_consent(dirty: float, wws: float, ratio: float,
                                                       action: str, allow: bool) -> None:
    i = replace(inp(dirty, wws), on_no_convergence=action)  # type: ignore[arg-type]
    c = choose_mode(i, delta_ratio=ratio, allow_postcopy=allow)
    if c.delta_cache_mib is not None:
        assert c.mode in ("precopy", "auto-converge")
        # only where a pre-copy by deltas converges and whole pages do not, or take
        # clearly longer
        by_deltas = run(replace(i, delta_ratio=ratio, on_no_convergence="abort"))
        by_pages = run(replace(i, on_no_convergence="abort"))
        assert by_deltas.converged
        assert not by_pages.converged or \
            by_deltas.total_s <= (1 - DELTA_GAIN) * by_pages.total_s + 1e-9
    if c.mode == "postcopy":
        assert allow
    if c.mode != "refuse" and c.result.outcome != "forced":
        assert c.result.downtime_ms <= 100 + 1e-6


def test_no_deltas_where_the_vm_says_no_or_the_cluster_asks_for_multifd() -> None:
    spec = load_spec(ROOT / "examples/lab.toml")
    vm = spec.vms[0]
    measured = MigrationProfile(100, 128, "measured", delta_ratio=0.004)
    assert deltas_allowed(spec, vm) and delta_ratio_for(spec, vm, measured) == 0.004
    assert delta_ratio_for(spec, vm, None) is None
    assert delta_ratio_for(spec, replace(vm, migration_deltas=False), measured) is None
    multifd = replace(spec, cluster=replace(spec.cluster, migration_channels=4))
    assert not deltas_allowed(multifd, vm) and delta_ratio_for(multifd, vm, measured) is None
