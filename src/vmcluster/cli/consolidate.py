"""``vmcluster consolidate``: the power policy's plan for the cluster, as its API makes it
from the loads the hosts measured; applied on request by the elected manager.

Like hbal, it prints the plan and changes nothing unless ``--apply`` is given.
``lab consolidate`` is this command for a lab (and plans in-process for a lab without a
control plane).
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from typing import TypeVar
from urllib.parse import urlencode

import click

from vmcluster.cli.apiclient import ClusterAccess, api_request, resolve_access
from vmcluster.cli.cluster import cluster_option
from vmcluster.cli.node import _watch
from vmcluster.control.consolidate_apply import ApplyReport, Step
from vmcluster.control.plans import ClusterPlan
from vmcluster.errors import MigrationError
from vmcluster.lab.lab import resolve_lab

__all__ = ["consolidate", "err", "over_api", "plan_options", "present", "show_plan",
           "show_report", "step_line"]

Say = Callable[[str], None]
F = TypeVar("F", bound=Callable[..., object])


def plan_options(func: F) -> F:
    """--policy, --apply, --seed and --json, as `consolidate` and `lab consolidate` take them."""
    for option in reversed((
        click.option("--policy", default="ours", show_default=True,
                     help="ours, lr-mmt-1.2, thr-mmt-0.8 (any <detector>-<selection>[-<param>])"),
        click.option("--apply", "do_apply", is_flag=True,
                     help="perform the plan: live migrations, then power the emptied nodes off"),
        click.option("--seed", default=0, show_default=True,
                     help="seed for random VM selection (rs)"),
        click.option("--json", "as_json", is_flag=True, help="print one JSON object"),
    )):
        func = option(func)
    return func


@click.command("consolidate")
@cluster_option
@plan_options
def consolidate(cluster_url: str | None, lab_name: str | None, policy: str, do_apply: bool,
                seed: int, as_json: bool) -> None:
    """Show which VMs the power policy would move where and which nodes it would power
    off, from each VM's CPU as its host measured it; --apply has the manager do it."""
    if cluster_url is None and lab_name is None and not os.environ.get("VMCLUSTER_URL"):
        lab_name = resolve_lab(None).name  # the only lab that is up
    over_api(resolve_access(cluster_url, lab_name), policy, seed, do_apply, as_json,
             {"lab": lab_name} if lab_name else {})


def over_api(access: ClusterAccess, policy: str, seed: int, do_apply: bool, as_json: bool,
             extra: dict[str, object]) -> None:
    """The plan from the cluster's API, shown, and applied by its manager on request."""
    query = urlencode({"policy": policy, "seed": seed})
    got = api_request(access, "GET", f"/api/v1/plans/consolidation?{query}")
    measured = got.get("load", {})
    err(f"loads measured by the hosts: {measured.get('vms_measured')} of "
        f"{measured.get('vms_running')} running VMs")
    present(ClusterPlan.from_json(dict(got["plan"])), dict(got["plan"]), do_apply,
            as_json, {**extra, "load": measured}, lambda p: apply_over_api(access, p, err))


def err(msg: str) -> None:
    click.echo(msg, err=True)


def present(the_plan: ClusterPlan, plan_json: dict[str, object], do_apply: bool,
            as_json: bool, extra: dict[str, object],
            carry_out: Callable[[ClusterPlan], ApplyReport]) -> None:
    """A plan shown (a table, or one JSON object with ``extra``), carried out on request
    by ``carry_out``; a failed application ends the command with its errors."""
    if not as_json:
        show_plan(the_plan)
    report: ApplyReport | None = None
    if do_apply and not the_plan.empty:
        report = carry_out(the_plan)
    elif do_apply:
        err("nothing to do")
    if as_json:
        click.echo(json.dumps({**extra, "plan": plan_json,
                               "applied": None if report is None else report.to_json()}))
    elif report is not None:
        show_report(report)
    if report is not None and not report.ok:
        raise MigrationError("; ".join(report.errors))


def apply_over_api(access: ClusterAccess, the_plan: ClusterPlan, err: Say
                   ) -> ApplyReport:
    """The plan carried out by the cluster's elected manager (an intent through its API,
    watched here; Ctrl-C cancels)."""
    it = api_request(access, "POST", "/api/v1/consolidations", {"plan": the_plan.to_json()})
    err(f"plan handed to the manager: intent {it['id']}")
    final = _watch(access, it["id"], err)
    got = dict(final.get("result") or {})
    if final["state"] != "done" and not got:
        return ApplyReport(errors=(f"the consolidation {final['state']}: "
                                   f"{final.get('error')}",),
                           cancelled=final["state"] == "cancelled")
    return ApplyReport.from_json(got)


def step_line(s: Step) -> str:
    return f"  {s.message}" if s.kind == "progress" else f"[{s.kind}] {s.message}"


def show_plan(p: ClusterPlan) -> None:
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


def show_report(r: ApplyReport) -> None:
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
