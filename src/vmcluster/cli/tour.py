"""`vmcluster tour`: the demo tour, the README's main job.

Each step is a real command a user could type; the tour prints the command,
then runs it in-process. Steps that need a lab (root, QEMU) run only where
the lab can start.
"""

from __future__ import annotations

import shlex

import click

from vmcluster.cli.common import console

__all__ = ["tour"]

SEED = "examples/seed.toml"
LAB = "examples/lab.toml"

STEPS: tuple[tuple[str, str], ...] = (
    ("The blog's cluster: `cluster net /prop`", f"net prop --spec {SEED}"),
    ("Which network carries what", f"route --spec {SEED}"),
    (
        "The private network fails: CSV and heartbeats move",
        f"route --spec {SEED} --down 'Cluster Network 2'",
    ),
    ("The lab cluster: four networks, one of them iSCSI (role 0)", f"route --spec {LAB}"),
)


def run_step(title: str, args: str) -> None:
    from vmcluster.cli.main import cli  # late import: main imports this module

    console.rule(f"[bold]{title}")
    console.print(f"[dim]$ vmcluster {args}[/dim]")
    cli.main(args=shlex.split(args), prog_name="vmcluster", standalone_mode=False)
    console.print()


@click.command()
def tour() -> None:
    """Walk through vmcluster on the shipped examples (the demo)."""
    for title, args in STEPS:
        run_step(title, args)
