"""A quick migration's saved state on a volume: through pipes, sealed only when whole, and
never fed to a QEMU when it differs from what was saved."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vmcluster.csv.savestate import (
    HEADER_SIZE,
    SaveError,
    region_name,
    restore_stream,
    save_stream,
    seal,
)
from vmcluster.csv.volume import FileBlock
from vmcluster.model import MIB

OFFSET = 2 * MIB
SIZE = 4 * MIB


def _lun(tmp_path: Path) -> FileBlock:
    path = tmp_path / "v.lun"
    with path.open("wb") as f:
        f.truncate(8 * MIB)
    return FileBlock(str(path))


def _save(lun: FileBlock, data: bytes, size: int = SIZE) -> tuple[int, int]:
    """``data`` through a pipe into the region, as a QEMU's fd: migration writes it."""
    r, w = os.pipe()

    def write() -> None:
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(w, view[:65536]):]
        except BrokenPipeError:
            pass  # the copy gave up: the writer's migration fails
        finally:
            os.close(w)

    t = threading.Thread(target=write)
    t.start()
    try:
        return save_stream(lun, OFFSET, size, r, "CSV1:vm/saved-state")
    finally:
        os.close(r)
        t.join()


def _restore(lun: FileBlock) -> tuple[bytes, BaseException | None]:
    """What a QEMU reading the pipe gets, and the restore's error (if any)."""
    r, w = os.pipe()
    got = bytearray()

    def read() -> None:
        while chunk := os.read(r, 65536):
            got.extend(chunk)

    t = threading.Thread(target=read)
    t.start()
    err: BaseException | None = None
    try:
        restore_stream(lun, OFFSET, SIZE, w, "CSV1:vm/saved-state")
    except SaveError as exc:
        err = exc
    finally:
        os.close(w)
        t.join()
        os.close(r)
    return bytes(got), err


@settings(max_examples=20, deadline=None)
@given(st.binary(min_size=0, max_size=3 * MIB // 2))
def test_a_sealed_state_comes_back_byte_for_byte(tmp_path_factory: pytest.TempPathFactory,
                                                  data: bytes) -> None:
    lun = _lun(tmp_path_factory.mktemp("s"))
    length, crc = _save(lun, data)
    assert length == len(data)
    seal(lun, OFFSET, length, crc)
    got, err = _restore(lun)
    assert err is None and got == data


def test_an_unsealed_state_is_never_restored(tmp_path: Path) -> None:
    lun = _lun(tmp_path)
    first = os.urandom(MIB)
    seal(lun, OFFSET, *_save(lun, first))
    _save(lun, os.urandom(MIB))  # a second save that QEMU did not complete
    got, err = _restore(lun)
    assert got == b"" and isinstance(err, SaveError) and "no complete saved state" in str(err)


def test_a_state_changed_on_the_volume_is_not_fed_whole(tmp_path: Path) -> None:
    lun = _lun(tmp_path)
    data = os.urandom(3 * MIB)
    seal(lun, OFFSET, *_save(lun, data))
    lun.write(OFFSET + HEADER_SIZE + 5, b"\xff\xfe")  # one flipped byte in the stream
    got, err = _restore(lun)
    assert isinstance(err, SaveError) and "checksum" in str(err)
    assert len(got) < len(data)  # the last chunk was held back: QEMU sees it cut short


def test_a_state_bigger_than_its_region_is_refused(tmp_path: Path) -> None:
    lun = _lun(tmp_path)
    with pytest.raises(SaveError, match="outgrew CSV1:vm/saved-state"):
        _save(lun, os.urandom(2 * MIB), size=MIB + HEADER_SIZE)


def test_the_region_name_cannot_be_a_vms_name() -> None:
    assert "/" in region_name("web")
