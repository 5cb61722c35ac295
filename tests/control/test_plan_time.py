"""Plans with time (each move's start and end, one at a time, as a drain makes them), a
node's failure (the restarts, when), and a new VM (where, or why nowhere)."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest

from tests import helpers
from vmcluster.control.consolidate import Observation, drain_plan, observation
from vmcluster.control.failure import plan_add_vm, plan_failure
from vmcluster.control.plans import ClusterPlan
from vmcluster.errors import InputError, UsageError
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


def test_plan_fail_on_a_spec() -> None:
    spec = load_spec(ROOT / "examples/lab.toml")
    f = plan_failure(spec, {v.name: v.owner for v in spec.vms}, "node1")
    assert f.lost == ("web",) and f.restarts == (("web", "node2"),)
    assert f.restart_issued_s == pytest.approx(4.4, abs=0.3)  # 2 s + the stop budget
    assert f.to_json()["left_down"] == []
    idle = plan_failure(spec, {"web": "node2", "db": "node2", "batch": "node3"}, "node1")
    assert idle.lost == () and idle.restart_issued_s is None
    out = helpers.vmc("plan", "fail", "node1", "--spec", "examples/lab.toml")
    assert out.returncode == 0, out.stderr
    assert "restarts issued 4.4 s after the failure" in out.stdout
    assert "web -> node2" in out.stdout


def test_plan_add_vm_says_where_or_why_not(tmp_path: Path) -> None:
    text = (ROOT / "examples/lab.toml").read_text()
    spec = load_spec(ROOT / "examples/lab.toml")
    defs = [{"name": v.name, "owner": v.owner, "memory_mib": v.memory_mib}
            for v in spec.vms]
    placed = {v.name: v.owner for v in spec.vms}
    small = plan_add_vm(text, "lab.toml", defs, placed, {"name": "s", "memory_mib": 128})
    assert small.node is not None and small.after is not None and small.after.survives(1)
    pinned = plan_add_vm(text, "lab.toml", defs, placed,
                         {"name": "s", "memory_mib": 128, "owner": "node3"})
    assert pinned.node == "node3"  # its owner first, when it names one
    big = plan_add_vm(text, "lab.toml", defs, placed, {"name": "b", "memory_mib": 4096})
    assert big.node is None and "no node has 4096 MiB" in big.reason
    # beside a 1600 MiB VM on node2, another fits, but after a loss not everything would
    crowded = [*defs, {"name": "bulk", "owner": "node2", "memory_mib": 1600}]
    tight = plan_add_vm(text, "lab.toml", crowded, {**placed, "bulk": "node2"},
                        {"name": "t", "memory_mib": 1600})
    assert tight.node == "node1" and tight.after is not None and not tight.after.survives(1)
    [worst] = [x for x in tight.after.losses if x.down == ("node1",)]
    assert [vm for vm, _ in worst.left_down] == ["web"]
    with pytest.raises(InputError, match="needs a name"):
        plan_add_vm(text, "lab.toml", defs, placed, {"memory_mib": 1})
    bad = tmp_path / "bad.toml"
    bad.write_text('name = "x"\nmemory_mib = "lots"\n')
    out = helpers.vmc("plan", "add-vm", str(bad), "--spec", "examples/lab.toml")
    assert out.returncode == 2 and out.stderr.count("\n") == 1
    assert "memory_mib must be int" in out.stderr and "bad.toml" in out.stderr
    fine = tmp_path / "fine.toml"
    fine.write_text('[[vms]]\nname = "f"\nmemory_mib = 512\nowner = "node3"\n')
    out = helpers.vmc("plan", "add-vm", str(fine), "--spec", "examples/lab.toml")
    assert out.returncode == 0, out.stderr
    assert "f would start on node3" in out.stdout and "still restarts every VM" in out.stdout
