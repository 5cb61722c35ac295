"""``vmcluster lab kill|freeze|restart|dirty``: one fault at a time, by hand.

What the fault campaign (``lab chaos``) injects, for an operator to try alone:
kill or freeze one part of a host (etcd, agent, manager, heartbeats, api,
vmclusterd, or one VM's QEMU), restart a part as an operator would, and set a
lab guest's dirty rate while it runs (to make a migration long or impossible).
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import click

from vmcluster.cli.common import lab_option
from vmcluster.errors import UsageError
from vmcluster.lab.chaos import pick, run_campaign, table
from vmcluster.lab.faults import (
    PARTS,
    SIGNALS,
    blackhole_etcd,
    freeze_part,
    kill_part,
    restart_part,
)
from vmcluster.lab.guestctl import guest_request
from vmcluster.lab.lab import resolve_lab
from vmcluster.lab.services import lab_store
from vmcluster.lab.substrate import LabSubstrate

__all__ = ["blackhole", "chaos", "dirty", "freeze", "kill", "restart"]

_NAME = lab_option("name")
_JSON = click.option("--json", "as_json", is_flag=True, help="print one JSON object")
_PART = click.argument("part", metavar="PART", type=click.Choice(list(PARTS)))


def _out(as_json: bool, data: dict[str, object], text: str) -> None:
    click.echo(json.dumps(data) if as_json else text)


@click.command("kill")
@click.argument("node", metavar="NODE")
@_PART
@click.argument("vm", metavar="[VM]", required=False)
@click.option("--signal", "sig", type=click.Choice(list(SIGNALS)), default="KILL",
              show_default=True)
@_NAME
@_JSON
def kill(node: str, part: str, vm: str | None, sig: str, name: str | None,
         as_json: bool) -> None:
    """Kill one PART of NODE: etcd, agent, manager, heartbeats, api, vmclusterd,
    watchdog, or `qemu VM` (that VM's QEMU on NODE). vmclusterd starts a killed part
    again; a killed vmclusterd stops petting its watchdog, which fences the host."""
    pids = kill_part(resolve_lab(name), node, part, vm, sig)
    what = f"{vm}'s QEMU" if part == "qemu" else part
    _out(as_json, {"node": node, "part": part, "vm": vm, "signal": sig, "pids": pids},
         f"{node}: {what} sent SIG{sig} (pid {', '.join(map(str, pids))})")


@click.command("freeze")
@click.argument("node", metavar="NODE")
@_PART
@click.argument("vm", metavar="[VM]", required=False)
@click.option("--for", "seconds", type=float, required=True, help="seconds frozen")
@_NAME
@_JSON
def freeze(node: str, part: str, vm: str | None, seconds: float, name: str | None,
           as_json: bool) -> None:
    """Freeze one PART of NODE (SIGSTOP) for --for seconds, then let it go on (SIGCONT):
    a manager frozen past its lease, an agent that hangs, a QEMU that stops answering."""
    pids = freeze_part(resolve_lab(name), node, part, seconds, vm)
    _out(as_json, {"node": node, "part": part, "vm": vm, "seconds": seconds, "pids": pids},
         f"{node}: {part} frozen {seconds:g} s and running again")


@click.command("blackhole")
@click.argument("node", metavar="NODE")
@click.option("--for", "seconds", type=click.FloatRange(0, 3600, min_open=True),
              required=True, help="seconds cut off")
@_NAME
@_JSON
def blackhole(node: str, seconds: float, name: str | None, as_json: bool) -> None:
    """Cut NODE's etcd member off from its peers (raft traffic dropped) for S seconds; the
    host and its other traffic stay fine. The cut is mended also if interrupted."""
    layout = resolve_lab(name)
    blackhole_etcd(layout, node, True)
    try:
        time.sleep(seconds)
    finally:
        blackhole_etcd(layout, node, False)
    _out(as_json, {"node": node, "seconds": seconds},
         f"{node}'s etcd member was cut off from its peers for {seconds:g} s")


@click.command("restart")
@click.argument("node", metavar="NODE")
@click.argument("part", metavar="PART",
                type=click.Choice([p for p in PARTS if p not in ("qemu", "watchdog")]))
@_NAME
@_JSON
def restart(node: str, part: str, name: str | None, as_json: bool) -> None:
    """Restart one PART of NODE as an operator would (SIGTERM; vmclusterd is started
    again as `systemctl restart` would). Its VMs keep running."""
    pids = restart_part(resolve_lab(name), node, part)
    _out(as_json, {"node": node, "part": part, "pids": pids},
         f"{node}: {part} restarted (pid {', '.join(map(str, pids))})")


@click.command("dirty")
@click.argument("vm", metavar="VM")
@click.argument("mibps", metavar="MIBPS", type=float)
@click.option("--wws", "wws_mib", type=float, help="writable working set, MiB")
@_NAME
@_JSON
def dirty(vm: str, mibps: float, wws_mib: float | None, name: str | None,
          as_json: bool) -> None:
    """Set how fast lab VM dirties its memory (MiB/s), and its working set, while it runs."""
    if not 0 <= mibps <= 100000:
        raise UsageError(f"MIBPS {mibps:g}: a dirty rate is 0 to 100000 MiB/s")
    sub = LabSubstrate(resolve_lab(name))
    if sub.spec.vm(vm).address is None:
        raise UsageError(f"VM {vm} has no address in the lab's spec to reach its workload")
    addr = str(sub.spec.vm(vm).address)
    replies = [guest_request(sub.layout, addr, f"RATE {mibps:g}")]
    if wws_mib is not None:
        replies.append(guest_request(sub.layout, addr, f"WWS {wws_mib:g}"))
    bad = [r for r in replies if not r.startswith("OK")]
    if bad:
        raise UsageError(f"VM {vm}'s workload refused: {bad[0]}")
    _out(as_json, {"vm": vm, "replies": replies}, f"{vm}: {'; '.join(replies)}")


@click.command("chaos")
@click.option("--scenario", "names", multiple=True, metavar="NAME",
              help="run only this scenario (repeatable); default: all")
@click.option("--ci", "ci_only", is_flag=True, help="only the short subset the tests run")
@click.option("--list", "list_only", is_flag=True, help="list the scenarios and exit")
@click.option("--part", "part", default="1/1", metavar="K/N", show_default=True,
              help="of the migration fault matrix's cells, only every N-th from the K-th "
                   "(N runs of the campaign with K = 1..N run each cell once)")
@click.option("--out", "out_path", type=click.Path(dir_okay=False, path_type=Path),
              help="also write the rows as JSON to this file")
@_NAME
@_JSON
def chaos(names: tuple[str, ...], ci_only: bool, list_only: bool, part: str,
          out_path: Path | None, name: str | None, as_json: bool) -> None:
    """The fault campaign on the lab that is up: each scenario from a settled lab,
    injected, watched (every host's QEMUs every 50 ms: a VM running twice fails it),
    checked (every VM's disk against its acknowledged writes) and restored; one row each.
    Exit 1 if any scenario failed."""
    k, slash, n = part.partition("/")
    if not (slash and k.isdigit() and n.isdigit() and int(n) > 0):
        raise UsageError(f"--part {part!r}: K/N, as 1/2 (the first of two parts)")
    if list_only:
        for sc in pick(names, ci_only, (int(k) - 1, int(n))):
            click.echo(f"{sc.name:<30}{'ci' if sc.ci else '':<4}{sc.fault} -> {sc.expected}")
        return
    sub = LabSubstrate(resolve_lab(name))
    scenarios = pick(names, ci_only, (int(k) - 1, int(n)), hosts=len(sub.spec.nodes))
    with lab_store(sub.layout) as store:
        rows = run_campaign(sub, store, scenarios, say=lambda m: click.echo(m, err=True))
    doc = {"lab": sub.layout.name, "rows": [r.to_json() for r in rows],
           "passed": all(r.passed for r in rows)}
    if out_path is not None:
        out_path.write_text(json.dumps(doc, indent=1))
    if as_json:
        click.echo(json.dumps(doc))
    else:
        for line in table(rows):
            click.echo(line)
    if not doc["passed"]:
        raise SystemExit(1)
