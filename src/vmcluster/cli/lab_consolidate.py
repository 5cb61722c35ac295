"""``vmcluster lab consolidate``: the power policy's plan for the real lab, applied on request.

Registered under ``lab`` through ``_SUBCOMMANDS`` in :mod:`vmcluster.cli.main`. A lab
that runs a control plane is asked through its API, as ``vmcluster consolidate`` asks
any cluster (the plan from the loads its hosts measured, applied by its manager). A lab
of agents only is observed and changed from here.
"""

from __future__ import annotations

import click

from vmcluster.cli.apiclient import resolve_access
from vmcluster.cli.common import lab_option
from vmcluster.cli.consolidate import err, over_api, plan_options, present, step_line
from vmcluster.control.consolidate import make_plan, observe
from vmcluster.control.consolidate_apply import apply
from vmcluster.lab.lab import resolve_lab
from vmcluster.lab.services import services_file
from vmcluster.lab.substrate import LabSubstrate

__all__ = ["consolidate"]


@click.command("consolidate")
@lab_option("name")
@plan_options
def consolidate(name: str | None, policy: str, do_apply: bool, seed: int, as_json: bool) -> None:
    """Show which VMs the power policy would move where and which nodes it would power off."""
    layout = resolve_lab(name)
    if services_file(layout).exists():
        over_api(resolve_access(None, layout.name), policy, seed, do_apply, as_json,
                 {"lab": layout.name})
        return
    sub = LabSubstrate(layout)
    sub.on_event = err
    err(f"lab {layout.name}: measuring utilisation ...")
    the_plan = make_plan(observe(sub, sub.spec), sub.spec, policy, seed)
    present(the_plan, the_plan.to_json(), do_apply, as_json, {"lab": layout.name},
            lambda p: apply(sub, sub.spec, p, on_step=lambda s: err(step_line(s))))
