"""`vmcluster plan`: what-if questions about the cluster, answered before anything moves."""

from __future__ import annotations

import tomllib
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import click

from vmcluster.cli.apiclient import api_request, resolve_access
from vmcluster.cli.common import console, emit_json, json_option, lab_option, load
from vmcluster.cli.consolidate import show_plan
from vmcluster.control.consolidate import Observation, drain_plan, make_plan, observation
from vmcluster.control.failure import plan_add_vm, plan_failure
from vmcluster.control.plans import ClusterPlan
from vmcluster.errors import UsageError
from vmcluster.model import ClusterSpec
from vmcluster.model.spec import vm_table
from vmcluster.policy.capacity import MAX_DEPTH, capacity
from vmcluster.policy.networks import Health

__all__ = ["plan"]


@click.group()
def plan() -> None:
    """What-if plans on the live cluster or a spec, before anything moves: a drain or a
    consolidation with when each move starts and ends, what a loss of nodes would leave."""


def _spec_observation(spec: ClusterSpec) -> Observation:
    """The spec as if running: every node up, each VM where its ``owner`` says, no load
    measured (a node's CPU shared by its VMs' vCPUs is then 0)."""
    on_node: dict[str, list[str]] = {}
    for v in spec.vms:
        if v.owner is not None:
            on_node.setdefault(v.owner, []).append(v.name)
    return observation(spec, {n.name: "up" for n in spec.nodes}, on_node, {}, None, Health())


def _answer(spec_path: Path | None, cluster_url: str | None, lab_name: str | None,
            local: Callable[[ClusterSpec], dict[str, Any]], remote: str) -> dict[str, Any]:
    """A what-if answer made on a spec file (``local``) or asked of the live cluster's
    API (``remote``: the path to GET)."""
    if spec_path is not None:
        return local(load(spec_path))
    return dict(api_request(resolve_access(cluster_url, lab_name), "GET", remote,
                            timeout_s=60))


def _owners(spec: ClusterSpec) -> dict[str, str | None]:
    """Each VM where its spec puts it."""
    return {v.name: v.owner for v in spec.vms}


def _where(spec_path: Path | None, cluster_url: str | None, lab_name: str | None,
           local: Callable[[ClusterSpec], ClusterPlan], remote: str, as_json: bool) -> None:
    """A plan made on a spec (``local(spec)``) or asked of the live cluster's API
    (``remote``: the path), shown with its schedule or printed as one JSON object."""
    got = _answer(spec_path, cluster_url, lab_name,
                  lambda spec: {"spec": str(spec_path), "plan": local(spec).to_json()}, remote)
    if as_json:
        emit_json(got)
        return
    the_plan = ClusterPlan.from_json(dict(got["plan"]))
    show_plan(the_plan)
    timeline = the_plan.timeline()
    for step in timeline["schedule"]:  # type: ignore[attr-defined]
        console.print(f"  {step['start_s']:7.1f} - {step['end_s']:7.1f} s  {step['vm']} "
                      f"{step['source']} -> {step['target']} ({step['mode']}, "
                      f"{step['network']})")
    console.print(f"done after {timeline['predicted_end_s']:.1f} s, one move at a time"
                  if the_plan.migrations else "nothing moves")


_SPEC = click.option("--spec", "spec_path", type=click.Path(dir_okay=False, path_type=Path),
                     default=None, help="Plan on a spec file, its VMs where their owner "
                     "says (default: the live cluster, as it runs now).")
_CLUSTER = click.option("--cluster", "cluster_url", default=None, metavar="URL",
                        envvar="VMCLUSTER_URL",
                        help="The live cluster's API (default: $VMCLUSTER_URL).")


@plan.command("drain")
@click.argument("node")
@_SPEC
@_CLUSTER
@lab_option()
@json_option
def drain_cmd(node: str, spec_path: Path | None, cluster_url: str | None,
              lab_name: str | None, as_json: bool) -> None:
    """What `vmcluster node drain NODE` would do and how long it would take: where each VM
    goes by the failover rules the manager runs, over which network, in which mode, when
    each move starts and ends (one at a time, as the drain moves them), and which VMs
    cannot be placed, with why."""
    _where(spec_path, cluster_url, lab_name, lambda spec: drain_plan(
        _spec_observation(spec), spec, node), f"/api/v1/plans/drain?{urlencode({'node': node})}",
        as_json)


@plan.command("consolidate")
@click.option("--policy", default="ours", show_default=True,
              help="ours, lr-mmt-1.2, thr-mmt-0.8 (any <detector>-<selection>[-<param>])")
@click.option("--seed", default=0, show_default=True, help="seed for random VM selection (rs)")
@_SPEC
@_CLUSTER
@lab_option()
@json_option
def consolidate_cmd(policy: str, seed: int, spec_path: Path | None, cluster_url: str | None,
                    lab_name: str | None, as_json: bool) -> None:
    """What the power policy would do now and how long it would take: which VMs move
    where (mode, network, start and end), which nodes go off or on, watts before and
    after. `vmcluster consolidate --apply` carries it out."""
    _where(spec_path, cluster_url, lab_name,
           lambda spec: make_plan(_spec_observation(spec), spec, policy, seed),
           f"/api/v1/plans/consolidation?{urlencode({'policy': policy, 'seed': seed})}",
           as_json)


@plan.command("capacity")
@click.option("--spec", "spec_path", type=click.Path(dir_okay=False, path_type=Path),
              default=None, help="Plan on a spec file and its owners (default: the live "
              "cluster, where its VMs run now).")
@click.option("--depth", type=click.IntRange(1, MAX_DEPTH), default=2, show_default=True,
              help="Lose up to this many nodes at once.")
@click.option("--cluster", "cluster_url", default=None, metavar="URL", envvar="VMCLUSTER_URL",
              help="The live cluster's API (default: $VMCLUSTER_URL).")
@lab_option()
@json_option
def capacity_cmd(spec_path: Path | None, depth: int, cluster_url: str | None,
                 lab_name: str | None, as_json: bool) -> None:
    """Can the cluster lose any one node (any two, ...) and restart every VM?

    For each loss, by the failover rules the manager runs: where each VM restarts, which
    VMs would stay down and why (no room, anti-affinity, quorum lost), and the room left
    per resource. Exit 0 either way: it is a report."""
    got = _answer(spec_path, cluster_url, lab_name,
                  lambda spec: capacity(spec, _owners(spec), depth).to_json(),
                  f"/api/v1/plans/capacity?depth={depth}")
    if as_json:
        emit_json(got)
        return
    _print(got)


def _room(r: dict[str, Any] | None) -> str:
    if r is None:
        return "no node left"
    return (f"free memory {r['memory_mib_min']} MiB on the fullest node "
            f"({r['memory_mib_total']} in all), vCPUs {r['vcpus_min']:g} ({r['vcpus_total']:g})")


def _print(got: dict[str, Any]) -> None:
    console.print(f"now: {_room(got['room_now'])}")
    for k, ok in got["survives"].items():
        style = "green" if ok else "red"
        console.print(f"lose any {k} node(s): [{style}]"
                      f"{'every VM restarts' if ok else 'not every VM restarts'}[/{style}]")
    for loss in got["losses"]:
        down = " + ".join(loss["down"])
        if loss["ok"]:
            moved = ", ".join(f"{x['vm']} -> {x['node']}" for x in loss["restarted"]) or \
                "nothing to restart"
            console.print(f"  {down} lost: {moved}; then {_room(loss['room'])}")
        else:
            why: dict[str, list[str]] = {}
            for x in loss["left_down"]:
                why.setdefault(x["reason"], []).append(x["vm"])
            left = "; ".join(f"{', '.join(vms)} ({reason})" for reason, vms in why.items())
            console.print(f"  {down} lost: [red]left down[/red]: {left}")
        for b in loss["broke"]:
            console.print(f"    {b['vm']}: {b['rule']}")


@plan.command("fail")
@click.argument("node")
@_SPEC
@_CLUSTER
@lab_option()
@json_option
def fail_cmd(node: str, spec_path: Path | None, cluster_url: str | None,
             lab_name: str | None, as_json: bool) -> None:
    """What a failure of NODE would do now: where the manager would restart each of its
    VMs and how long after the failure (its own code, simulated with the cluster's
    heartbeat settings), which VMs would stay down and why, and the room left."""
    got = _answer(spec_path, cluster_url, lab_name,
                  lambda spec: plan_failure(spec, _owners(spec), node).to_json(),
                  f"/api/v1/plans/failure?{urlencode({'node': node})}")
    if as_json:
        emit_json(got)
        return
    if not got["lost"]:
        console.print(f"{node} runs no VM: nothing to restart; then {_room(got['room'])}")
        return
    when = got["restart_issued_s"]
    console.print(f"{node} fails: {len(got['lost'])} VM(s) lost"
                  + (f"; restarts issued {when:.1f} s after the failure" if when else ""))
    for r in got["restarts"]:
        console.print(f"  {r['vm']} -> {r['node']}")
    for x in got["left_down"]:
        console.print(f"  [red]{x['vm']} stays down[/red]: {x['reason']}")
    for b in got["broke"]:
        console.print(f"  {b['vm']}: {b['rule']}")
    console.print(f"then {_room(got['room'])}")


@plan.command("add-vm")
@click.argument("vm_file", metavar="FILE", type=click.Path(dir_okay=False, path_type=Path))
@_SPEC
@_CLUSTER
@lab_option()
@json_option
def add_vm_cmd(vm_file: Path, spec_path: Path | None, cluster_url: str | None,
               lab_name: str | None, as_json: bool) -> None:
    """Where a new VM would start: FILE holds its definition (one [[vms]] table, or its
    keys; as `vm create --from` takes it; ``owner`` optional: without one the plan
    chooses), checked as the spec checks it. Says the node, the rules it bends, and
    whether any one node's loss would still restart every VM. A VM that fits nowhere is
    one error line (exit 2)."""
    table = vm_table(vm_file)
    if spec_path is not None:
        spec = load(spec_path)  # its own one-line error first
        text = spec_path.read_text(encoding="utf-8")
        defs = [d for d in _vm_tables(text) if d.get("name") != table.get("name")]
        got: dict[str, Any] = plan_add_vm(text, f"{spec_path} + {vm_file}", defs,
                                          _owners(spec), table).to_json()
    else:
        got = api_request(resolve_access(cluster_url, lab_name), "POST",
                          "/api/v1/plans/add-vm", table, timeout_s=60)
    if got["node"] is None:
        raise UsageError(f"{got['vm']} fits nowhere: {got['reason']}")
    if as_json:
        emit_json(got)
        return
    console.print(f"{got['vm']} would start on {got['node']}"
                  + "".join(f"; {b}" for b in got["broke"]))
    after = got["capacity_after"]
    if got["survives_one_loss"]:
        console.print("with it, the loss of any one node still restarts every VM")
    else:
        for x in after["losses"]:
            if not x["ok"]:
                left = ", ".join(f"{d['vm']} ({d['reason']})" for d in x["left_down"])
                console.print(f"  [red]with it, losing {' + '.join(x['down'])} leaves down"
                              f"[/red]: {left}")


def _vm_tables(text: str) -> list[dict[str, Any]]:
    """The ``[[vms]]`` tables of a spec's text."""
    tables = tomllib.loads(text).get("vms", [])
    return [dict(t) for t in tables] if isinstance(tables, list) else []
