"""Migration slots in the store: at most ``limit`` migrations in or out of a host at once.

A slot is a key ``slots/<node>/<i>`` (``i < limit``) created only if absent, on a
lease that its holder keeps alive while it migrates. The holder releases it by
revoking the lease; a holder that dies stops renewing, and its slot frees itself
``SLOT_TTL_S`` later. Every driver (the elected manager, an operator's migration)
counts against the same slots, on whichever host it runs.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable
from typing import Any

from vmcluster.errors import VmclusterError
from vmcluster.store.etcd import Compare, Put
from vmcluster.store.state import ClusterState

__all__ = ["SLOT_TTL_S", "HeldSlot", "take_slot"]

SLOT_TTL_S = 10  # a dead holder's slot is free this long after its last renewal
_RENEW_S = 2.0


def _direct(fn: Callable[..., Any], *args: Any) -> Any:
    return fn(*args)


class HeldSlot:
    """One slot, held until :meth:`release`; ``run`` runs store calls (directly, or in a
    namespace's thread), ``done`` runs once after the release (closes that thread)."""

    def __init__(self, state: ClusterState, key: str, lease: int,
                 run: Callable[..., Any] = _direct, done: Callable[[], None] | None = None
                 ) -> None:
        self.state, self.key, self.lease, self.run, self._done = state, key, lease, run, done
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._keep, daemon=True, name=f"slot {key}")
        self._thread.start()

    def _keep(self) -> None:
        while not self._stop.wait(_RENEW_S):
            with contextlib.suppress(VmclusterError, OSError, TimeoutError, RuntimeError):
                self.run(self.state.client.lease_keepalive, self.lease)

    def release(self) -> None:
        if self._stop.is_set():
            return
        self._stop.set()
        self._thread.join(timeout=_RENEW_S + 5)
        with contextlib.suppress(VmclusterError, OSError, TimeoutError, RuntimeError):
            self.run(self.state.client.lease_revoke, self.lease)  # else it expires
        if self._done is not None:
            self._done()

    # the file slots' interface (an open file whose close releases it)
    def close(self) -> None:
        self.release()


def _take(state: ClusterState, node: str, limit: int) -> tuple[str, int] | None:
    lease = int(state.client.lease_grant(SLOT_TTL_S))
    for i in range(limit):
        key = state.key("slots", node, str(i))
        if state.client.txn([Compare.absent(key)], [Put(key, b"{}", lease)]).succeeded:
            return key, lease
    state.client.lease_revoke(lease)
    return None


def take_slot(state: ClusterState, node: str, limit: int, run: Callable[..., Any] = _direct,
              done: Callable[[], None] | None = None) -> HeldSlot | None:
    """One of ``node``'s ``limit`` slots, or None when all are held (``done`` runs then
    too, or after the slot's release)."""
    try:
        got = run(_take, state, node, limit)
    except BaseException:
        if done is not None:
            done()
        raise
    if got is None:
        if done is not None:
            done()
        return None
    return HeldSlot(state, got[0], got[1], run, done)
