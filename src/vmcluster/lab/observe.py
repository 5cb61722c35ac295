"""A migration as its clients see it: three clients running, memory checked afterwards.

Used by ``vmcluster vm migrate`` and by the benchmark: starts the client
namespace's probes against the VM (TCP echo, UDP every 5 ms, ApacheBench against
the guest's httpd; see :mod:`vmcluster.lab.probe`), drives the migration
through :func:`vmcluster.control.migration.migrate` (retrying on the next
network of the policy's order) or a quick migration, then adds to the result:
``client_gap_ms`` and ``tcp_session_survived`` (TCP), ``blackout_ms`` (UDP),
``ab_failed`` and ``ab_max_ms`` (ab), ``memory_ok``, and ``breakdown``: the UDP
blackout laid beside QEMU's own STOP (source) and RESUME (target) events, as
``before_pause_ms`` (clients lost before the source paused), ``paused_ms`` (the
source's pause to the target's resume) and ``after_resume_ms`` (the target
ran, but replies had not come back yet: announce and bridge learning).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace
from typing import Any

from vmcluster.control.migration import MigrationRequest, ProgressCallback, known_health, migrate
from vmcluster.errors import LabError, UsageError
from vmcluster.lab.probe import ClientProbe, memory_ok, serial_sizes
from vmcluster.lab.services import lab_ledger
from vmcluster.node.quick import quick_migrate
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
    clients: dict[str, ClientProbe] = {}
    if probe and vmspec.address is not None:
        for mode in ("tcp", "udp", "ab"):
            c = ClientProbe(sub.layout, str(vmspec.address), mode)
            try:
                c.start()
                clients[mode] = c
            except LabError as exc:
                sub.say(f"warning: no {mode} client during this migration: {exc}")
    try:

        with lab_ledger(sub.layout) as ledger:  # the store records who owns it, either way
            if quick:
                result = quick_migrate(sub, vm, target, ledger=ledger)
            else:
                req = MigrationRequest(vm=vm, target=target, params=params)
                result = migrate(sub, spec, known_health(spec, sub.status()), req, on_progress,
                                 ledger)
    finally:
        for c in clients.values():  # all at once: each winds down on its own (up to 1 s)
            c.interrupt()
        seen = {mode: c.stop() for mode, c in clients.items()}
    where = result.target if result.ok else result.source
    mem = memory_ok(sub.layout.serial_log(vm, where), sizes.get(where, 0))
    tcp, udp, ab = seen.get("tcp", {}), seen.get("udp", {}), seen.get("ab", {})
    extra = {
        **dict(result.extra),
        "quick": quick,
        "client_gap_ms": tcp.get("max_gap_ms"),
        "client_replies": tcp.get("replies"),
        "tcp_session_survived": bool(tcp.get("session_survived", False)),
        "client_errors": tcp.get("errors", []),
        "blackout_ms": udp.get("blackout_ms"),
        "probe_stall_ms": udp.get("max_send_gap_ms"),
        "udp_lost": udp.get("lost"),
        "ab_requests": ab.get("requests"),
        "ab_failed": ab.get("failed"),
        "ab_max_ms": ab.get("max_ms"),
        "breakdown": breakdown(udp, result.extra),
        "memory_ok": mem,
        "node": where,
    }
    return replace(result, extra=extra)


def breakdown(udp: Mapping[str, Any], extra: Mapping[str, Any]) -> dict[str, float] | None:
    """The UDP blackout beside QEMU's pause and resume (all wall clock, in ms; see above)."""
    try:
        frm, to = float(udp["gap_from"]), float(udp["gap_to"])
        paused, resumed = float(extra["paused_at"]), float(extra["resumed_at"])
    except (KeyError, TypeError, ValueError):
        return None
    return {"before_pause_ms": round((paused - frm) * 1000, 1),
            "paused_ms": round((resumed - paused) * 1000, 1),
            "after_resume_ms": round((to - resumed) * 1000, 1)}
