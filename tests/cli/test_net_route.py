"""The CLI as a user runs it: a real subprocess, real files, exit codes and one-line errors."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from tests.helpers import vmc

ROOT = Path(__file__).resolve().parents[2]


def test_net_prop_looks_like_cluster_exe() -> None:
    out = vmc("net", "prop", "--spec", "examples/seed.toml", "Cluster Network 2")
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0] == "Listing properties for 'Cluster Network 2':"
    assert "D  Cluster Network 2    Role                     1 (0x1)" in lines
    assert "D  Cluster Network 2    Metric                   1000 (0x3e8)" in lines
    assert "D  Cluster Network 2    AutoMetric               1 (0x1)" in lines
    allnets = vmc("net", "prop", "--spec", "examples/seed.toml").stdout
    assert "D  Cluster Network 1    Metric                   10001 (0x2711)" in allnets
    assert "D  Cluster Network 1    AutoMetric               0 (0x0)" in allnets


def test_route_json_for_the_seed() -> None:
    out = vmc("route", "--spec", "examples/seed.toml", "--json")
    assert out.returncode == 0, out.stderr
    data = json.loads(out.stdout)
    assert data["cluster"] == data["csv"] == "Cluster Network 2"
    assert data["live_migration"]["vm1"][0] == "Cluster Network 1"
    assert data["pairs"] == [
        {
            "nodes": ["node1", "node2"],
            "cluster": "Cluster Network 2",
            "live_migration": {"vm1": "Cluster Network 1"},
        }
    ]
    down = json.loads(
        vmc("route", "--spec", "examples/seed.toml", "--down", "Cluster Network 2", "--json").stdout
    )
    assert down["csv"] == "Cluster Network 1"
    assert {n["name"]: n["state"] for n in down["networks"]}["Cluster Network 2"] == "down"


def test_net_set_rewrites_the_spec_keeping_comments(tmp_path: Path) -> None:
    spec = tmp_path / "seed.toml"
    shutil.copy(ROOT / "examples/seed.toml", spec)
    out = vmc("net", "set", "--spec", str(spec), "Cluster Network 2", "metric=1001")
    assert out.returncode == 0, out.stderr
    assert "1001 (0x3e9)" in out.stdout and "AutoMetric               0 (0x0)" in out.stdout
    text = spec.read_text()
    assert "# The blog's simple cluster" in text and "metric = 1001" in text
    assert (
        vmc("net", "set", "--spec", str(spec), "Cluster Network 2", "metric=auto").returncode == 0
    )
    data = json.loads(vmc("route", "--spec", str(spec), "--json").stdout)
    assert data["networks"][1]["metric"] == 1000 and data["networks"][1]["auto_metric"]
    bad = vmc("net", "set", "--spec", str(spec), "Cluster Network 2", "role=2")
    assert bad.returncode == 2
    assert "role must be 0, 1 or 3" in bad.stderr and "metric = 1001" not in spec.read_text()


def test_bad_input_is_one_line_and_exit_2(tmp_path: Path) -> None:
    spec = tmp_path / "bad.toml"
    spec.write_text(
        (ROOT / "examples/seed.toml").read_text().replace('owner = "node1"', 'owner = "nodeX"')
    )
    out = vmc("route", "--spec", str(spec))
    assert out.returncode == 2
    assert out.stderr.count("\n") == 1 and "Traceback" not in out.stderr
    assert f"{spec}:" in out.stderr and "owner 'nodeX' is not a declared node" in out.stderr
    unknown = vmc("route", "--spec", "examples/seed.toml", "--down", "Nope")
    assert unknown.returncode == 2 and "unknown network 'Nope'" in unknown.stderr
    missing = vmc("net", "prop", "--spec", str(tmp_path / "none.toml"))
    assert missing.returncode == 2 and "no such file" in missing.stderr
