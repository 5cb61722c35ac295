"""``vmcluster vm``: create, list, start, stop, delete, pause, resume, console and migrate
VMs (through the cluster's API; a lab without a control plane through its agents)."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import click

from vmcluster.cli.apiclient import ClusterAccess, api_request, resolve_access
from vmcluster.cli.cluster import cluster_option
from vmcluster.cli.common import ProgressLine, lab_option
from vmcluster.cli.node import _watch
from vmcluster.csv.checkdisk import check_vm_disk
from vmcluster.errors import InputError, MigrationError, UsageError, VmclusterError
from vmcluster.lab.lab import resolve_lab, wait_ready
from vmcluster.lab.observe import migrate_observed
from vmcluster.lab.services import lab_spec, services_file
from vmcluster.lab.substrate import LabSubstrate
from vmcluster.model.spec import vm_table
from vmcluster.substrate.protocol import MigrationHandle, MigrationParams, MigrationProgress

__all__ = ["vm"]

_LAB = lab_option()


def _sub(lab_name: str | None) -> LabSubstrate:
    layout = resolve_lab(lab_name)
    return LabSubstrate(layout, lab_spec(layout))  # with the VMs defined since `lab up`


@click.group()
def vm() -> None:
    """Operate the lab's VMs."""


def _api(cluster_url: str | None, lab_name: str | None) -> ClusterAccess | None:
    """The cluster's API, when there is one to go through: ``--cluster`` (or
    $VMCLUSTER_URL), or a lab that runs a control plane; None for a lab of agents only
    (its commands then act on the agents themselves)."""
    if cluster_url is not None and lab_name is None:
        return resolve_access(cluster_url)

    layout = resolve_lab(lab_name)
    return resolve_access(None, layout.name) if services_file(layout).exists() else None


@vm.command("list")
@cluster_option
@click.option("--json", "as_json", is_flag=True)
def list_(cluster_url: str | None, lab_name: str | None, as_json: bool) -> None:
    """The VMs: where each runs and what is wanted of it (with --cluster, as the cluster's
    API says; with --lab, as the lab's agents say)."""
    if cluster_url is not None and lab_name is None:
        got = api_request(resolve_access(cluster_url), "GET", "/api/v1/vms")
        if as_json:
            click.echo(json.dumps(got))
            return
        for v in got["vms"]:
            d = v["definition"]
            click.echo(f"{v['name']:<10} {v['state']:<9} {v['node'] or '-':<8} "
                       f"{d.get('address', '-'):<14} desired {v['desired']}, "
                       f"{d.get('memory_mib')} MiB, {d.get('vcpus', 1)} vCPU")
        return
    sub = _sub(lab_name)
    vms = sub.status().vms
    if as_json:
        click.echo(json.dumps({"vms": [
            {"name": v.name, "node": v.node, "state": v.state,
             "address": str(sub.spec.vm(v.name).address)} for v in vms]}))
        return
    for v in vms:
        click.echo(f"{v.name:<10} {v.state:<9} {v.node or '-':<8} {sub.spec.vm(v.name).address}")


def _carried(access: ClusterAccess, it: dict[str, Any], what: str) -> dict[str, Any]:
    """Watch an intent to its end; its result, or one error line."""

    final = _watch(access, it["id"], lambda m: click.echo(m, err=True))
    result = dict(final.get("result") or {})
    if final["state"] != "done":
        why = result.get("error") or final.get("error")
        raise VmclusterError(f"{what} {final['state']}: {why}")
    return result


def _pause_command(name: str, doc: str) -> None:
    @vm.command(name, help=doc)
    @click.argument("vm_name", metavar="VM")
    @cluster_option
    def cmd(vm_name: str, cluster_url: str | None, lab_name: str | None) -> None:
        access = _api(cluster_url, lab_name)
        if access is None:  # a lab of agents only
            sub = _sub(lab_name)
            getattr(sub, f"{name}_vm")(vm_name)
            click.echo(f"{vm_name}: {sub.status().vm(vm_name).state}")
            return
        got = _carried(access, api_request(access, "POST", f"/api/v1/vms/{vm_name}/{name}"),
                       f"{name} {vm_name}")
        click.echo(f"{vm_name}: {got.get('state')} on {got.get('node')}")


_pause_command("pause", "Pause a VM's guest where it runs (the manager does it).")
_pause_command("resume", "Resume a paused VM's guest.")


@vm.command("start")
@click.argument("vm_name", metavar="VM")
@click.option("--on", "node", default=None, help="node (default: its owner, or where the "
              "placement rules say)")
@cluster_option
def start(vm_name: str, node: str | None, cluster_url: str | None, lab_name: str | None) -> None:
    """Start a VM: its desired state becomes running and the manager starts it."""

    access = _api(cluster_url, lab_name)
    if access is None:  # a lab of agents only
        sub = _sub(lab_name)
        node = node or sub.spec.vm(vm_name).owner
        sub.start_vm(vm_name, node)
        wait_ready(sub.layout, vm_name, node, 120)
        click.echo(f"{vm_name}: running on {node}")
        return
    it = api_request(access, "POST", f"/api/v1/vms/{vm_name}/start",
                     {"on": node} if node else None)
    got = _carried(access, it, f"starting {vm_name}")
    if access.netns is not None:  # a lab's: wait for its guest, as `lab up` does
        wait_ready(resolve_lab(lab_name), vm_name, str(got["node"]), 120)
    click.echo(f"{vm_name}: running on {got['node']}")


@vm.command("stop")
@click.argument("vm_name", metavar="VM")
@click.option("--force", is_flag=True, help="power it off at once (no guest shutdown)")
@click.option("--timeout", "timeout_s", type=click.FloatRange(min=0, max=600), default=None,
              help="seconds the guest has to shut down [default: its shutdown_timeout_s, 30]")
@cluster_option
def stop(vm_name: str, force: bool, timeout_s: float | None, cluster_url: str | None,
         lab_name: str | None) -> None:
    """Stop a VM: its guest is asked to shut down (the ACPI power button) and powered off
    if it has not within the timeout; --force powers it off at once. Its desired state
    becomes stopped, so nothing starts it again until `vmcluster vm start`."""
    access = _api(cluster_url, lab_name)
    if access is None:
        sub = _sub(lab_name)
        sub.stop_vm(vm_name)
        click.echo(f"{vm_name}: {sub.status().vm(vm_name).state}")
        return
    body = {"force": force, **({"timeout_s": timeout_s} if timeout_s is not None else {})}
    got = _carried(access, api_request(access, "POST", f"/api/v1/vms/{vm_name}/stop", body),
                   f"stopping {vm_name}")
    how = {"shutdown": "shut down by its guest", "quit": "powered off",
           "killed": "killed (its QEMU did not quit)"}.get(str(got.get("how")), "stopped")
    click.echo(f"{vm_name}: {how}" + (f" (was on {got['node']})" if got.get("node") else ""))


def _definition(vm_name: str, from_file: Path | None, given: dict[str, Any]) -> dict[str, Any]:
    """A VM's definition: the file's table (if any), then the options given."""
    table: dict[str, Any] = {} if from_file is None else vm_table(from_file)
    table.update({k: v for k, v in given.items() if v is not None})
    if table.setdefault("name", vm_name) != vm_name:
        raise InputError(f"{from_file}: defines {table['name']!r}, not {vm_name!r}")
    return table


@vm.command("create")
@click.argument("vm_name", metavar="VM")
@click.option("--owner", "--node", "owner", default=None,
              help="its home node (required, here or in --from)")
@click.option("--memory-mib", "--memory", "memory_mib", type=click.IntRange(min=1),
              default=None, help="memory in MiB (required, here or in --from)")
@click.option("--vcpus", type=click.IntRange(min=1), default=None)
@click.option("--disk-mib", "--disk", "disk_mib", type=click.IntRange(min=1), default=None,
              help="disk size in MiB (a plain disk, or on --volume)")
@click.option("--disk-gib", type=click.IntRange(min=1), default=None,
              help="disk size in GiB (instead of --disk-mib)")
@click.option("--volume", default=None, help="the cluster shared volume for its disk (default: the "
              "cluster's first, if it has one)")
@click.option("--address", default=None, help="its address on the public network "
              "(default: the next free one)")
@click.option("--preferred-owners", default=None, metavar="N1,N2",
              help="nodes to fail over to, in order")
@click.option("--boot", type=click.Choice(["kernel", "bios", "uefi"]), default=None,
              help="kernel (the hosts' guest kernel, the default), or bios or uefi: its "
              "own disk boots")
@click.option("--from", "from_file", type=click.Path(dir_okay=False, path_type=Path),
              default=None, help="a TOML file with the VM's table (keys as in a spec's [[vms]])")
@click.option("--start/--no-start", "start_it", default=False, show_default=True,
              help="start it once it is defined")
@click.option("--json", "as_json", is_flag=True, help="print the API's object")
@cluster_option
def create(vm_name: str, owner: str | None, memory_mib: int | None, vcpus: int | None,
           disk_mib: int | None, disk_gib: int | None, volume: str | None,
           address: str | None, preferred_owners: str | None, boot: str | None,
           from_file: Path | None, start_it: bool, as_json: bool, cluster_url: str | None,
           lab_name: str | None) -> None:
    """Define a VM in the cluster (checked as a spec's [[vms]] table is); --start also
    starts it. (`vmcluster vm import IMAGE` makes one from an existing disk.)"""
    if disk_gib is not None:
        if disk_mib is not None:
            raise UsageError("give --disk-gib or --disk-mib, not both")
        disk_mib = disk_gib * 1024
    prefs = None if preferred_owners is None else [
        n.strip() for n in preferred_owners.split(",") if n.strip()]
    body = _definition(vm_name, from_file, {
        "owner": owner, "memory_mib": memory_mib, "vcpus": vcpus, "disk_mib": disk_mib,
        "volume": volume, "address": address, "preferred_owners": prefs, "boot": boot})
    access = _api(cluster_url, lab_name)
    if access is None:
        raise InputError("this lab runs no control plane: VMs are defined in a cluster; "
                         "use a lab brought up with one, or --cluster URL")
    got = api_request(access, "POST", "/api/v1/vms", {**body, "start": start_it})
    if start_it:
        ran = _carried(access, got["intent"], f"starting {vm_name}")
        got = {**got, "node": ran.get("node"), "state": "running", "desired": "running"}
        if access.netns is not None:
            wait_ready(resolve_lab(lab_name), vm_name, str(ran["node"]), 120)
    if as_json:
        click.echo(json.dumps(got))
        return
    d = got["definition"]
    click.echo(f"{vm_name}: defined ({d['memory_mib']} MiB, {d.get('vcpus', 1)} vCPU, owner "
               f"{d['owner']}, address {d.get('address', '-')})"
               + (f"; running on {got['node']}" if start_it else
                  f"; `vmcluster vm start {vm_name}` starts it"))


LIST_KEYS = ("preferred_owners", "live_migration_networks", "allowed_nodes")


def _setting(item: str) -> tuple[str, Any]:
    """``key=value``: a number, true/false, null (back to the default), a comma-separated
    list for the list keys, or else a string."""
    key, eq, raw = item.partition("=")
    if not eq or not key:
        raise UsageError(f"{item!r} is not key=value (e.g. memory_mib=512)")
    if raw == "null":
        return key, None
    if key in LIST_KEYS:
        return key, [n.strip() for n in raw.split(",") if n.strip()]
    try:
        return key, json.loads(raw)
    except ValueError:
        return key, raw


@vm.command("set")
@click.argument("vm_name", metavar="VM")
@click.argument("settings", nargs=-1, required=True, metavar="KEY=VALUE...")
@click.option("--json", "as_json", is_flag=True, help="print the API's object")
@cluster_option
def set_(vm_name: str, settings: tuple[str, ...], as_json: bool, cluster_url: str | None,
         lab_name: str | None) -> None:
    """Change a VM's definition: memory_mib, vcpus while it is stopped; preferred_owners,
    live_migration_networks (comma-separated), max_downtime_ms, priority, anti_affinity,
    shutdown_timeout_s, allow_postcopy, migration_deltas at any time; KEY=null puts one
    back to its default."""
    access = _api(cluster_url, lab_name)
    if access is None:
        raise InputError("this lab runs no control plane: there is no definition to change")
    got = api_request(access, "PATCH", f"/api/v1/vms/{vm_name}",
                      dict(_setting(s) for s in settings))
    if as_json:
        click.echo(json.dumps(got))
        return
    d = got["definition"]
    click.echo(f"{vm_name}: " + ", ".join(f"{k}={json.dumps(d.get(k))}"
                                          for k, _ in map(_setting, settings)))


@vm.command("import")
@click.argument("image", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--name", "vm_name", required=True, help="the new VM's name")
@click.option("--owner", required=True, help="its home node")
@click.option("--memory-mib", "--memory", "memory_mib", type=click.IntRange(min=1),
              required=True)
@click.option("--vcpus", type=click.IntRange(min=1), default=1, show_default=True)
@click.option("--volume", default=None, help="the shared volume for its disk (default: the "
              "cluster's first; 'none': the cluster's file storage)")
@click.option("--address", default=None, help="its address on the public network")
@click.option("--boot", type=click.Choice(["bios", "uefi", "kernel"]), default="bios",
              show_default=True, help="bios or uefi: the image's own boot loader under "
              "SeaBIOS or OVMF; kernel: the hosts' guest kernel (the lab's test guests)")
@click.option("--start/--no-start", "start_it", default=False, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="print the API's object")
@cluster_option
def import_(image: Path, vm_name: str, owner: str, memory_mib: int, vcpus: int,
            volume: str | None, address: str | None, boot: str, start_it: bool,
            as_json: bool, cluster_url: str | None, lab_name: str | None) -> None:
    """Import IMAGE (raw, qcow2, vmdk, vhd, vhdx: what qemu-img reads) as the disk of a new
    VM: it is uploaded to a host, converted onto a shared volume, and the VM is defined
    (the seed's P2V, for Linux). Nothing is created if the image cannot be read or does
    not fit."""
    access = _api(cluster_url, lab_name)
    if access is None:
        raise InputError("this lab runs no control plane: there is no API to import into")
    params = {"name": vm_name, "owner": owner, "memory_mib": memory_mib, "vcpus": vcpus,
              "start": "true" if start_it else "false", "boot": boot,
              **({"volume": volume} if volume is not None else {}),
              **({"address": address} if address else {})}
    got = api_request(access, "POST", f"/api/v1/vms/import?{urlencode(params)}",
                      timeout_s=3600.0, upload=image)
    if start_it:
        got = {**got, **_carried(access, got["intent"], f"starting {vm_name}")}
    if as_json:
        click.echo(json.dumps(got))
        return
    imp = got["import"]["image"]
    click.echo(f"{vm_name}: imported a {imp['format']} image ({imp['disk_mib']} MiB) onto "
               f"{got['import']['disk']}" + (f"; running on {got['node']}" if start_it else
                                             "; start it with `vmcluster vm start`"))


@vm.command("delete")
@click.argument("vm_name", metavar="VM")
@click.option("--keep-disk", is_flag=True, help="keep its disk (a region of its shared "
              "volume, or its disk file); only the definition goes")
@click.option("--force", is_flag=True, help="a running VM is powered off first")
@cluster_option
def delete(vm_name: str, keep_disk: bool, force: bool, cluster_url: str | None,
           lab_name: str | None) -> None:
    """Delete a stopped VM: its disk, then its definition (refused while it runs, unless
    --force powers it off first)."""
    access = _api(cluster_url, lab_name)
    if access is None:
        raise InputError("this lab runs no control plane: there is no definition to delete")
    if force and api_request(access, "GET", f"/api/v1/vms/{vm_name}").get("node"):
        _carried(access, api_request(access, "POST", f"/api/v1/vms/{vm_name}/stop",
                                     {"force": True}), f"stopping {vm_name}")
    query = "?keep_disk=true" if keep_disk else ""
    it = api_request(access, "DELETE", f"/api/v1/vms/{vm_name}{query}")
    got = _carried(access, it, f"deleting {vm_name}")
    disk = got.get("disk")
    click.echo(f"{vm_name}: deleted" + (f" with its disk ({disk})" if disk else
                                        " (its disk kept)" if keep_disk else ""))


@vm.command("console")
@click.argument("vm_name", metavar="VM")
@click.option("-n", "lines", default=20, show_default=True, help="lines to show")
@click.option("-f", "--follow", is_flag=True, help="keep printing new lines (Ctrl-C stops)")
@cluster_option
def console(vm_name: str, lines: int, follow: bool, cluster_url: str | None,
            lab_name: str | None) -> None:
    """Show a VM's serial console (through the cluster's API, from the host it runs on)."""
    access = _api(cluster_url, lab_name)
    if access is not None:
        got = api_request(access, "GET", f"/api/v1/vms/{vm_name}/console?tail=65536")
        for line in str(got["data"]).splitlines()[-lines:]:
            click.echo(line)
        node, offset = got["node"], int(got["offset"])
        while follow:  # until Ctrl-C, as tail -f
            time.sleep(0.5)
            got = api_request(access, "GET", f"/api/v1/vms/{vm_name}/console?offset={offset}")
            if got["node"] != node:
                click.echo(f"[{vm_name} now runs on {got['node']}]")
                node = got["node"]
                got = api_request(access, "GET", f"/api/v1/vms/{vm_name}/console?tail=4096")
            offset = int(got["offset"])
            if got["data"]:
                click.echo(got["data"], nl=False)
        return
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


def _mode(r: dict[str, Any]) -> str:
    """", by post-copy" etc.: the mode the migration was chosen to take, when it says."""
    mode = r.get("mode")
    return f" by {mode}" if mode else ""


@vm.command("migrate")
@click.argument("vm_name", metavar="VM")
@click.option("--to", "target", default=None, help="target node")
@click.option("--quick", is_flag=True, help="quick migration: pause, save, restore")
@click.option("--downtime-ms", type=click.FloatRange(min=1, max=60000), default=None,
              help="downtime budget (default: the VM's max_downtime_ms)")
@click.option("--on-no-convergence", type=click.Choice(["throttle", "abort", "force"]),
              default=None, help="if it does not fit the budget: throttle the guest, then "
              "give up (default); give up at once; or force it through (a longer pause)")
@click.option("--cancel", is_flag=True, help="cancel VM's migration in flight (through the "
              "cluster's API): the VM stays on its source unless the switchover came first")
@click.option("--json", "as_json", is_flag=True, help="print one JSON object")
@click.option("--cluster", "cluster_url", default=None, metavar="URL", envvar="VMCLUSTER_URL",
              help="Through the cluster's API: the manager migrates (an intent).")
@_LAB
def migrate(vm_name: str, target: str | None, quick: bool, downtime_ms: float | None,
            on_no_convergence: str | None, cancel: bool, as_json: bool,
            cluster_url: str | None, lab_name: str | None) -> None:
    """Live-migrate VM to NODE over the network the policy picks (next one on failure).

    With --cluster (or $VMCLUSTER_URL) the cluster's manager does it (this command only
    watches; Ctrl-C asks it to cancel, killing it changes nothing). With --lab the
    command drives it itself from the lab's admin side, with clients watching the VM
    (what the tour shows); the store records it all the same, and the cluster settles it
    if this command dies. A migration that does not fit its downtime budget is given up
    (the VM stays where it is) unless --on-no-convergence force says otherwise."""
    if cancel:
        if target is not None or quick:
            raise UsageError("--cancel takes the VM only, not --to or --quick")
        _cancel_migration(resolve_access(cluster_url, lab_name), vm_name, as_json)
        return
    if target is None:
        raise UsageError("which node? give --to NODE (or --cancel to stop a migration)")
    if quick and (downtime_ms is not None or on_no_convergence is not None):
        raise UsageError("a quick migration has no downtime budget to keep: drop --quick or "
                         "--downtime-ms/--on-no-convergence")
    if cluster_url is not None and lab_name is None:
        _migrate_through_api(cluster_url, vm_name, target, quick, as_json,
                             downtime_ms, on_no_convergence)
        return
    sub = _sub(lab_name)
    params = None
    if downtime_ms is not None or on_no_convergence is not None:
        params = MigrationParams.asked(sub.spec.vm(vm_name).max_downtime_ms, downtime_ms,
                                       on_no_convergence, sub.spec.vm(vm_name).on_no_convergence)
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
        result = migrate_observed(sub, vm_name, target, quick=quick, params=params,
                                  on_progress=progress)
    finally:
        line.done()
    if as_json:
        click.echo(json.dumps(result.to_json()))
    else:
        r: dict[str, Any] = result.to_json()
        if result.ok:
            click.echo(f"{vm_name}: {result.source} -> {result.target} via {result.network}"
                       f"{_mode(r)}: {result.passes} passes, {result.sent_mib:.1f} MiB, "
                       f"{result.total_s:.2f} s, downtime {_ms(result.downtime_ms)}"
                       f"{_over(r)}, "
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


def _cancel_migration(access: ClusterAccess, vm_name: str, as_json: bool) -> None:
    """Cancel the migration of ``vm_name`` the cluster is carrying out (its newest migrate
    intent not yet ended), watch it end and say where the VM runs."""
    got = api_request(access, "GET", "/api/v1/intents?limit=1000")["intents"]
    live = [i for i in got if i["kind"] == "migrate" and i["args"].get("vm") == vm_name
            and i["state"] in ("pending", "running", "cancelling")]
    if not live:
        raise UsageError(f"no migration of {vm_name} is in flight (none asked through the "
                         "cluster's API is pending or running)")
    it = live[0]
    api_request(access, "POST", f"/api/v1/intents/{it['id']}/cancel")
    final = _watch(access, it["id"], lambda m: click.echo(m, err=True), timeout_s=600)
    r = dict(final.get("result") or {})
    where = (r.get("target") if final["state"] == "done" and r.get("ok")
             else r.get("source") or "its source")
    if as_json:
        click.echo(json.dumps({"intent": it["id"], "state": final["state"], "vm": vm_name,
                               "node": where, **r}))
    elif final["state"] == "done":
        click.echo(f"{vm_name}: the migration ended before the cancel could stop it; it runs "
                   f"on {where}")
    else:
        click.echo(f"{vm_name}: migration {final['state']} "
                   f"({r.get('error') or final.get('error') or 'no error'})")


def _migrate_through_api(url: str, vm_name: str, target: str, quick: bool,
                         as_json: bool, downtime_ms: float | None = None,
                         on_no_convergence: str | None = None) -> None:

    access = resolve_access(url)
    body: dict[str, Any] = {"to": target, "mode": "quick" if quick else "live"}
    if downtime_ms is not None:
        body["downtime_ms"] = downtime_ms
    if on_no_convergence is not None:
        body["on_no_convergence"] = on_no_convergence
    it = api_request(access, "POST", f"/api/v1/vms/{vm_name}/migrate", body)
    final = _watch(access, it["id"], lambda m: click.echo(m, err=True))
    r = dict(final.get("result") or {})
    if as_json:
        click.echo(json.dumps({"intent": it["id"], "state": final["state"], **r}))
    elif final["state"] == "done":
        click.echo(f"{vm_name}: {r.get('source')} -> {r.get('target')} via {r.get('network')}"
                   f"{_mode(r)}: {r.get('passes')} passes, {float(r.get('total_s') or 0):.2f} s, "
                   f"downtime {_ms(r.get('downtime_ms'))}{_over(r)} (by the manager, intent "
                   f"{it['id']})")
    if final["state"] != "done":
        raise MigrationError(f"migrating {vm_name} to {target} {final['state']}: "
                             f"{r.get('error') or final.get('error')}")


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.0f} ms"


def _over(result: dict[str, Any]) -> str:
    """A note when a migration's downtime went over its budget (never silently)."""
    if not result.get("over_budget"):
        return ""
    return (f" (OVER its {float(result.get('downtime_budget_ms') or 0):g} ms budget"
            f"{', forced through as asked' if result.get('forced') else ''})")


@vm.command("check-disk")
@click.argument("vm_name", metavar="VM")
@click.option("--json", "as_json", is_flag=True, help="print one JSON object")
@_LAB
def check_disk(vm_name: str, as_json: bool, lab_name: str | None) -> None:
    """Compare the blocks VM acknowledged (serial log) with its disk on the LUN (no stop)."""

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
