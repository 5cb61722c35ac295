"""Real UDP heartbeats between daemons on loopback addresses (127.60.<net>.<node>)."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from ipaddress import IPv4Address
from pathlib import Path

import pytest

from vmcluster.errors import InputError
from vmcluster.heartbeat.auth import HeartbeatAuth, load_key, new_key_file
from vmcluster.heartbeat.daemon import HeartbeatDaemon
from vmcluster.heartbeat.detector import (
    Binding,
    HeartbeatParams,
    Target,
    health_from_views,
    network_states,
)
from vmcluster.model.spec import load_spec
from vmcluster.policy.networks import cluster_network
from vmcluster.substrate.clock import MonotonicClock

NODES = ("n1", "n2", "n3")
NETS = ("A", "B")
SPEC = load_spec(Path(__file__).with_name("three_nodes.toml"))
P = HeartbeatParams(0.1, 8)  # 0.8 s window keeps the test short; defaults are in bench/
KEY = bytes(range(32))


def addr(node: str, net: str) -> IPv4Address:
    return IPv4Address(f"127.60.{NETS.index(net) + 1}.{NODES.index(node) + 1}")


def free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind((str(addr("n1", "A")), 0))
        return int(s.getsockname()[1])


def daemon(node: str, port: int, nets: tuple[str, ...] = NETS) -> HeartbeatDaemon:
    binds = [Binding(n, addr(node, n), port) for n in nets]
    targets = [Target(p, n, addr(p, n), port) for p in NODES if p != node for n in NETS]
    return HeartbeatDaemon("t", node, binds, targets, P, key=KEY)


@contextmanager
def running(daemons: list[HeartbeatDaemon]) -> Iterator[list[HeartbeatDaemon]]:
    with ExitStack() as stack:
        for d in daemons:
            stack.enter_context(d.start())
        yield daemons


def wait_until(pred: object, timeout: float) -> bool:
    assert callable(pred)
    clock = MonotonicClock()
    end = clock.now() + timeout
    while clock.now() < end:
        if pred():
            return True
        clock.sleep(0.02)
    return bool(pred())


def test_all_routes_up_then_a_stopped_peer_goes_down_on_every_network() -> None:
    port = free_udp_port()
    d1, d2, d3 = daemon("n1", port), daemon("n2", port), daemon("n3", port)
    with running([d1, d2]):
        d3.start()
        try:
            assert wait_until(lambda: d1.received > 20 and d2.received > 20, 10)
            assert wait_until(lambda: all(d1.states().values()), 10)
            assert d1.dropped == 0
        finally:
            d3.stop()  # n3 dies
        assert wait_until(lambda: d1.down_peers() == {"n3"} == d2.down_peers(), 10)
        downs = []
        while not d1.changes.empty():
            downs.append(d1.changes.get())
        assert {(c.peer, c.network) for c in downs if not c.up} == {("n3", "A"), ("n3", "B")}
        assert all(up for (peer, _), up in d1.states().items() if peer == "n2")


def test_one_missing_interface_is_a_partition_not_a_node_failure() -> None:
    """n3 has no socket on A (its interface there is down): A is partitioned, n3 is not down,
    and the n1-n3 pair's cluster traffic moves to B while n1-n2 stays on A (lowest metric)."""
    port = free_udp_port()
    ds = [daemon("n1", port), daemon("n2", port), daemon("n3", port, nets=("B",))]
    with running(ds):

        def settled() -> bool:
            views = {d.node: d.states() for d in ds}
            return health_from_views(SPEC, views).down == {("A", "n3")}

        assert wait_until(settled, 10)
        assert all(d.down_peers() == frozenset() for d in ds)
        health = health_from_views(SPEC, {d.node: d.states() for d in ds})
        assert network_states(SPEC, health) == {"A": "partitioned", "B": "up"}
        assert cluster_network(SPEC, health, "n1", "n3") == "B"
        assert cluster_network(SPEC, health, "n1", "n2") == "A"


def test_a_node_that_can_hear_but_not_send_finds_itself_cut_off() -> None:
    """n1's heartbeats go to a port nobody listens on (its sending path is cut), while it
    still hears n2 and n3: they declare it down, and it finds every route down too (it
    fences itself) instead of thinking itself fine. Mended, every route comes back."""
    port = free_udp_port()
    dead_end = free_udp_port()
    while dead_end == port:
        dead_end = free_udp_port()
    binds = [Binding(n, addr("n1", n), port) for n in NETS]
    cut = [Target(p, n, addr(p, n), dead_end) for p in ("n2", "n3") for n in NETS]
    d1 = HeartbeatDaemon("t", "n1", binds, cut, P, key=KEY)
    d2, d3 = daemon("n2", port), daemon("n3", port)
    with running([d1, d2, d3]):
        assert wait_until(lambda: d2.down_peers() == {"n1"} == d3.down_peers(), 10)
        assert wait_until(lambda: d1.down_peers() == {"n2", "n3"}, 10)
        assert d1.received > 0 and d1.dropped == 0  # it does hear them
        assert all(d2.states()[("n3", n)] for n in NETS)
    mended = [daemon("n1", port), daemon("n2", port), daemon("n3", port)]
    with running(mended):
        assert wait_until(lambda: all(all(d.states().values()) for d in mended)
                          and all(d.received > 10 for d in mended), 10)


def test_forged_and_replayed_heartbeats_are_dropped_and_cannot_keep_a_dead_peer_alive() -> None:
    port = free_udp_port()
    d1, d2 = daemon("n1", port), daemon("n2", port)
    with running([d1]):
        # What n2 would send, captured on the wire: sealed with the cluster key.
        auth = HeartbeatAuth(KEY)
        captured = [auth.seal("t", "n2", "A", seq) for seq in range(1, 6)]
        foreign = HeartbeatAuth(bytes(32)).seal("t", "n2", "A", 1)  # another cluster's key
        tampered = captured[0].replace(b'"n":"n2"', b'"n":"n3"')
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.bind((str(addr("n2", "A")), 0))
            for msg in captured:  # genuine: accepted once, in order
                s.sendto(msg, (str(addr("n1", "A")), port))
            assert wait_until(lambda: d1.received == 5, 5)
            clock = MonotonicClock()
            end = clock.now() + 2.0  # n2 is dead; an attacker replays what it sent
            while clock.now() < end:
                for msg in (*captured, foreign, tampered, b"not json"):
                    s.sendto(msg, (str(addr("n1", "A")), port))
                clock.sleep(P.delay_s / 2)
        assert d1.received == 5
        assert d1.replayed > 0 and d1.forged > 0
        assert d1.dropped >= d1.replayed + d1.forged
        assert wait_until(lambda: "n2" in d1.down_peers(), 5)
    # A restarted sender starts a new epoch: its heartbeats are fresh again.
    with running([d1.__class__("t", "n1", d1.bindings, d1.targets, P, key=KEY), d2]) as (e1, _):
        assert wait_until(lambda: e1.received > 5 and e1.replayed == 0, 5)


def test_the_key_file_is_checked() -> None:
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "hb.key"
        new_key_file(path)
        assert len(load_key(path)) == 32 and (path.stat().st_mode & 0o777) == 0o600
        path.write_text("zz\n")
        with pytest.raises(InputError, match="not hex"):
            load_key(path)
        with pytest.raises(InputError, match="No such file"):
            load_key(Path(tmp) / "missing.key")
