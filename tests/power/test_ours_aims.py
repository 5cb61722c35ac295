"""`ours` against the issue's three aims on a shipped day (boots not charged): less energy
than LR-MMT-1.2, less real overload time and fewer MIPS lost than IQR-MMT-1.5, and at most
a fifth of LR-MMT's migrations, all at once."""

from __future__ import annotations

from vmcluster.experiments.evaluate import run_day
from vmcluster.experiments.traces import default_trace_dir


def test_ours_is_ahead_on_every_axis() -> None:
    day = str(default_trace_dir() / "20110309.csv")
    ours, lr, iqr = (run_day(p, day) for p in ("ours", "lr-mmt-1.2", "iqr-mmt-1.5"))
    assert ours.energy_kwh < lr.energy_kwh
    assert ours.overload_pct < iqr.overload_pct
    assert ours.mips_lost_pct < iqr.mips_lost_pct
    assert ours.migrations <= lr.migrations / 5
