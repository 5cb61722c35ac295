"""A migration's mode, chosen before it starts, carried out by the simulator."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from vmcluster.control.migration import MigrationRequest, migrate
from vmcluster.errors import MigrationRefused
from vmcluster.model import ClusterSpec
from vmcluster.model.spec import load_spec
from vmcluster.policy.networks import Health
from vmcluster.substrate.sim import SimSubstrate

LAB = Path(__file__).resolve().parents[2] / "examples" / "lab.toml"


def spec_with(**db: object) -> ClusterSpec:
    """The lab's spec, its db VM changed (and on the default 100 ms budget)."""
    db = {"max_downtime_ms": 100.0, **db}
    spec = load_spec(LAB)
    vms = tuple(replace(v, **db) if v.name == "db" else v for v in spec.vms)  # type: ignore[arg-type]
    return replace(spec, vms=vms)


def run(spec: ClusterSpec) -> tuple[SimSubstrate, dict[str, object]]:
    sub = SimSubstrate(spec)
    sub.start_vm("db", "node2")
    result = migrate(sub, spec, Health(), MigrationRequest("db", "node3"))
    return sub, {**result.to_json(), "ok": result.ok}


def test_a_quiet_guest_moves_by_precopy_within_100_ms() -> None:
    sub, r = run(spec_with())
    assert r["ok"] and r["mode"] == "precopy"
    assert float(r["downtime_ms"]) <= 100  # type: ignore[arg-type]
    assert "converges in" in str(r["reason"])
    assert sub.status().vm("db").node == "node3"


def test_a_fast_guest_is_refused_without_consent_and_nothing_starts() -> None:
    spec = spec_with(dirty_mibps=300.0, wws_mib=160.0, on_no_convergence="abort")
    sub = SimSubstrate(spec)
    sub.start_vm("db", "node2")
    with pytest.raises(MigrationRefused, match=r"downtime budget.*allow_postcopy"):
        migrate(sub, spec, Health(), MigrationRequest("db", "node3"))
    assert sub.status().vm("db").node == "node2" and sub.status().vm("db").state == "running"


def test_postcopy_when_allowed_ends_within_its_prediction() -> None:
    sub, r = run(spec_with(dirty_mibps=100.0, wws_mib=128.0, allow_postcopy=True))
    assert r["ok"] and r["mode"] == "postcopy" and r["outcome"] == "postcopy"
    assert float(r["downtime_ms"]) <= 100  # type: ignore[arg-type]
    assert float(r["total_s"]) == pytest.approx(float(r["predicted_total_s"]), rel=0.1)  # type: ignore[arg-type]
    memory_over_link = 256 / 119.2
    assert float(r["total_s"]) <= 1.5 * memory_over_link + 0.05  # type: ignore[arg-type]
    assert sub.status().vm("db").node == "node3"


def test_a_postcopy_cut_after_the_switch_loses_the_running_copy() -> None:
    spec = spec_with(dirty_mibps=100.0, wws_mib=128.0, allow_postcopy=True)
    sub = SimSubstrate(spec)
    sub.start_vm("db", "node2")
    cut: list[bool] = []

    def watch(_h: object, p: object) -> None:
        # Once pass 0 is over (the switch), the migration network goes at the target.
        if not cut and sub.clock.now() > 256 / 119.2 + 0.2:
            cut.append(True)
            sub.set_link("Migration", "node3", False)

    result = migrate(sub, spec, Health(), MigrationRequest("db", "node3"), on_progress=watch)
    assert cut and not result.ok
    st = sub.status().vm("db")
    assert (st.node, st.state) == (None, "stopped")  # for the manager to restart from disk
