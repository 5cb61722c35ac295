"""Per-VM CPU utilisation over time: constant, synthetic (seeded diurnal) or a CSV trace.

A :class:`Workload` is a matrix of ``steps x VMs`` utilisations in [0, 1],
one row per ``interval_s``; the simulator applies a row at each step (the
last row holds once a trace runs out).
"""

from __future__ import annotations

import csv
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt

from vmcluster.errors import TraceError

__all__ = ["Workload", "constant", "from_csv", "parse_time", "synthetic"]

Matrix = npt.NDArray[np.float32]


@dataclass(frozen=True)
class Workload:
    interval_s: float
    matrix: Matrix  # steps x VMs

    @property
    def steps(self) -> int:
        return int(self.matrix.shape[0])

    def row(self, step: int) -> Matrix:
        row: Matrix = self.matrix[min(step, self.steps - 1)]
        return row


def parse_time(text: str | int | float) -> float:
    """Seconds from ``HH:MM:SS`` (or ``MM:SS``) text or a number of seconds."""
    if isinstance(text, bool):
        raise ValueError(f"{text!r} is not a time")
    if isinstance(text, int | float):
        if text < 0 or not math.isfinite(text):
            raise ValueError(f"{text!r} is not a time")
        return float(text)
    parts = text.strip().split(":")
    if not 1 <= len(parts) <= 3 or not all(p.replace(".", "", 1).isdigit() for p in parts):
        raise ValueError(f"{text!r} is not a time (use HH:MM:SS or seconds)")
    seconds = 0.0
    for p in parts:
        seconds = seconds * 60 + float(p)
    return seconds


def constant(n_vms: int, util: float, interval_s: float = 300.0) -> Workload:
    return Workload(interval_s, np.full((1, n_vms), util, dtype=np.float32))


def synthetic(
    n_vms: int, duration_s: float, interval_s: float, seed: int,
    mean: tuple[float, float] = (0.1, 0.5), amplitude: float = 0.25, noise: float = 0.05,
) -> Workload:
    """A day-shaped load: each VM has its own level and phase, plus seeded noise."""
    rng = np.random.default_rng(seed)
    steps = max(1, math.ceil(duration_s / interval_s) + 1)
    t = (np.arange(steps, dtype=np.float64) * interval_s / 86400.0)[:, None]
    level = rng.uniform(mean[0], mean[1], n_vms)[None, :]
    amp = rng.uniform(0.0, amplitude, n_vms)[None, :]
    phase = rng.normal(0.0, 0.08, n_vms)[None, :]
    # Busiest around 14:00, quietest around 02:00.
    wave = -np.cos(2 * np.pi * (t - 2.0 / 24.0 - phase))
    jitter = rng.normal(0.0, noise, (steps, n_vms))
    return Workload(interval_s, np.clip(level + amp * wave + jitter, 0.0, 1.0).astype(np.float32))


def from_csv(path: Path, vm_names: Sequence[str], interval_s: float) -> Workload:
    """Read ``time,vm,util`` rows (time in seconds or HH:MM:SS); values hold until changed."""
    index = {name: i for i, name in enumerate(vm_names)}
    points: list[tuple[int, int, float]] = []
    try:
        with path.open(newline="", encoding="utf-8") as fh:
            rows = list(csv.reader(fh))
    except OSError as exc:
        raise TraceError(str(path), f"cannot read trace: {exc}", "check the path") from exc
    for lineno, row in enumerate(rows, start=1):
        if not row or row[0].startswith("#") or (lineno == 1 and row[0].strip() == "time"):
            continue
        where = f"{path}:{lineno}"
        if len(row) != 3:
            raise TraceError(where, f"expected time,vm,util, got {len(row)} fields")
        try:
            t = parse_time(row[0])
            util = float(row[2])
        except ValueError as exc:
            raise TraceError(where, str(exc)) from exc
        name = row[1].strip()
        if name not in index:
            raise TraceError(where, f"unknown VM {name!r}", "name a VM of the cluster spec")
        if not 0.0 <= util <= 1.0:
            raise TraceError(where, f"utilisation {util} is outside [0, 1]")
        points.append((int(t // interval_s), index[name], util))
    if not points:
        raise TraceError(str(path), "trace has no rows", "add time,vm,util lines")
    steps = max(p[0] for p in points) + 1
    matrix = np.full((steps, len(vm_names)), np.nan, dtype=np.float32)
    for step, vm, util in points:
        matrix[step, vm] = util
    # Forward-fill each VM's column; before its first point a VM is idle.
    matrix[0] = np.nan_to_num(matrix[0], nan=0.0)
    for s in range(1, steps):
        gaps = np.isnan(matrix[s])
        matrix[s, gaps] = matrix[s - 1, gaps]
    return Workload(interval_s, matrix)
