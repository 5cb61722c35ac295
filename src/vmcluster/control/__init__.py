"""vmcluster.control."""
