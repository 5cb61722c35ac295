"""`vmcluster route`: which network carries each traffic class, given failures."""

from __future__ import annotations

from pathlib import Path

import click
from rich.table import Table

from vmcluster.cli.common import console, emit_json, json_option, load, spec_option
from vmcluster.policy.networks import Health, routes

__all__ = ["route"]


@click.command()
@spec_option()
@click.option(
    "--down",
    "downs",
    multiple=True,
    metavar="NETWORK[@NODE]",
    help="Treat a network (or one node's interface on it) as failed. Repeatable.",
)
@json_option
def route(spec_path: Path, downs: tuple[str, ...], as_json: bool) -> None:
    """Show what carries cluster, CSV, client and live-migration traffic."""
    spec = load(spec_path)
    result = routes(spec, Health.parse(spec, downs))
    if as_json:
        emit_json(result.to_json())
        return
    nets = Table(title=f"Cluster networks of {spec.cluster.name!r}")
    for col in ("Network", "Role", "Metric", "AutoMetric", "State", "Carries"):
        nets.add_column(col)
    for p, state in result.networks:
        carries = []
        if p.name == result.cluster:
            carries.append("cluster+CSV")
        if p.name in result.client:
            carries.append("client")
        lm_vms = [vm for vm, order in result.live_migration.items() if order and order[0] == p.name]
        if lm_vms:
            carries.append("live migration (" + ", ".join(lm_vms) + ")")
        style = {"up": "green", "partitioned": "yellow", "down": "red"}[state]
        nets.add_row(
            p.name,
            str(int(p.role)),
            str(p.metric),
            str(int(p.auto_metric)),
            f"[{style}]{state}[/{style}]",
            "; ".join(carries) or "-",
        )
    console.print(nets)
    pairs = Table(title="Per node pair")
    pairs.add_column("Nodes")
    pairs.add_column("Cluster+CSV")
    for vm in spec.vms:
        pairs.add_column(f"LM {vm.name}")
    for pr in result.pairs:
        pairs.add_row(
            " <-> ".join(pr.nodes),
            pr.cluster or "[red]none[/red]",
            *[pr.live_migration[vm.name] or "[red]none[/red]" for vm in spec.vms],
        )
    console.print(pairs)
