"""vmcluster.policy."""
