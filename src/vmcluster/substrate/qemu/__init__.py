"""vmcluster.substrate.qemu."""
