"""vmcluster.power."""
