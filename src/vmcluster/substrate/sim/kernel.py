"""A small discrete-event kernel: a heap of ``[time, priority, seq, callback]``.

Why not SimPy: SimPy's processes are generators and every event goes through
its Event/Process objects and callback lists; here an event is a list on a
heap and a plain callback, about 3x cheaper per event (bench/bench_sim.py
measures both). The sequence number makes ties deterministic (FIFO within a
priority), so the same inputs give the same order of events, byte for byte.
"""

from __future__ import annotations

import heapq
from collections.abc import Callable
from typing import Any

__all__ = ["Kernel", "SimClock", "Timer"]

Timer = list[Any]  # [time, priority, seq, callback or None when cancelled]


class Kernel:
    """Virtual time and the events due in it."""

    __slots__ = ("_heap", "_seq", "now", "processed")

    def __init__(self) -> None:
        self._heap: list[Timer] = []
        self._seq = 0
        self.now = 0.0
        self.processed = 0

    def at(self, when: float, callback: Callable[[], None], priority: int = 1) -> Timer:
        """Run ``callback`` at virtual time ``when`` (not before now)."""
        self._seq += 1
        entry: Timer = [max(when, self.now), priority, self._seq, callback]
        heapq.heappush(self._heap, entry)
        return entry

    def after(self, delay: float, callback: Callable[[], None], priority: int = 1) -> Timer:
        return self.at(self.now + delay, callback, priority)

    @staticmethod
    def cancel(timer: Timer | None) -> None:
        if timer is not None:
            timer[3] = None

    def run_until(self, until: float) -> None:
        """Run every event due at or before ``until``; then the clock reads ``until``."""
        heap = self._heap
        pop = heapq.heappop
        while heap and heap[0][0] <= until:
            entry = pop(heap)
            callback = entry[3]
            if callback is None:
                continue
            self.now = entry[0]
            self.processed += 1
            callback()
        if until > self.now:
            self.now = until


class SimClock:
    """The Clock of the Protocol in virtual time: ``sleep`` runs the events it spans."""

    def __init__(self, kernel: Kernel) -> None:
        self._kernel = kernel

    def now(self) -> float:
        return self._kernel.now

    def sleep(self, seconds: float) -> None:
        if seconds < 0:
            raise ValueError("cannot sleep a negative time")
        self._kernel.run_until(self._kernel.now + seconds)
