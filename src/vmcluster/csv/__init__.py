"""Cluster shared volumes: one LUN for all nodes, a coordinator, redirected I/O."""
