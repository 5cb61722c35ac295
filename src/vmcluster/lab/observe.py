"""A migration as a client sees it: echo loop running, memory checked afterwards.

Used by ``vmcluster vm migrate`` and by the benchmark: starts the client
namespace's echo loop against the VM, drives the migration through
:func:`vmcluster.control.migration.migrate` (retrying on the next network of
the policy's order) or a quick migration, then adds ``client_gap_ms``,
``tcp_session_survived`` and ``memory_ok`` to the result.
"""

from __future__ import annotations

from dataclasses import replace

from vmcluster.control.migration import MigrationRequest, ProgressCallback, known_health, migrate
from vmcluster.errors import LabError, UsageError
from vmcluster.lab.probe import EchoProbe, memory_ok, serial_sizes
from vmcluster.lab.quick import quick_migrate
from vmcluster.substrate.protocol import MigrationParams, MigrationResult
from vmcluster.substrate.qemu.substrate import QemuSubstrate

__all__ = ["migrate_observed"]


def migrate_observed(
    sub: QemuSubstrate,
    vm: str,
    target: str,
    *,
    quick: bool = False,
    params: MigrationParams | None = None,
    on_progress: ProgressCallback | None = None,
    probe: bool = True,
) -> MigrationResult:
    spec = sub.spec
    vmspec = spec.vm(vm)
    spec.node(target)
    source = sub.owner(vm)
    if source is None:
        raise UsageError(f"{vm} is not running; start it with `vmcluster vm start {vm}`")
    if source == target:
        raise UsageError(f"{vm} already runs on {target}; pick another node")
    sizes = serial_sizes(sub.layout, vm, [n.name for n in spec.nodes])
    echo = None
    if probe and vmspec.address is not None:
        echo = EchoProbe(sub.layout, str(vmspec.address))
        try:
            echo.start()
        except LabError:
            echo = None
    try:
        if quick:
            result = quick_migrate(sub, vm, target)
        else:
            req = MigrationRequest(vm=vm, target=target, params=params)
            result = migrate(sub, spec, known_health(spec, sub.status()), req, on_progress)
    finally:
        seen = echo.stop() if echo is not None else {}
    where = result.target if result.ok else result.source
    mem = memory_ok(sub.layout.serial_log(vm, where), sizes.get(where, 0))
    extra = {
        **dict(result.extra),
        "quick": quick,
        "client_gap_ms": seen.get("max_gap_ms"),
        "client_replies": seen.get("replies"),
        "tcp_session_survived": bool(seen.get("session_survived", False)),
        "client_errors": seen.get("errors", []),
        "memory_ok": mem,
        "node": where,
    }
    return replace(result, extra=extra)
