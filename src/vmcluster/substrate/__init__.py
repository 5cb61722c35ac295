"""vmcluster.substrate."""
