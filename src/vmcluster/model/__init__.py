"""vmcluster.model."""
