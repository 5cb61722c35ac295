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

Post-copy's own model: pass 0 sends memory ``M`` in ``M/b``; the switch pauses the
guest for the device state (``S/b``); the pages dirtied meanwhile,
``min(W, d*M/b)``, follow at the link's speed while the guest runs on the target.
Pure: no I/O, no clock.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Literal

from vmcluster.policy.migration_model import (
    Advice,
    Pass,
    PrecopyInput,
    PrecopyResult,
    advise,
    run,
)

__all__ = ["MODES", "PROMPT", "Mode", "ModeChoice", "choose_mode", "dirty_profile", "postcopy"]

Mode = Literal["precopy", "auto-converge", "postcopy", "refuse"]
MODES: tuple[Mode, ...] = ("precopy", "auto-converge", "postcopy", "refuse")
# Pre-copy that takes longer than this many copies of memory gives way to post-copy where
# the VM allows it (the migration issue's aim: within 1.5x of memory / bandwidth).
PROMPT = 1.5


@dataclass(frozen=True)
class ModeChoice:
    """The mode, why, and the model of the migration in that mode (for ``refuse``: the
    attempt that would have been given up, with what would help)."""

    mode: Mode
    reason: str
    result: PrecopyResult
    advice: tuple[Advice, ...] = ()

    def to_json(self) -> dict[str, object]:
        return {"mode": self.mode, "reason": self.reason}


def postcopy(inp: PrecopyInput) -> PrecopyResult:
    """Post-copy after one pre-copy pass, at the fixed bandwidth ``inp.bandwidth_mibps``."""
    b = inp.bandwidth_mibps
    first = Pass(inp.memory_mib, inp.memory_mib / b, inp.dirty_mibps)
    left = min(inp.effective_wws_mib, inp.dirty_mibps * first.seconds)
    down_s = inp.state_mib / b
    return PrecopyResult(inp, (first,), inp.state_mib, down_s * 1000.0,
                         first.seconds + down_s + left / b, True, "postcopy",
                         after_mib=left)


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
            + f" against {inp.bandwidth_mibps:.1f} MiB/s of bandwidth")


def _passes(n: int) -> str:
    return f"{n} pass" + ("" if n == 1 else "es")


def choose_mode(inp: PrecopyInput, *, allow_postcopy: bool = False,
                blocker: str | None = None) -> ModeChoice:
    """The mode for ``inp`` (its ``on_no_convergence`` is the user's action: throttle,
    abort or force). ``blocker``: why post-copy cannot be used here even if the VM
    allows it (None: it can).

    Pre-copy (then auto-converge) is chosen when it keeps the budget within
    :data:`PROMPT` times a single copy of memory; past that, post-copy where allowed
    (it ends sooner); else the slow pre-copy that still keeps the budget; else a
    refusal."""
    plain = run(replace(inp, on_no_convergence="abort"))
    budget = f"{inp.downtime_ms:g} ms downtime budget"
    prompt_s = PROMPT * inp.memory_mib / inp.bandwidth_mibps
    can_pc = allow_postcopy and blocker is None

    def precopy_choice() -> ModeChoice:
        return ModeChoice("precopy", f"pre-copy converges in {_passes(len(plain.passes))}"
                          f" ({plain.total_s:.1f} s): the last {plain.stop_copy_mib:.1f} MiB "
                          f"fit the {budget} ({plain.downtime_ms:.0f} ms)", plain)

    if plain.converged and (plain.total_s <= prompt_s or not can_pc):
        return precopy_choice()
    if inp.on_no_convergence == "force" and not plain.converged:
        forced = run(replace(inp, on_no_convergence="force"))
        return ModeChoice("precopy", f"pre-copy does not fit the {budget} ({_rate(inp)}); "
                          f"forced through as asked: about {forced.downtime_ms:.0f} ms "
                          "paused", forced, advise(forced))
    throttled = None
    if inp.on_no_convergence == "throttle" and not plain.converged:
        throttled = run(replace(inp, on_no_convergence="throttle"))
        if throttled.converged and (throttled.total_s <= prompt_s or not can_pc):
            return ModeChoice("auto-converge", f"pre-copy alone does not fit the {budget} "
                              f"({_rate(inp)}); throttling the guest by "
                              f"{throttled.throttle * 100:.0f} % gets there in "
                              f"{throttled.total_s:.1f} s", throttled)
    if plain.converged:
        why = (f"pre-copy would take {_passes(len(plain.passes))} and {plain.total_s:.1f} s "
               f"({_rate(inp)})")
    else:
        why = (f"pre-copy does not fit the {budget} ({_rate(inp)})"
               + ("" if throttled is None else ", not even throttled"))
    if can_pc:
        pc = postcopy(inp)
        return ModeChoice("postcopy", f"{why}; post-copy after one pass ends in "
                          f"{pc.total_s:.1f} s: {pc.downtime_ms:.0f} ms paused, then "
                          f"{pc.after_mib:.1f} MiB fetched from the source while the guest "
                          "runs on the target", pc)
    stuck = throttled or plain
    advice = advise(stuck)
    if allow_postcopy:
        no_pc = f"; post-copy is allowed but {blocker}"
    else:
        no_pc = "; post-copy would, but the VM does not allow it (allow_postcopy)"
    helps = "; ".join(a.message for a in advice) or "a quieter moment"
    return ModeChoice("refuse", f"{why}{no_pc if inp.dirty_mibps > 0 else ''}; "
                      f"would help: {helps}", stuck, advice)
