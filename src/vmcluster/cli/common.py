"""Helpers shared by CLI commands: spec loading, JSON output, rich tables."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click
from rich.console import Console

from vmcluster.model import ClusterSpec
from vmcluster.model.spec import load_spec

__all__ = ["console", "emit_json", "json_option", "load", "spec_option"]

F = TypeVar("F", bound=Callable[..., Any])
console = Console(highlight=False)


def spec_option(default: str | None = "examples/lab.toml") -> Callable[[F], F]:
    """``--spec FILE`` (a cluster spec TOML)."""
    return click.option(
        "--spec",
        "spec_path",
        type=click.Path(dir_okay=False, path_type=Path),
        default=default,
        required=default is None,
        show_default=default is not None,
        help="Cluster spec file (TOML).",
    )


def json_option(func: F) -> F:
    """``--json``: print exactly one JSON object on stdout instead of tables."""
    return click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")(func)


def load(spec_path: Path) -> ClusterSpec:
    return load_spec(spec_path)


def emit_json(obj: object) -> None:
    """Print one JSON object on stdout (machine-readable output)."""
    click.echo(json.dumps(obj, indent=2, sort_keys=False))
