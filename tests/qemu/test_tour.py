"""The README's main job, `vmcluster tour`, end to end as a new user runs it: every step
passes, and the lab it made is gone afterwards (it caught a flake the other tests did
not)."""

from __future__ import annotations

import os
import subprocess

import pytest
from tests.helpers import vmc

from vmcluster.substrate.host.layout import RUN_ROOT

pytestmark = [
    pytest.mark.lab,
    pytest.mark.skipif(os.geteuid() != 0, reason="the lab needs root"),
]


def test_the_demo_tour_runs_every_step_and_leaves_nothing_behind() -> None:
    out = vmc("tour", timeout=900)
    assert out.returncode == 0, (out.stdout[-4000:], out.stderr[-4000:])
    said = out.stdout + out.stderr
    for step in ("lab up --spec examples/lab.toml --lab tour", "node drain",
                 "vm migrate batch --to node1 --quick --lab tour", "lab down --lab tour"):
        assert step in said, step
    namespaces = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True,
                                check=True).stdout
    assert "vmc-tour-" not in namespaces
    assert not (RUN_ROOT / "tour").exists()
