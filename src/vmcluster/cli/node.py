"""``vmcluster node drain NODE`` (the manager live-migrates every VM off; Ctrl-C cancels)
and ``vmcluster node resume NODE``, both through the cluster's API."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Mapping
from typing import Any

import click

from vmcluster.cli.apiclient import ClusterAccess, api_request, resolve_access
from vmcluster.cli.cluster import cluster_option
from vmcluster.cli.common import lab_option
from vmcluster.errors import UsageError, VmclusterError
from vmcluster.lab.lab import resolve_lab
from vmcluster.substrate.power import no_driver

__all__ = ["node"]

_LAB = lab_option()


@click.group()
def node() -> None:
    """Take a node out of service (drain) and back (resume)."""


@node.command("drain")
@click.argument("node_name", metavar="NODE")
@cluster_option
@click.option("--json", "as_json", is_flag=True, help="print the result as one JSON object")
def drain_cmd(node_name: str, cluster_url: str | None, lab_name: str | None,
              as_json: bool) -> None:
    """Live-migrate every VM off NODE, one at a time: the cluster's elected manager does it
    (an intent through the API; this command only watches). Ctrl-C cancels: the VM in
    flight stays where it was, the node is up again."""
    if cluster_url is None and lab_name is None and not os.environ.get("VMCLUSTER_URL"):
        lab_name = resolve_lab(None).name  # the only lab that is up
    access = resolve_access(cluster_url, lab_name)

    def say(msg: str) -> None:
        click.echo(msg, err=as_json)

    it = api_request(access, "POST", f"/api/v1/nodes/{node_name}/drain")
    say(f"drain of {node_name}: intent {it['id']}, carried out by the manager")
    final = _watch(access, it["id"], say)
    result = dict(final.get("result") or {})
    if final["state"] == "failed" and not result:
        raise VmclusterError(f"the drain of {node_name} failed: {final.get('error')}")
    if as_json:
        took = (round(float(final["ended"]) - float(final["started"]), 3)
                if "ended" in final and "started" in final else None)
        click.echo(json.dumps({**({"lab": lab_name} if lab_name else {}), "intent": it["id"],
                               "took_s": took, **result}))
    elif result.get("cancelled"):
        click.echo(f"drain of {node_name} cancelled; {len(result.get('moved', []))} VM(s) "
                   f"moved, {node_name} is up")
    else:
        left = result.get("failed") or result.get("unplaced")
        click.echo(f"{node_name} {'NOT fully drained' if left else 'drained'}: "
                   f"{len(result.get('moved', []))} moved, "
                   f"{len(result.get('failed', []))} failed, "
                   f"{len(result.get('unplaced', []))} could not be placed; "
                   f"`vmcluster node resume {node_name}` puts it back in service")
    if not result.get("cancelled") and (result.get("failed") or result.get("unplaced")):
        raise SystemExit(1)  # VMs are still on it: not what was asked, whatever it printed


def _watch(access: ClusterAccess, intent_id: str, say: Callable[[str], None],
           timeout_s: float = 3600.0) -> dict[str, Any]:
    """Follow an intent until it ends (bounded), printing its plan and progress; Ctrl-C
    asks the cluster to cancel it and goes on watching until it has."""
    deadline = time.monotonic() + timeout_s
    shown_plan, last_line, cancelling, shown_steps = False, "", False, 0

    def new_steps(steps: list[str]) -> None:  # a step log (a plan's): each line once
        nonlocal shown_steps
        for line in steps[shown_steps:]:
            say(line)
        shown_steps = max(shown_steps, len(steps))

    while time.monotonic() < deadline:
        try:
            got = api_request(access, "GET", f"/api/v1/intents/{intent_id}")
            if got["state"] in ("done", "failed", "cancelled"):
                new_steps(list((got.get("result") or {}).get("steps", [])))
                return got
            p = got.get("progress") or {}
            new_steps(list(p.get("steps", [])))
            if "plan" in p and not shown_plan:
                shown_plan = True
                for line in plan_lines(p["plan"]):
                    say(line)
            if "vm" in p and "steps" not in p:
                line = (f"  {p['vm']} -> {p['target']} over {p['network']}: {p['status']} "
                        f"pass {p['pass']} sent {p['sent_mib']:.0f} MiB, "
                        f"{p['remaining_mib']:.0f} MiB left")
                if line != last_line:
                    say(line)
                    last_line = line
            time.sleep(0.3)
        except KeyboardInterrupt:
            if cancelling:
                raise
            cancelling = True
            say("cancelling (the VM in flight stays where it is) ...")
            api_request(access, "POST", f"/api/v1/intents/{intent_id}/cancel")
    raise VmclusterError(f"intent {intent_id} did not end within {timeout_s:.0f} s; "
                         f"GET /api/v1/intents/{intent_id} shows it")


@node.command("resume")
@click.argument("node_name", metavar="NODE")
@cluster_option
@click.option("--json", "as_json", is_flag=True)
def resume_cmd(node_name: str, cluster_url: str | None, lab_name: str | None,
               as_json: bool) -> None:
    """Put NODE back in service after a drain or a quarantine (the manager records it)."""
    if cluster_url is None and lab_name is None and not os.environ.get("VMCLUSTER_URL"):
        lab_name = resolve_lab(None).name  # the only lab that is up
    access = resolve_access(cluster_url, lab_name)
    it = api_request(access, "POST", f"/api/v1/nodes/{node_name}/resume")
    final = _watch(access, it["id"], lambda m: click.echo(m, err=True), timeout_s=60)
    got = dict(final.get("result") or {})
    if final["state"] != "done":
        raise VmclusterError(f"resuming {node_name} {final['state']}: "
                             f"{got.get('error') or final.get('error')}")
    out: dict[str, Any] = {"node": node_name, "was": got["was"], "state": "up"}
    click.echo(json.dumps(out) if as_json else f"{node_name}: {got['was']} -> up")


@node.command("power-on")
@click.argument("node_name", metavar="NODE")
@cluster_option
@click.option("--json", "as_json", is_flag=True)
def power_on_cmd(node_name: str, cluster_url: str | None, lab_name: str | None,
                 as_json: bool) -> None:
    """Power NODE on by the driver its spec names (``power`` in its [[nodes]] table:
    ipmi, wol or lab), and wait until the cluster hears it again (its ``boot_s`` at most).
    The elected manager does it, as a consolidation's power-on."""
    _power(node_name, True, cluster_url, lab_name, as_json)


@node.command("power-off")
@click.argument("node_name", metavar="NODE")
@cluster_option
@click.option("--json", "as_json", is_flag=True)
def power_off_cmd(node_name: str, cluster_url: str | None, lab_name: str | None,
                  as_json: bool) -> None:
    """Power NODE off (it runs no VM: drain it first; and the cluster must keep its
    quorum without it). The elected manager asks the host, as a consolidation's last step."""
    _power(node_name, False, cluster_url, lab_name, as_json)


def _power(node_name: str, on: bool, cluster_url: str | None, lab_name: str | None,
           as_json: bool) -> None:
    if cluster_url is None and lab_name is None and not os.environ.get("VMCLUSTER_URL"):
        lab_name = resolve_lab(None).name  # the only lab that is up
    access = resolve_access(cluster_url, lab_name)
    got = api_request(access, "GET", f"/api/v1/nodes/{node_name}")
    if on and got.get("power_driver") is None:
        raise UsageError(no_driver(node_name))
    plan = ({"policy": "operator", "power_on": [node_name]} if on else
            {"policy": "operator", "power_off": [{"node": node_name,
                                                  "reason": "asked by the operator"}]})
    it = api_request(access, "POST", "/api/v1/consolidations", {"plan": plan})
    final = _watch(access, it["id"], lambda m: click.echo(m, err=True), timeout_s=3700)
    result = dict(final.get("result") or {})
    errors = list(result.get("errors") or ([] if final["state"] == "done"
                                           else [str(final.get("error"))]))
    done = node_name in list(result.get("powered_on" if on else "powered_off") or [])
    if errors or not done:
        raise VmclusterError("; ".join(errors) or f"{node_name} was not powered "
                             f"{'on' if on else 'off'}")
    state = "on" if on else "off"
    click.echo(json.dumps({"node": node_name, "power": state}) if as_json
               else f"{node_name} is {state}")


def plan_lines(plan: Mapping[str, Any]) -> list[str]:
    """A drain's plan (a ClusterPlan's JSON) as the lines ``node drain`` prints first."""
    moves, skipped = list(plan.get("migrations", [])), list(plan.get("skipped", []))
    if not moves and not skipped:
        return ["no VM to move"]
    out = [f"plan: {m['vm']} -> {m['target']} over {m['network']} (predicted "
           f"{float(m['predicted_s']):.1f} s, {float(m['predicted_downtime_ms']):.0f} ms down)"
           + "".join(f"; breaks {b}" for b in m.get("broke", [])) for m in moves]
    out += [f"plan: {s['vm']} cannot move: {s['reason']}" for s in skipped]
    return out
