"""The UDP heartbeat sender/receiver of one node.

One thread owns one UDP socket per cluster network (bound to this node's
address there). Every ``delay`` it sends a datagram from each socket to every
peer on that network; whatever arrives marks ``(sender, network)`` as heard.
Route states come from :class:`~vmcluster.heartbeat.detector.RouteTracker`,
evaluated every ``delay / 5``; each change goes to ``on_change`` (called on
the daemon's thread) and to the ``changes`` queue.

A datagram is sealed with the cluster's heartbeat key
(:mod:`vmcluster.heartbeat.auth`: an HMAC over cluster, sender, network, the
sender's epoch and sequence, and the peers it hears there, which make routes
two-way); forged ones (``forged``) and replayed ones
(``replayed``) are dropped and counted, and so are datagrams of another
cluster, from an unknown peer, or naming another network than the socket they
arrived on (``dropped`` counts every drop). Send errors (an interface that is
down: ENETUNREACH) are ignored: the peer will miss us, which is the point.

``python -m vmcluster.heartbeat.daemon`` runs one daemon and prints each
route change as one JSON line (with ``mono``, CLOCK_MONOTONIC seconds, which
is comparable between processes on one machine).
"""

from __future__ import annotations

import argparse
import json
import queue
import selectors
import signal
import socket
import sys
import threading
from collections.abc import Callable, Sequence
from ipaddress import IPv4Address
from pathlib import Path
from types import FrameType

from vmcluster.heartbeat.auth import HeartbeatAuth, load_key
from vmcluster.heartbeat.detector import (
    Binding,
    HeartbeatParams,
    RouteChange,
    RouteTracker,
    Target,
    heartbeat_plan,
    peers_down,
)
from vmcluster.model.spec import load_spec
from vmcluster.substrate.clock import MonotonicClock
from vmcluster.substrate.protocol import Clock

__all__ = ["HeartbeatDaemon", "main"]

_MAX_DATAGRAM = 65507  # a heartbeat lists the peers its sender hears


class HeartbeatDaemon:
    """Heartbeats of ``node`` to ``targets`` over ``bindings``; start() / stop()."""

    def __init__(
        self,
        cluster: str,
        node: str,
        bindings: Sequence[Binding],
        targets: Sequence[Target],
        params: HeartbeatParams,
        clock: Clock | None = None,
        on_change: Callable[[RouteChange], None] | None = None,
        *,
        key: bytes,
    ) -> None:
        self.cluster, self.node, self.params = cluster, node, params
        self.auth = HeartbeatAuth(key)
        self.forged = self.replayed = 0
        self.bindings, self.targets = tuple(bindings), tuple(targets)
        self.clock = clock or MonotonicClock()
        self.on_change = on_change
        self.changes: queue.Queue[RouteChange] = queue.Queue()
        self.sent = self.received = self.dropped = 0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._socks: dict[str, socket.socket] = {}
        self._thread: threading.Thread | None = None
        self.last_round = -1e9  # clock time of the last send round
        self._tracker = self._new_tracker(0.0)

    def _new_tracker(self, started: float) -> RouteTracker:
        return RouteTracker([(t.peer, t.network) for t in self.targets], self.params, started,
                            me=self.node)

    def start(self) -> HeartbeatDaemon:
        try:
            for b in self.bindings:
                s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
                self._socks[b.network] = s
                s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                s.bind((str(b.address), b.port))
                s.setblocking(False)
        except OSError:
            self._close_sockets()
            raise
        self._tracker = self._new_tracker(self.clock.now())
        self._thread = threading.Thread(target=self._run, name=f"heartbeat {self.node}")
        self._thread.daemon = True
        self._thread.start()
        return self

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
        self._close_sockets()

    def __enter__(self) -> HeartbeatDaemon:
        return self

    def __exit__(self, *_: object) -> None:
        self.stop()

    def _close_sockets(self) -> None:
        for s in self._socks.values():
            s.close()
        self._socks.clear()

    def states(self) -> dict[tuple[str, str], bool]:
        with self._lock:
            return self._tracker.states()

    def sending(self) -> bool:
        """Does its thread run and send its rounds on time (within two delays)?"""
        alive = self._thread is not None and self._thread.is_alive()
        return alive and self.clock.now() - self.last_round < 2 * self.params.delay_s

    def down_peers(self) -> frozenset[str]:
        return peers_down(self.states())

    def _send_all(self, seq: int, now: float) -> None:
        with self._lock:
            heard = self._tracker.heard(now)
        for t in self.targets:
            sock = self._socks.get(t.network)
            if sock is None:
                continue
            msg = self.auth.seal(self.cluster, self.node, t.network, seq,
                                 heard.get(t.network, []))
            try:
                sock.sendto(msg, (str(t.address), t.port))
                self.sent += 1
            except OSError:
                pass  # interface down / unreachable: the peer will miss this one

    def _receive(self, network: str, sock: socket.socket, now: float) -> None:
        for _ in range(256):  # bounded drain per wake-up
            try:
                data, _addr = sock.recvfrom(_MAX_DATAGRAM)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                return
            with self._lock:
                got = self.auth.check(data, self.cluster, network)
                if got.verdict == "ok" and self._tracker.receive(
                        (got.sender, network), now, got.hears, got.epoch):
                    self.received += 1
                    continue
                self.dropped += 1
                if got.verdict == "forged":
                    self.forged += 1
                elif got.verdict == "replayed":
                    self.replayed += 1

    def _run(self) -> None:
        sel = selectors.DefaultSelector()
        for net, s in self._socks.items():
            sel.register(s, selectors.EVENT_READ, net)
        tick = self.params.delay_s / 5
        seq = 0
        next_send = self.clock.now()
        try:
            while not self._stop.is_set():
                now = self.clock.now()
                if now >= next_send:
                    seq += 1
                    self._send_all(seq, now)
                    self.last_round = now
                    next_send += self.params.delay_s
                    if next_send < now:  # we were starved; do not burst to catch up
                        next_send = now + self.params.delay_s
                for key, _ in sel.select(max(0.0, min(tick, next_send - now))):
                    assert isinstance(key.data, str) and isinstance(key.fileobj, socket.socket)
                    self._receive(key.data, key.fileobj, self.clock.now())
                with self._lock:
                    changes = self._tracker.evaluate(self.clock.now())
                for ch in changes:
                    self.changes.put(ch)
                    if self.on_change is not None:
                        self.on_change(ch)
        finally:
            sel.close()


def _addr(text: str) -> tuple[IPv4Address, int]:
    host, _, port = text.rpartition(":")
    return IPv4Address(host), int(port)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m vmcluster.heartbeat.daemon")
    ap.add_argument("--cluster", required=True)
    ap.add_argument("--node", required=True)
    ap.add_argument("--spec", help="take bindings and targets from this spec file")
    ap.add_argument("--port", type=int, default=3343, help="with --spec: the heartbeat port")
    ap.add_argument("--bind", action="append", default=[], metavar="NET=ADDR:PORT")
    ap.add_argument("--peer", action="append", default=[], metavar="PEER@NET=ADDR:PORT")
    ap.add_argument("--delay-ms", type=int, default=250)
    ap.add_argument("--threshold", type=int, default=8)
    ap.add_argument("--duration", type=float, default=3600.0, help="stop after (seconds)")
    ap.add_argument("--key-file", required=True, help="the cluster's heartbeat key (hex)")
    args = ap.parse_args(argv)
    key = load_key(Path(args.key_file))
    params = HeartbeatParams(args.delay_ms / 1000.0, args.threshold)
    if args.spec:
        spec = load_spec(args.spec)
        binds, targets = heartbeat_plan(spec, args.node, args.port)
        params = HeartbeatParams.from_settings(spec.cluster)
    else:
        binds = tuple(Binding(n, *_addr(a)) for n, _, a in (b.partition("=") for b in args.bind))
        targets = tuple(
            Target(p.partition("@")[0], p.partition("@")[2], *_addr(a))
            for p, _, a in (t.partition("=") for t in args.peer)
        )
    clock = MonotonicClock(absolute=True)
    done = threading.Event()

    def report(ch: RouteChange) -> None:
        print(
            json.dumps(
                {"event": "route", "node": args.node, "peer": ch.peer, "network": ch.network,
                 "up": ch.up, "mono": ch.at}
            ),
            flush=True,
        )  # fmt: skip

    def on_signal(_sig: int, _frame: FrameType | None) -> None:
        done.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    with HeartbeatDaemon(args.cluster, args.node, binds, targets, params, clock, report,
                         key=key).start():
        print(json.dumps({"event": "started", "node": args.node, "mono": clock.now()}), flush=True)
        done.wait(args.duration)
    print(json.dumps({"event": "stopped", "node": args.node}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
