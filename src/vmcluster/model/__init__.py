"""The nouns of vmcluster and the loading of cluster spec files."""

from vmcluster.model.cluster import ClusterSettings, ClusterSpec, Node, Vm, Volume
from vmcluster.model.network import Network, Role

__all__ = ["ClusterSettings", "ClusterSpec", "Network", "Node", "Role", "Vm", "Volume"]
