"""Check a VM's disk against what its guest acknowledged, without stopping the VM.

The guest's disk writer (``guest/diskwriter.c``) writes block ``s`` to slot
``(s - 1) % n`` and prints ``DISKACK s`` once blocks 1..s are durable. So for
the highest acknowledged ``A`` every slot ``j`` must hold a valid block whose
sequence number is at least the last one ``<= A`` that went there; anything
newer was written after the last acknowledgement and is fine.

* ``missing``: a slot whose acknowledged block is not there (never written,
  or an older sequence number): an acknowledged write was lost.
* ``corrupt``: a block with a bad checksum, or in the wrong slot. A block being
  written while we read may look torn, so a bad block is read again a few
  times before it counts.

The region is found in the volume's allocation table and read from the LUN
file on the SAN side; the acknowledgements come from every serial log the VM
has had (it moves between nodes).
"""

from __future__ import annotations

import re
import struct
import time
import zlib
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from pathlib import Path

from vmcluster.csv.volume import FileBlock, read_table
from vmcluster.errors import SubstrateError

__all__ = ["BLOCK", "DiskCheck", "check_region", "highest_ack", "make_block"]

BLOCK = 4096
MAGIC = b"VMCDISK1"
_ACK = re.compile(rb"DISKACK (\d+)")
Reader = Callable[[int, int], bytes]


@dataclass(frozen=True)
class DiskCheck:
    vm: str
    acked: int
    missing: int
    corrupt: int
    slots: int
    newest_on_disk: int
    offset: int
    size: int

    @property
    def ok(self) -> bool:
        return self.missing == 0 and self.corrupt == 0

    def to_json(self) -> dict[str, object]:
        return {**asdict(self), "ok": self.ok}


def highest_ack(logs: Iterable[Path]) -> int:
    best = 0
    for log in logs:
        try:
            data = log.read_bytes()
        except OSError:
            continue
        for m in _ACK.finditer(data):
            best = max(best, int(m.group(1)))
    return best


def _parse(block: bytes, slot: int, nslots: int) -> tuple[str, int]:
    """("ok", seq) / ("empty", 0) / ("corrupt", seq-or-0)."""
    if block[:8] != MAGIC:
        return ("empty", 0) if block[:8] == b"\0" * 8 else ("corrupt", 0)
    seq, where = struct.unpack_from("<QQ", block, 8)
    if zlib.crc32(block[:4088]) != struct.unpack_from("<I", block, 4088)[0]:
        return "corrupt", 0
    if where != slot or (seq - 1) % nslots != slot:
        return "corrupt", int(seq)
    return "ok", int(seq)


def _expected(slot: int, acked: int, nslots: int) -> int:
    """The last sequence number <= acked written to ``slot`` (0: none yet)."""
    first = slot + 1
    if acked < first:
        return 0
    return first + nslots * ((acked - first) // nslots)


def check_region(read: Reader, size: int, acked: int, retries: int = 3,
                 sleep: Callable[[float], None] = time.sleep) -> tuple[int, int, int, int]:
    """(missing, corrupt, slots, newest) for a region read through ``read(off, len)``."""
    nslots = size // BLOCK
    missing = corrupt = newest = 0
    chunk = 256
    for base in range(0, nslots, chunk):
        k = min(chunk, nslots - base)
        data = read(base * BLOCK, k * BLOCK)
        for i in range(k):
            slot = base + i
            want = _expected(slot, acked, nslots)
            block = data[i * BLOCK:(i + 1) * BLOCK]
            state, seq = _parse(block, slot, nslots)
            for _ in range(retries):
                if state == "ok" and seq >= want:
                    break
                if state == "empty" and want == 0:
                    break
                sleep(0.05)  # maybe a write in flight: look again
                state, seq = _parse(read(slot * BLOCK, BLOCK), slot, nslots)
            if state == "corrupt":
                corrupt += 1
            elif want and (state == "empty" or seq < want):
                missing += 1
            newest = max(newest, seq if state == "ok" else 0)
    return missing, corrupt, nslots, newest


def check_vm_disk(lun: Path, volume: str, vm: str, logs: Iterable[Path]) -> DiskCheck:
    """Read the acknowledgements, then the VM's region of the LUN file, and compare."""
    acked = highest_ack(logs)  # first: every block acknowledged so far must be on disk now
    fb = FileBlock(str(lun))
    try:
        table = read_table(fb)
    except OSError as exc:
        raise SubstrateError(f"cannot read the LUN of {volume} at {lun}: {exc}") from exc
    ext = table.get(vm)
    if ext is None:
        raise SubstrateError(f"{vm} has no disk on volume {volume}")
    missing, corrupt, slots, newest = check_region(
        lambda off, n: fb.read(ext.offset + off, n), ext.size, acked)
    return DiskCheck(vm, acked, missing, corrupt, slots, newest, ext.offset, ext.size)


def make_block(seq: int, slot: int, boot: int = 1) -> bytes:
    """A block as the guest writes it (the payload differs; only the checksum matters)."""
    head = MAGIC + struct.pack("<QQQ", seq, slot, boot)
    body = (head + bytes((seq * 7 + i) & 0xFF for i in range(4088 - len(head))))
    return body + struct.pack("<II", zlib.crc32(body), 0)
