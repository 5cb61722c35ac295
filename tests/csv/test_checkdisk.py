"""The disk check: acknowledged blocks must be on disk, intact, in their slot."""

from __future__ import annotations

from pathlib import Path

from vmcluster.csv.checkdisk import BLOCK, check_region, highest_ack, make_block

SLOTS = 8


def _disk(blocks: dict[int, bytes]) -> bytearray:
    data = bytearray(SLOTS * BLOCK)
    for slot, b in blocks.items():
        data[slot * BLOCK:(slot + 1) * BLOCK] = b
    return data


def _check(data: bytearray, acked: int) -> tuple[int, int, int, int]:
    return check_region(lambda off, n: bytes(data[off:off + n]), len(data), acked,
                        sleep=lambda _s: None)


def test_all_acked_blocks_present_across_a_wrap() -> None:
    data = _disk({(s - 1) % SLOTS: make_block(s, (s - 1) % SLOTS) for s in range(1, 12)})
    assert _check(data, 11) == (0, 0, SLOTS, 11)
    assert _check(data, 9) == (0, 0, SLOTS, 11)  # newer than the last ack is fine


def test_lost_write_is_missing_and_damage_is_corrupt() -> None:
    blocks = {(s - 1) % SLOTS: make_block(s, (s - 1) % SLOTS) for s in range(1, 12)}
    blocks[1] = make_block(2, 1)  # seq 10 was acked there, the disk still has seq 2
    data = _disk(blocks)
    data[5 * BLOCK + 100] ^= 0xFF
    assert _check(data, 11)[:2] == (1, 1)
    del blocks[1]
    assert _check(_disk({**blocks, 1: bytes(BLOCK)}), 11)[0] == 1  # never written


def test_highest_ack_reads_every_log(tmp_path: Path) -> None:
    (tmp_path / "a.log").write_bytes(b"DISKACK 5\nnoise\nDISKACK 17\n")
    (tmp_path / "b.log").write_bytes(b"DISKACK 12\n")
    assert highest_ack([tmp_path / "a.log", tmp_path / "b.log", tmp_path / "none"]) == 17
