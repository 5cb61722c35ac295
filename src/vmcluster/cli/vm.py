"""``vmcluster vm``: list, start, stop, pause, resume, console and migrate lab VMs."""

from __future__ import annotations

import json
import time
from typing import Any

import click

from vmcluster.cli.common import ProgressLine, lab_option
from vmcluster.errors import MigrationError
from vmcluster.lab.lab import resolve_lab
from vmcluster.lab.observe import migrate_observed
from vmcluster.substrate.protocol import MigrationHandle, MigrationProgress
from vmcluster.substrate.qemu.substrate import QemuSubstrate

__all__ = ["vm"]

_LAB = lab_option()


def _sub(lab_name: str | None) -> QemuSubstrate:
    return QemuSubstrate(resolve_lab(lab_name))


@click.group()
def vm() -> None:
    """Operate the lab's VMs."""


@vm.command("list")
@_LAB
@click.option("--json", "as_json", is_flag=True)
def list_(lab_name: str | None, as_json: bool) -> None:
    sub = _sub(lab_name)
    vms = sub.status().vms
    if as_json:
        click.echo(json.dumps({"vms": [
            {"name": v.name, "node": v.node, "state": v.state,
             "address": str(sub.spec.vm(v.name).address)} for v in vms]}))
        return
    for v in vms:
        click.echo(f"{v.name:<10} {v.state:<9} {v.node or '-':<8} {sub.spec.vm(v.name).address}")


def _simple(name: str, doc: str) -> None:
    @vm.command(name, help=doc)
    @click.argument("vm_name", metavar="VM")
    @_LAB
    def cmd(vm_name: str, lab_name: str | None) -> None:
        sub = _sub(lab_name)
        getattr(sub, f"{name}_vm")(vm_name)
        click.echo(f"{vm_name}: {sub.status().vm(vm_name).state}")


_simple("stop", "Stop a VM (its QEMU quits).")
_simple("pause", "Pause a VM.")
_simple("resume", "Resume a paused VM.")


@vm.command("start")
@click.argument("vm_name", metavar="VM")
@click.option("--on", "node", default=None, help="node (default: the spec's owner)")
@_LAB
def start(vm_name: str, node: str | None, lab_name: str | None) -> None:
    """Start a VM on a node."""
    from vmcluster.lab.lab import wait_ready

    sub = _sub(lab_name)
    node = node or sub.spec.vm(vm_name).owner
    sub.start_vm(vm_name, node)
    wait_ready(sub.layout, vm_name, node, 120)
    click.echo(f"{vm_name}: running on {node}")


@vm.command("console")
@click.argument("vm_name", metavar="VM")
@click.option("-n", "lines", default=20, show_default=True, help="lines to show")
@click.option("-f", "--follow", is_flag=True, help="keep printing new lines (Ctrl-C stops)")
@_LAB
def console(vm_name: str, lines: int, follow: bool, lab_name: str | None) -> None:
    """Show a VM's serial console (the log on its current node)."""
    sub = _sub(lab_name)
    node = sub.owner(vm_name) or sub.spec.vm(vm_name).owner
    log = sub.layout.serial_log(vm_name, node)
    data = log.read_bytes() if log.exists() else b""
    for line in data.decode(errors="replace").splitlines()[-lines:]:
        click.echo(line)
    pos = len(data)
    while follow:
        time.sleep(0.5)
        with log.open("rb") as f:
            f.seek(pos)
            chunk = f.read()
        pos += len(chunk)
        if chunk:
            click.echo(chunk.decode(errors="replace"), nl=False)


@vm.command("migrate")
@click.argument("vm_name", metavar="VM")
@click.option("--to", "target", required=True, help="target node")
@click.option("--quick", is_flag=True, help="quick migration: pause, save, restore")
@click.option("--json", "as_json", is_flag=True, help="print one JSON object")
@click.option("--cluster", "cluster_url", default=None, metavar="URL", envvar="VMCLUSTER_URL",
              help="Through the cluster's API: the manager migrates (an intent).")
@_LAB
def migrate(vm_name: str, target: str, quick: bool, as_json: bool, cluster_url: str | None,
            lab_name: str | None) -> None:
    """Live-migrate VM to NODE over the network the policy picks (next one on failure).

    With --cluster (or $VMCLUSTER_URL) the cluster's manager does it (this command only
    watches; Ctrl-C asks it to cancel). With --lab the command drives it itself from the
    lab's admin side, with clients watching the VM (what the tour shows)."""
    if cluster_url is not None and lab_name is None:
        _migrate_through_api(cluster_url, vm_name, target, quick, as_json)
        return
    sub = _sub(lab_name)
    def err(m: str) -> None:
        return (click.echo(m, err=True))
    sub.on_event = err

    line = ProgressLine()

    def progress(h: MigrationHandle, p: MigrationProgress) -> None:
        exp = "-" if p.expected_downtime_ms is None else f"{p.expected_downtime_ms:.0f} ms"
        line.update(
            f"{h.vm} {h.source}->{h.target} via {h.network}: {p.status} pass {p.pass_no} "
            f"sent {p.sent_mib:.1f} MiB remaining {p.remaining_mib:.1f} MiB "
            f"dirty {p.dirty_mibps:.1f} MiB/s expected downtime {exp}",
            key=(h.network, p.status, p.pass_no),
        )

    try:
        result = migrate_observed(sub, vm_name, target, quick=quick, on_progress=progress)
    finally:
        line.done()
    if as_json:
        click.echo(json.dumps(result.to_json()))
    else:
        r: dict[str, Any] = result.to_json()
        if result.ok:
            click.echo(f"{vm_name}: {result.source} -> {result.target} via {result.network}: "
                       f"{result.passes} passes, {result.sent_mib:.1f} MiB, "
                       f"{result.total_s:.2f} s, downtime {_ms(result.downtime_ms)}, "
                       f"UDP blackout {_ms(r['blackout_ms'])}, TCP gap {_ms(r['client_gap_ms'])}"
                       f" (session {'kept' if r['tcp_session_survived'] else 'lost'}), "
                       f"ab {r['ab_failed']} failed / longest {_ms(r['ab_max_ms'])}, memory "
                       f"{'ok' if r['memory_ok'] else 'CORRUPT'}")
            bd = r.get("breakdown")
            if bd:
                click.echo(f"  blackout = {bd['before_pause_ms']:.0f} ms before the source "
                           f"paused + {bd['paused_ms']:.0f} ms paused until the target ran + "
                           f"{bd['after_resume_ms']:.0f} ms until clients were answered again")
    if not result.ok:
        raise MigrationError(
            f"migrating {vm_name} to {target} failed ({result.error}); "
            f"it still runs on {result.source}"
        )


def _migrate_through_api(url: str, vm_name: str, target: str, quick: bool,
                         as_json: bool) -> None:
    from vmcluster.cli.apiclient import api_request, resolve_access
    from vmcluster.cli.node import _watch
    from vmcluster.errors import UsageError

    if quick:
        raise UsageError("--quick is not an API intent yet; use --lab for a quick migration")
    access = resolve_access(url)
    it = api_request(access, "POST", f"/api/v1/vms/{vm_name}/migrate", {"to": target})
    final = _watch(access, it["id"], lambda m: click.echo(m, err=True))
    r = dict(final.get("result") or {})
    if as_json:
        click.echo(json.dumps({"intent": it["id"], "state": final["state"], **r}))
    elif final["state"] == "done":
        click.echo(f"{vm_name}: {r.get('source')} -> {r.get('target')} via {r.get('network')}"
                   f": {r.get('passes')} passes, {float(r.get('total_s') or 0):.2f} s, "
                   f"downtime {_ms(r.get('downtime_ms'))} (by the manager, intent {it['id']})")
    if final["state"] != "done":
        raise MigrationError(f"migrating {vm_name} to {target} {final['state']}: "
                             f"{r.get('error') or final.get('error')}")


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.0f} ms"


@vm.command("check-disk")
@click.argument("vm_name", metavar="VM")
@click.option("--json", "as_json", is_flag=True, help="print one JSON object")
@_LAB
def check_disk(vm_name: str, as_json: bool, lab_name: str | None) -> None:
    """Compare the blocks VM acknowledged (serial log) with its disk on the LUN (no stop)."""
    from vmcluster.csv.checkdisk import check_vm_disk
    from vmcluster.errors import UsageError

    sub = _sub(lab_name)
    spec_vm = sub.spec.vm(vm_name)
    if spec_vm.volume is None:
        raise UsageError(f"{vm_name} has no disk on a cluster shared volume; give it "
                         "`volume = ...` in the spec")
    logs = [sub.layout.serial_log(vm_name, n.name) for n in sub.spec.nodes]
    r = check_vm_disk(sub.layout.lun(spec_vm.volume), spec_vm.volume, vm_name, logs)
    if as_json:
        click.echo(json.dumps(r.to_json()))
        return
    click.echo(f"{vm_name}: acked {r.acked}, missing {r.missing}, corrupt {r.corrupt} "
               f"({r.slots} slots at {r.offset >> 20} MiB of {spec_vm.volume}, newest on disk "
               f"{r.newest_on_disk}) -> {'OK' if r.ok else 'LOST WRITES'}")
    if not r.ok:
        raise SystemExit(1)
