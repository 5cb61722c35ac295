"""The substrate contract (src/vmcluster/substrate/protocol.py), for every substrate.

Each test states the contract, not one substrate's pace: waits are bounded polls of
``clock`` (instant in virtual time, seconds on QEMU), and a migration that a test
interrupts runs under a bandwidth cap so that it is still copying when it does.
"""

from __future__ import annotations

import pytest

from vmcluster.control.migration import MigrationRequest, migrate
from vmcluster.errors import MigrationError, SubstrateError, UsageError
from vmcluster.model import ClusterSpec
from vmcluster.policy.networks import Health
from vmcluster.substrate.protocol import (
    FaultInjector,
    MigrationHandle,
    MigrationParams,
    MigrationProgress,
    MigrationStatus,
    Substrate,
)

# Slow enough that an interrupted copy is still running when the test interrupts it.
SLOW = MigrationParams(downtime_ms=300, bandwidth_mibps=4)


def boot(sub: Substrate, spec: ClusterSpec, *names: str) -> None:
    for vm in spec.vms:
        if not names or vm.name in names:
            sub.start_vm(vm.name, vm.owner)


def wait_status(
    sub: Substrate, handle: MigrationHandle, want: MigrationStatus, limit_s: float = 90.0
) -> MigrationProgress:
    """Poll until the migration reports ``want`` (and, for active, has sent bytes)."""
    deadline = sub.clock.now() + limit_s
    progress = sub.poll_migration(handle)
    while sub.clock.now() < deadline:
        progress = sub.poll_migration(handle)
        if progress.status == want and (want != "active" or progress.sent_mib > 0):
            return progress
        sub.clock.sleep(0.05)
    raise AssertionError(f"migration never became {want}; last poll: {progress}")


def test_starts_empty(substrate: Substrate, spec: ClusterSpec) -> None:
    st = substrate.status()
    assert [n.name for n in st.nodes] == [n.name for n in spec.nodes]
    assert all(n.state == "up" and n.storage_path for n in st.nodes)
    assert all(v.state == "stopped" and v.node is None for v in st.vms)


def test_clock_sleep_lets_time_pass(substrate: Substrate) -> None:
    t0 = substrate.clock.now()
    substrate.clock.sleep(0.2)
    assert substrate.clock.now() >= t0 + 0.2


def test_lifecycle_is_idempotent_and_checked(substrate: Substrate, spec: ClusterSpec) -> None:
    boot(substrate, spec, "web")
    boot(substrate, spec, "web")  # starting a running VM on its node does nothing
    assert substrate.status().vm("web").state == "running"
    assert substrate.status().vm("web").node == "node1"
    with pytest.raises(SubstrateError):
        substrate.start_vm("web", "node2")  # already running elsewhere
    with pytest.raises(UsageError):
        substrate.start_vm("nope", "node1")
    with pytest.raises(UsageError):
        substrate.start_vm("web", "node9")
    substrate.pause_vm("web")
    substrate.pause_vm("web")
    assert substrate.status().vm("web").state == "paused"
    substrate.resume_vm("web")
    assert substrate.status().vm("web").state == "running"
    substrate.stop_vm("web")
    substrate.stop_vm("web")
    st = substrate.status().vm("web")
    assert (st.node, st.state) == (None, "stopped")
    with pytest.raises(SubstrateError):
        substrate.resume_vm("web")


def test_migration_moves_the_vm(substrate: Substrate, spec: ClusterSpec) -> None:
    boot(substrate, spec, "db")
    seen: list[int] = []
    result = migrate(substrate, spec, Health(), MigrationRequest("db", "node3"),
                     on_progress=lambda h, p: seen.append(p.pass_no))
    assert result.ok and result.error is None
    assert (result.source, result.target, result.network) == ("node2", "node3", "Migration")
    assert result.passes >= 1 and result.downtime_ms is not None and result.total_s > 0
    # Bytes on the wire: QEMU sends untouched (zero) pages as a few bytes each, so the
    # contract is "memory was copied", not "at least memory_mib was sent".
    assert result.sent_mib > 0
    assert seen and seen == sorted(seen)  # passes only go up
    st = substrate.status().vm("db")
    assert (st.node, st.state) == ("node3", "running")


def test_prepare_refuses_impossible_migrations(
    substrate: Substrate, faults: FaultInjector, spec: ClusterSpec
) -> None:
    boot(substrate, spec, "db")
    with pytest.raises(MigrationError):
        substrate.prepare_migration("db", "node2", "Migration")  # its own node
    faults.set_link("Migration", "node3", False)
    with pytest.raises(MigrationError):
        substrate.prepare_migration("db", "node3", "Migration")
    faults.set_node("node1", False)
    with pytest.raises(MigrationError):
        substrate.prepare_migration("db", "node1", "Public")


def test_finalize_false_rolls_back_and_is_idempotent(
    substrate: Substrate, spec: ClusterSpec
) -> None:
    boot(substrate, spec, "db")
    handle = substrate.prepare_migration("db", "node3", "Migration")
    assert (handle.vm, handle.source, handle.target) == ("db", "node2", "node3")
    assert substrate.prepare_migration("db", "node3", "Migration") == handle
    substrate.start_migration(handle, SLOW)
    substrate.start_migration(handle, SLOW)
    wait_status(substrate, handle, "active")
    result = substrate.finalize_migration(handle, False)
    assert not result.ok and result.error
    assert substrate.finalize_migration(handle, False) == result
    st = substrate.status().vm("db")
    assert (st.node, st.state) == ("node2", "running")


def test_finalize_false_after_a_completed_copy_still_rolls_back(
    substrate: Substrate, spec: ClusterSpec
) -> None:
    boot(substrate, spec, "web")
    handle = substrate.prepare_migration("web", "node2", "Migration")
    substrate.start_migration(handle, MigrationParams(downtime_ms=300))
    wait_status(substrate, handle, "completed", limit_s=180.0)
    result = substrate.finalize_migration(handle, False)
    assert not result.ok and result.error
    st = substrate.status().vm("web")
    assert (st.node, st.state) == ("node1", "running")


def test_link_failure_mid_migration_leaves_vm_on_source(
    substrate: Substrate, faults: FaultInjector, spec: ClusterSpec
) -> None:
    boot(substrate, spec, "db")
    handle = substrate.prepare_migration("db", "node3", "Migration")
    substrate.start_migration(handle, SLOW)
    wait_status(substrate, handle, "active")
    faults.set_link("Migration", "node3", False)
    # A cut network fails the migration (qemu notices when no bytes move for a while).
    wait_status(substrate, handle, "failed", limit_s=60.0)
    result = substrate.finalize_migration(handle, True)
    assert not result.ok and result.error
    st = substrate.status().vm("db")
    assert (st.node, st.state) == ("node2", "running")
    assert substrate.status().node("node3").links_down == ("Migration",)
    # The control loop then takes the next network of the policy's order.
    health = Health(frozenset({("Migration", "node3")}))
    again = migrate(substrate, spec, health, MigrationRequest("db", "node3"))
    assert again.ok and again.network == "Public"


def test_node_crash_power_and_storage(
    substrate: Substrate, faults: FaultInjector, spec: ClusterSpec
) -> None:
    boot(substrate, spec, "web", "db")
    with pytest.raises(SubstrateError):
        substrate.set_power("node1", False)  # web runs there
    faults.set_node("node1", False)
    st = substrate.status()
    assert st.node("node1").state == "down"
    assert (st.vm("web").node, st.vm("web").state) == (None, "stopped")
    with pytest.raises(SubstrateError):
        substrate.start_vm("web", "node1")
    faults.set_node("node1", True)
    substrate.set_power("node1", False)
    assert substrate.status().node("node1").state == "off"
    assert "node1" not in substrate.utilisation()
    substrate.set_power("node1", True)
    faults.set_storage_path("node2", False)
    assert substrate.status().node("node2").storage_path is False
    assert substrate.status().vm("db").state == "running"  # redirected I/O keeps it running
    util = substrate.utilisation()
    assert set(util) == {"node1", "node2", "node3"}
    assert all(0.0 <= u <= 1.0 for u in util.values())


def test_migration_params_asked_take_the_vm_budget_and_the_default_action() -> None:
    assert MigrationParams.asked(300) == MigrationParams(downtime_ms=300.0)
    assert MigrationParams.asked(300, 50, "force") == MigrationParams(
        downtime_ms=50.0, on_no_convergence="force")
    with pytest.raises(ValueError, match="on_no_convergence 'x': throttle, abort or force"):
        MigrationParams.asked(300, None, "x")
