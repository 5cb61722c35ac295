"""The lab's state file: which node owns each VM, what is down, where the image is.

Read-modify-write happens under an ``flock`` on a lock file, and every write
is write-temp + rename, so ownership changes in one atomic step and a
crashed writer never leaves half a file.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
from collections.abc import Iterator
from typing import Any

from vmcluster.errors import LabError, LabNotUp
from vmcluster.substrate.host.layout import LabLayout

__all__ = ["LabState", "read_state", "update_state", "write_state"]

LabState = dict[str, Any]


def read_state(layout: LabLayout) -> LabState:
    try:
        data = json.loads(layout.state_file.read_text())
    except FileNotFoundError as exc:
        raise LabNotUp(
            f"lab {layout.name!r} is not up (no {layout.state_file}); run `vmcluster lab up`"
        ) from exc
    except (OSError, ValueError) as exc:
        raise LabError(f"cannot read lab state {layout.state_file}: {exc}") from exc
    if not isinstance(data, dict):
        raise LabError(f"lab state {layout.state_file} is not a JSON object")
    return data


def write_state(layout: LabLayout, state: LabState) -> None:
    tmp = layout.state_file.with_name(f".state.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(state, indent=1, sort_keys=True))
    os.replace(tmp, layout.state_file)


@contextlib.contextmanager
def update_state(layout: LabLayout) -> Iterator[LabState]:
    """``with update_state(layout) as st: st[...] = ...`` — locked, atomic."""
    layout.harness_dir.mkdir(parents=True, exist_ok=True)
    with layout.lock_file.open("a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            state = read_state(layout)
            yield state
            write_state(layout, state)
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
