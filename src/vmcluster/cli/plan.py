"""`vmcluster plan`: what-if questions about the cluster, answered before anything moves."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from vmcluster.cli.apiclient import api_request, resolve_access
from vmcluster.cli.common import console, emit_json, json_option, lab_option, load
from vmcluster.policy.capacity import MAX_DEPTH, capacity

__all__ = ["plan"]


@click.group()
def plan() -> None:
    """What-if plans on the live cluster or a spec: what a loss of nodes would leave."""


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
    if spec_path is not None:
        spec = load(spec_path)
        got: dict[str, Any] = capacity(spec, {v.name: v.owner for v in spec.vms},
                                       depth).to_json()
    else:
        got = api_request(resolve_access(cluster_url, lab_name), "GET",
                          f"/api/v1/plans/capacity?depth={depth}", timeout_s=60)
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
