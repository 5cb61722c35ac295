"""Plans with time: each move's start and end, one at a time, as a drain makes them."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest

from tests import helpers
from vmcluster.control.consolidate import Observation, drain_plan, observation
from vmcluster.control.plans import ClusterPlan
from vmcluster.errors import UsageError
from vmcluster.model import ClusterSpec
from vmcluster.model.spec import load_spec
from vmcluster.policy.migration_model import Costs
from vmcluster.policy.networks import Health

ROOT = Path(__file__).resolve().parents[2]


def _observed(spec_file: str = "examples/lab4.toml",
              costs: Costs | None = None) -> tuple[ClusterSpec, Observation]:
    spec = load_spec(ROOT / spec_file)
    on: dict[str, list[str]] = {}
    for v in spec.vms:
        on.setdefault(v.owner or "", []).append(v.name)
    # node1 also runs db and batch: three moves to schedule
    on["node1"] = [*on["node1"], *on.pop("node2"), *on.pop("node3")]
    obs = observation(spec, {n.name: "up" for n in spec.nodes}, on, {}, None, Health())
    return spec, replace(obs, costs=costs or Costs())


def test_moves_run_one_after_another_with_their_setup() -> None:
    spec, obs = _observed(costs=Costs(setup_s=2.5))
    plan = drain_plan(obs, spec, "node1")
    assert len(plan.migrations) == 3
    t = plan.timeline()
    steps = t["schedule"]
    assert isinstance(steps, list)
    assert steps[0]["start_s"] == 0.0
    for m, a, b in zip(plan.migrations, steps, steps[1:], strict=False):
        assert b["start_s"] == a["end_s"]  # one at a time
        assert a["end_s"] - a["start_s"] == pytest.approx(2.5 + m.predicted_s, abs=2e-3)
    assert t["predicted_end_s"] == pytest.approx(
        sum(2.5 + m.predicted_s for m in plan.migrations), abs=2e-3)
    assert {s["mode"] for s in steps} == {"precopy"}
    net = t["networks"]["Migration"]  # type: ignore[index]
    assert net["moves"] == 3 and 100 < net["peak_mibps"] < 130  # the 1 Gbit/s link
    # the JSON keeps it, and a plan read back from it schedules the same
    again = ClusterPlan.from_json(plan.to_json())
    assert again.timeline() == t


def test_a_plan_with_no_setup_is_the_migrations_alone() -> None:
    spec, obs = _observed()
    plan = drain_plan(obs, spec, "node1")
    assert plan.timeline()["predicted_end_s"] == pytest.approx(
        sum(m.predicted_s for m in plan.migrations), abs=2e-3)


def test_plan_drain_on_a_spec() -> None:
    out = helpers.vmc("plan", "drain", "node1", "--spec", "examples/lab4.toml", "--json")
    assert out.returncode == 0, out.stderr
    got = json.loads(out.stdout)
    assert [s["vm"] for s in got["plan"]["schedule"]] == ["web"]
    assert got["plan"]["migrations"][0]["target"] == "node2"
    text = helpers.vmc("plan", "drain", "node1", "--spec", "examples/lab4.toml")
    assert "web node1 -> node2 (precopy, Migration)" in text.stdout
    assert "done after" in text.stdout
    bad = helpers.vmc("plan", "drain", "node9", "--spec", "examples/lab4.toml")
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1 and "node9" in bad.stderr
    consolidate = helpers.vmc("plan", "consolidate", "--spec", "examples/lab4.toml", "--json")
    assert consolidate.returncode == 0, consolidate.stderr
    assert json.loads(consolidate.stdout)["plan"]["predicted_end_s"] >= 0


def test_unknown_node_is_one_error() -> None:
    spec, obs = _observed()
    with pytest.raises(UsageError, match="node9"):
        drain_plan(obs, spec, "node9")
