"""The nouns of vmcluster and the loading of cluster spec files."""

from vmcluster.model.cluster import MIB, ClusterSettings, ClusterSpec, Node, Vm, Volume
from vmcluster.model.network import Network, Role

__all__ = ["MIB", "ClusterSettings", "ClusterSpec", "Network", "Node", "Role", "Vm", "Volume"]
