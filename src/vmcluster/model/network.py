"""Cluster networks as the spec declares them (before any policy is applied)."""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum
from ipaddress import IPv4Address, IPv4Network

__all__ = ["Network", "Role"]


class Role(IntEnum):
    """A cluster network's role, as Windows failover clustering numbers it."""

    NONE = 0  # not used by the cluster (e.g. an iSCSI network)
    CLUSTER = 1  # cluster traffic only (private)
    CLUSTER_AND_CLIENT = 3  # cluster and client traffic (public)


@dataclass(frozen=True)
class Network:
    """One cluster network. ``role``/``metric`` are None when left automatic."""

    name: str
    subnet: IPv4Network
    gateway: IPv4Address | None = None
    role: Role | None = None
    metric: int | None = None
    bandwidth_mbps: float | None = None
    # The links' MTU (None: as the hosts have them, 1500 in the lab); 9000 ("jumbo frames")
    # is usual on a dedicated migration or storage network.
    mtu: int | None = None

    @property
    def public(self) -> bool:
        """A network whose subnet has a default gateway is public."""
        return self.gateway is not None
