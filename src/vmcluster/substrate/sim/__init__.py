"""vmcluster.substrate.sim."""
