"""Substrates: the sim (virtual time) and qemu (real hosts) behind one Protocol."""

from vmcluster.substrate.protocol import (
    Clock,
    FaultInjector,
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
    "FaultInjector",
    "MigrationHandle",
    "MigrationParams",
    "MigrationProgress",
    "MigrationResult",
    "NodeStatus",
    "Substrate",
    "SubstrateStatus",
    "VmStatus",
]
