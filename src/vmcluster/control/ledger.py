"""A migration's record in the store, and who may end it.

The protocol that keeps a VM from ever running twice (see
:class:`~vmcluster.substrate.protocol.Switchover`):

1. The driver (the CLI, or the manager for its own plans) records the migration
   in etcd (``migrations/<vm>``) by compare-and-set against the VM's placement,
   with its own key (``migration-drivers/<vm>``) on a short lease that a thread of
   the driver keeps alive while it drives (so a long call, such as a quick
   migration's save, does not make it look dead; a killed or stopped driver
   process stops renewing).
2. The target QEMU is started paused (``-S``). Once QEMU has copied the state,
   ownership moves to the target by one compare-and-set on the record and the
   placement (:meth:`StoreLedger.commit`), guarded by the manager's fencing token
   when the manager drives. Only then is the target told to run.
3. To give up instead, the driver deletes the record by compare-and-set
   (:meth:`StoreLedger.abort`) before the source may run again.
4. A driver that dies (a killed CLI) stops renewing its lease. Its record becomes
   an orphan, and the elected manager settles it from the record and from QEMU's
   own state on both ends (:meth:`vmcluster.control.manager.Manager.tick`). Whoever
   wins the compare-and-set decides; the loser leaves both copies alone.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from vmcluster.errors import MigrationError, VmclusterError
from vmcluster.store.errors import StoreConflict
from vmcluster.store.state import ClusterState, Migration
from vmcluster.substrate.protocol import MigrationHandle

__all__ = ["DRIVER_TTL_S", "StoreLedger", "driving"]

DRIVER_TTL_S = 5  # a killed driver's migration is an orphan this long after its last renewal
_RENEW_S = 1.0

_driving: set[str] = set()  # attempts this process drives now: never orphans to it
_driving_lock = threading.Lock()


def driving() -> frozenset[str]:
    """The ids of the migrations this process is driving right now. The manager leaves
    these alone even when their lease lapsed (its own driver thread was starved)."""
    with _driving_lock:
        return frozenset(_driving)


def _direct(fn: Callable[..., Any], *args: Any) -> Any:
    return fn(*args)


@dataclass
class StoreLedger:
    """Records one migration at a time for a driver. ``run(fn, *args)`` runs a store call
    (directly, or in a thread inside another network namespace, as the lab's admin side
    does); ``token``: the manager's fencing token, None for an operator's CLI."""

    state: ClusterState
    token: int | None = None
    run: Callable[..., Any] = _direct
    _mig: Migration | None = field(default=None, repr=False)
    _lease: int = field(default=0, repr=False)
    _renewed: float = field(default=0.0, repr=False)
    _keeping: threading.Event | None = field(default=None, repr=False)

    def begin(self, handle: MigrationHandle) -> None:
        placement = self.run(self.state.placement, handle.vm)
        if placement.node != handle.source:
            raise MigrationError(f"the store places {handle.vm} on {placement.node}, not on "
                                 f"{handle.source} where it runs; try again in a few seconds")
        self._lease = int(self.run(self.state.client.lease_grant, DRIVER_TTL_S))
        with _driving_lock:  # before the record exists: this process never orphans it
            _driving.add(handle.id)
        try:
            self._mig = self.run(_begin, self.state, handle, placement, self.token, self._lease)
        except BaseException as exc:
            with _driving_lock:
                _driving.discard(handle.id)
            self._drop_lease()
            if isinstance(exc, StoreConflict):
                raise MigrationError(f"{handle.vm} is already migrating, or its placement "
                                     f"changed: {exc}") from exc
            raise
        self._renewed = time.monotonic()
        stop = self._keeping = threading.Event()
        threading.Thread(target=self._keep, args=(self._mig, stop), daemon=True,
                         name=f"lease {handle.vm}").start()

    def _keep(self, mig: Migration, stop: threading.Event) -> None:
        """Renew the driver's lease every second until ``stop`` (the driver's own thread).
        etcd answers the keepalive of an expired lease with TTL 0: the driver (starved for
        a few seconds) then claims its record again on a new lease, if it is still the one
        it wrote; otherwise someone settled it and the driver's commit or abort will say so."""
        while not stop.wait(_RENEW_S):
            try:
                alive = self.run(self.state.client.lease_keepalive, self._lease) > 0
                if not alive and not stop.is_set():
                    lease = int(self.run(self.state.client.lease_grant, DRIVER_TTL_S))
                    if not self.run(self.state.reclaim_migration, mig, lease):
                        self.run(self.state.client.lease_revoke, lease)
                        return
                    self._lease = lease
            except (VmclusterError, OSError, TimeoutError):
                continue  # the store away for a moment: the next second tries again
            except RuntimeError:
                return  # the namespace thread it ran in is gone: so is its driver

    def renew(self) -> None:
        """Keep the driver's lease (call it while polling; it renews at most once a s)."""
        if self._lease and time.monotonic() - self._renewed >= _RENEW_S:
            self.run(self.state.client.lease_keepalive, self._lease)
            self._renewed = time.monotonic()

    def commit(self) -> None:
        """Ownership to the target, the record gone, in one compare-and-set."""
        assert self._mig is not None
        self.run(_finish, self.state, self._mig, self.token)
        self._drop_lease()

    def abort(self) -> None:
        """The record gone by compare-and-set: the source may run again."""
        assert self._mig is not None
        self.run(self.state.abort_migration, self._mig, self.token)
        self._drop_lease()

    def stop_keeping(self) -> None:
        """Stop renewing (the driver is done with this attempt, however it ended): a
        record still there is an orphan once the lease runs out, for the manager."""
        if self._keeping is not None:
            self._keeping.set()
            self._keeping = None
        if self._mig is not None:
            with _driving_lock:
                _driving.discard(self._mig.id)

    def _drop_lease(self) -> None:
        self.stop_keeping()
        if self._lease:
            with contextlib.suppress(VmclusterError, OSError, TimeoutError):
                self.run(self.state.client.lease_revoke, self._lease)  # else it expires
            self._lease = 0


def _begin(state: ClusterState, handle: MigrationHandle, placement: Any, token: int | None,
           lease: int) -> Migration:
    return state.begin_migration(handle.vm, handle.target, handle.network, expect=placement,
                                 token=token, attempt=handle.id, driver_lease=lease)


def _finish(state: ClusterState, mig: Migration, token: int | None) -> None:
    state.finish_migration(mig, success=True, token=token)
