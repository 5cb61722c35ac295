"""Which way to live-migrate a VM, chosen from the pre-copy model before it starts.

In order, the first that keeps the downtime budget:

* ``precopy``: plain iterative pre-copy converges within the pass bound.
* ``auto-converge``: it does once the guest's vCPUs are throttled step by step
  (QEMU's auto-converge), unless the user said to give up at once
  (``on_no_convergence = "abort"``).
* ``postcopy``: after one pre-copy pass the guest moves and runs on the target,
  which fetches the pages still dirty from the source as it touches them. Only
  for a VM that allows it (``allow_postcopy``: a failure of the network or the
  source while pages are still on the source loses the running copy, and the VM
  is restarted from its shared disk), over a network up at both ends, and where
  both QEMUs can (``blocker`` names what is missing).
* ``refuse``: none does; the reason says what would help (a bigger budget, more
  bandwidth, a quieter moment), and the migration never starts.

A user who asked for it (``on_no_convergence = "force"``) gets pre-copy forced
through, downtime over the budget and all (mode ``precopy``, outcome ``forced``).

Post-copy's own model: pre-copy sends the first ``s`` MiB of memory ``M`` in ``s/b``;
the switch pauses the guest for the device state (``S/b``) and the hypervisor's
``postcopy_pause_ms`` (the target loads it, ownership moves, it runs); then what pre-copy had not
sent, ``M - s``, and the pages the guest dirtied meanwhile, ``min(W, d*s/b, s)`` (counted
as sent already: a working set lies low in memory, which pre-copy sends first), follow
at ``postcopy_efficiency`` of the link's speed while the guest runs on the target.
``s`` is the most pre-copy that keeps the total within :data:`POSTCOPY_AIM` copies of
memory (the whole first pass when it does): sending more before the switch means fewer
pages the guest waits for after it, sending less a shorter migration.

Whatever the mode, QEMU is asked to aim below the budget (``aim_ms``) when the model
says that costs next to nothing (at most two more passes and 5 % of a copy's time): an
idle guest's few dirty pages then go in one more short pass instead of inside the
pause. Auto-converge's first step (``throttle_initial``) is the one of
:data:`THROTTLE_STEPS` that ends the migration soonest, and
QEMU counts a window that dirtied over :data:`AUTO_TRIGGER` of what it sent (its
default is half): auto-converge is only chosen when throttling is needed, so the
throttle starts at QEMU's second look, not after seconds of passes that do not shrink.
A guest that dirties fast on little CPU needs a throttle close to 100 % before it
dirties less (``vcpu_busy``, measured). Without post-copy, a pre-copy that converges
slowly is preferred to a quicker auto-converge: a throttle that slows a light writer
beside a busy service stops the service (measured in the lab: at 99 % the guest's web
server did not answer for 2.5-4 s, against a 100 ms budget), a slow pre-copy does not.

Pure: no I/O, no clock.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Literal

from vmcluster.policy.migration_model import (
    Advice,
    Costs,
    Pass,
    PrecopyInput,
    PrecopyResult,
    advise,
    boundary,
    copy_budget_ms,
    run,
)

__all__ = ["AUTO_TRIGGER", "DELTA_GAIN", "MODES", "POSTCOPY_AIM", "PROMPT",
           "MigrationProfile", "Mode", "ModeChoice", "choose_mode", "delta_cache_mib",
           "dirty_profile", "postcopy", "postcopy_left", "postcopy_switch"]

Mode = Literal["precopy", "auto-converge", "postcopy", "refuse"]
MODES: tuple[Mode, ...] = ("precopy", "auto-converge", "postcopy", "refuse")
# Pre-copy that takes longer than this many copies of memory gives way to post-copy where
# the VM allows it (the migration issue's aim: within 1.5x of memory / bandwidth).
PROMPT = 1.5
# Post-copy aims to end within this many copies of memory (the switch point follows).
POSTCOPY_AIM = 1.25
# QEMU aims at these fractions of the budget first, when the model says that costs at most
# AIM_PASSES more passes and AIM_SLACK of a copy of memory's time.
AIM_FRACTIONS = (0.25, 0.5)
AIM_PASSES, AIM_SLACK = 2, 0.05
# Auto-converge's first step, tried in order (QEMU's cpu-throttle-initial; its default 20 %).
THROTTLE_STEPS = (0.2, 0.4, 0.6, 0.8, 0.9, 0.95, 0.99)
# QEMU's throttle-trigger-threshold for auto-converge (dirtied / sent in a window).
AUTO_TRIGGER = 0.1
# Delta compression is used when it ends a pre-copy at least this share sooner (it costs
# the source a cache and the CPU to encode; a migration of two or three passes gains
# next to nothing).
DELTA_GAIN = 0.1


@dataclass(frozen=True)
class MigrationProfile:
    """What a migration's mode is chosen on, as the substrate knows it now: the guest's
    dirty rate and working set (``measured``: how they were found), the share of its
    vCPUs' time it keeps busy (how hard it must be throttled to dirty less), why
    post-copy cannot be used between its two hosts (None: it can), and what the
    hypervisor adds to the ideal model (its fitted :class:`Costs`)."""

    dirty_mibps: float
    wws_mib: float
    measured: str
    postcopy_blocker: str | None = None
    costs: Costs = field(default_factory=Costs)
    vcpu_busy: float = 1.0
    # how the pages it changes compress as deltas (the model's delta_ratio), where the
    # substrate can sample them; None: not known, no delta compression
    delta_ratio: float | None = None

    def to_json(self) -> dict[str, object]:
        return {"dirty_mibps": round(self.dirty_mibps, 3), "wws_mib": round(self.wws_mib, 3),
                "vcpu_busy": round(self.vcpu_busy, 3), "measured": self.measured,
                "delta_ratio": None if self.delta_ratio is None else round(self.delta_ratio, 5),
                "postcopy_blocker": self.postcopy_blocker, "costs": self.costs.to_json()}

    def applied(self, inp: PrecopyInput) -> PrecopyInput:
        """``inp`` with this profile's guest and hypervisor in it."""
        return replace(inp, dirty_mibps=self.dirty_mibps,
                       wws_mib=min(self.wws_mib, inp.memory_mib), costs=self.costs,
                       vcpu_busy=self.vcpu_busy)


@dataclass(frozen=True)
class ModeChoice:
    """The mode, why, and the model of the migration in that mode (for ``refuse``: the
    attempt that would have been given up, with what would help)."""

    mode: Mode
    reason: str
    result: PrecopyResult
    advice: tuple[Advice, ...] = ()
    # How QEMU is set for it: the downtime it aims at (at most the budget), auto-converge's
    # first step, and how much pre-copy sends before the switch to post-copy.
    aim_ms: float | None = None
    throttle_initial: float | None = None
    postcopy_after_mib: float | None = None
    throttle_trigger: float | None = None  # auto-converge: QEMU's trigger (dirtied / sent)
    delta_cache_mib: float | None = None  # XBZRLE deltas against a cache this big

    def to_json(self) -> dict[str, object]:
        return {"mode": self.mode, "reason": self.reason,
                **({"delta_cache_mib": self.delta_cache_mib}
                   if self.delta_cache_mib is not None else {}),
                **({"throttle_trigger": self.throttle_trigger}
                   if self.throttle_trigger is not None else {}),
                **({"aim_ms": round(self.aim_ms, 1)} if self.aim_ms is not None else {}),
                **({"throttle_initial": self.throttle_initial}
                   if self.throttle_initial is not None else {}),
                **({"postcopy_after_mib": round(self.postcopy_after_mib, 1)}
                   if self.postcopy_after_mib is not None else {})}


def postcopy_left(inp: PrecopyInput, sent_mib: float, seconds: float,
                  dirty_mibps: float) -> float:
    """What follows a switch to post-copy made after pre-copy's first pass sent
    ``sent_mib`` in ``seconds`` while the guest dirtied ``dirty_mibps``: the memory not
    sent yet, and every page dirtied meanwhile as if it had been sent already (a guest's
    working set is where it allocated first, low in memory, which pre-copy sends first:
    measured, see docs/notes.md)."""
    sent = min(inp.memory_mib, sent_mib)
    return inp.memory_mib - sent + min(inp.effective_wws_mib, dirty_mibps * seconds, sent)


def postcopy(inp: PrecopyInput, after_mib: float | None = None) -> PrecopyResult:
    """Post-copy after pre-copy sent ``after_mib`` of its first pass (None: all of it), at
    the fixed bandwidth ``inp.bandwidth_mibps``; after the switch pages move at
    ``inp.costs.postcopy_efficiency`` of it."""
    b = inp.bandwidth_mibps
    sent = inp.memory_mib if after_mib is None else min(inp.memory_mib, max(0.0, after_mib))
    first = Pass(sent, sent / b, inp.dirty_mibps)
    left = postcopy_left(inp, sent, first.seconds, inp.dirty_mibps)
    down_s = inp.state_mib / b + inp.costs.postcopy_pause_ms / 1000.0
    return PrecopyResult(inp, (first,), inp.state_mib, down_s * 1000.0,
                         first.seconds + down_s + left / (b * inp.costs.postcopy_efficiency), True,
                         "postcopy", after_mib=left)


def postcopy_switch(inp: PrecopyInput, aim: float = POSTCOPY_AIM) -> float:
    """The most pre-copy (MiB of the first pass) after which post-copy still ends within
    ``aim`` copies of memory: all of it when the whole pass does."""
    m, b = inp.memory_mib, inp.bandwidth_mibps
    limit = aim * m / b

    def fits(s: float) -> bool:
        return postcopy(inp, s).total_s <= limit

    if fits(m):
        return m
    # the total grows with s: the largest that fits is where "does not fit" begins
    return boundary(0.0, m, lambda s: not fits(s), steps=40)[0]


def _aim(inp: PrecopyInput, base: PrecopyResult) -> tuple[float, PrecopyResult]:
    """The downtime QEMU aims at (the limit on the last copy), and the model of the
    migration with it: the least of :data:`AIM_FRACTIONS` of the copy's share of the
    budget that still converges and costs at most :data:`AIM_PASSES` more passes and
    :data:`AIM_SLACK` of a copy of memory's time, else that share itself."""
    slack_s = AIM_SLACK * inp.memory_mib / inp.bandwidth_mibps
    share = copy_budget_ms(inp)
    for frac in AIM_FRACTIONS:
        r = run(replace(inp, aim_ms=share * frac))
        if r.converged and r.outcome == base.outcome and \
                len(r.passes) <= len(base.passes) + AIM_PASSES and \
                r.total_s <= base.total_s + slack_s:
            return share * frac, r
    return share, base


def _throttled(inp: PrecopyInput) -> PrecopyResult:
    """Auto-converge with the first step that ends it soonest (the least of equals).

    Not the gentlest step that comes close: the measured vCPU share is all the guest
    did, and the process that dirties is often a small part of it that the guest's own
    scheduler serves first, so a partial throttle may not slow it at all (seen in the
    lab: 80 % and 90 % left a 100 MiB/s writer beside a busy web server as fast as
    before, and the migration took 11-13 s instead of 4-5)."""
    runs = [run(replace(inp, on_no_convergence="throttle", throttle_initial=x,
                        trigger=AUTO_TRIGGER)) for x in THROTTLE_STEPS]
    done = [r for r in runs if r.converged]
    if not done:
        return runs[0]
    best = min(r.total_s for r in done)
    return next(r for r in done if r.total_s <= best + 1e-9)


def dirty_profile(short: tuple[float, float], long: tuple[float, float], memory_mib: float,
                  wws_mib: float) -> tuple[float, float]:
    """(dirty rate, working set) from two measured (window ms, MiB/s) rates, the short
    one first. What the long window dirtied is a lower bound of the working set; when
    it is clearly less than the short window's rate says (under 90 %), the guest ran out
    of pages to dirty: that is the working set, and the short rate is the rate.
    Otherwise the long window's rate stands (it counts more pages), and the working set
    is at least what it dirtied (``wws_mib``, the spec's, where that is more)."""
    (_, fast), (long_ms, slow) = short, long
    dirtied = slow * long_ms / 1000.0
    if fast > 0 and slow < 0.9 * fast:
        dirty, wws = fast, dirtied
    else:
        dirty, wws = slow, max(wws_mib, dirtied)
    return dirty, min(max(wws, 1.0), memory_mib)


def _rate(inp: PrecopyInput) -> str:
    return (f"the guest dirties {inp.dirty_mibps:g} MiB/s"
            + (f" of a {inp.effective_wws_mib:g} MiB working set"
               if inp.effective_wws_mib < inp.memory_mib else "")
            + (f" on {inp.vcpu_busy * 100:.0f} % of its vCPU time" if inp.vcpu_busy < 1 else "")
            + f" against {inp.bandwidth_mibps:.1f} MiB/s of bandwidth")


def _passes(n: int) -> str:
    return f"{n} pass" + ("" if n == 1 else "es")


def delta_cache_mib(inp: PrecopyInput) -> float:
    """The XBZRLE cache for ``inp``: the least power of two of at least twice the working
    set (QEMU's cache is direct-mapped by page number, so one the size of a scattered
    working set loses a third of it to collisions), at most the guest's memory."""
    want = max(1.0, 2.0 * inp.effective_wws_mib)
    return float(min(2 ** math.ceil(math.log2(want)), 2 ** math.floor(math.log2(inp.memory_mib))))


def choose_mode(inp: PrecopyInput, *, allow_postcopy: bool = False,
                blocker: str | None = None, delta_ratio: float | None = None) -> ModeChoice:
    """The mode for ``inp`` (its ``on_no_convergence`` is the user's action: throttle,
    abort or force). ``blocker``: why post-copy cannot be used here even if the VM
    allows it (None: it can). ``delta_ratio``: how the guest's changed pages compress
    as XBZRLE deltas, measured (None: not known); where deltas end a pre-copy
    :data:`DELTA_GAIN` sooner, the choice is made on them and a pre-copy or
    auto-converge sends re-sent pages so (``delta_cache_mib``)."""
    if delta_ratio is not None and delta_ratio < 1.0:
        with_deltas = replace(inp, delta_ratio=delta_ratio)
        whole, deltas = (run(replace(i, on_no_convergence="abort")) for i in (inp, with_deltas))
        if deltas.converged and (not whole.converged
                                 or deltas.total_s <= (1 - DELTA_GAIN) * whole.total_s):
            choice = _choose(with_deltas, allow_postcopy, blocker, deltas)
            if choice.mode in ("precopy", "auto-converge"):
                cache = delta_cache_mib(inp)
                return replace(choice, delta_cache_mib=cache, reason=(
                    f"{choice.reason}; pages sent again go as XBZRLE deltas ("
                    f"{delta_ratio * 100:.2g} % of a page as measured; whole pages: "
                    f"{_passes(len(whole.passes))}"
                    + (f", {whole.total_s:.1f} s" if whole.converged else ", no convergence")
                    + f"), against a {cache:g} MiB cache on the source"))
        return _choose(inp, allow_postcopy, blocker, whole)
    return _choose(inp, allow_postcopy, blocker)


def _choose(inp: PrecopyInput, allow_postcopy: bool, blocker: str | None,
            plain: PrecopyResult | None = None) -> ModeChoice:
    """:func:`choose_mode` on ``inp`` as it is; ``plain``: its pre-copy without
    throttling, where the caller modelled it already.

    Pre-copy (then auto-converge) is chosen when it keeps the budget within
    :data:`PROMPT` times a single copy of memory; past that, post-copy where allowed
    (it ends sooner); else the slow pre-copy that keeps the budget, else auto-converge
    that does; else a refusal."""
    if plain is None:
        plain = run(replace(inp, on_no_convergence="abort"))
    budget = f"{inp.downtime_ms:g} ms downtime budget"
    prompt_s = PROMPT * inp.memory_mib / inp.bandwidth_mibps
    can_pc = allow_postcopy and blocker is None

    def precopy_choice() -> ModeChoice:
        aim, r = _aim(inp, plain)
        return ModeChoice("precopy", f"pre-copy converges in {_passes(len(r.passes))}"
                          f" ({r.total_s:.1f} s): the last {r.stop_copy_mib:.1f} MiB "
                          f"fit the {budget} ({r.downtime_ms:.0f} ms)", r, aim_ms=aim)

    if plain.converged and plain.total_s <= prompt_s:
        return precopy_choice()
    if inp.on_no_convergence == "force" and not plain.converged:
        forced = run(replace(inp, on_no_convergence="force"))
        return ModeChoice("precopy", f"pre-copy does not fit the {budget} ({_rate(inp)}); "
                          f"forced through as asked: about {forced.downtime_ms:.0f} ms "
                          "paused", forced, advise(forced))
    throttled = _throttled(inp) if inp.on_no_convergence == "throttle" else None

    def throttled_choice(t: PrecopyResult, why: str) -> ModeChoice:
        aim, t = _aim(t.input, t)
        return ModeChoice("auto-converge", f"{why}; throttling the guest by "
                          f"{t.throttle * 100:.0f} % gets there in {t.total_s:.1f} s", t,
                          aim_ms=aim, throttle_initial=t.input.throttle_initial,
                          throttle_trigger=t.input.trigger)

    if plain.converged:
        why = (f"pre-copy would take {_passes(len(plain.passes))} and {plain.total_s:.1f} s "
               f"({_rate(inp)})")
    else:
        why = (f"pre-copy alone does not fit the {budget} ({_rate(inp)})"
               + (", not even throttled" if throttled is not None and not throttled.converged
                  else ""))
    # auto-converge slows the guest: only for a clear gain over a pre-copy that converges
    slack_s = AIM_SLACK * inp.memory_mib / inp.bandwidth_mibps
    if throttled is not None and throttled.converged and throttled.total_s <= prompt_s and (
            not plain.converged or throttled.total_s < plain.total_s - slack_s):
        return throttled_choice(throttled, why)
    if can_pc:
        switch = postcopy_switch(inp)
        pc = postcopy(inp, switch)
        when = ("after one pass" if switch >= inp.memory_mib
                else f"after {switch:.0f} MiB of pre-copy")
        return ModeChoice("postcopy", f"{why}; post-copy {when} ends in "
                          f"{pc.total_s:.1f} s: {pc.downtime_ms:.0f} ms paused, then "
                          f"{pc.after_mib:.1f} MiB fetched from the source while the guest "
                          "runs on the target", pc, postcopy_after_mib=switch)
    if plain.converged:
        return precopy_choice()
    if throttled is not None and throttled.converged:
        return throttled_choice(throttled, why)
    stuck = throttled or plain
    advice = advise(stuck)
    if allow_postcopy:
        no_pc = f"; post-copy is allowed but {blocker}"
    else:
        no_pc = "; post-copy would, but the VM does not allow it (allow_postcopy)"
    helps = "; ".join(a.message for a in advice) or "a quieter moment"
    return ModeChoice("refuse", f"{why}{no_pc if inp.dirty_mibps > 0 else ''}; "
                      f"would help: {helps}", stuck, advice)
