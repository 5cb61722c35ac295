"""``vmcluster csv status``: per volume, the coordinator and each node's access mode."""

from __future__ import annotations

import json
from typing import Any

import click

from vmcluster.cli.common import lab_option
from vmcluster.csv.coordinator import CsvBook, volume_access
from vmcluster.csv.storage import san_target
from vmcluster.lab.lab import resolve_lab
from vmcluster.lab.services import lab_csv_book
from vmcluster.model import ClusterSpec
from vmcluster.model.spec import load_spec
from vmcluster.substrate.host.client import AgentClient, AgentDown
from vmcluster.substrate.host.layout import LabLayout
from vmcluster.substrate.host.state import read_state

__all__ = ["csv"]


@click.group()
def csv() -> None:
    """Cluster shared volumes (one LUN for all nodes) in the lab."""


def csv_status(layout: LabLayout) -> dict[str, Any]:
    spec = load_spec(read_state(layout)["spec"])
    with lab_csv_book(layout) as book:
        return _status(layout, book, spec)


def _status(layout: LabLayout, book: CsvBook, spec: ClusterSpec) -> dict[str, Any]:
    view = book.view(spec)
    paths: dict[str, dict[str, str]] = {}
    for node in sorted(view.up):
        try:
            paths[node] = AgentClient(layout, node).call("csv_paths", timeout_s=10)["paths"]
        except AgentDown:
            paths[node] = {}
    volumes = []
    for vol in spec.volumes:
        coord, modes = volume_access(book, spec, vol.name, view)
        vms = {vm.name for vm in spec.vms if vm.volume == vol.name}
        volumes.append({
            "volume": vol.name, "network": vol.network, "san": san_target(spec, vol.name).uri,
            "coordinator": coord,
            "nodes": [{**a.to_json(), "describe": a.describe(),
                       "disks": {vm: uri for vm, uri in paths.get(n, {}).items() if vm in vms}}
                      for n, a in modes.items()],
        })
    return {"lab": layout.name, "volumes": volumes}


@csv.command("status")
@lab_option("name")
@click.option("--json", "as_json", is_flag=True, help="print one JSON object")
def status(name: str | None, as_json: bool) -> None:
    """Coordinator per volume; per node: direct / redirected via NODE over NETWORK / none."""
    st = csv_status(resolve_lab(name))
    if as_json:
        click.echo(json.dumps(st))
        return
    for vol in st["volumes"]:
        click.echo(f"volume {vol['volume']} on {vol['network']} ({vol['san']}): "
                   f"coordinator {vol['coordinator'] or '-'}")
        for n in vol["nodes"]:
            click.echo(f"  {n['node']:<8} {n['describe']:<36} {n['reason']}")
            for vm, uri in n["disks"].items():
                click.echo(f"           disk {vm}: {uri}")
