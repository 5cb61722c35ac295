"""``vmcluster node drain NODE`` (live-migrate every VM off, Ctrl-C cancels) and
``vmcluster node resume NODE``."""

from __future__ import annotations

import json
import time
from typing import Any

import click

from vmcluster.cli.common import lab_option
from vmcluster.control.drain import drain, resume
from vmcluster.lab.lab import resolve_lab
from vmcluster.lab.services import lab_store
from vmcluster.policy.failover import CannotPlace, Migrate
from vmcluster.substrate.protocol import MigrationHandle, MigrationProgress, MigrationResult
from vmcluster.substrate.qemu.substrate import QemuSubstrate

__all__ = ["node"]

_LAB = lab_option()


@click.group()
def node() -> None:
    """Take a node out of service (drain) and back (resume)."""


@node.command("drain")
@click.argument("node_name", metavar="NODE")
@_LAB
@click.option("--json", "as_json", is_flag=True, help="print the result as one JSON object")
def drain_cmd(node_name: str, lab_name: str | None, as_json: bool) -> None:
    """Live-migrate every VM off NODE, one at a time; Ctrl-C cancels (the VM in flight
    stays where it was)."""
    layout = resolve_lab(lab_name)
    sub = QemuSubstrate(layout)

    def say(msg: str) -> None:
        click.echo(msg, err=as_json)

    last: dict[str, float] = {}

    def on_plan(actions: list[Migrate | CannotPlace]) -> None:
        if not actions:
            say(f"{node_name}: no VM to move")
        for a in actions:
            say(f"plan: {a.vm} -> {a.target}" if isinstance(a, Migrate)
                else f"plan: {a.vm} cannot move: {a.reason}")

    def on_progress(h: MigrationHandle, p: MigrationProgress) -> None:
        now = time.monotonic()
        if now - last.get(h.vm, 0.0) >= 0.5 or p.status not in ("active", "setup"):
            last[h.vm] = now
            say(f"  {h.vm} -> {h.target} over {h.network}: {p.status} pass {p.pass_no} "
                f"sent {p.sent_mib:.0f} MiB, {p.remaining_mib:.0f} MiB left")

    def on_result(r: MigrationResult) -> None:
        say(f"{r.vm}: {'moved to ' + r.target if r.ok else 'stayed: ' + str(r.error)}"
            + (f" (downtime {r.downtime_ms:.0f} ms)" if r.ok and r.downtime_ms else ""))

    with lab_store(layout) as store:
        result = drain(sub, sub.spec, store.state, node_name, store=store.call,
                       wall=time.time, on_plan=on_plan, on_progress=on_progress,
                       on_result=on_result)
    if as_json:
        click.echo(json.dumps({"lab": layout.name, **result.to_json()}))
    elif result.cancelled:
        click.echo(f"drain of {node_name} cancelled; {len(result.moved)} VM(s) moved, "
                   f"{node_name} is up")
    else:
        click.echo(f"{node_name} drained: {len(result.moved)} moved, {len(result.failed)} "
                   f"failed, {len(result.unplaced)} could not be placed; "
                   f"`vmcluster node resume {node_name}` puts it back in service")


@node.command("resume")
@click.argument("node_name", metavar="NODE")
@_LAB
@click.option("--json", "as_json", is_flag=True)
def resume_cmd(node_name: str, lab_name: str | None, as_json: bool) -> None:
    """Put NODE back in service after a drain or a quarantine."""
    layout = resolve_lab(lab_name)
    QemuSubstrate(layout).spec.node(node_name)
    with lab_store(layout) as store:
        before = resume(store.state, node_name, store=store.call)
    out: dict[str, Any] = {"node": node_name, "was": before, "state": "up"}
    click.echo(json.dumps(out) if as_json else f"{node_name}: {before} -> up")
