"""The nouns of vmcluster and the loading of cluster spec files."""

from vmcluster.model.cluster import (
    MIB,
    ClusterSettings,
    ClusterSpec,
    Node,
    PowerSpec,
    Vm,
    Volume,
)
from vmcluster.model.network import Network, Role

__all__ = ["MIB", "ClusterSettings", "ClusterSpec", "Network", "Node", "PowerSpec", "Role", "Vm",
           "Volume"]
