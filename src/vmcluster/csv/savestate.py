"""A quick migration's saved state, kept on the VM's own cluster shared volume.

A VM whose disk lives on a CSV saves its state into a region of that same volume
(named :func:`region_name`), so hosts share nothing but the SAN: the source's
QEMU writes its migration stream into a pipe (``fd:``, never a path or a
command), the agent copies the pipe into the region over its NBD path; the
target's agent copies the region back into its QEMU's pipe.

The region starts with one 4 KiB header block (magic, stream length, CRC-32 of
the stream); the stream follows. The header is cleared before a save and written
only once the whole stream is on the volume and flushed, so a save that dies
halfway is never restored. A restore holds the stream's last chunk back until
the CRC over everything before it and that chunk matches: a QEMU is never fed a
stream that differs from what was saved (it sees a truncated stream instead, and
its restore fails).
"""

from __future__ import annotations

import os
import struct
import zlib

from vmcluster.csv.volume import BlockIO
from vmcluster.errors import SubstrateError
from vmcluster.model import MIB

__all__ = ["CHUNK", "HEADER_SIZE", "SaveError", "region_name", "region_size", "restore_stream",
           "save_stream", "seal"]

MAGIC = b"VMCSAVE1"
_HEAD = struct.Struct("<8sQI")  # magic, stream length, crc32 of the stream
HEADER_SIZE = 4096
CHUNK = MIB  # a pipe's size: what QEMU writes or reads while the agent moves the last batch
BATCH = 8 * MIB  # what the agent moves over NBD at once (pipelined 1 MiB requests)
# Beyond the guest's RAM a stream carries device state, option ROMs and video RAM.
MARGIN_MIB = 64


class SaveError(SubstrateError):
    """A saved state could not be written, or what is on the volume is not one."""


def region_name(vm: str) -> str:
    """The state region's name in the volume's table ('/' is never in a VM's name)."""
    return f"{vm}/saved-state"


def region_size(memory_mib: int) -> int:
    return HEADER_SIZE + (memory_mib + MARGIN_MIB) * MIB


def _read_full(fd: int, n: int) -> bytes:
    """Up to ``n`` bytes from a pipe; fewer only at its end."""
    buf = bytearray()
    while len(buf) < n:
        got = os.read(fd, n - len(buf))
        if not got:
            break
        buf += got
    return bytes(buf)


def save_stream(lun: BlockIO, offset: int, size: int, fd: int, where: str) -> tuple[int, int]:
    """Copy the pipe ``fd`` until its end into the region at ``offset`` (``size`` bytes),
    unsealed; the stream's length and CRC-32, for :func:`seal` once its writer says the
    stream is whole. ``where`` names the region in errors. Raises :class:`SaveError`
    when the stream outgrows the region."""
    lun.write(offset, b"\0" * HEADER_SIZE)  # no stale header survives a new save
    lun.flush()
    room, length, crc = size - HEADER_SIZE, 0, 0
    while chunk := _read_full(fd, BATCH):
        if length + len(chunk) > room:
            raise SaveError(f"the saved state outgrew {where} ({room >> 20} MiB)")
        lun.write(offset + HEADER_SIZE + length, chunk)
        length, crc = length + len(chunk), zlib.crc32(chunk, crc)
    lun.flush()
    return length, crc


def seal(lun: BlockIO, offset: int, length: int, crc: int) -> None:
    """Mark the stream at ``offset`` whole: only a sealed stream is ever restored."""
    lun.write(offset, _HEAD.pack(MAGIC, length, crc).ljust(HEADER_SIZE, b"\0"))
    lun.flush()


def restore_stream(lun: BlockIO, offset: int, size: int, fd: int, where: str) -> int:
    """Copy the sealed stream at ``offset`` into the pipe ``fd``; its length. The last
    chunk goes only after the CRC matched."""
    magic, length, crc = _HEAD.unpack_from(lun.read(offset, _HEAD.size))
    if magic != MAGIC:
        raise SaveError(f"{where} holds no complete saved state")
    if length > size - HEADER_SIZE:
        raise SaveError(f"{where}: its header claims {length} bytes, more than the region")
    pos, got, held = 0, 0, b""
    while pos < length:
        chunk = lun.read(offset + HEADER_SIZE + pos, min(BATCH, length - pos))
        pos, got = pos + len(chunk), zlib.crc32(chunk, got)
        if held:
            _write_all(fd, held)
        held = chunk
    if got != crc:
        raise SaveError(f"{where}: the saved state's checksum does not match; not restored")
    _write_all(fd, held)
    return int(length)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]
