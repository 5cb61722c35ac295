"""How well a guest's re-sent pages compress as QEMU's XBZRLE deltas, from samples.

XBZRLE (QEMU's ``migration/xbzrle.c``) sends a page it has sent before as the runs
in which it differs from the cached copy: for every run of changed bytes, the
length of the unchanged run before it and its own length (ULEB128, one or two
bytes each) and the changed bytes; an unchanged tail costs nothing, an unchanged
page nothing at all, and a page whose encoding would not fit in a page is sent
whole. Each encoded page carries QEMU's page header (8 bytes), an encoding flag
and its length (3 bytes).

:func:`delta_ratio` is what the migration model's ``delta_ratio`` means: of the
pages sampled twice that changed, the bytes on the wire per byte of page. Pure:
no I/O, no clock (numpy for the byte runs).
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

__all__ = ["HEADER", "MIN_CHANGED", "PAGE", "delta_ratio", "encoded_len"]

PAGE = 4096
HEADER = 8 + 1 + 2  # page header, ENCODING_FLAG_XBZRLE, the encoded length
WHOLE = 8 + PAGE  # a page sent as it is
MIN_CHANGED = 16  # fewer changed pages than this in a sample say nothing


def _uleb(n: np.ndarray) -> np.ndarray:
    """Bytes of QEMU's small ULEB128 (runs within a page: one byte below 128, else two)."""
    return np.where(n < 0x80, 1, 2)


def encoded_len(old: bytes, new: bytes) -> int | None:
    """The XBZRLE encoding's length of ``new`` against ``old`` (one page each): 0 for an
    unchanged page, None where it would not fit in a page (QEMU sends it whole)."""
    if len(old) != len(new):
        raise ValueError(f"pages of {len(old)} and {len(new)} bytes")
    diff = np.frombuffer(old, np.uint8) != np.frombuffer(new, np.uint8)
    if not diff.any():
        return 0
    # run boundaries: where "changed" flips
    edges = np.flatnonzero(np.diff(np.concatenate(([False], diff, [False])).astype(np.int8)))
    starts, ends = edges[0::2], edges[1::2]  # changed runs [start, end)
    zeros = starts - np.concatenate(([0], ends[:-1]))  # the unchanged run before each
    n = int((_uleb(zeros) + _uleb(ends - starts) + (ends - starts)).sum())
    return None if n > len(new) else n


def delta_ratio(pairs: Iterable[tuple[bytes, bytes]]) -> tuple[float | None, int]:
    """(wire bytes per page byte over the pages that changed, how many changed) for
    pages read twice, each pair (before, after); None when fewer than
    :data:`MIN_CHANGED` changed."""
    wire = changed = 0
    for old, new in pairs:
        n = encoded_len(old, new)
        if n == 0:
            continue
        changed += 1
        wire += WHOLE if n is None else HEADER + n
    if changed < MIN_CHANGED:
        return None, changed
    return min(1.0, wire / (changed * PAGE)), changed
