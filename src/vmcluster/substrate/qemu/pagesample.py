"""A sample of a running guest's memory, read twice, to see how its changed pages
compress as XBZRLE deltas (:mod:`vmcluster.substrate.qemu.xbzrle`).

:data:`CHUNKS` runs of :data:`CHUNK` bytes at random page-aligned guest-physical
addresses between 1 MiB and the guest's memory (at most 2 GiB: below that, RAM is
contiguous on both machine types QEMU gives vmcluster's VMs), read with QMP's
``pmemsave`` into files the agent reads back and removes.
"""

from __future__ import annotations

import asyncio
import random
import shutil
import uuid
from pathlib import Path

from vmcluster.errors import QmpError
from vmcluster.substrate.qemu.process import QemuProcess
from vmcluster.substrate.qemu.xbzrle import PAGE, delta_ratio

__all__ = ["CHUNK", "CHUNKS", "DeltaSample"]

CHUNK = 16 * PAGE
CHUNKS = 48
LOW_MIB, HIGH_MIB = 1, 2048


class DeltaSample:
    """Read :meth:`read` before the guest runs a while, :meth:`ratio` after."""

    def __init__(self, qp: QemuProcess, memory_mib: int, workdir: Path) -> None:
        self.qp = qp
        top = min(memory_mib, HIGH_MIB) * (1 << 20)
        slots = max(0, (top - LOW_MIB * (1 << 20)) // CHUNK)
        picks = random.Random().sample(range(slots), min(CHUNKS, slots))
        self.addresses = sorted(LOW_MIB * (1 << 20) + i * CHUNK for i in picks)
        self.dir = workdir / f".pagesample-{uuid.uuid4().hex[:12]}"
        self.before: list[bytes] | None = None

    async def _read(self) -> list[bytes]:
        self.dir.mkdir(parents=True, exist_ok=True)
        out = []
        for i, addr in enumerate(self.addresses):
            path = self.dir / f"{i}"
            await self.qp.qmp.pmemsave(addr, CHUNK, str(path))
            out.append(await asyncio.to_thread(path.read_bytes))
        return out

    async def read(self) -> None:
        """The first reading (a QEMU that refuses leaves the sample empty)."""
        try:
            self.before = await self._read()
        except (QmpError, OSError):
            self.before = None
            shutil.rmtree(self.dir, ignore_errors=True)

    async def ratio(self) -> tuple[float | None, int]:
        """Read again; XBZRLE's wire bytes per page byte over the pages that changed in
        between, and how many did (None: too few, or not read)."""
        try:
            if self.before is None:
                return None, 0
            after = await self._read()
        except (QmpError, OSError):
            return None, 0
        finally:
            shutil.rmtree(self.dir, ignore_errors=True)

        def pairs() -> list[tuple[bytes, bytes]]:
            assert self.before is not None
            return [(a[o:o + PAGE], b[o:o + PAGE]) for a, b in zip(self.before, after, strict=True)
                    if len(a) == len(b) == CHUNK for o in range(0, CHUNK, PAGE)]

        ratio, changed = await asyncio.to_thread(lambda: delta_ratio(pairs()))
        return (None if ratio is None else round(ratio, 6)), changed
