"""The on-LUN allocation table: round trips, torn writes, checksums, first-fit allocation."""

from __future__ import annotations

from dataclasses import replace
from itertools import pairwise
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vmcluster.csv.volume import (
    ALIGN,
    DATA_START,
    SLOT_OFFSETS,
    SLOT_SIZE,
    FileBlock,
    Table,
    TableError,
    decode_slot,
    encode,
    encode_slot,
    format_table,
    is_reserved,
    read_table,
    write_table,
)
from vmcluster.errors import UsageError
from vmcluster.model import MIB


@pytest.fixture
def lun(tmp_path: Path) -> FileBlock:
    path = tmp_path / "v.lun"
    with path.open("wb") as f:
        f.truncate(64 * MIB)
    return FileBlock(str(path))


def test_format_then_read_back(lun: FileBlock) -> None:
    t = format_table(lun, "CSV1", 64 * MIB)
    assert read_table(lun) == t and t.generation == 1 and t.disks == ()


def test_every_change_survives_a_reread(lun: FileBlock) -> None:
    t = format_table(lun, "CSV1", 64 * MIB)
    for i, step in enumerate((lambda t: t.create("a", 3 * MIB, "n1"),
                              lambda t: t.create("b", MIB), lambda t: t.set_owner("b", "n2"),
                              lambda t: t.resize("b", 2 * MIB), lambda t: t.delete("a"))):
        base = read_table(lun)
        t = step(t)
        written = write_table(lun, t, base=base if i % 2 else None)  # read here, or given
        assert written == t and read_table(lun) == t
    assert [(d.name, d.offset, d.size, d.owner) for d in t.disks] == [
        ("b", DATA_START + 3 * MIB, 2 * MIB, "n2")]


def test_torn_write_keeps_the_previous_generation(lun: FileBlock) -> None:
    t1 = format_table(lun, "CSV1", 64 * MIB).create("a", MIB, "n1")
    write_table(lun, t1)
    t2 = t1.create("b", MIB, "n2")
    raw = encode_slot(t2)
    lun.write(SLOT_OFFSETS[t2.generation % 2], raw[:40])  # header + part of the payload
    assert read_table(lun) == t1


def test_a_write_torn_inside_the_header_is_not_a_newer_table() -> None:
    """Found by the property below: a tear after the generation's first byte left the old
    payload with its (valid) CRC under the new generation, rolling a create back."""
    for budget in range(0, 40):
        lun = MemBlock()
        t0 = format_table(lun, "V", 64 * MIB)
        t1 = write_table(lun, t0.create("d0", MIB))
        lun.budget = budget
        t2 = write_table(lun, t1.create("x0", MIB))
        lun.budget = None
        assert read_table(lun) in (t1, t2), budget


def test_a_flipped_bit_is_not_a_table(lun: FileBlock) -> None:
    t = format_table(lun, "CSV1", 64 * MIB).create("a", MIB)
    raw = bytearray(encode_slot(t))
    raw[40] ^= 1
    assert decode_slot(bytes(raw)) is None
    assert decode_slot(encode_slot(t)) == t


def test_no_table_is_an_error(lun: FileBlock) -> None:
    with pytest.raises(TableError):
        read_table(lun)


def test_full_volume_and_bad_operations() -> None:
    t = Table("V", DATA_START + 4 * MIB, 1).create("a", 3 * MIB)
    with pytest.raises(TableError):
        t.create("b", 2 * MIB)
    with pytest.raises(UsageError):
        t.create("a", MIB)
    with pytest.raises(UsageError):
        t.delete("zz")
    t = t.create("b", MIB)
    with pytest.raises(TableError):
        t.resize("a", 4 * MIB)  # b sits right after a
    assert t.set_owner("a", None) is t  # no change, no new generation


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["create", "delete", "resize"]),
                          st.integers(0, 7), st.integers(1, 9 * MIB)), max_size=40))
def test_regions_never_overlap_and_stay_inside(ops: list[tuple[str, int, int]]) -> None:
    t = Table("V", 48 * MIB, 1)
    for op, i, size in ops:
        name = f"d{i}"
        try:
            if op == "create":
                t = t.create(name, size)
            elif op == "delete":
                t = t.delete(name)
            else:
                t = t.resize(name, size)
        except (TableError, UsageError):
            continue
        spans = sorted((d.offset, d.end) for d in t.disks)
        assert all(a_end <= b_start for (_, a_end), (b_start, _) in pairwise(spans))
        assert all(s >= DATA_START and e <= t.size and s % ALIGN == 0 for s, e in spans)
        assert decode_slot(encode_slot(t)) == t


class MemBlock:
    """A sparse LUN in memory whose writes can be torn after a byte budget (a crash)."""

    def __init__(self) -> None:
        self.data = bytearray()
        self.budget: int | None = None  # bytes still written before the "crash"

    def read(self, offset: int, length: int) -> bytes:
        return bytes(self.data[offset:offset + length]).ljust(length, b"\0")

    def write(self, offset: int, data: bytes) -> None:
        if self.budget is not None:
            data, self.budget = data[:self.budget], max(0, self.budget - len(data))
        if len(self.data) < offset + len(data):
            self.data.extend(b"\0" * (offset + len(data) - len(self.data)))
        self.data[offset:offset + len(data)] = data

    def flush(self) -> None:
        pass


def _no_overlap(t: Table) -> None:
    spans = sorted((d.offset, d.end) for d in t.disks)
    assert all(a_end <= b_start for (_, a_end), (b_start, _) in pairwise(spans))
    assert all(s >= DATA_START and e <= t.size and s % ALIGN == 0 for s, e in spans)


def test_the_table_grows_past_its_slot_and_back(tmp_path: Path) -> None:
    """Thousands of disks: the rows move to an extension region per slot, and back."""
    path = tmp_path / "big.lun"
    with path.open("wb") as f:
        f.truncate(64 * 1024 * MIB)  # sparse: 64 GiB of SAN, a few MiB written
    lun = FileBlock(str(path))
    t = format_table(lun, "CSV1", 64 * 1024 * MIB)
    names = [f"vm-{i:05d}-with-a-rather-long-name-for-its-disk" for i in range(3000)]
    for batch in range(0, len(names), 250):
        for name in names[batch:batch + 250]:
            t = t.create(name, MIB, "node1")
        t = write_table(lun, t)
        assert read_table(lun) == t
    assert len(encode(t)[0]) == SLOT_SIZE and encode(t)[1] is not None
    assert {d.name for d in t.disks if is_reserved(d.name)} == {"#table-0", "#table-1"}
    assert len([d for d in t.disks if not is_reserved(d.name)]) == 3000
    _no_overlap(t)
    for name in names[10:]:
        t = t.delete(name)
    t = write_table(lun, t)
    t = write_table(lun, t.set_owner(names[0], "node2"))
    assert read_table(lun) == t
    assert not any(is_reserved(d.name) for d in t.disks)  # both extensions freed in turn
    assert encode(t)[1] is None


def test_a_torn_extension_keeps_the_previous_generation() -> None:
    lun = MemBlock()
    t = format_table(lun, "CSV1", 4096 * MIB)
    for i in range(1500):
        t = t.create(f"disk-number-{i:04d}-of-many", MIB)
    t = write_table(lun, t)
    t = write_table(lun, t.create("one-more", MIB))  # both slots now point to extensions
    before = read_table(lun)
    assert before == t
    nxt = replace(before.create("torn", MIB), generation=before.generation + 1).with_room()
    ext = encode(nxt)[1]
    assert ext is not None
    for budget in (0, 100, len(ext[1]) - 1, len(ext[1]) + 20):  # in the extension, the slot
        lun.budget = budget
        write_table(lun, before.create("torn", MIB))
        lun.budget = None
        assert read_table(lun) == before
    assert write_table(lun, before.create("torn", MIB)) == read_table(lun) == nxt


@settings(max_examples=150, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["create", "delete", "resize", "crash"]),
                          st.integers(0, 30), st.integers(1, 3 * MIB)), max_size=60))
def test_a_growing_table_survives_any_torn_write(ops: list[tuple[str, int, int]]) -> None:
    """With a tiny slot, extensions come and go; a crash at any byte loses nothing written."""
    import vmcluster.csv.volume as vt

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(vt, "_INLINE", 200)
        lun = MemBlock()
        t = format_table(lun, "V", 128 * MIB)
        for op, i, size in ops:
            name = f"d{i}"
            try:
                if op == "crash":
                    lun.budget = size % 5000
                    new = write_table(lun, t.create(f"x{i}", MIB))
                    lun.budget = None
                    now = read_table(lun)
                    assert now in (t, new)  # the old table, or the new one written whole
                    t = now
                    continue
                t = (t.create(name, size) if op == "create" else
                     t.delete(name) if op == "delete" else t.resize(name, size))
            except (TableError, UsageError):
                lun.budget = None
                continue
            t = write_table(lun, t)
            assert read_table(lun) == t
            _no_overlap(t)


def test_the_tables_own_regions_are_not_disks() -> None:
    t = Table("V", 64 * MIB, 1).create("a", MIB)
    for op in (lambda: t.create("#table-0", MIB), lambda: t.delete("#table-1"),
               lambda: t.resize("#x", MIB), lambda: t.set_owner("#table-0", "n")):
        with pytest.raises(UsageError, match="reserved"):
            op()


SPEC = """\
[cluster]
name = "t"

[[networks]]
name = "Private"
subnet = "198.18.2.0/24"

[[networks]]
name = "iSCSI"
subnet = "198.18.4.0/24"
role = 0

[[nodes]]
name = "n1"
cores = 2
memory_mib = 1024
interfaces = { Private = "198.18.2.11", iSCSI = "198.18.4.11" }

[[volumes]]
name = "CSV1"
size_gib = 1
"""


def test_volume_network_defaults_to_the_first_role0_network() -> None:
    from vmcluster.model.spec import parse_spec

    assert parse_spec(SPEC, "s.toml").volumes[0].network == "iSCSI"


def test_unknown_volume_network_is_a_located_error() -> None:
    from vmcluster.errors import SpecError
    from vmcluster.model.spec import parse_spec

    with pytest.raises(SpecError, match=r"s\.toml:2\d.*network 'Nope' is not declared"):
        parse_spec(SPEC + 'network = "Nope"\n', "s.toml")
