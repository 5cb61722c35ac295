"""What a loss of one node, or two, would leave: by the manager's own failover rules."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest

from tests import helpers
from vmcluster.errors import UsageError
from vmcluster.model import ClusterSpec
from vmcluster.model.spec import load_spec
from vmcluster.policy.capacity import capacity

ROOT = Path(__file__).resolve().parents[2]


def owners(spec: ClusterSpec) -> dict[str, str | None]:
    return {v.name: v.owner for v in spec.vms}


def test_the_lab_survives_any_one_node_and_no_two() -> None:
    spec = load_spec(ROOT / "examples/lab.toml")
    c = capacity(spec, owners(spec))
    assert c.survives(1) and not c.survives(2)
    one = {loss.down: loss for loss in c.losses if len(loss.down) == 1}
    assert dict(one[("node1",)].restarted) == {"web": "node2"}
    # two of three: the survivor holds one vote of three and stops everything it runs
    two = c.worst(2)
    assert two is not None and not two.quorum
    assert {vm for vm, _ in two.left_down} == {"web", "db", "batch"}
    assert "lose quorum (1 of 3 voters)" in two.left_down[0][1]


def test_a_witness_keeps_quorum_for_the_survivor() -> None:
    spec = load_spec(ROOT / "examples/lab-witness.toml")
    c = capacity(spec, owners(spec), depth=1)
    assert c.survives(1) and all(loss.quorum for loss in c.losses)


def test_what_cannot_be_restarted_is_named_with_why_and_the_room_is_counted() -> None:
    spec = load_spec(ROOT / "examples/lab4.toml")
    big = replace(spec, vms=tuple(replace(v, memory_mib=1900) for v in spec.vms))
    c = capacity(big, owners(big), depth=1)
    assert not c.survives(1)
    worst = c.worst(1)
    assert worst is not None and worst.quorum and worst.left_down
    vm, why = worst.left_down[0]
    assert vm in {v.name for v in big.vms} and why
    assert c.room_now.memory_mib_min < 2048 - 1900 + 1


def test_nothing_running_means_nothing_to_restart() -> None:
    spec = load_spec(ROOT / "examples/lab.toml")
    c = capacity(spec, {}, depth=2)
    assert c.survives(1) and all(not loss.restarted for loss in c.losses)


def test_bad_input_is_one_line() -> None:
    spec = load_spec(ROOT / "examples/lab.toml")
    with pytest.raises(UsageError, match=r"depth must be 1\.\.3"):
        capacity(spec, owners(spec), depth=4)
    with pytest.raises(UsageError, match="nodeX"):
        capacity(spec, {"web": "nodeX"})


def test_the_cli_on_a_spec() -> None:
    out = helpers.vmc("plan", "capacity", "--spec", "examples/lab.toml", "--json")
    assert out.returncode == 0, out.stderr
    got = json.loads(out.stdout)
    assert got["survives"] == {"1": True, "2": False}
    text = helpers.vmc("plan", "capacity", "--spec", "examples/lab.toml")
    assert "lose any 1 node(s): every VM restarts" in text.stdout
    bad = helpers.vmc("plan", "capacity", "--spec", "examples/lab.toml", "--depth", "9")
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1
