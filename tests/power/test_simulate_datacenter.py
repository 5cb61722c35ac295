"""`vmcluster simulate` on datacenter scenarios and on a directory of day traces."""

from __future__ import annotations

import json
import shutil
from functools import partial
from pathlib import Path

import pytest

from tests import helpers
from vmcluster.errors import SpecError
from vmcluster.experiments.scenario import load_scenario

vmc = partial(helpers.vmc, timeout=300)  # this module's commands run longer

ROOT = Path(__file__).resolve().parents[2]
SCENARIOS = sorted((ROOT / "examples/scenarios").glob("planetlab-*.toml"))


def test_every_shipped_planetlab_scenario_loads_with_its_trace() -> None:
    assert len(SCENARIOS) == 5
    for path in SCENARIOS:
        scn = load_scenario(path)
        assert scn.hosts == 800 and len(scn.vm_types) == 4
        assert Path(scn.trace).is_file() and Path(scn.trace).stem in path.stem


def test_simulate_runs_a_planetlab_scenario() -> None:
    out = vmc("simulate", "examples/scenarios/planetlab-20110306.toml", "--policy", "ours",
              "--json")
    assert out.returncode == 0, out.stderr
    (result,) = json.loads(out.stdout)["results"]
    assert result["policy"] == "ours" and result["day"] == "20110306"
    assert 0 < result["energy_kwh"] < 2419.2  # below no-power-awareness for the day
    assert result["migrations"] > 0


def test_simulate_takes_a_directory_of_traces(tmp_path: Path) -> None:
    shutil.copy(ROOT / "src/vmcluster/data/planetlab/20110306.csv", tmp_path / "dayA.csv")
    out = vmc("simulate", str(tmp_path), "--policy", "thr-mmt-0.8", "--json")
    assert out.returncode == 0, out.stderr
    assert [r["day"] for r in json.loads(out.stdout)["results"]] == ["dayA"]


def test_bad_datacenter_scenario_names_file_and_line(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    text = SCENARIOS[0].read_text().replace("pes = 2\n", "pes = 2\ncolour = 1\n", 1)
    bad.write_text(text)
    line = text.splitlines().index("colour = 1") + 1
    with pytest.raises(SpecError, match=rf"^{bad}:{line}: \[\[datacenter.host_types\]\] #1 "
                                        r"unknown key 'colour'"):
        load_scenario(bad)
    out = vmc("simulate", str(bad))
    assert out.returncode == 2 and out.stderr.count("\n") == 1
    missing = tmp_path / "missing.toml"
    missing.write_text(SCENARIOS[0].read_text().replace("planetlab/", "nowhere/"))
    out = vmc("simulate", str(missing))
    assert out.returncode == 2 and "no trace file" in out.stderr
