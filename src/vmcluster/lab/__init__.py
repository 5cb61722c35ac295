"""vmcluster.lab."""
