"""`vmcluster tour`: the demo tour, the README's main job.

Each step is a real command a user could type; the tour prints it, then runs
it in-process. The lab part (real namespaces, QEMU, live migration under a
client) needs root; without root it is skipped with a note. The lab is always
taken down again, even when a step fails or the tour is interrupted.
"""

from __future__ import annotations

import os
import shlex
from collections.abc import Sequence

import click

from vmcluster.cli.common import console
from vmcluster.lab.lab import lab_down, resolve_lab
from vmcluster.lab.substrate import LabSubstrate
from vmcluster.substrate.host.layout import LabLayout

__all__ = ["tour"]

SEED = "examples/seed.toml"
LAB = "examples/lab.toml"
Step = tuple[str, str]
WAIT_FAILOVER = "lab status --lab tour  # after every VM runs again"

NETWORKS: Sequence[Step] = (
    ("The blog's cluster, as `cluster net /prop` lists it", f"net prop --spec {SEED}"),
    ("Which network carries what", f"route --spec {SEED}"),
    (
        "The private network fails: heartbeats and CSV move to the public one",
        f"route --spec {SEED} --down 'Cluster Network 2'",
    ),
    ("The lab cluster: public, heartbeat, migration and iSCSI (role 0)", f"route --spec {LAB}"),
)
PREDICT: Sequence[Step] = (
    (
        "Before pressing the button: how long will db's migration take, and will it converge?",
        f"migration predict --spec {LAB} db --to node3",
    ),
    (
        "The same with the migration network down (it goes over the next one)",
        f"migration predict --spec {LAB} db --to node3 --down Migration",
    ),
    (
        "A guest that dirties memory faster than the link: the model says what would help",
        "migration model --memory-mib 1024 --dirty-mibps 150 --wws-mib 600"
        " --bandwidth-mibps 110 --downtime-ms 300",
    ),
    (
        "The same cluster in the simulator: the private network fails and comes back",
        "simulate examples/scenarios/seed-private-down.toml",
    ),
)
LAB_TOUR: Sequence[Step] = (
    (
        "Real hosts: namespaces, bridges, vmclusterd on each host, QEMU guests",
        f"lab up --spec {LAB} --lab tour",
    ),
    ("The lab's state", "lab status --lab tour"),
    (
        "The cluster as its API sees it, over HTTPS from the admin's side (any host answers)",
        "cluster status --lab tour",
    ),
    (
        "Live migration over the network the policy picks, a client watching",
        "vm migrate web --to node2 --lab tour",
    ),
    ("... and on to the third node", "vm migrate web --to node3 --lab tour"),
    ("... and back home", "vm migrate web --to node1 --lab tour"),
    ("db moves too", "vm migrate db --to node3 --lab tour"),
    ("Cut the live-migration network", "lab net down Migration --lab tour"),
    ("Which network now carries live migration", f"route --spec {LAB} --down Migration"),
    (
        "Migrate again: it goes over the next network of the order",
        "vm migrate db --to node2 --lab tour",
    ),
    ("The network comes back", "lab net up Migration --lab tour"),
    (
        "Quick migration, the predecessor, for comparison",
        "vm migrate batch --to node1 --quick --lab tour",
    ),
    (
        "Cluster shared volumes: the coordinator, and how each node reaches the LUN",
        "csv status --lab tour",
    ),
    ("node1 loses its storage path (its iSCSI link is cut)", "lab storage down node1 --lab tour"),
    ("web keeps running: its disk I/O goes over the cluster network", "csv status --lab tour"),
    ("Every write web acknowledged is on the LUN", "vm check-disk web --lab tour"),
    ("The path comes back: direct I/O again", "lab storage up node1 --lab tour"),
    ("web's disk moves with it in a live migration", "vm migrate web --to node3 --lab tour"),
    ("Still nothing lost", "vm check-disk web --lab tour"),
    ("Where everything is now", "lab status --lab tour"),
    ("A node dies: every process of node2 gets SIGKILL", "lab node crash node2 --lab tour"),
    ("Heartbeats miss, the manager restarts node2's VMs on the others", WAIT_FAILOVER),
    ("Nothing ran twice, nothing was lost", "vm check-disk db --lab tour"),
    ("What the cluster saw, from its event log", "events --lab tour --last 12"),
    ("node2 boots again and rejoins", "lab node start node2 --lab tour"),
    ("Its vmclusterd is back, with the etcd member it had", "cluster status --lab tour"),
    ("Drain a node for maintenance: its VMs live-migrate away", "node drain node3 --lab tour"),
    ("... and put it back in service", "node resume node3 --lab tour"),
    ("Power: the plan the consolidation policy makes for this lab", "lab consolidate --lab tour"),
)
POWER: Sequence[Step] = (
    ("Core parking on a host: as few cores as the load needs", "power density 0.3 0.2 0.05"),
    (
        "Consolidation on a real PlanetLab day: the paper's best policies and ours",
        "evaluate --days 20110303 --policies thr-mmt-0.8,lr-mmt-1.2,ours",
    ),
)


def run_step(title: str, args: str) -> None:
    console.rule(f"[bold]{title}")
    console.print(f"[dim]$ vmcluster {args}[/dim]")
    root = click.get_current_context().find_root().command  # the `vmcluster` group
    root.main(args=shlex.split(args), prog_name="vmcluster", standalone_mode=False)
    console.print()


def wait_all_running(lab: str, timeout_s: float = 60.0) -> None:
    """Poll the lab until every VM of its spec runs on a node that is up (bounded)."""

    sub = LabSubstrate(resolve_lab(lab))
    start = sub.clock.now()
    while sub.clock.now() - start < timeout_s:
        status = sub.status()
        up = {n.name for n in status.nodes if n.state == "up"}
        if all(v.state == "running" and v.node in up for v in status.vms):
            waited = sub.clock.now() - start
            console.print(f"[dim](every VM runs again; waited {waited:.1f} s)[/dim]")
            return
        sub.clock.sleep(0.5)
    console.print(f"[red]not every VM runs again after {timeout_s:.0f} s[/red]")


def run_lab_tour() -> None:
    try:
        for title, args in LAB_TOUR:
            if args == WAIT_FAILOVER:
                wait_all_running("tour")
            run_step(title, args.partition("  #")[0])
    finally:
        console.rule("[bold]Tear the lab down: no namespace, process or file is left")
        console.print("[dim]$ vmcluster lab down --lab tour[/dim]")
        lab_down(LabLayout("tour"))
        console.print("lab 'tour' is down")


@click.command()
@click.option("--no-lab", is_flag=True, help="Skip the part that starts a real lab.")
def tour(no_lab: bool) -> None:
    """Walk through vmcluster on the shipped examples (the demo)."""
    for title, args in (*NETWORKS, *PREDICT):
        run_step(title, args)
    if no_lab:
        console.print("[yellow]lab part skipped (--no-lab)[/yellow]")
    elif os.geteuid() != 0:
        console.print("[yellow]lab part skipped: it needs root (namespaces, taps)[/yellow]")
    else:
        run_lab_tour()
    for title, args in POWER:
        run_step(title, args)
