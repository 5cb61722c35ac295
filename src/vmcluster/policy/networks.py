"""Cluster networks by role and metric: which network carries which traffic.

The rules, as the seed (``cluster net /prop``) describes them:

* Role: 0 not used by the cluster, 1 cluster traffic only, 3 cluster and
  client. Automatic role: a network with a default gateway is public (3),
  otherwise private (1). A role in the spec wins.
* Metric: automatic (AutoMetric 1) unless set by hand (AutoMetric 0). Public
  networks start at 10000, private at 1000; each further network of the same
  kind gets +100 in enumeration order. A network whose metric is set by hand
  still counts for the numbering of the ones after it.
* Cluster (heartbeat) and CSV traffic: the available role >= 1 network with
  the lowest metric. Client traffic: the available role-3 networks. Live
  migration: the VM's ordered list when one is set (it may name a role-0
  network on purpose), else every available role >= 1 network by metric with
  the CSV network moved last, so the default is the second-lowest.
* Availability is per node pair: a network counts for two nodes only where
  both have an interface on it and both interfaces are up. Ties in metric go
  to the network declared first.

Everything here is pure: a function of the spec and of which interfaces are
down.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from itertools import combinations
from typing import Literal

from vmcluster.errors import UsageError
from vmcluster.model import ClusterSpec, Network, Role, Vm

__all__ = [
    "Health",
    "NetworkProps",
    "NetworkState",
    "PairRoute",
    "Routes",
    "cluster_network",
    "cluster_networks",
    "live_migration_order",
    "network_props",
    "network_state",
    "node_cluster_networks",
    "pair_networks",
    "routes",
]

NetworkState = Literal["up", "partitioned", "down"]
PUBLIC_BASE, PRIVATE_BASE, STEP = 10000, 1000, 100


@dataclass(frozen=True)
class NetworkProps:
    """A network's effective properties after the automatic rules."""

    name: str
    role: Role
    metric: int
    auto_metric: bool
    order: int  # enumeration order (position in the spec)

    @property
    def key(self) -> tuple[int, int]:
        """Sort key: lowest metric first, declaration order breaks ties."""
        return (self.metric, self.order)


@dataclass(frozen=True)
class Health:
    """Which interfaces are down: a set of (network, node) pairs."""

    down: frozenset[tuple[str, str]] = field(default_factory=frozenset)

    @classmethod
    def parse(cls, spec: ClusterSpec, items: Iterable[str]) -> Health:
        """From ``NETWORK`` (every interface on it) or ``NETWORK@NODE`` strings."""
        down: set[tuple[str, str]] = set()
        for item in items:
            net_name, _, node_name = item.partition("@")
            net = spec.network(net_name)
            if node_name:
                node = spec.node(node_name)
                if net.name not in node.interfaces:
                    raise UsageError(f"node {node.name!r} has no interface on {net.name!r}")
                down.add((net.name, node.name))
            else:
                down.update((net.name, n.name) for n in spec.nodes if net.name in n.interfaces)
        return cls(frozenset(down))

    def up(self, spec: ClusterSpec, network: str, node: str) -> bool:
        """Is ``node``'s interface on ``network`` present and up?"""
        return network in spec.node(node).interfaces and (network, node) not in self.down


def network_props(networks: Iterable[Network]) -> tuple[NetworkProps, ...]:
    """Effective role and metric of each network, in enumeration order."""
    out = []
    counts = {True: 0, False: 0}
    for order, net in enumerate(networks):
        place = counts[net.public]
        counts[net.public] += 1
        auto = (PUBLIC_BASE if net.public else PRIVATE_BASE) + STEP * place
        role = (
            net.role
            if net.role is not None
            else (Role.CLUSTER_AND_CLIENT if net.public else Role.CLUSTER)
        )
        metric = auto if net.metric is None else net.metric
        out.append(NetworkProps(net.name, role, metric, net.metric is None, order))
    return tuple(out)


def cluster_networks(networks: Iterable[Network]) -> list[NetworkProps]:
    """The cluster (role >= 1) networks, in declaration order: heartbeats, CSV, etcd and
    the agents use only these."""
    return [p for p in network_props(networks) if p.role >= Role.CLUSTER]


def node_cluster_networks(spec: ClusterSpec, node: str) -> list[NetworkProps]:
    """The cluster (role >= 1) networks ``node`` has an interface on, lowest metric first."""
    mine = spec.host(node).interfaces
    return sorted((p for p in cluster_networks(spec.networks) if p.name in mine),
                  key=lambda p: p.key)


def network_state(spec: ClusterSpec, health: Health, network: str) -> NetworkState:
    """``up`` (every interface up), ``partitioned`` (some down) or ``down``."""
    members = [n.name for n in spec.nodes if network in n.interfaces]
    ups = sum(1 for m in members if health.up(spec, network, m))
    if members and ups == len(members):
        return "up"
    return "partitioned" if ups >= 2 else "down"


def pair_networks(
    spec: ClusterSpec, health: Health, a: str, b: str, *, min_role: int = 1
) -> list[NetworkProps]:
    """Networks with role >= ``min_role`` available between nodes ``a`` and ``b``, by metric."""
    nets = [
        p
        for p in network_props(spec.networks)
        if p.role >= min_role and health.up(spec, p.name, a) and health.up(spec, p.name, b)
    ]
    return sorted(nets, key=lambda p: p.key)


def cluster_network(spec: ClusterSpec, health: Health, a: str, b: str) -> str | None:
    """The network carrying cluster (heartbeat) and CSV traffic between ``a`` and ``b``."""
    nets = pair_networks(spec, health, a, b)
    return nets[0].name if nets else None


def live_migration_order(spec: ClusterSpec, health: Health, vm: Vm, a: str, b: str) -> list[str]:
    """The networks a migration of ``vm`` from ``a`` to ``b`` tries, in order."""
    if vm.live_migration_networks is not None:
        available = {p.name for p in pair_networks(spec, health, a, b, min_role=0)}
        return [n for n in vm.live_migration_networks if n in available]
    nets = [p.name for p in pair_networks(spec, health, a, b)]
    return nets[1:] + nets[:1]  # the CSV network (lowest metric) goes last


@dataclass(frozen=True)
class PairRoute:
    """What carries cluster traffic and each VM's live migration between two nodes."""

    nodes: tuple[str, str]
    cluster: str | None
    live_migration: dict[str, str | None]


@dataclass(frozen=True)
class Routes:
    """Cluster-wide routing of each traffic class, plus the per-pair detail."""

    networks: tuple[tuple[NetworkProps, NetworkState], ...]
    cluster: str | None
    csv: str | None
    client: tuple[str, ...]
    live_migration: dict[str, list[str]]
    pairs: tuple[PairRoute, ...]

    def to_json(self) -> dict[str, object]:
        return {
            "networks": [
                {
                    "name": p.name,
                    "role": int(p.role),
                    "metric": p.metric,
                    "auto_metric": p.auto_metric,
                    "state": state,
                }
                for p, state in self.networks
            ],
            "cluster": self.cluster,
            "csv": self.csv,
            "client": list(self.client),
            "live_migration": self.live_migration,
            "pairs": [
                {"nodes": list(p.nodes), "cluster": p.cluster, "live_migration": p.live_migration}
                for p in self.pairs
            ],
        }


def routes(spec: ClusterSpec, health: Health | None = None) -> Routes:
    """Route every traffic class given the interfaces that are down.

    Cluster-wide, networks that are fully up rank before partitioned ones
    (pairs that cannot use a partitioned network fall back per pair, see
    ``pairs``); within each group the lowest metric wins. The cluster/CSV
    network is the first of that ranking; the default live-migration order is
    the ranking with the CSV network moved last.
    """
    health = health or Health()
    props = network_props(spec.networks)
    states = {p.name: network_state(spec, health, p.name) for p in props}
    ranked = sorted(
        (p for p in props if p.role >= Role.CLUSTER and states[p.name] != "down"),
        key=lambda p: (states[p.name] != "up", *p.key),
    )
    usable = [p.name for p in ranked]
    best = usable[0] if usable else None
    default_lm = usable[1:] + usable[:1]
    lm: dict[str, list[str]] = {}
    for vm in spec.vms:
        if vm.live_migration_networks is not None:
            lm[vm.name] = [n for n in vm.live_migration_networks if states[n] != "down"]
        else:
            lm[vm.name] = list(default_lm)
    pairs = []
    for a, b in combinations([n.name for n in spec.nodes], 2):
        pair_lm: dict[str, str | None] = {}
        for vm in spec.vms:
            order = live_migration_order(spec, health, vm, a, b)
            pair_lm[vm.name] = order[0] if order else None
        pairs.append(PairRoute((a, b), cluster_network(spec, health, a, b), pair_lm))
    client = tuple(
        p.name
        for p in sorted(props, key=lambda p: p.key)
        if p.role == Role.CLUSTER_AND_CLIENT and states[p.name] != "down"
    )
    return Routes(
        networks=tuple((p, states[p.name]) for p in props),
        cluster=best,
        csv=best,
        client=client,
        live_migration=lm,
        pairs=tuple(pairs),
    )
