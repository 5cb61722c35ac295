"""PlanetLab CPU traces: one CSV per day, a header row, then one row per VM:
its name and 288 integers (percent CPU every 5 minutes).

A row that is not a name plus 288 integers in 0..100 raises
:class:`~vmcluster.errors.TraceError` naming the file and line; a directory
without ``*.csv`` files raises one too.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import numpy as np
import numpy.typing as npt

from vmcluster.errors import TraceError, UsageError

__all__ = [
    "SAMPLES",
    "SAMPLE_S",
    "DayTrace",
    "default_trace_dir",
    "list_days",
    "load_day",
    "load_dir",
    "resample",
]

SAMPLES = 288
SAMPLE_S = 300.0  # one sample every 5 minutes


@dataclass(frozen=True)
class DayTrace:
    """One day: ``util[i, k]`` is VM ``i``'s CPU percent in interval ``k``."""

    day: str
    vm_names: tuple[str, ...]
    util: npt.NDArray[np.uint8]

    @property
    def n_vms(self) -> int:
        return len(self.vm_names)


def default_trace_dir() -> Path:
    """The five PlanetLab days shipped inside the package."""
    return Path(str(resources.files("vmcluster") / "data" / "planetlab"))


def _parse_row(row: list[str], where: str) -> tuple[str, list[int]]:
    if len(row) != SAMPLES + 1:
        raise TraceError(
            where,
            f"expected a VM name and {SAMPLES} samples, found {max(len(row) - 1, 0)} samples",
            "each row is: name, then 288 integers 0..100",
        )
    values: list[int] = []
    for col, text in enumerate(row[1:], start=1):
        try:
            v = int(text.strip())
        except ValueError as exc:
            raise TraceError(where, f"sample {col} is {text!r}, not an integer",
                             "samples are integer percentages 0..100") from exc
        if not 0 <= v <= 100:
            raise TraceError(where, f"sample {col} is {v}, outside 0..100",
                             "samples are integer percentages 0..100")
        values.append(v)
    return row[0].strip(), values


def load_day(path: Path) -> DayTrace:
    """Load and validate one day's CSV."""
    names: list[str] = []
    rows: list[list[int]] = []
    try:
        with path.open(newline="", encoding="utf-8") as fh:
            reader = csv.reader(fh)
            for lineno, row in enumerate(reader, start=1):
                if lineno == 1 and row and not row[0].strip().lstrip("-").isdigit() and (
                    len(row) > 1 and not row[1].strip().lstrip("-").isdigit()
                ):
                    continue  # the header row
                if not row or all(not c.strip() for c in row):
                    continue
                name, values = _parse_row(row, f"{path}:{lineno}")
                names.append(name)
                rows.append(values)
    except OSError as exc:
        raise TraceError(str(path), f"cannot read trace file: {exc.strerror}") from exc
    except UnicodeDecodeError as exc:
        raise TraceError(str(path), "not a UTF-8 text file", "give a CSV trace file") from exc
    if not rows:
        raise TraceError(str(path), "no VM rows", "each row is: name, then 288 integers 0..100")
    return DayTrace(path.stem, tuple(names), np.asarray(rows, dtype=np.uint8))


def list_days(directory: Path) -> list[Path]:
    """The ``*.csv`` files of a trace directory, sorted by name."""
    if not directory.is_dir():
        raise TraceError(str(directory), "not a directory", "give a directory of day CSVs")
    files = sorted(p for p in directory.iterdir() if p.suffix == ".csv" and p.is_file())
    if not files:
        raise TraceError(str(directory), "no trace files (*.csv) in this directory",
                         "give a directory with one CSV per day")
    return files


def load_dir(directory: Path, days: list[str] | None = None) -> list[DayTrace]:
    """Load the days of a directory (all, or those named in ``days``)."""
    files = list_days(directory)
    if days:
        by_name = {p.stem: p for p in files}
        missing = [d for d in days if d not in by_name]
        if missing:
            raise TraceError(str(directory), f"no trace for day {missing[0]}",
                             f"days here: {', '.join(sorted(by_name))}")
        files = [by_name[d] for d in days]
    return [load_day(p) for p in files]


def resample(util: npt.NDArray[np.uint8], interval_s: float, duration_s: float,
             where: str = "") -> npt.NDArray[np.uint8] | npt.NDArray[np.float64]:
    """The trace as a simulation every ``interval_s`` for ``duration_s`` sees it: the CPU
    at each interval's start, interpolated between the two samples around it (as
    CloudSim's ``UtilizationModelPlanetLabInMemory`` does). The trace itself when the
    interval is the sampling period and the duration the whole trace. A duration longer
    than the trace, or shorter than one interval, raises UsageError (one line, prefixed
    ``where``)."""
    at = f"{where}: " if where else ""
    n_samples = util.shape[1]
    length = n_samples * SAMPLE_S
    if duration_s > length + 1e-9:
        raise UsageError(f"{at}duration_s {duration_s:g} is longer than the trace "
                         f"({length:g} s: {n_samples} samples every {SAMPLE_S:g} s)")
    steps = int(duration_s / interval_s + 1e-9)
    if steps < 1:
        raise UsageError(f"{at}duration_s {duration_s:g} is shorter than one interval_s "
                         f"({interval_s:g})")
    if interval_s == SAMPLE_S and steps == n_samples:
        return util
    pos = np.arange(steps) * interval_s / SAMPLE_S
    lo = np.minimum(np.floor(pos).astype(np.int64), n_samples - 1)
    hi = np.minimum(lo + 1, n_samples - 1)
    frac = pos - lo
    u = util.astype(np.float64)
    out: npt.NDArray[np.float64] = u[:, lo] * (1.0 - frac) + u[:, hi] * frac
    return out
