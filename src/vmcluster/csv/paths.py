"""How each node reaches a cluster shared volume: direct, redirected, or not at all.

Pure: a function of the spec, interface health, which nodes are up, which
nodes have their own storage path, and the volume's coordinator.

* A node that is up and has its own path to the SAN reads and writes the LUN
  directly (``direct``).
* A node that is up but has lost its path is ``redirected``: its I/O goes to
  a node that still has a path, over the network the cluster policy gives
  CSV traffic between the two (:func:`~vmcluster.policy.networks.cluster_network`,
  the lowest-metric role >= 1 network up at both ends). The coordinator is
  preferred (as the seed's CSV sends redirected I/O through it), then the
  lowest CSV-network metric, then the lowest node name.
* Otherwise ``none``, with the reason.

Coordinator election is here too: the lowest-named node that is up and has a
storage path.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal

from vmcluster.model import ClusterSpec
from vmcluster.policy.networks import Health, pair_networks

__all__ = ["Access", "AccessMode", "access_modes", "elect_coordinator"]

AccessMode = Literal["direct", "redirected", "none"]


@dataclass(frozen=True)
class Access:
    """One node's access to one volume, and why."""

    node: str
    mode: AccessMode
    via: str | None = None
    network: str | None = None
    reason: str = ""

    def describe(self) -> str:
        if self.mode == "redirected":
            return f"redirected via {self.via} over {self.network}"
        return "no access" if self.mode == "none" else "direct"

    def to_json(self) -> dict[str, object]:
        return {"node": self.node, "mode": self.mode, "via": self.via, "network": self.network,
                "reason": self.reason}


def elect_coordinator(nodes: Iterable[str], up: frozenset[str],
                      has_path: frozenset[str]) -> str | None:
    """The lowest-named node that is up and has its own storage path (None: nobody can)."""
    able = sorted(n for n in nodes if n in up and n in has_path)
    return able[0] if able else None


def access_modes(
    spec: ClusterSpec, health: Health, up: frozenset[str], has_path: frozenset[str],
    coordinator: str | None, storage_network: str | None,
) -> dict[str, Access]:
    """Every node's :class:`Access` to a volume served on ``storage_network``."""
    out: dict[str, Access] = {}
    over = f" over {storage_network}" if storage_network else ""
    for node in spec.nodes:
        name = node.name
        if name not in up:
            out[name] = Access(name, "none", reason="the node is down")
            continue
        if name in has_path:
            out[name] = Access(name, "direct", reason=f"own storage path to the SAN{over}")
            continue
        lost = ("no interface on the storage network"
                if storage_network and storage_network not in node.interfaces
                else "its storage path is down")
        candidates: list[tuple[bool, int, str, str]] = []
        for other in spec.nodes:
            if other.name == name or other.name not in up or other.name not in has_path:
                continue
            nets = pair_networks(spec, health, name, other.name)
            if nets:
                candidates.append((other.name != coordinator, nets[0].metric, other.name,
                                   nets[0].name))
        if not candidates:
            why = ("no other node has a storage path" if not (has_path & up) - {name}
                   else "no cluster network is up to any node that has a storage path")
            out[name] = Access(name, "none", reason=f"{lost} and {why}")
            continue
        _, metric, via, net = min(candidates)
        role = "the coordinator" if via == coordinator else "a node with a path"
        out[name] = Access(name, "redirected", via, net,
                           reason=f"{lost}; I/O goes through {role} over the CSV network "
                                  f"{net} (metric {metric})")
    return out
