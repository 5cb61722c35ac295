"""The allocation table a cluster shared volume keeps at the start of its own LUN.

Which disk lives where is data on the LUN itself, so it survives any node: the
first MiB holds two table slots; disks are regions from 1 MiB on, 1 MiB
aligned. Each slot is a header (magic, format, generation, payload length,
CRC-32 of the generation, length and payload) and a JSON payload of ``(name, offset, size, owner)``
rows. Generation ``g`` is written to slot ``g % 2``, so a write that is torn
halfway leaves the other slot's generation ``g - 1`` intact: a reader takes
the valid slot with the highest generation, and a bad checksum is never read
as a table.

The table grows as needed: a slot holds about 700 rows; a bigger table is
written to an extension region of the LUN, allocated like a disk under the
reserved name ``#table-0`` or ``#table-1`` (one per slot, so the double
buffer holds: generation ``g`` writes extension ``g % 2`` and then a slot that
points to it with its length and CRC-32, while generation ``g - 1``'s
extension is untouched). An extension that is too small is moved to a free
region twice the table's size within the same generation; one that is no
longer needed is freed when its slot's turn comes.

The table operations (create, delete, resize, set_owner) are pure functions
from a :class:`Table` to the next one; :func:`read_table` / :func:`write_table`
do the I/O through any :class:`BlockIO` (an NBD connection, or the LUN file).
"""

from __future__ import annotations

import json
import struct
import zlib
from dataclasses import dataclass, replace
from typing import Protocol

from vmcluster.errors import SubstrateError, UsageError
from vmcluster.model import MIB

__all__ = [
    "ALIGN",
    "DATA_START",
    "BlockIO",
    "Extent",
    "FileBlock",
    "Table",
    "TableError",
    "decode_slot",
    "encode",
    "encode_slot",
    "format_table",
    "is_reserved",
    "read_table",
    "write_table",
]

MAGIC = b"VMCCSVT1"
FORMAT = 2  # 1: the CRC covered the payload only (still read)
SLOT_SIZE = 64 * 1024
SLOT_OFFSETS = (0, SLOT_SIZE)
DATA_START = MIB
ALIGN = MIB
_HEADER = struct.Struct("<8sIQII")  # magic, format, generation, payload length, crc32
_INLINE = SLOT_SIZE - _HEADER.size
RESERVED = "#"  # names of the table's own regions start with it


class TableError(SubstrateError):
    """The LUN holds no valid allocation table, or an operation on it is impossible."""


class BlockIO(Protocol):
    """Byte-addressed access to a LUN."""

    def read(self, offset: int, length: int) -> bytes: ...

    def write(self, offset: int, data: bytes) -> None: ...

    def flush(self) -> None: ...


class FileBlock:
    """A LUN as a plain file (the SAN's own view; also used by tests and check-disk)."""

    def __init__(self, path: str) -> None:
        self.path = path

    def read(self, offset: int, length: int) -> bytes:
        with open(self.path, "rb") as f:
            f.seek(offset)
            return f.read(length)

    def write(self, offset: int, data: bytes) -> None:
        with open(self.path, "r+b") as f:
            f.seek(offset)
            f.write(data)

    def flush(self) -> None:
        with open(self.path, "r+b") as f:
            f.flush()


@dataclass(frozen=True)
class Extent:
    """One VM disk: a region of the LUN and the node allowed to write it."""

    name: str
    offset: int
    size: int
    owner: str | None = None

    @property
    def end(self) -> int:
        return self.offset + self.size

    def to_json(self) -> dict[str, object]:
        return {"name": self.name, "offset": self.offset, "size": self.size, "owner": self.owner}


@dataclass(frozen=True)
class Table:
    """A volume's allocation table at one generation."""

    volume: str
    size: int
    generation: int = 0
    disks: tuple[Extent, ...] = ()

    def get(self, name: str) -> Extent | None:
        return next((d for d in self.disks if d.name == name), None)

    def need(self, name: str) -> Extent:
        ext = self.get(name)
        if ext is None:
            raise UsageError(f"volume {self.volume} has no disk {name!r}")
        return ext

    def _next(self, disks: list[Extent]) -> Table:
        return replace(self, generation=self.generation + 1,
                       disks=tuple(sorted(disks, key=lambda d: d.offset)))

    def _gap_for(self, size: int, exclude: str | None = None) -> int | None:
        """The lowest aligned offset where ``size`` bytes fit (first fit), or None."""
        pos = DATA_START
        for d in sorted(self.disks, key=lambda d: d.offset):
            if d.name == exclude:
                continue
            if d.offset - pos >= size:
                return pos
            pos = max(pos, _align(d.end))
        return pos if self.size - pos >= size else None

    def create(self, name: str, size: int, owner: str | None = None) -> Table:
        _user_name(name)
        if size <= 0:
            raise UsageError(f"disk {name!r}: size must be > 0, got {size}")
        if self.get(name) is not None:
            raise UsageError(f"volume {self.volume} already has a disk {name!r}")
        size = _align(size)
        at = self._gap_for(size)
        if at is None:
            raise TableError(f"volume {self.volume} has no free {size >> 20} MiB region for "
                             f"{name!r}; delete a disk or use a bigger volume")
        return self._next([*self.disks, Extent(name, at, size, owner)])

    def delete(self, name: str) -> Table:
        _user_name(name)
        self.need(name)
        return self._next([d for d in self.disks if d.name != name])

    def resize(self, name: str, size: int) -> Table:
        """Grow or shrink in place; growing needs the free space right after the disk."""
        _user_name(name)
        ext = self.need(name)
        size = _align(size)
        limit = min([d.offset for d in self.disks if d.offset > ext.offset] + [self.size])
        if ext.offset + size > limit:
            raise TableError(f"disk {name!r} cannot grow to {size >> 20} MiB in place on "
                             f"{self.volume}: the next region starts at {limit >> 20} MiB")
        return self._next([d if d.name != name else replace(d, size=size) for d in self.disks])

    def set_owner(self, name: str, owner: str | None) -> Table:
        _user_name(name)
        ext = self.need(name)
        if ext.owner == owner:
            return self
        return self._next([d if d.name != name else replace(d, owner=owner) for d in self.disks])

    def to_json(self) -> dict[str, object]:
        return {"volume": self.volume, "size": self.size, "generation": self.generation,
                "disks": [d.to_json() for d in self.disks]}

    def with_room(self) -> Table:
        """This table with the extension region its generation writes sized to hold it.

        Pure: the region named for slot ``generation % 2`` is dropped when the rows fit in
        the slot, kept when they fit in it, and moved to a free region twice the table's
        size otherwise (its old place belonged to generation ``g - 2`` only, which this
        write replaces; the other slot's region is never touched).
        """
        own, size = _ext_name(self.generation), len(_rows(self))
        cur = self.get(own)
        if size <= _INLINE:
            return self if cur is None else replace(
                self, disks=tuple(d for d in self.disks if d.name != own))
        if cur is not None and size <= cur.size:
            return self
        others = [d for d in self.disks if d.name != own]
        probe = replace(self, disks=tuple(others))
        need = _align(2 * (len(_rows(probe)) + 128))
        at = probe._gap_for(need)
        if at is None:
            raise TableError(f"volume {self.volume} has no free {need >> 20} MiB region "
                             f"for its allocation table ({len(others)} regions); delete a "
                             f"disk or use a bigger volume")
        grown = replace(self, disks=tuple(sorted([*others, Extent(own, at, need)],
                                                 key=lambda d: d.offset)))
        assert len(_rows(grown)) <= need
        return grown


def is_reserved(name: str) -> bool:
    """Whether ``name`` is one of the table's own regions, not a disk."""
    return name.startswith(RESERVED)


def _user_name(name: str) -> None:
    if is_reserved(name):
        raise UsageError(f"disk name {name!r} is reserved (names starting with "
                         f"{RESERVED!r} are the allocation table's own regions)")


def _ext_name(generation: int) -> str:
    return f"{RESERVED}table-{generation % 2}"


def _align(n: int) -> int:
    return -(-n // ALIGN) * ALIGN


def _rows(table: Table) -> bytes:
    return json.dumps({
        "volume": table.volume, "size": table.size,
        "disks": [[d.name, d.offset, d.size, d.owner] for d in table.disks],
    }, sort_keys=True, separators=(",", ":")).encode()


def _slot_crc(fmt: int, generation: int, payload: bytes) -> int:
    """The CRC-32 of a slot: of its generation and payload (a write torn inside the
    header must not make the old payload pass for a newer generation)."""
    if fmt == 1:
        return zlib.crc32(payload)
    return zlib.crc32(payload, zlib.crc32(struct.pack("<QI", generation, len(payload))))


def _slot(generation: int, payload: bytes) -> bytes:
    head = _HEADER.pack(MAGIC, FORMAT, generation, len(payload),
                        _slot_crc(FORMAT, generation, payload))
    return (head + payload).ljust(SLOT_SIZE, b"\0")


def encode(table: Table) -> tuple[bytes, tuple[int, bytes] | None]:
    """The slot bytes of ``table`` and, for a big one, its extension ``(offset, bytes)``.

    ``table`` must have room (:meth:`Table.with_room`).
    """
    rows = _rows(table)
    if len(rows) <= _INLINE:
        return _slot(table.generation, rows), None
    ext = table.get(_ext_name(table.generation))
    if ext is None or len(rows) > ext.size:
        raise TableError(f"volume {table.volume}: the allocation table has no room for "
                         f"{len(table.disks)} regions (call with_room first)")
    pointer = json.dumps({"volume": table.volume, "size": table.size,
                          "ext": [ext.offset, len(rows), zlib.crc32(rows)]},
                         sort_keys=True, separators=(",", ":")).encode()
    return _slot(table.generation, pointer), (ext.offset, rows)


def encode_slot(table: Table) -> bytes:
    """The slot of a table small enough to live in it."""
    slot, ext = encode(table)
    if ext is not None:
        raise TableError(f"volume {table.volume}: {len(table.disks)} regions do not fit "
                         f"in a {SLOT_SIZE} byte slot")
    return slot


def decode_slot(raw: bytes, lun: BlockIO | None = None) -> Table | None:
    """The table in one slot, or None when the slot is empty, torn or corrupt.

    A slot that points to an extension region reads it through ``lun`` (None: not a table).
    """
    if len(raw) < _HEADER.size:
        return None
    magic, fmt, gen, length, crc = _HEADER.unpack_from(raw)
    if magic != MAGIC or fmt not in (1, FORMAT) or _HEADER.size + length > len(raw):
        return None
    payload = raw[_HEADER.size:_HEADER.size + length]
    if _slot_crc(fmt, gen, payload) != crc:
        return None
    try:
        data = json.loads(payload)
        if "ext" in data:
            if lun is None:
                return None
            ext_at, ext_len, ext_crc = (int(x) for x in data["ext"])
            payload = lun.read(ext_at, ext_len)
            if len(payload) != ext_len or zlib.crc32(payload) != ext_crc:
                return None  # the extension of a torn write, or of a generation reused
            data = json.loads(payload)
        disks = tuple(Extent(str(n), int(o), int(s), None if w is None else str(w))
                      for n, o, s, w in data["disks"])
        return Table(str(data["volume"]), int(data["size"]), int(gen), disks)
    except (ValueError, KeyError, TypeError):
        return None


def read_table(lun: BlockIO) -> Table:
    """The newest valid table on the LUN."""
    tables = [t for t in (decode_slot(lun.read(off, SLOT_SIZE), lun) for off in SLOT_OFFSETS)
              if t]
    if not tables:
        raise TableError("the LUN holds no valid allocation table (not formatted, or both "
                         "slots corrupt)")
    return max(tables, key=lambda t: t.generation)


def write_table(lun: BlockIO, table: Table, base: Table | None = None) -> Table:
    """Write ``table`` as the next generation of the LUN's newest valid one; return it.

    ``base``: that newest table, when the caller just read it (``table`` is its change);
    else it is read here. The generation counts writes, not changes (a write may carry
    several), so it always lands in the slot that does not hold the newest valid table.
    A big table's extension is written and flushed before the slot that points to it, so
    a torn write of either leaves the newest valid table as it was.
    """
    if base is not None:
        newest = base.generation
    else:
        try:
            newest = read_table(lun).generation
        except TableError:
            newest = 0
    table = replace(table, generation=newest + 1).with_room()
    slot, ext = encode(table)
    if ext is not None:
        lun.write(*ext)
        lun.flush()
    lun.write(SLOT_OFFSETS[table.generation % 2], slot)
    lun.flush()
    return table


def format_table(lun: BlockIO, volume: str, size: int) -> Table:
    """An empty table (generation 1) on a new LUN; the other slot is cleared."""
    if size < DATA_START + ALIGN:
        raise UsageError(f"volume {volume}: {size} bytes is too small for a LUN")
    lun.write(SLOT_OFFSETS[0], b"\0" * SLOT_SIZE)
    return write_table(lun, Table(volume, size, 1))
