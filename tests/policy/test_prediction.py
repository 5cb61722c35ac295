"""Predictions pick the policy's network and share its bandwidth with known flows."""

from __future__ import annotations

from pathlib import Path

import pytest

from vmcluster.errors import PolicyError, UsageError
from vmcluster.model.spec import load_spec
from vmcluster.policy.migration_model import PrecopyInput, run
from vmcluster.policy.networks import Health
from vmcluster.policy.prediction import mbps_to_mibps, predict

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def test_lab_default_uses_second_lowest_metric_and_spec_profile() -> None:
    spec = load_spec(EXAMPLES / "lab.toml")
    pred = predict(spec, Health(), "db", "node3")
    assert pred.network == "Migration" and pred.source == "node2"
    b = mbps_to_mibps(1000)
    assert pred.bandwidth_mibps == pytest.approx(b)
    # QEMU aims at a quarter of the 300 ms budget: one more short pass
    assert pred.choice is not None and pred.choice.aim_ms == 75
    # the model's input keeps the VM's budget; the aim is beside it
    assert (pred.result.input.downtime_ms, pred.result.input.aim_ms) == (300, 75)
    expected = run(PrecopyInput(256, 16, 64, b, 75))
    assert pred.result.total_s == pytest.approx(expected.total_s)
    assert pred.result.converged
    assert len(pred.result.passes) == len(run(PrecopyInput(256, 16, 64, b, 300)).passes) + 1


def test_network_failure_moves_migration_and_flows_share_bandwidth() -> None:
    spec = load_spec(EXAMPLES / "lab.toml")
    health = Health.parse(spec, ["Migration"])
    alone = predict(spec, health, "db", "node3")
    assert alone.network == "Public"  # Heartbeat (lowest) carries CSV: LM takes the next one
    shared = predict(spec, health, "db", "node3", flows={"Public": 3})
    assert shared.bandwidth_mibps == pytest.approx(alone.bandwidth_mibps / 4)
    assert shared.result.total_s > alone.result.total_s


def test_seed_private_down_leaves_public_only() -> None:
    spec = load_spec(EXAMPLES / "seed.toml")
    assert predict(spec, Health(), "vm1", "node2").network == "Cluster Network 1"
    down = Health.parse(spec, ["Cluster Network 2"])
    pred = predict(spec, down, "vm1", "node2")
    assert pred.network == "Cluster Network 1" and pred.fallbacks == ()
    with pytest.raises(PolicyError):
        both = Health.parse(spec, ["Cluster Network 1", "Cluster Network 2"])
        predict(spec, both, "vm1", "node2")


def test_non_converging_prediction_gets_advice_including_another_network() -> None:
    spec = load_spec(EXAMPLES / "lab.toml")
    # db dirties 16 MiB/s of a 64 MiB set; with 40 flows on Migration it cannot converge in
    # 30 ms unthrottled (forced, as the user may choose) ...
    pred = predict(spec, Health(), "db", "node3", flows={"Migration": 40}, downtime_ms=30,
                   on_no_convergence="force")
    assert not pred.result.converged and pred.result.outcome == "forced"
    kinds = {a.kind for a in pred.advice}
    assert {"downtime", "bandwidth", "throttle", "network"} <= kinds
    # The fallbacks in the policy's order (Public, then the CSV network last) both converge.
    assert [a.value for a in pred.advice if a.kind == "network"] == ["Public", "Heartbeat"]
    # ... and by default the guest is throttled until it fits (86 % here) ...
    throttled = predict(spec, Health(), "db", "node3", flows={"Migration": 40}, downtime_ms=30)
    assert throttled.result.outcome == "throttled" and throttled.result.downtime_ms <= 30
    # ... or, when the pass bound comes first, given up: the VM stays, it never pauses.
    given_up = predict(spec, Health(), "db", "node3", flows={"Migration": 40}, downtime_ms=30,
                       max_passes=3)
    assert given_up.result.outcome == "aborted" and given_up.result.downtime_ms == 0


def test_usage_errors() -> None:
    spec = load_spec(EXAMPLES / "lab.toml")
    with pytest.raises(UsageError):
        predict(spec, Health(), "nope", "node3")
    with pytest.raises(UsageError):
        predict(spec, Health(), "db", "node2")
