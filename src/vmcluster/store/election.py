"""Leader election through an etcd lease, and fencing tokens.

A candidate writes ``/vmcluster/<cluster>/leader`` = its name, attached to its
lease, in one transaction that succeeds only if the key is absent. The key's
create revision is the leader's **fencing token**: etcd revisions only grow,
so every later leader has a higher token. The key lives as long as the lease:
a leader that stops renewing (crashed, paused, cut off) loses it after the
TTL, and the next candidate's create gets a new, higher revision.

Every action a manager sends carries its token. An agent calls
``Fence.check(token)`` before acting; it raises :class:`Fenced` unless the
leader key exists now with exactly that create revision, so a manager that
was paused past its lease is refused when it wakes. Writes to the store add
``Fence.guard(token)`` to their transaction so the check and the write are one
atomic step.

Run as ``python -m vmcluster.store.election --endpoints URL,... --cluster C
--name N`` to campaign from a separate process (used by the tests that kill
or SIGSTOP a manager); it prints one JSON object per line.
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
from dataclasses import dataclass

from vmcluster.errors import StoreError
from vmcluster.store.errors import Fenced
from vmcluster.store.etcd import Compare, Delete, EtcdClient, Get, Put
from vmcluster.store.kv import KV
from vmcluster.substrate.clock import MonotonicClock
from vmcluster.substrate.protocol import Clock

__all__ = ["Election", "Fence", "Keeper", "Leadership", "current_leader", "leader_key"]


def leader_key(cluster: str) -> str:
    return f"/vmcluster/{cluster}/leader"


@dataclass(frozen=True)
class Leadership:
    """Who leads ``cluster``, on which lease, with which fencing token."""

    cluster: str
    name: str
    lease: int
    token: int


def current_leader(client: KV, cluster: str) -> Leadership | None:
    kv = client.get(leader_key(cluster))
    if kv is None:
        return None
    return Leadership(cluster, kv.value.decode(), kv.lease, kv.create_revision)


class Fence:
    """What an agent (or a store write) uses to refuse a manager that no longer leads."""

    def __init__(self, client: KV, cluster: str) -> None:
        self.client, self.cluster = client, cluster

    def check(self, token: int) -> Leadership:
        """The current leadership if ``token`` is its token; else raise :class:`Fenced`."""
        now = current_leader(self.client, self.cluster)
        if now is None or now.token != token:
            held = "no leader" if now is None else f"{now.name} leads with token {now.token}"
            raise Fenced(
                f"fenced: token {token} is not the leader's of cluster {self.cluster} ({held}); "
                "the manager must campaign again"
            )
        return now

    def guard(self, token: int) -> Compare:
        """A transaction guard that holds only while ``token`` is the leader's."""
        return Compare.created(leader_key(self.cluster), token)


class Election:
    """One candidate's view of the election; not thread-safe (one keeper thread at most)."""

    def __init__(
        self,
        client: KV,
        cluster: str,
        name: str,
        ttl: int = 5,
        clock: Clock | None = None,
    ) -> None:
        self.client, self.cluster, self.name, self.ttl = client, cluster, name, ttl
        self.clock = clock or MonotonicClock()
        self.key = leader_key(cluster)
        self.lease = 0
        self.leadership: Leadership | None = None

    def try_acquire(self) -> Leadership | None:
        """Become leader if nobody is; the Leadership won, or None."""
        if not self.lease or self.client.lease_keepalive(self.lease) == 0:
            self.lease = self.client.lease_grant(self.ttl)
        got = self.client.txn(
            [Compare.absent(self.key)],
            [Put(self.key, self.name.encode(), self.lease), Get(self.key)],
            [Get(self.key)],
        )
        kvs = got.responses[-1] if got.responses else ()
        kv = kvs[0] if isinstance(kvs, tuple) and kvs else None
        # A retried txn whose first attempt was applied finds our own lease on the key.
        if kv is not None and kv.lease == self.lease:
            self.leadership = Leadership(self.cluster, self.name, self.lease, kv.create_revision)
            return self.leadership
        return None

    def campaign(self, timeout: float, poll_s: float = 0.25) -> Leadership:
        """Wait until this candidate leads (StoreError after ``timeout`` seconds)."""
        deadline = self.clock.now() + timeout
        while True:
            try:
                won = self.try_acquire()
            except StoreError:
                won = None  # the store may be electing its own leader; try again
            if won is not None:
                return won
            if self.clock.now() >= deadline:
                holder = current_leader(self.client, self.cluster)
                raise StoreError(
                    f"{self.name} did not become leader of {self.cluster} in {timeout:.0f} s"
                    + (f" ({holder.name} leads)" if holder else "")
                )
            self.clock.sleep(poll_s)

    def keepalive(self) -> Leadership:
        """Renew the lease; :class:`Fenced` if leadership is lost (lease gone, key not ours)."""
        held = self.leadership
        if held is None:
            raise Fenced(f"{self.name} is not leader of {self.cluster}")
        if self.client.lease_keepalive(held.lease) == 0:
            self.leadership = None
            raise Fenced(f"{self.name} lost leadership of {self.cluster}: its lease expired")
        Fence(self.client, self.cluster).check(held.token)
        return held

    def resign(self) -> None:
        """Give up leadership (delete the key if still ours) and the lease."""
        held, self.leadership = self.leadership, None
        if held is not None:
            self.client.txn(
                [Compare.created(self.key, held.token)],
                [Delete(self.key)],
            )
        if self.lease:
            self.client.lease_revoke(self.lease)
            self.lease = 0


class Keeper:
    """Renews a leadership every ``ttl/3`` s on a thread; ``lost`` is set when it is gone."""

    def __init__(self, election: Election) -> None:
        self.election = election
        self.lost = threading.Event()
        self.error: StoreError | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="lease keeper", daemon=True)

    def start(self) -> Keeper:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

    def _run(self) -> None:
        interval = max(0.1, self.election.ttl / 3)
        while not self._stop.wait(interval):
            try:
                self.election.keepalive()
            except Fenced as exc:
                self.error = exc
                self.lost.set()
                return
            except StoreError as exc:
                self.error = exc  # transient: the lease may outlive a short outage


def _emit(**fields: object) -> None:
    print(json.dumps(fields), flush=True)


def main(argv: list[str] | None = None) -> int:
    """Campaign, then every ``ttl/3`` s act (a fenced write) and renew, until lost or done."""
    ap = argparse.ArgumentParser(prog="python -m vmcluster.store.election")
    ap.add_argument("--endpoints", required=True, help="comma-separated etcd client URLs")
    ap.add_argument("--cluster", required=True)
    ap.add_argument("--name", required=True)
    ap.add_argument("--ttl", type=int, default=5)
    ap.add_argument("--timeout", type=float, default=60.0, help="give up campaigning after")
    ap.add_argument("--lifetime", type=float, default=120.0, help="exit after leading this long")
    args = ap.parse_args(argv)
    clock = MonotonicClock()
    client = EtcdClient(args.endpoints.split(","), timeout=1.0, retry_s=max(1.0, args.ttl / 2))
    election = Election(client, args.cluster, args.name, args.ttl, clock)
    try:
        held = election.campaign(args.timeout)
    except StoreError as exc:
        _emit(event="error", name=args.name, error=str(exc))
        return 1
    _emit(event="leader", name=args.name, token=held.token, at=clock.now())
    fence = Fence(client, args.cluster)
    end = clock.now() + args.lifetime
    while clock.now() < end:
        clock.sleep(max(0.1, args.ttl / 3))
        act = client.txn(
            [fence.guard(held.token)],
            [Put(f"/vmcluster/{args.cluster}/acted/{args.name}", str(held.token).encode())],
        )
        if not act.succeeded:
            _emit(event="fenced", name=args.name, token=held.token, at=clock.now())
        try:
            election.keepalive()
        except Fenced as exc:
            _emit(event="lost", name=args.name, token=held.token, error=str(exc))
            return 3
        except StoreError as exc:
            _emit(event="store-error", name=args.name, error=str(exc))
    election.resign()
    _emit(event="resigned", name=args.name)
    return 0


if __name__ == "__main__":
    sys.exit(main())
