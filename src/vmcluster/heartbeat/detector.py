"""Which heartbeat routes are up, which peers are down, and what that says about networks.

Pure: times are passed in (seconds on any monotonic clock), nothing is read
from a clock or a socket here.

* A **route** is ``(peer, network)``: this node and ``peer`` hear each other on
  ``network``. Heartbeats come every ``delay``; a route is down once ``threshold``
  heartbeats in a row were missed, i.e. when nothing was heard for more than
  ``delay * threshold`` (2 s with the defaults 250 ms x 8). One heartbeat
  brings it back up. Before the first heartbeat a route counts as heard at
  the start, so a peer that never answers goes down one window after start.
* Routes are **two-way**: each heartbeat lists the peers its sender has heard
  within the window on that network (:meth:`RouteTracker.heard`). A route is
  also down when the peer's latest heartbeat leaves this node out, once that peer
  has listed it since the peer (re)started, and when the peer has not listed it for a
  window. So a node that can still hear but no longer send (a one-way cut) finds
  its routes down one heartbeat after its peers do, and fences itself like a node
  that hears nothing, instead of keeping VMs its peers restart elsewhere.
* A **peer is down** when no route to it is left; this node is **isolated**
  when it has routes and every one is down.
* Interfaces, from one or more nodes' views: ``net@X`` counts as up when some
  route on ``net`` that involves ``X`` (heard by X, or X heard by someone) is
  up. That yields a :class:`~vmcluster.policy.networks.Health` for the
  network policy, and per network ``up`` / ``partitioned`` / ``down``.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass
from ipaddress import IPv4Address

from vmcluster.model import ClusterSettings, ClusterSpec
from vmcluster.policy.networks import Health, NetworkState, cluster_networks, network_state

__all__ = [
    "Binding",
    "HeartbeatParams",
    "Route",
    "RouteChange",
    "RouteTracker",
    "Target",
    "health_from_views",
    "heartbeat_plan",
    "isolated",
    "network_states",
    "peers_down",
    "view_from_json",
    "view_to_json",
]

Route = tuple[str, str]  # (peer, network)


@dataclass(frozen=True)
class HeartbeatParams:
    delay_s: float = 0.25
    threshold: int = 8

    @classmethod
    def from_settings(cls, settings: ClusterSettings) -> HeartbeatParams:
        return cls(settings.same_subnet_delay_ms / 1000.0, settings.same_subnet_threshold)

    @property
    def window_s(self) -> float:
        """Silence after which a route is down."""
        return self.delay_s * self.threshold


@dataclass(frozen=True)
class RouteChange:
    peer: str
    network: str
    up: bool
    at: float


@dataclass(frozen=True)
class Binding:
    """Where this node listens (and sends from) on one network."""

    network: str
    address: IPv4Address
    port: int


@dataclass(frozen=True)
class Target:
    """Where to send heartbeats for one route."""

    peer: str
    network: str
    address: IPv4Address
    port: int


def heartbeat_plan(
    spec: ClusterSpec, node: str, port: int
) -> tuple[tuple[Binding, ...], tuple[Target, ...]]:
    """``node``'s bindings and targets: every peer on every role >= 1 network both are on
    (the witness, when the spec has one, is a peer like the nodes)."""
    me = spec.host(node)
    nets = [p.name for p in cluster_networks(spec.networks)]
    binds = tuple(Binding(n, me.interfaces[n], port) for n in nets if n in me.interfaces)
    mine = {b.network for b in binds}
    targets = tuple(
        Target(peer.name, n, peer.interfaces[n], port)
        for peer in spec.hosts
        if peer.name != node
        for n in nets
        if n in mine and n in peer.interfaces
    )
    return binds, targets


class RouteTracker:
    """Last-heard times per route, what the peers say they hear, and the up/down state
    derived from both (see the module docstring).

    ``me`` is this node's name, what a peer's heartbeat lists when it hears this node;
    None ignores the lists (routes are one-way: heard is up)."""

    def __init__(self, routes: Iterable[Route], params: HeartbeatParams, started: float,
                 me: str | None = None) -> None:
        self.params, self.me = params, me
        self.last: dict[Route, float] = {r: started for r in routes}
        self.up: dict[Route, bool] = dict.fromkeys(self.last, True)
        self.acked: dict[Route, float] = dict.fromkeys(self.last, started)  # listed us last
        self.denied: dict[Route, bool] = dict.fromkeys(self.last, False)  # its latest did not
        self._listed: dict[Route, bool] = dict.fromkeys(self.last, False)  # since its epoch
        self._epoch: dict[Route, int | None] = dict.fromkeys(self.last)

    def receive(self, route: Route, at: float, hears: Collection[str] | None = None,
                epoch: int | None = None) -> bool:
        """Record a heartbeat (and whom its sender hears, when it says); False (ignored)
        for a route this node does not track."""
        if route not in self.last:
            return False
        self.last[route] = max(self.last[route], at)
        if epoch is not None and epoch != self._epoch[route]:
            # A peer (re)started: give it a window to hear us before its silence counts.
            self._epoch[route], self._listed[route] = epoch, False
            self.acked[route] = max(self.acked[route], at)
        if self.me is None or hears is None or self.me in hears:
            self.acked[route] = max(self.acked[route], at)
            self.denied[route], self._listed[route] = False, True
        elif self._listed[route]:
            self.denied[route] = True  # it heard us, and now it does not
        return True

    def heard(self, now: float) -> dict[str, list[str]]:
        """By network, the peers heard within the window (what this node's heartbeats
        list), sorted."""
        out: dict[str, list[str]] = {}
        for (peer, net), last in sorted(self.last.items()):
            out.setdefault(net, [])
            if now - last <= self.params.window_s:
                out[net].append(peer)
        return out

    def evaluate(self, now: float) -> list[RouteChange]:
        """Update states at ``now``; the routes that changed, in a stable order."""
        changes = []
        window = self.params.window_s
        for route in sorted(self.last):
            up = (now - self.last[route] <= window and now - self.acked[route] <= window
                  and not self.denied[route])
            if up != self.up[route]:
                self.up[route] = up
                changes.append(RouteChange(route[0], route[1], up, now))
        return changes

    def states(self) -> dict[Route, bool]:
        return dict(self.up)


def peers_down(states: Mapping[Route, bool]) -> frozenset[str]:
    """Peers with no route left."""
    peers = {p for p, _ in states}
    return frozenset(p for p in peers if not any(up for (q, _), up in states.items() if q == p))


def isolated(states: Mapping[Route, bool]) -> bool:
    """Every route of this node is down (it has lost every cluster network)."""
    return bool(states) and not any(states.values())


def health_from_views(spec: ClusterSpec, views: Mapping[str, Mapping[Route, bool]]) -> Health:
    """Interfaces down, from each observer's route states (``views[observer]``)."""
    alive: set[tuple[str, str]] = set()
    for observer, states in views.items():
        for (peer, net), up in states.items():
            if up:
                alive.update({(net, observer), (net, peer)})
    watched = {(net, obs) for obs, states in views.items() for (_, net) in states}
    watched |= {(net, peer) for states in views.values() for (peer, net) in states}
    return Health(frozenset(watched - alive))


def network_states(spec: ClusterSpec, health: Health) -> dict[str, NetworkState]:
    """``up`` / ``partitioned`` / ``down`` for every cluster (role >= 1) network."""
    return {p.name: network_state(spec, health, p.name) for p in cluster_networks(spec.networks)}


def view_to_json(states: Mapping[Route, bool]) -> dict[str, bool]:
    return {f"{peer}/{net}": up for (peer, net), up in sorted(states.items())}


def view_from_json(data: Mapping[str, bool]) -> dict[Route, bool]:
    out: dict[Route, bool] = {}
    for key, up in data.items():
        peer, _, net = key.partition("/")
        out[(peer, net)] = bool(up)
    return out
