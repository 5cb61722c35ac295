"""The on-LUN allocation table: round trips, torn writes, checksums, first-fit allocation."""

from __future__ import annotations

from itertools import pairwise
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vmcluster.csv.volume import (
    ALIGN,
    DATA_START,
    SLOT_OFFSETS,
    FileBlock,
    Table,
    TableError,
    decode_slot,
    encode_slot,
    format_table,
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
    for step in (lambda t: t.create("a", 3 * MIB, "n1"), lambda t: t.create("b", MIB),
                 lambda t: t.set_owner("b", "n2"), lambda t: t.resize("b", 2 * MIB),
                 lambda t: t.delete("a")):
        t = step(t)
        write_table(lun, t)
        assert read_table(lun) == t
    assert [(d.name, d.offset, d.size, d.owner) for d in t.disks] == [
        ("b", DATA_START + 3 * MIB, 2 * MIB, "n2")]


def test_torn_write_keeps_the_previous_generation(lun: FileBlock) -> None:
    t1 = format_table(lun, "CSV1", 64 * MIB).create("a", MIB, "n1")
    write_table(lun, t1)
    t2 = t1.create("b", MIB, "n2")
    raw = encode_slot(t2)
    lun.write(SLOT_OFFSETS[t2.generation % 2], raw[:40])  # header + part of the payload
    assert read_table(lun) == t1


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
