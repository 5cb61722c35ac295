"""The wall clock: what the qemu substrate, the store and the heartbeats wait on.

Same shape as :class:`vmcluster.substrate.protocol.Clock`; pass any other Clock
(the sim's virtual one, a fake one in tests) where a function takes ``clock``.
"""

from __future__ import annotations

import time

__all__ = ["MonotonicClock"]


class MonotonicClock:
    """Monotonic seconds since this object was made; ``sleep`` really sleeps.

    With ``absolute`` the origin is CLOCK_MONOTONIC's own, so readings from two
    processes on one machine can be compared (benchmarks).
    """

    def __init__(self, absolute: bool = False) -> None:
        self._t0 = 0.0 if absolute else time.monotonic()

    def now(self) -> float:
        return time.monotonic() - self._t0

    def sleep(self, seconds: float) -> None:
        time.sleep(max(0.0, seconds))
