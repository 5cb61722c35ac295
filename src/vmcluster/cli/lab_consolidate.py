"""``vmcluster lab consolidate``: the power policy's plan for the real lab, applied on request.

Registered under ``lab`` through ``_SUBCOMMANDS`` in :mod:`vmcluster.cli.main`. Like
hbal, it prints the plan and changes nothing unless ``--apply`` is given.
"""

from __future__ import annotations

import json
from collections.abc import Callable

import click

from vmcluster.cli.apiclient import api_request, resolve_access
from vmcluster.cli.common import lab_option
from vmcluster.cli.node import _watch
from vmcluster.control.consolidate import ConsolidationPlan, PowerGuard, make_plan, observe
from vmcluster.control.consolidate_apply import ApplyReport, Step, apply, store_guard
from vmcluster.errors import MigrationError
from vmcluster.lab.lab import resolve_lab
from vmcluster.lab.services import lab_store, services_file
from vmcluster.lab.substrate import LabSubstrate

__all__ = ["consolidate"]


@click.command("consolidate")
@lab_option("name")
@click.option("--policy", default="ours", show_default=True,
              help="ours, lr-mmt-1.2, thr-mmt-0.8 (any <detector>-<selection>[-<param>])")
@click.option("--apply", "do_apply", is_flag=True,
              help="perform the plan: live migrations, then power the emptied nodes off")
@click.option("--seed", default=0, show_default=True, help="seed for random VM selection (rs)")
@click.option("--json", "as_json", is_flag=True, help="print one JSON object")
def consolidate(name: str | None, policy: str, do_apply: bool, seed: int, as_json: bool) -> None:
    """Show which VMs the power policy would move where and which nodes it would power off."""
    sub = LabSubstrate(resolve_lab(name))

    def err(msg: str) -> None:
        click.echo(msg, err=True)

    sub.on_event = err
    err(f"lab {sub.layout.name}: measuring utilisation ...")
    the_plan = make_plan(observe(sub, sub.spec), sub.spec, policy, seed, guard=_guard(sub))
    if not as_json:
        _show(the_plan)
    report: ApplyReport | None = None
    if do_apply and not the_plan.empty:
        report = _apply(sub, the_plan, err)
    elif do_apply:
        err("nothing to do")
    if as_json:
        click.echo(json.dumps({"lab": sub.layout.name, "plan": the_plan.to_json(),
                               "applied": None if report is None else report.to_json()}))
    elif report is not None:
        _show_report(report)
    if report is not None and not report.ok:
        raise MigrationError("; ".join(report.errors))


def _guard(sub: LabSubstrate) -> PowerGuard:
    """What must stay on: the etcd quorum and the manager's node, when there is a store."""

    if not services_file(sub.layout).exists():
        return PowerGuard()

    with lab_store(sub.layout) as ls:
        got: PowerGuard = ls.call(store_guard, ls.state)
        return got


def _apply(sub: LabSubstrate, the_plan: ConsolidationPlan, err: Callable[[str], None]
           ) -> ApplyReport:
    """The plan shown, carried out: by the cluster's elected manager when the lab runs a
    control plane (an intent through its API, watched here; Ctrl-C cancels), else here."""

    if not services_file(sub.layout).exists():
        return apply(sub, sub.spec, the_plan, on_step=lambda s: err(_step_line(s)))

    access = resolve_access(None, sub.layout.name)
    it = api_request(access, "POST", "/api/v1/consolidations", {"plan": the_plan.to_json()})
    err(f"plan handed to the manager: intent {it['id']}")
    final = _watch(access, it["id"], err)
    got = dict(final.get("result") or {})
    if final["state"] != "done" and not got:
        return ApplyReport(errors=(f"the consolidation {final['state']}: "
                                   f"{final.get('error')}",),
                           cancelled=final["state"] == "cancelled")
    return ApplyReport.from_json(got)


def _step_line(s: Step) -> str:
    return f"  {s.message}" if s.kind == "progress" else f"[{s.kind}] {s.message}"


def _show(p: ConsolidationPlan) -> None:
    click.echo(f"policy {p.policy}: {len(p.migrations)} migration(s), "
               f"power on {', '.join(p.power_on) or '-'}, "
               f"power off {', '.join(n for n, _ in p.power_off) or '-'}")
    if p.overloaded:
        click.echo(f"overloaded: {', '.join(p.overloaded)}")
    for m in p.migrations:
        conv = "" if m.converges else "  (will not converge: forced)"
        click.echo(f"  move {m.vm:<10} {m.source} -> {m.target} via {m.network:<10} "
                   f"predicted {m.predicted_s:6.2f} s, downtime {m.predicted_downtime_ms:6.1f} ms, "
                   f"{m.predicted_mib:.0f} MiB{conv}")
    for node, why in p.power_off:
        click.echo(f"  power off {node} ({why})")
    for node in p.power_on:
        click.echo(f"  power on  {node} (load needs it)")
    for node, why in p.kept_on:
        click.echo(f"  keep on   {node} ({why})")
    for vm, why in p.skipped:
        click.echo(f"  not moving {vm}: {why}")
    click.echo(f"  {'node':<8} {'state':<11} {'CPU':<16} {'watts':<16}  vms")
    for n in p.nodes:
        click.echo(f"  {n.node:<8} {n.state_before:<3} -> {n.state_after:<4} "
                   f"{n.util_before:6.1%} -> {n.util_after:6.1%} "
                   f"{n.watts_before:6.1f} -> {n.watts_after:6.1f}  "
                   f"{','.join(n.vms_before) or '-'} -> {','.join(n.vms_after) or '-'}")
    hours = p.horizon_s / 3600.0
    click.echo(f"  power {p.watts_before:.1f} W -> {p.watts_after:.1f} W; energy over "
               f"{hours:g} h {p.watts_before * hours:.1f} Wh -> {p.watts_after * hours:.1f} Wh "
               f"(power models: {', '.join(sorted({n.power_model for n in p.nodes}))})")
    if p.empty:
        click.echo("  nothing to do")


def _show_report(r: ApplyReport) -> None:
    for res in r.migrations:
        state = "ok" if res.ok else f"FAILED ({res.error})"
        click.echo(f"migrated {res.vm} {res.source} -> {res.target} via {res.network}: {state}, "
                   f"{res.total_s:.2f} s, downtime {res.downtime_ms} ms, {res.sent_mib:.1f} MiB")
    if r.powered_on:
        click.echo(f"powered on: {', '.join(r.powered_on)}")
    if r.powered_off:
        click.echo(f"powered off: {', '.join(r.powered_off)}")
    for node, why in r.kept_on:
        click.echo(f"kept on: {node} ({why})")
