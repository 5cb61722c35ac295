"""A day's trace as a simulation with another interval or duration sees it."""

from __future__ import annotations

import numpy as np
import pytest

from vmcluster.errors import UsageError
from vmcluster.experiments.traces import resample


def test_the_papers_timing_is_the_trace_itself() -> None:
    util = np.arange(2 * 288, dtype=np.uint8).reshape(2, 288) % 100
    assert resample(util, 300, 86400) is util


def test_other_intervals_interpolate_between_samples() -> None:
    util = np.array([[0, 10, 20, 30]], dtype=np.uint8)
    assert resample(util, 600, 1200).tolist() == [[0.0, 20.0]]
    assert resample(util, 150, 600).tolist() == [[0.0, 5.0, 10.0, 15.0]]
    assert resample(util, 450, 1200).tolist() == [[0.0, 15.0]]


def test_a_duration_the_trace_does_not_cover_is_one_line() -> None:
    util = np.zeros((1, 4), dtype=np.uint8)
    with pytest.raises(UsageError, match=r"^day.csv: duration_s 1500 is longer than the "
                                         r"trace \(1200 s: 4 samples every 300 s\)$"):
        resample(util, 300, 1500, "day.csv")
    with pytest.raises(UsageError, match="shorter than one interval_s"):
        resample(util, 600, 300)
