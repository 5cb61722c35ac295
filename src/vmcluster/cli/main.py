"""The `vmcluster` command: a click group whose subcommands live in sibling modules.

Each subcommand module exposes a click command or group; it is registered in
``_COMMANDS`` below (module name, attribute). Errors from the
:mod:`vmcluster.errors` tree become one line on stderr and their exit code.
"""

from __future__ import annotations

import importlib
import sys

import click

from vmcluster import __version__
from vmcluster.errors import VmclusterError

# (module under vmcluster.cli, attribute holding the click command)
_COMMANDS: tuple[tuple[str, str], ...] = (
    ("net", "net"),
    ("route", "route"),
    ("migration", "migration"),
    ("simulate", "simulate"),
    ("tour", "tour"),
    ("lab", "lab"),
    ("vm", "vm"),
    ("csv", "csv"),
    ("evaluate", "evaluate"),
    ("evaluate", "power"),
    ("events", "events"),
    ("node", "node"),
    ("cluster", "cluster"),
    ("token", "token"),
    ("consolidate", "consolidate"),
    ("plan", "plan"),
)

# (group name, module under vmcluster.cli, attribute): subcommands that live in
# their own module but belong to a group defined elsewhere (e.g. `lab consolidate`).
_SUBCOMMANDS: tuple[tuple[str, str, str], ...] = (
    ("lab", "lab_consolidate", "consolidate"),
    ("lab", "lab_node", "node"),
    ("lab", "lab_faults", "kill"),
    ("lab", "lab_faults", "freeze"),
    ("lab", "lab_faults", "blackhole"),
    ("lab", "lab_faults", "restart"),
    ("lab", "lab_faults", "dirty"),
    ("lab", "lab_faults", "chaos"),
    ("cluster", "cluster_backup", "backup"),
    ("cluster", "cluster_backup", "restore"),
    ("cluster", "cluster_backup", "recover"),
)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="vmcluster")
def cli() -> None:
    """vmcluster: a failover cluster manager for virtual machines."""


for _module, _attr in _COMMANDS:
    cli.add_command(getattr(importlib.import_module(f"vmcluster.cli.{_module}"), _attr))
for _group, _module, _attr in _SUBCOMMANDS:
    _parent = cli.commands[_group]
    assert isinstance(_parent, click.Group)
    _parent.add_command(getattr(importlib.import_module(f"vmcluster.cli.{_module}"), _attr))


def main(argv: list[str] | None = None) -> None:
    """Entry point: run the CLI, turning vmcluster errors into one line and an exit code."""
    try:
        cli.main(args=argv, prog_name="vmcluster", standalone_mode=False)
    except VmclusterError as err:
        click.echo(f"vmcluster: error: {err}", err=True)
        sys.exit(err.exit_code)
    except click.exceptions.Abort:
        click.echo("vmcluster: aborted", err=True)
        sys.exit(130)
    except click.ClickException as err:
        click.echo(f"vmcluster: error: {err.format_message()}", err=True)
        sys.exit(err.exit_code)
    except KeyboardInterrupt:
        click.echo("vmcluster: interrupted", err=True)
        sys.exit(130)
