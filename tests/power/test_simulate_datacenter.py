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
    result, bound = json.loads(out.stdout)["results"]
    assert result["policy"] == "ours" and result["day"] == "20110306"
    assert bound["policy"] == "lower-bound" and 0 < bound["energy_kwh"] < result["energy_kwh"]
    assert 0 < result["energy_kwh"] < 2419.2  # below no-power-awareness for the day
    assert result["migrations"] > 0
    # what operators read beside ESV
    assert 0 <= result["overload_pct"] < 100 and 0 <= result["mips_lost_pct"] < 100
    assert result["boots"] >= 0
    assert 0 < result["hosts_active_mean"] <= result["hosts_active_peak"] <= 800


def test_simulate_takes_a_directory_of_traces(tmp_path: Path) -> None:
    shutil.copy(ROOT / "src/vmcluster/data/planetlab/20110306.csv", tmp_path / "dayA.csv")
    out = vmc("simulate", str(tmp_path), "--policy", "thr-mmt-0.8", "--json")
    assert out.returncode == 0, out.stderr
    assert [(r["policy"], r["day"]) for r in json.loads(out.stdout)["results"]] == [
        ("thr-mmt-0.8", "dayA"), ("lower-bound", "dayA")]


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


def _scenario(tmp_path: Path, old: str, new: str) -> Path:
    text = SCENARIOS[0].read_text()
    assert old in text
    path = tmp_path / "s.toml"
    path.write_text(text.replace(old, new, 1).replace(
        'trace = "planetlab/', f'trace = "{ROOT}/src/vmcluster/data/planetlab/', 1))
    return path


def test_a_datacenter_too_small_says_how_many_hosts_it_needs(tmp_path: Path) -> None:
    out = vmc("simulate", str(_scenario(tmp_path, "hosts = 800", "hosts = 10")))
    assert out.returncode == 2 and out.stderr.count("\n") == 1, out.stderr
    assert "cannot be created on 10 hosts: 526 are needed (516 more)" in out.stderr
    out = vmc("evaluate", "--days", "20110303", "--policies", "thr-mmt-0.8", "--hosts", "10")
    assert out.returncode == 2 and "526 are needed" in out.stderr, out.stderr


def test_a_vm_type_that_fits_no_host_is_named(tmp_path: Path) -> None:
    out = vmc("simulate", str(_scenario(tmp_path, "mips = 2500", "mips = 9000")))
    assert out.returncode == 2 and out.stderr.count("\n") == 1, out.stderr
    assert "VM type 1 (9000 MIPS, 870 MB, 100 Mbit/s) fits no host type" in out.stderr


def test_a_fractional_host_count_is_refused(tmp_path: Path) -> None:
    path = _scenario(tmp_path, "hosts = 800", "hosts = 80.5")
    with pytest.raises(SpecError, match=r"hosts must be a whole number, got 80.5"):
        load_scenario(path)


def test_the_scenarios_interval_and_duration_are_honoured(tmp_path: Path) -> None:
    whole = _scenario(tmp_path, "interval_s = 300", "interval_s = 300")
    half = tmp_path / "half.toml"
    half.write_text(whole.read_text().replace("interval_s = 300", "interval_s = 600").replace(
        "duration_s = 86400", "duration_s = 43200"))
    runs = {}
    for name, path in (("day", whole), ("half", half)):
        out = vmc("simulate", str(path), "--policy", "npa", "--json")
        assert out.returncode == 0, out.stderr
        runs[name] = json.loads(out.stdout)["results"][0]["energy_kwh"]
    assert runs["half"] == pytest.approx(runs["day"] / 2)  # NPA: every host at full power
    too_long = tmp_path / "long.toml"
    too_long.write_text(whole.read_text().replace("duration_s = 86400", "duration_s = 90000"))
    out = vmc("simulate", str(too_long))
    assert out.returncode == 2 and "duration_s 90000 is longer than the trace" in out.stderr


def test_a_bad_plot_path_is_refused_before_the_run(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    out = vmc("simulate", str(SCENARIOS[0]), "--plot", str(blocker / "charts"))
    assert out.returncode == 2 and out.stderr.count("\n") == 1, out.stderr
    assert "--plot" in out.stderr and "cannot write there" in out.stderr
    assert "simulated in" not in out.stdout + out.stderr  # nothing ran
