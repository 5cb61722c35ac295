"""Helpers shared by test modules (import as ``from tests.helpers import ...``)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def vmc(*args: str, cwd: Path = ROOT, timeout: float = 60.0) -> subprocess.CompletedProcess[str]:
    """Run the ``vmcluster`` command as a user would: a new process, its exit code and output."""
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    return subprocess.run([sys.executable, "-m", "vmcluster", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=timeout, check=False)


class ManualClock:
    """Virtual time that moves only when someone sleeps (or a test sets ``t``)."""

    def __init__(self) -> None:
        self.t = 0.0

    def now(self) -> float:
        return self.t

    def sleep(self, seconds: float) -> None:
        self.t += max(0.0, seconds)
