"""The detectors' fixed numbers, as CloudSim 3.0.3 has them."""

from __future__ import annotations

__all__ = ["FALLBACK_THR", "LR_WINDOW", "MIN_ROBUST"]

LR_WINDOW = 10  # values the LR detectors regress on
MIN_ROBUST = 12  # values MAD and IQR need
FALLBACK_THR = 0.7  # the static threshold a detector falls back to with less history
