"""Helpers shared by CLI commands: spec loading, JSON output, rich tables."""

from __future__ import annotations

import json
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click
from rich.console import Console

from vmcluster.errors import UsageError
from vmcluster.model import ClusterSpec
from vmcluster.model.spec import load_spec

__all__ = [
    "ProgressLine", "console", "emit_json", "json_option", "lab_option", "load", "spec_option",
    "writable_dir",
]

F = TypeVar("F", bound=Callable[..., Any])
# On a terminal rich fits the window; in a log or a pipe it would assume 80
# columns and squeeze wide tables into ellipses, so give it room there.
console = Console(highlight=False, width=None if sys.stdout.isatty() else 140)


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


def lab_option(
    dest: str = "lab_name", default: str = "the only lab that is up"
) -> Callable[[F], F]:
    """``--lab LAB`` (also spelled ``--name``): which lab a command acts on."""
    return click.option(
        "--lab", "--name", dest, default=None, metavar="LAB", help=f"Lab name (default: {default})."
    )


def json_option(func: F) -> F:
    """``--json``: print exactly one JSON object on stdout instead of tables."""
    return click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")(func)


def load(spec_path: Path) -> ClusterSpec:
    return load_spec(spec_path)


def writable_dir(path: Path, what: str = "--plot") -> Path:
    """``path`` as a directory this process can write into (made if missing), checked
    before any long work starts; else one UsageError line."""
    if path.exists() and not path.is_dir():
        raise UsageError(f"{what} {path}: exists and is not a directory")
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path, prefix=".vmcluster-check-"):
            pass
    except OSError as exc:
        raise UsageError(f"{what} {path}: cannot write there ({exc.strerror or exc})") from exc
    return path


def emit_json(obj: object) -> None:
    """Print one JSON object on stdout (machine-readable output)."""
    click.echo(json.dumps(obj, indent=2, sort_keys=False))


class ProgressLine:
    """Progress of a long operation on stderr.

    On a terminal one line is rewritten in place; elsewhere (logs, CI) a line
    is printed only when ``key`` changes (e.g. a migration's pass and
    status), so a log shows each step once instead of every poll.
    """

    def __init__(self) -> None:
        self.tty = sys.stderr.isatty()
        self._key: object = None
        self._width = 0

    def update(self, text: str, key: object) -> None:
        if self.tty:
            pad = max(0, self._width - len(text))
            sys.stderr.write("\r" + text + " " * pad)
            sys.stderr.flush()
            self._width = len(text)
        elif key != self._key:
            sys.stderr.write(text + "\n")
        self._key = key

    def done(self) -> None:
        if self.tty and self._width:
            sys.stderr.write("\n")
            self._width = 0
