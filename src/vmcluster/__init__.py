"""vmcluster: a failover cluster manager for virtual machines."""

__all__ = ["__version__"]
__version__ = "0.1.0"
