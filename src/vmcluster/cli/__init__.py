"""vmcluster.cli."""
