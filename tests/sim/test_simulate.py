"""Scenarios as a user runs them: the shipped examples, determinism, clear errors."""

from __future__ import annotations

import json
from functools import partial
from pathlib import Path

import pytest

from tests import helpers
from vmcluster.control.scenario import load_scenario
from vmcluster.control.simulate import run_scenario
from vmcluster.errors import SpecError

vmc = partial(helpers.vmc, timeout=120)  # this module's commands run longer

ROOT = Path(__file__).resolve().parents[2]
SCEN = ROOT / "examples" / "scenarios"


def test_seed_private_down_moves_traffic_and_migration_shares_public() -> None:
    rep = run_scenario(load_scenario(SCEN / "seed-private-down.toml")).to_json()
    migs = rep["migrations"]
    assert [m["ok"] for m in migs] == [True, True, True]
    assert {m["network"] for m in migs} == {"Cluster Network 1"}
    # Alone on the public network vs. sharing it with the redirected CSV I/O.
    assert migs[2]["total_s"] > migs[0]["total_s"] * 1.2
    totals = {(t["class"], t["network"]): t["mib"] for t in rep["traffic"]["totals_mib"]}
    assert totals[("csv-redirect", "Cluster Network 2")] > 0   # before the failure
    assert totals[("csv-redirect", "Cluster Network 1")] > 0   # after it
    assert totals[("heartbeat", "Cluster Network 1")] > 0
    down = next(f for f in rep["failures"] if f["event"].startswith("network-down"))
    assert "heartbeats and CSV on Cluster Network 1" in down["handled"]


def test_lab_drain_queues_and_fails_over() -> None:
    trace: list[dict[str, object]] = []
    rep = run_scenario(load_scenario(SCEN / "lab-drain.toml"), trace=trace.append).to_json()
    drained = [m for m in rep["migrations"] if m["reason"] == "drain node2"]
    assert len(drained) == 3 and all(m["ok"] for m in drained)
    assert all(m["source"] == "node2" for m in drained)
    starts = sorted(m["started_s"] for m in drained)
    assert starts[2] > starts[0]  # the third waited for a slot (2 per node)
    assert any(e["kind"] == "migration-queued" for e in trace)
    fail = next(f for f in rep["failures"] if f["event"] == "node-down node3")
    assert "restarted" in fail["handled"]


def test_two_nodes_fail_over_with_a_witness_and_not_without(tmp_path: Path) -> None:
    """The simulator counts the witness's vote as the manager does (same quorum rule)."""
    scen = load_scenario(SCEN / "seed-witness-crash.toml")
    fail = run_scenario(scen).to_json()["failures"][0]
    assert fail["event"] == "node-down node1" and "restarted vm1->node2" in fail["handled"]
    text = (SCEN / "seed-witness-crash.toml").read_text().replace(
        "../seed-witness.toml", str(ROOT / "examples/seed.toml"))
    (tmp_path / "no-witness.toml").write_text(text)
    alone = run_scenario(load_scenario(tmp_path / "no-witness.toml")).to_json()["failures"][0]
    assert "restarted none" in alone["handled"] and "no quorum" in alone["handled"]


def test_same_seed_same_trace_bytes(tmp_path: Path) -> None:
    a, b = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    for out in (a, b):
        res = vmc("simulate", str(SCEN / "lab-drain.toml"), "--json", "--trace", str(out))
        assert res.returncode == 0, res.stderr
        json.loads(res.stdout)
    assert a.read_bytes() == b.read_bytes() and a.stat().st_size > 0


def test_synthetic_seed_changes_the_day(tmp_path: Path) -> None:
    text = (SCEN / "synthetic-1000.toml").read_text()
    small = text.replace("hosts = 1000", "hosts = 20").replace("count = 2500", "count = 50")
    small = small.replace("count = 1500", "count = 30").replace("count = 1000", "count = 20")
    small = small.replace('duration = "24:00:00"', 'duration = "06:00:00"')
    p1 = tmp_path / "s1.toml"
    p1.write_text(small)
    p2 = tmp_path / "s2.toml"
    p2.write_text(small.replace("seed = 42", "seed = 43"))
    r1, r1b = (run_scenario(load_scenario(p1)).to_json() for _ in range(2))
    r2 = run_scenario(load_scenario(p2)).to_json()
    assert r1 == r1b
    assert r1["series"]["mean_util"] != r2["series"]["mean_util"]
    assert r1["hosts"] == 20 and r1["energy_kwh"] > 0


@pytest.mark.parametrize(("patch", "line", "what"), [
    ('kind = "network-down"', 'kind = "network-explode"', "kind"),
    ('network = "Cluster Network 2"', 'network = "Cluster Network 9"', "unknown network"),
    ('at = "00:15:00"', 'at = "99:00:00"', "after the end"),
    ('util = 0.4', 'util = 4', "util"),
])
def test_bad_scenario_is_one_line_with_file_and_line(
    tmp_path: Path, patch: str, line: str, what: str
) -> None:
    src = (SCEN / "seed-private-down.toml").read_text()
    bad = tmp_path / "bad.toml"
    bad.write_text(src.replace(patch, line, 1))
    seed = ROOT / "examples" / "seed.toml"
    bad_text = bad.read_text().replace('spec = "../seed.toml"', f'spec = "{seed}"')
    bad.write_text(bad_text)
    lineno = next(i for i, ln in enumerate(bad_text.splitlines(), 1) if line in ln)
    with pytest.raises(SpecError) as err:
        load_scenario(bad)
    assert f"{bad}:{lineno}" in str(err.value) and what in str(err.value)
    res = vmc("simulate", str(bad))
    assert res.returncode == 2 and "Traceback" not in res.stderr
    assert res.stderr.strip().count("\n") == 0 and f"bad.toml:{lineno}" in res.stderr


def test_missing_cluster_and_missing_file(tmp_path: Path) -> None:
    p = tmp_path / "empty.toml"
    p.write_text('[scenario]\nname = "x"\n')
    with pytest.raises(SpecError, match="exactly one way"):
        load_scenario(p)
    assert vmc("simulate", str(tmp_path / "nope.toml")).returncode == 2


def test_plots_are_written(tmp_path: Path) -> None:
    res = vmc("simulate", str(SCEN / "seed-private-down.toml"), "--plot", str(tmp_path))
    assert res.returncode == 0, res.stderr
    for name in ("utilisation.png", "hosts.png", "migrations.png", "traffic.png"):
        assert (tmp_path / name).read_bytes()[:4] == b"\x89PNG"


def test_a_scenarios_migration_takes_the_mode_the_cluster_would(tmp_path: Path) -> None:
    """The scenario runner asks the same mode choice as every real migration: a guest
    that no mode moves within its budget is refused before anything starts, and stays."""
    spec = (ROOT / "examples/lab.toml").read_text().replace(
        "dirty_mibps = 16\nwws_mib = 64\nmax_downtime_ms = 300",
        'dirty_mibps = 300\nwws_mib = 160\nmax_downtime_ms = 100\non_no_convergence = "abort"')
    (tmp_path / "lab.toml").write_text(spec)
    (tmp_path / "s.toml").write_text(
        '[scenario]\nname = "refused"\nspec = "lab.toml"\nduration = "00:05:00"\n'
        '[policy]\nkind = "none"\n'
        '[[events]]\nat = "00:01:00"\nkind = "migrate"\nvm = "db"\nto = "node3"\n'
        '[[events]]\nat = "00:02:00"\nkind = "migrate"\nvm = "web"\nto = "node3"\n')
    rep = run_scenario(load_scenario(tmp_path / "s.toml")).to_json()
    db, web = rep["migrations"]
    assert not db["ok"] and "refused before it started" in db["error"], db
    assert "allow_postcopy" in db["error"]
    assert web["ok"] and web["mode"] == "precopy", web
