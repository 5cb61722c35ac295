"""Store errors, all :class:`~vmcluster.errors.StoreError`::

StoreError
├── StoreUnavailable    no endpoint answered (every one timed out or refused)
├── StoreConflict       a compare-and-set lost: someone changed the key first
└── Fenced              the caller's fencing token is not the current leader's
"""

from __future__ import annotations

from vmcluster.errors import StoreError

__all__ = ["Fenced", "StoreConflict", "StoreUnavailable"]


class StoreUnavailable(StoreError):
    """No etcd endpoint answered within its timeout."""


class StoreConflict(StoreError):
    """A compare-and-set failed: the key changed since it was read."""


class Fenced(StoreError):
    """An action carried a fencing token that is not the current leader's."""
