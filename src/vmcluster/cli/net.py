"""`vmcluster net`: cluster network properties, as `cluster net /prop` lists them."""

from __future__ import annotations

from pathlib import Path

import click
import tomlkit
from tomlkit.items import AoT, Table

from vmcluster.cli.common import emit_json, json_option, load, spec_option
from vmcluster.errors import SpecError, UsageError
from vmcluster.model import ClusterSpec
from vmcluster.model.spec import parse_spec
from vmcluster.policy.networks import NetworkProps, network_props

__all__ = ["format_prop", "net"]


@click.group()
def net() -> None:
    """Show or change cluster network properties (role, metric)."""


def _hexval(value: int) -> str:
    return f"{value} (0x{value:x})"


def _rows(spec: ClusterSpec, p: NetworkProps) -> list[tuple[str, str, str]]:
    network = spec.network(p.name)
    addrs = [str(n.interfaces[p.name]) for n in spec.nodes if p.name in n.interfaces]
    prefix = str(network.subnet.prefixlen)
    return [
        ("SR", "Name", p.name),
        ("MR", "IPv6Addresses", ""),
        ("MR", "IPv6PrefixLengths", ""),
        ("MR", "IPv4Addresses", ", ".join(addrs)),
        ("MR", "IPv4PrefixLengths", ", ".join(prefix for _ in addrs)),
        ("SR", "Address", str(network.subnet.network_address)),
        ("SR", "AddressMask", str(network.subnet.netmask)),
        ("S", "Description", ""),
        ("D", "Role", _hexval(int(p.role))),
        ("D", "Metric", _hexval(p.metric)),
        ("D", "AutoMetric", _hexval(1 if p.auto_metric else 0)),
    ]


def format_prop(spec: ClusterSpec, only: str | None = None) -> str:
    """The listing in the layout of `cluster net /prop` (columns T, Network, Name, Value)."""
    props = network_props(spec.networks)
    if only is not None:
        spec.network(only)
        props = tuple(p for p in props if p.name == only)
        head = f"Listing properties for '{only}':"
    else:
        head = "Listing properties for all networks:"
    lines = [head, "", f"{'T':<2} {'Network':<20} {'Name':<24} Value"]
    lines.append(f"{'-' * 2} {'-' * 20} {'-' * 24} {'-' * 23}")
    for p in props:
        for kind, name, value in _rows(spec, p):
            lines.append(f"{kind:<2} {p.name:<20} {name:<24} {value}".rstrip())
    return "\n".join(lines)


@net.command("prop")
@spec_option()
@json_option
@click.argument("network", required=False)
def prop(spec_path: Path, network: str | None, as_json: bool) -> None:
    """List network properties (Role, Metric, AutoMetric...) like `cluster net /prop`."""
    spec = load(spec_path)
    if as_json:
        props = network_props(spec.networks)
        if network is not None:
            spec.network(network)
        emit_json(
            {
                "networks": [
                    {
                        "name": p.name,
                        "role": int(p.role),
                        "metric": p.metric,
                        "auto_metric": p.auto_metric,
                        "subnet": str(spec.network(p.name).subnet),
                    }
                    for p in props
                    if network is None or p.name == network
                ]
            }
        )
        return
    click.echo(format_prop(spec, network))


@net.command("set")
@spec_option(default=None)
@click.argument("network")
@click.argument("assignment")
def set_prop(spec_path: Path, network: str, assignment: str) -> None:
    """Set a network's property in the spec file: metric=N, metric=auto or role=0|1|3.

    The file keeps its comments and order; it is only written if the result is valid.
    """
    key, sep, value = assignment.partition("=")
    key = key.strip().lower()
    if not sep or key not in ("metric", "role"):
        raise UsageError(f"expected metric=N, metric=auto or role=R, got {assignment!r}")
    text = spec_path.read_text(encoding="utf-8") if spec_path.exists() else None
    if text is None:
        raise SpecError(str(spec_path), "no such file", "check the path")
    load(spec_path).network(network)  # validates the file and the name first
    doc = tomlkit.parse(text)
    nets = doc["networks"]
    assert isinstance(nets, AoT)
    table: Table = next(t for t in nets if t.get("name") == network)
    value = value.strip()
    if key == "metric" and value.lower() == "auto":
        if "metric" in table:
            del table["metric"]
    else:
        try:
            number = int(value, 0)
        except ValueError as exc:
            raise UsageError(f"{key} must be an integer (or metric=auto), got {value!r}") from exc
        table[key] = number
    new_text = tomlkit.dumps(doc)
    parse_spec(new_text, str(spec_path))  # refuse to write an invalid spec
    spec_path.write_text(new_text, encoding="utf-8")
    click.echo(format_prop(load(spec_path), network))
