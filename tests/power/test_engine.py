"""The interval engine on a tiny datacenter whose metrics are checked by hand."""

from __future__ import annotations

import numpy as np
import pytest

from vmcluster.experiments.engine import Datacenter, simulate
from vmcluster.experiments.scenario import Scenario
from vmcluster.policy.power.detection import Detector
from vmcluster.policy.power.ours import OursPolicy
from vmcluster.policy.power.placement import PaperPolicy, Planner
from vmcluster.policy.power.plan import Migrate, Plan, Snapshot
from vmcluster.policy.power.registry import make_policy

LINEAR = np.linspace(100.0, 200.0, 11)  # 100 W idle, 200 W at full load


def tiny(n_hosts: int = 2, vm_mips: float = 1000.0, ram: float = 625.0) -> Datacenter:
    return Datacenter(
        host_pe_mips=np.full(n_hosts, 1000.0), host_pes=np.full(n_hosts, 2),
        host_ram=np.full(n_hosts, 4096.0), host_bw=np.full(n_hosts, 1000.0),
        power_table=np.tile(LINEAR, (n_hosts, 1)), vm_mips=np.array([vm_mips]),
        vm_ram=np.array([ram]), vm_bw=np.array([100.0]),
    )


def test_static_energy_by_hand() -> None:
    m = simulate(tiny(), np.full((1, 3), 50, dtype=np.uint8), None)
    # one host at 25 % (125 W), the other empty and off (0 W); counted as CloudSim counts
    # it: from the first scheduling instant (300.1 s) to the last one inside the day
    # (600.1 s; the frame from there would end after the day's 900 s)
    assert m.energy_kwh == pytest.approx(125.0 * 300 / 3.6e6)
    assert m.slatah == 0.0 and m.pdm == 0.0 and m.migrations == 0


def test_one_migration_by_hand() -> None:
    def move(snap: Snapshot, seed: int) -> Plan:
        del seed
        return Plan((Migrate(0, 0, 1),)) if snap.step == 1 else Plan()

    m = simulate(tiny(), np.full((1, 3), 50, dtype=np.uint8), move)
    t = 625.0 / 62.5  # 10 s at half of 1 Gbit/s
    energy = 125 * t + 102.5 * t + 125 * (300 - t)
    assert m.energy_kwh == pytest.approx(energy / 3.6e6)
    # the target is active and short of MIPS (10 % of the VM) while the VM comes in
    assert m.slatah == pytest.approx(t / (t + 300))
    assert m.pdm == pytest.approx(0.1 * 500 * t / (500 * 300))
    assert m.migrations == 1
    assert m.esv == pytest.approx(m.energy_kwh * m.slatah * m.pdm)


def test_requests_are_read_a_tenth_of_a_second_in() -> None:
    # 0 % at the first instant's sample, 6 % at the next: CloudSim reads 0.1 s into the
    # interval, so the VM asks for a little, its host is on (idle power) and the VM is
    # not destroyed as idle
    m = simulate(tiny(), np.array([[50, 0, 6, 6]], dtype=np.uint8), None)
    watts = 100 + 100 * (1000 * 0.06 * 0.1 / 300) / 2000  # the first frame's start
    assert m.energy_kwh > watts * 300 / 3.6e6
    shifted = simulate(tiny(), np.array([[50, 0, 6, 6]], dtype=np.uint8), None, offset_s=0.0)
    assert shifted.energy_kwh < m.energy_kwh  # at the sample itself: 0, destroyed


def test_idle_vm_is_dropped_like_cloudsim() -> None:
    util = np.array([[50, 0, 0, 80]], dtype=np.uint8)  # destroyed at 0, 0: never back
    kept = simulate(tiny(), util, None, drop_idle_vms=False)
    dropped = simulate(tiny(), util, None)
    assert dropped.energy_kwh < kept.energy_kwh


def _snapshot(req: list[float], hosts: list[int], n_hosts: int = 3) -> Snapshot:
    dc = tiny(n_hosts)
    n = len(req)
    host_vms = tuple(tuple(v for v in range(n) if hosts[v] == h) for h in range(n_hosts))
    used = np.bincount(hosts, req, n_hosts)
    return Snapshot(
        host_pe_mips=dc.host_pe_mips, host_mips=dc.host_mips, host_ram=dc.host_ram,
        host_bw=dc.host_bw, power_table=np.vstack([LINEAR, LINEAR * 1.5, LINEAR])[:n_hosts],
        vm_mips=np.full(n, 1000.0), vm_ram=np.full(n, 613.0), vm_bw=np.full(n, 100.0),
        vm_host=np.array(hosts), host_vms=host_vms, vm_req=np.array(req),
        vm_hist=np.zeros((n, 30)), vm_hist_count=np.ones(n, dtype=np.int64),
        host_util=used / dc.host_mips,
    )


def test_pabfd_picks_least_power_increase() -> None:
    snap = _snapshot([400.0, 400.0, 200.0], [0, 1, 2])
    p = Planner(snap)
    excluded = np.array([False, False, True])
    # host 1's power grows 1.5x faster than host 0's: the VM goes to host 0
    assert p.pabfd(2, Detector("thr", 0.8), excluded) == 0
    # a host that would be overloaded is skipped
    big = _snapshot([1500.0, 100.0, 300.0], [0, 1, 2])
    assert Planner(big).pabfd(2, Detector("thr", 0.8), np.array([False, False, True])) == 1


def test_paper_policy_relieves_overload_and_empties_underload() -> None:
    snap = _snapshot([900.0, 800.0, 100.0], [0, 0, 2])
    plan = PaperPolicy(Detector("thr", 0.8)).decide(snap)
    assert plan.overloaded == (0,)
    moved = {m.vm for m in plan.migrations}
    assert moved  # something leaves host 0 (85 % > 80 %)
    assert all(m.target != 0 for m in plan.migrations)


@pytest.mark.parametrize("policy", ["thr-rs-0.8", "ours"])
def test_same_seed_same_result(policy: str) -> None:
    rng = np.random.default_rng(3)
    util = rng.integers(0, 100, size=(40, 30)).astype(np.uint8)
    dc = Scenario(hosts=20).datacenter(40)
    decide = make_policy(policy)
    a = simulate(dc, util, decide, seed=5)
    b = simulate(dc, util, decide, seed=5)
    assert a == b


def test_ours_plan_respects_limits() -> None:
    rng = np.random.default_rng(4)
    util = rng.integers(0, 100, size=(60, 12)).astype(np.uint8)
    dc = Scenario(hosts=30).datacenter(60)
    pol = OursPolicy(max_in=1)
    seen: list[Plan] = []

    def spy(snap: Snapshot, seed: int) -> Plan:
        plan = pol.decide(snap, seed)
        seen.append(plan)
        return plan

    simulate(dc, util, spy)
    # It must have planned moves for the limit to mean anything.
    assert sum(len(plan.migrations) for plan in seen) > 0
    for plan in seen:
        targets = [m.target for m in plan.migrations]
        assert len(targets) == len(set(targets))  # at most one in-coming per host


def test_a_boot_charged_by_hand() -> None:
    def move(snap: Snapshot, seed: int) -> Plan:
        del seed
        return Plan((Migrate(0, 0, 1),)) if snap.step == 1 else Plan()

    m = simulate(tiny(), np.full((1, 3), 50, dtype=np.uint8), move, boot_s=100.0)
    t = 625.0 / 62.5
    # host 1 is off: it boots 100 s at its peak (200 W) while the VM stays on host 0,
    # then the copy, then the VM runs on host 1
    energy = 125 * 100 + 200 * 100 + (125 + 102.5) * t + 125 * (300 - 100 - t)
    assert m.energy_kwh == pytest.approx(energy / 3.6e6)
    assert m.boot_kwh == pytest.approx(200 * 100 / 3.6e6)
