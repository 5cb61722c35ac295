"""The lab's SAN: create and format each volume's LUN, serve it over NBD.

Each LUN is a sparse raw file in the lab's state dir, formatted with an empty
allocation table (the SAN's own view of the LUN: the file), then served by a
``qemu-storage-daemon`` started inside the ``san`` namespace, listening only
on the SAN's address on the volume's storage network.
"""

from __future__ import annotations

import subprocess

from vmcluster.csv.storage import san_argv, san_target
from vmcluster.csv.volume import FileBlock, format_table
from vmcluster.errors import LabError
from vmcluster.model import ClusterSpec
from vmcluster.substrate.host.layout import LabLayout
from vmcluster.substrate.host.state import update_state

__all__ = ["start_san"]

GIB = 1024 ** 3


def start_san(layout: LabLayout, spec: ClusterSpec) -> list[str]:
    """Create, format and export every volume's LUN; returns progress lines."""
    lines = []
    for vol in spec.volumes:
        lun = layout.lun(vol.name)
        lun.parent.mkdir(parents=True, exist_ok=True)
        size = int(vol.size_gib * GIB)
        with lun.open("wb") as f:
            f.truncate(size)
        format_table(FileBlock(str(lun)), vol.name, size)
        argv = ["ip", "netns", "exec", layout.san_ns, *san_argv(layout, spec, vol.name)]
        try:
            proc = subprocess.run(argv, capture_output=True, text=True, timeout=30, check=False)
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise LabError(f"cannot start the SAN daemon for {vol.name}: {exc}") from exc
        if proc.returncode != 0:
            raise LabError(f"the SAN daemon for {vol.name} failed: "
                           f"{(proc.stderr or proc.stdout).strip()}")
        t = san_target(spec, vol.name)
        with update_state(layout) as st:
            st.setdefault("volumes", {})[vol.name] = {
                "coordinator": None, "epoch": 0, "network": vol.network, "lun": str(lun),
                "san": t.to_json(),
            }
        lines.append(f"SAN: {vol.name} ({vol.size_gib:g} GiB) exported at {t.uri} "
                     f"on {vol.network}")
    return lines
