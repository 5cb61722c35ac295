"""The pre-copy live-migration model (Clark et al., NSDI 2005; Akoush et al., MASCOTS 2010).

Inputs: memory ``M``, a writable working set ``W`` that the guest dirties at
rate ``d`` (what is dirty after an interval ``t`` is ``min(W, d*t)``),
effective bandwidth ``b``, downtime budget ``L``, a bound ``N`` on passes and
device state ``S`` (MiB, MiB/s, ms).

* Pass 0 sends ``M`` in ``t0 = M/b + p``; pass ``i`` sends what pass ``i-1``
  left dirty, ``V_i = min(W, d*t_{i-1})``, in ``t_i = V_i/b + p`` (``p``: the
  hypervisor's own time per pass, :class:`Costs`).
* After each pass, if what is dirty now fits the budget (``V/b <= L - C``) the
  guest is paused and ``V + S`` copied: ``downtime = (V + S)/b + C``, ``C`` the
  hypervisor's fixed cost of a switchover (:class:`Costs`), which the copy's share of
  the budget leaves room for (:func:`copy_budget_ms`, the limit QEMU is given).
* If ``N`` passes are done, or ``V`` stopped shrinking, the migration does
  not converge and the configured action applies: ``force`` (switch over
  anyway and pay the downtime: only when the user chose it), ``throttle`` (slow
  the guest down as QEMU's auto-converge does, :func:`auto_converge`; still not
  fitting at ``N``, give up as ``abort`` does: vmcluster's default), or ``abort``
  (the VM stays on the source; no downtime).
* With delta compression (QEMU's XBZRLE, ``delta_ratio`` ``r`` < 1) a page is cached
  as it is re-sent, and sent again as its difference from the cached copy, ``r`` of
  a page on the wire: QEMU caches from the second pass on, so passes from
  :data:`DELTA_FROM_PASS` and the stop-and-copy after them send ``r * V`` for ``V``
  of dirty pages (:func:`wire_mib`). QEMU still decides the switchover on the dirty
  pages themselves, so the rule is unchanged: the pause is shorter than the limit.
* Throttled by ``x`` the guest has ``1 - x`` of its vCPUs' time; one that kept them
  busy for a share ``u`` of it (``vcpu_busy``) dirties at its own rate until
  ``1 - x < u``, then at ``d * (1 - x) / u`` (:func:`throttled_rate`): a guest that
  dirties fast on little CPU is slowed only by a throttle close to 100 %.

:func:`after_pass` is the one decision rule; :func:`run` (a whole migration
at a fixed bandwidth) and the simulator (bandwidth changing under it) both
use it. :func:`advise` says what change would make a stuck migration
converge. Pure: no I/O, no clock.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Literal

from vmcluster.errors import UsageError

__all__ = [
    "DELTA_FROM_PASS",
    "PAGE_KIB",
    "TRIGGER",
    "Action",
    "Advice",
    "Costs",
    "Decision",
    "Outcome",
    "Pass",
    "PrecopyInput",
    "PrecopyResult",
    "Throttling",
    "advise",
    "after_pass",
    "auto_converge",
    "boundary",
    "copy_budget_ms",
    "run",
    "throttled_rate",
    "wire_mib",
]

PAGE_KIB = 4  # pages are 4 KiB; the model works in MiB (256 pages each)
Action = Literal["force", "throttle", "abort"]
TRIGGER = 0.5  # QEMU's throttle-trigger-threshold: dirtied / sent in a window that counts
WINDOW_S = 1.0  # QEMU looks at the dirty rate at a pass's end a second or more after the last
Outcome = Literal["converged", "forced", "throttled", "aborted", "postcopy"]
Decision = Literal["stop", "continue", "stuck"]
# QEMU's XBZRLE caches a page when it re-sends it after its first round, so deltas go
# from the third pass (0-based 2) on.
DELTA_FROM_PASS = 2


@dataclass(frozen=True)
class Costs:
    """What a hypervisor adds to the ideal model, fitted from measured migrations (the
    QEMU substrate's: ``substrate/qemu/substrate.py``; bench/fit_migration.py fits them):
    a switchover's fixed pause beyond copying the last pages (``switch_ms``), each pass's
    own time beyond sending its pages (``pass_s``: the dirty-bitmap sync; the guest keeps
    dirtying meanwhile), a switch to post-copy's pause beyond moving the device state
    (``postcopy_pause_ms``: the target loads it, ownership moves, it runs), and the share
    of the bandwidth pages move at after that switch (``postcopy_efficiency``: the running
    guest's page requests interleave with the background stream), and the time a
    migration takes outside the hypervisor's own count (``setup_s``: measuring the guest,
    starting the target, recording the switchover), which a plan of several migrations
    one after the other adds to each. The defaults: none."""

    switch_ms: float = 0.0
    pass_s: float = 0.0
    postcopy_pause_ms: float = 0.0
    postcopy_efficiency: float = 1.0
    setup_s: float = 0.0

    def __post_init__(self) -> None:
        if min(self.switch_ms, self.pass_s, self.postcopy_pause_ms, self.setup_s) < 0 or \
                not 0 < self.postcopy_efficiency <= 1.5:
            raise UsageError(f"migration model: costs out of range: {self}")

    def to_json(self) -> dict[str, float]:
        return {"switch_ms": self.switch_ms, "pass_s": self.pass_s,
                "postcopy_pause_ms": self.postcopy_pause_ms,
                "postcopy_efficiency": self.postcopy_efficiency, "setup_s": self.setup_s}


@dataclass(frozen=True)
class PrecopyInput:
    """One migration to model. Units: MiB, MiB/s, ms."""

    memory_mib: float
    dirty_mibps: float
    wws_mib: float
    bandwidth_mibps: float
    downtime_ms: float
    max_passes: int = 30
    state_mib: float = 0.0
    on_no_convergence: Action = "force"
    throttle_initial: float = 0.2
    throttle_increment: float = 0.1
    throttle_max: float = 0.99
    trigger: float = TRIGGER  # dirtied / sent in a window that counts as too fast
    vcpu_busy: float = 1.0  # the share of its vCPUs' time the guest keeps busy
    costs: Costs = Costs()  # the hypervisor's, beyond the ideal model
    # what the last copy is held to when the mode aims below the budget (QEMU's
    # downtime-limit); None: all of the budget the switchover leaves
    aim_ms: float | None = None
    # delta compression: the share of a page's bytes a re-sent page costs on the wire once
    # it is cached (QEMU's XBZRLE, with its own header), 1.0: none
    delta_ratio: float = 1.0

    def __post_init__(self) -> None:
        checks = (
            (self.memory_mib > 0, "memory must be > 0 MiB"),
            (self.dirty_mibps >= 0, "dirty rate must be >= 0 MiB/s"),
            (self.wws_mib >= 0, "writable working set must be >= 0 MiB"),
            (self.bandwidth_mibps > 0, "bandwidth must be > 0 MiB/s"),
            (self.downtime_ms >= 0, "downtime budget must be >= 0 ms"),
            (self.max_passes >= 1, "max passes must be >= 1"),
            (self.state_mib >= 0, "device state must be >= 0 MiB"),
            (self.on_no_convergence in ("force", "throttle", "abort"),
             "on_no_convergence must be force, throttle or abort"),
            (0 < self.vcpu_busy <= 1, "vCPU busy share must be in (0, 1]"),
            (0 < self.trigger <= 1, "throttle trigger must be in (0, 1]"),
            (0 < self.delta_ratio <= 1, "delta ratio must be in (0, 1]"),
        )
        for ok, what in checks:
            if not ok:
                raise UsageError(f"migration model: {what}")

    @property
    def effective_wws_mib(self) -> float:
        """A working set cannot exceed memory."""
        return min(self.wws_mib, self.memory_mib)


def wire_mib(inp: PrecopyInput, pass_no: int, pages_mib: float) -> float:
    """What sending ``pages_mib`` of dirty pages in pass ``pass_no`` (0-based; the
    stop-and-copy counts as the pass after the last) puts on the wire."""
    return pages_mib * (inp.delta_ratio if pass_no >= DELTA_FROM_PASS else 1.0)


def _stop_copy_wire(inp: PrecopyInput, passes: int, stop_copy_mib: float) -> float:
    """What a stop-and-copy of ``stop_copy_mib`` (dirty pages and the device state) after
    ``passes`` passes puts on the wire."""
    return wire_mib(inp, passes, stop_copy_mib - inp.state_mib) + inp.state_mib


@dataclass(frozen=True)
class Pass:
    """One pre-copy pass: the dirty pages it sent, how long it took, the guest's dirty
    rate meanwhile, and what went on the wire (None: the pages themselves)."""

    sent_mib: float
    seconds: float
    dirty_mibps: float
    wire_mib: float | None = None

    @property
    def wire(self) -> float:
        return self.sent_mib if self.wire_mib is None else self.wire_mib

    def to_json(self) -> dict[str, float]:
        return {"sent_mib": round(self.sent_mib, 6), "seconds": round(self.seconds, 6),
                **({"wire_mib": round(self.wire_mib, 6)} if self.wire_mib is not None
                   else {})}


@dataclass(frozen=True)
class PrecopyResult:
    """A modelled migration. ``downtime_ms`` is 0 when aborted (the guest never paused)."""

    input: PrecopyInput
    passes: tuple[Pass, ...]
    stop_copy_mib: float  # what the stop-and-copy copies (dirty memory + device state)
    downtime_ms: float
    total_s: float  # every pass plus the stop-and-copy
    converged: bool
    outcome: Outcome
    throttle: float = 0.0  # the largest guest slowdown applied (0..1)
    after_mib: float = 0.0  # post-copy: what the target fetches after the switch

    @property
    def sent_mib(self) -> float:
        """What went on the wire."""
        return sum(p.wire for p in self.passes) + self.after_mib + (
            0.0 if self.outcome == "aborted" else self.stop_copy_wire_mib
        )

    @property
    def stop_copy_wire_mib(self) -> float:
        """What the stop-and-copy puts on the wire (deltas of the dirty pages, the state)."""
        return _stop_copy_wire(self.input, len(self.passes), self.stop_copy_mib)

    def to_json(self) -> dict[str, object]:
        return {
            "passes": [p.to_json() for p in self.passes],
            "downtime_ms": round(self.downtime_ms, 6),
            "total_s": round(self.total_s, 6),
            "converged": self.converged,
            "outcome": self.outcome,
            "stop_copy_mib": round(self.stop_copy_mib, 6),
            "throttle": round(self.throttle, 4),
            **({"postcopy_mib": round(self.after_mib, 6)} if self.outcome == "postcopy"
               else {}),
        }


def after_pass(
    inp: PrecopyInput, pass_no: int, sent_mib: float, seconds: float, dirty_mibps: float,
    bandwidth_mibps: float,
) -> tuple[Decision, float]:
    """Decide after pass ``pass_no`` (0-based) sent ``sent_mib`` in ``seconds``.

    Returns the decision and what is dirty now: ``stop`` (it fits the budget
    at ``bandwidth_mibps``: pause and copy it), ``continue`` (send it in
    another pass) or ``stuck`` (pass bound reached, or what the next pass would put
    on the wire did not shrink: with deltas a pass of as many pages may cost far less).
    """
    dirty = min(inp.effective_wws_mib, dirty_mibps * seconds)
    if dirty / bandwidth_mibps * 1000.0 <= copy_budget_ms(inp):
        return "stop", dirty
    if pass_no + 1 >= inp.max_passes or \
            wire_mib(inp, pass_no + 1, dirty) >= wire_mib(inp, pass_no, sent_mib):
        return "stuck", dirty
    return "continue", dirty


def copy_budget_ms(inp: PrecopyInput) -> float:
    """What of the downtime budget the last copy may take: the rest is the switchover's
    fixed cost (at least a tenth of the budget is left to the copy), or less where the
    mode aims lower (``aim_ms``). This is the limit the hypervisor is given."""
    share = max(0.1 * inp.downtime_ms, inp.downtime_ms - inp.costs.switch_ms)
    return share if inp.aim_ms is None else min(share, inp.aim_ms)


def next_throttle(inp: PrecopyInput, throttle: float) -> float | None:
    """The next auto-converge step, or None when throttling cannot go further."""
    if throttle >= inp.throttle_max:
        return None
    nxt = inp.throttle_initial if throttle == 0.0 else throttle + inp.throttle_increment
    return min(nxt, inp.throttle_max)


def throttled_rate(inp: PrecopyInput, throttle: float, dirty_mibps: float | None = None
                   ) -> float:
    """The guest's dirty rate (``dirty_mibps``, else ``inp``'s) with its vCPUs throttled by
    ``throttle`` (0..1): unchanged while what it keeps busy (``vcpu_busy``) fits the time
    left to it, then in proportion."""
    rate = inp.dirty_mibps if dirty_mibps is None else dirty_mibps
    return rate * min(1.0, (1.0 - throttle) / inp.vcpu_busy)


@dataclass(frozen=True)
class Throttling:
    """QEMU's auto-converge as a migration goes (``migration_trigger_throttle``): the
    guest's slowdown now (0..1), how many looks in a row found it dirtying too fast, and
    the window since the last look (seconds, MiB sent, MiB dirtied)."""

    throttle: float = 0.0
    high: int = 0
    window_s: float = 0.0
    sent_mib: float = 0.0
    dirty_mib: float = 0.0


def auto_converge(inp: PrecopyInput, state: Throttling, seconds: float, sent_mib: float,
                  dirty_mib: float) -> Throttling:
    """After a pass (a dirty-bitmap sync) that sent ``sent_mib`` in ``seconds`` while
    ``dirty_mib`` got dirty. QEMU looks only at a sync :data:`WINDOW_S` or more after its
    last look: a window that dirtied more than ``inp.trigger`` of what it sent counts,
    and every second one that counts throttles the guest a step further
    (``throttle_initial``, then ``throttle_increment``)."""
    if inp.on_no_convergence != "throttle":
        return state
    window = Throttling(state.throttle, state.high, state.window_s + seconds,
                        state.sent_mib + sent_mib, state.dirty_mib + dirty_mib)
    if window.window_s <= WINDOW_S:
        return window
    if window.dirty_mib <= inp.trigger * window.sent_mib:
        return Throttling(state.throttle, state.high)
    if state.high + 1 < 2:
        return Throttling(state.throttle, state.high + 1)
    step = next_throttle(inp, state.throttle)
    return Throttling(state.throttle if step is None else step, 0)


def run(inp: PrecopyInput) -> PrecopyResult:
    """Model a whole migration at the fixed bandwidth ``inp.bandwidth_mibps``."""
    b = inp.bandwidth_mibps
    passes: list[Pass] = []
    ac = Throttling()
    volume = inp.memory_mib
    throttling = inp.on_no_convergence == "throttle"
    while True:
        throttle = ac.throttle
        rate = throttled_rate(inp, throttle)
        wire = wire_mib(inp, len(passes), volume)
        seconds = wire / b + inp.costs.pass_s
        passes.append(Pass(volume, seconds, rate, None if wire == volume else wire))
        decision, dirty = after_pass(inp, len(passes) - 1, volume, seconds, rate, b)
        # Throttled, a pass that did not shrink what is dirty goes on (the throttle grows)
        # until the pass bound.
        if decision == "continue" or (decision == "stuck" and throttling
                                      and len(passes) < inp.max_passes):
            ac = auto_converge(inp, ac, seconds, volume, dirty)
            volume = dirty
            continue
        return _finish(inp, tuple(passes), dirty, decision == "stop", throttle)


def _finish(
    inp: PrecopyInput, passes: tuple[Pass, ...], dirty: float, fits: bool, throttle: float
) -> PrecopyResult:
    copy_s = sum(p.seconds for p in passes)
    stop_copy = dirty + inp.state_mib
    if fits:
        outcome: Outcome = "throttled" if throttle > 0 else "converged"
    elif inp.on_no_convergence in ("abort", "throttle"):  # throttled to the limit: give up
        return PrecopyResult(inp, passes, stop_copy, 0.0, copy_s, False, "aborted", throttle)
    else:
        outcome = "forced"
    wire = _stop_copy_wire(inp, len(passes), stop_copy)
    down_s = wire / inp.bandwidth_mibps + inp.costs.switch_ms / 1000.0
    return PrecopyResult(
        inp, passes, stop_copy, down_s * 1000.0, copy_s + down_s, fits, outcome, throttle
    )


@dataclass(frozen=True)
class Advice:
    """One change that would make a stuck migration converge."""

    kind: Literal["downtime", "bandwidth", "throttle", "network"]
    value: float | str
    message: str

    def to_json(self) -> dict[str, object]:
        return {"kind": self.kind, "value": self.value, "message": self.message}


def _converges(inp: PrecopyInput) -> bool:
    return run(replace(inp, on_no_convergence="force")).converged


def boundary(lo: float, hi: float, ok: Callable[[float], bool],
             steps: int = 60) -> tuple[float, float]:
    """Where a predicate monotone in x turns true on [lo, hi] (ok(lo) false, ok(hi)
    true): the last x found false and the first found true, ``steps`` halvings apart."""
    for _ in range(steps):
        mid = (lo + hi) / 2.0
        if ok(mid):
            hi = mid
        else:
            lo = mid
    return lo, hi


def _bisect_min(lo: float, hi: float, ok: Callable[[float], bool], steps: int = 60) -> float:
    """Smallest x in [lo, hi] with ok(x), for a predicate monotone in x; ok(hi) must hold."""
    return boundary(lo, hi, ok, steps)[1]


def _ceil3(x: float) -> float:
    """Round up to 3 decimals, so the advised value still works once rounded."""
    return math.ceil(x * 1000.0) / 1000.0


def advise(result: PrecopyResult) -> tuple[Advice, ...]:
    """Changes that would make ``result``'s migration converge (empty if it did without help).

    Each is checked by running the model again: a higher downtime budget, more
    bandwidth (a faster or less shared network), or throttling the guest.
    """
    inp = result.input
    if result.converged and result.throttle == 0.0:
        return ()
    out: list[Advice] = []
    b = inp.bandwidth_mibps
    # With a larger budget the passes are the same until the first one that fits,
    # so the smallest dirty amount seen is the least that must fit.
    seen = [p.sent_mib for p in result.passes[1:]] + [result.stop_copy_mib - inp.state_mib]
    need_ms = min(seen) / b * 1000.0 * (1 + 1e-9) + 1e-9 + inp.costs.switch_ms
    if need_ms > inp.downtime_ms and _converges(replace(inp, downtime_ms=need_ms)):
        out.append(Advice(
            "downtime", _ceil3(need_ms),
            f"raise the downtime budget to {need_ms:.0f} ms (now {inp.downtime_ms:g} ms)",
        ))
    hi = b * 1e4
    if _converges(replace(inp, bandwidth_mibps=hi)):
        need_b = _bisect_min(b, hi, lambda x: _converges(replace(inp, bandwidth_mibps=x)))
        out.append(Advice(
            "bandwidth", _ceil3(need_b),
            f"give it {need_b:.1f} MiB/s of bandwidth (now {b:.1f}): a faster or less busy network",
        ))
    if inp.dirty_mibps > 0:
        def slowed(x: float) -> bool:
            return _converges(replace(inp, dirty_mibps=throttled_rate(inp, x)))

        if slowed(inp.throttle_max):
            need_x = _bisect_min(0.0, inp.throttle_max, slowed)
            out.append(Advice(
                "throttle", math.ceil(need_x * 1e4) / 1e4,
                f"throttle the guest by {need_x * 100:.0f} % (auto-converge:"
                " on_no_convergence = throttle)",
            ))
    return tuple(out)
