"""Substrates: the sim (virtual time) and qemu (real hosts) behind one Protocol."""

from vmcluster.substrate.protocol import (
    Clock,
    MigrationHandle,
    MigrationParams,
    MigrationProgress,
    MigrationResult,
    NodeStatus,
    Substrate,
    SubstrateStatus,
    VmStatus,
)

__all__ = [
    "Clock",
    "MigrationHandle",
    "MigrationParams",
    "MigrationProgress",
    "MigrationResult",
    "NodeStatus",
    "Substrate",
    "SubstrateStatus",
    "VmStatus",
]
