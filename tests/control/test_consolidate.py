"""Consolidation on the simulation substrate: plans from observed load, applied (in sim)."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence

import numpy as np
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from tests.helpers import vmc
from vmcluster.control.consolidate import PowerGuard, drain_plan, observe, plan
from vmcluster.control.consolidate_apply import ApplyReport, Step, apply
from vmcluster.control.migration import MigrationRequest, migrate_here
from vmcluster.control.plans import ClusterPlan
from vmcluster.errors import InputError, UsageError
from vmcluster.model import ClusterSpec
from vmcluster.model.spec import parse_spec
from vmcluster.substrate.sim import SimSubstrate
from vmcluster.substrate.sim.workload import Workload

HEAD = """
[cluster]
name = "c"
[[networks]]
name = "Public"
subnet = "198.18.1.0/24"
gateway = "198.18.1.1"
bandwidth_mbps = 1000
[[networks]]
name = "Heartbeat"
subnet = "198.18.2.0/24"
bandwidth_mbps = 1000
[[networks]]
name = "Migration"
subnet = "198.18.3.0/24"
bandwidth_mbps = 1000
"""
NODE = """
[[nodes]]
name = "n{i}"
cores = 2
memory_mib = {mem}
power_model = "ml110-g5"
interfaces = {{Public = "198.18.1.1{i}", Heartbeat = "198.18.2.1{i}", Migration = "198.18.3.1{i}"}}
"""
VM = """
[[vms]]
name = "v{i}"
owner = "n{owner}"
memory_mib = {mem}
dirty_mibps = 4
wws_mib = 32
"""


def cluster(vms: Sequence[tuple[int, float]], nodes: int = 3, node_mem: Sequence[int] = (),
            vm_mem: int = 256, off: Sequence[int] = (),
            rules: Mapping[int, str] = {}) -> tuple[ClusterSpec, SimSubstrate]:
    """VMs as (owner node number, CPU load 0..1); nodes n1..nN; ``off`` powered off first;
    ``rules``: more lines of VM number i's table (its HA rules)."""
    mems = list(node_mem) + [2048] * (nodes - len(node_mem))
    text = HEAD + "".join(NODE.format(i=i + 1, mem=mems[i]) for i in range(nodes))
    text += "".join(VM.format(i=i + 1, owner=o, mem=vm_mem) + rules.get(i + 1, "") + "\n"
                    for i, (o, _u) in enumerate(vms))
    spec = parse_spec(text)
    load = np.array([[u for _o, u in vms]], dtype=np.float32)
    sub = SimSubstrate(spec, workload=Workload(300.0, load) if vms else None)
    for n in off:
        sub.set_power(f"n{n}", False)
    for vm in spec.vms:
        sub.start_vm(vm.name, vm.owner)
    sub.clock.sleep(1.0)  # the first utilisation sample
    return spec, sub


def where(sub: SimSubstrate) -> dict[str, str | None]:
    return {v.name: v.node for v in sub.status().vms}


def states(sub: SimSubstrate) -> dict[str, str]:
    return {n.name: n.state for n in sub.status().nodes}


def test_underloaded_node_is_emptied_and_powered_off() -> None:
    spec, sub = cluster([(1, 0.05), (2, 0.3), (3, 0.3)])
    p = plan(sub, spec)
    assert [(m.vm, m.source) for m in p.migrations] == [("v1", "n1")]
    m = p.migrations[0]
    assert m.target in ("n2", "n3") and m.network == "Migration"
    assert m.fallbacks == ("Public", "Heartbeat") and m.converges
    assert m.predicted_s > 256 / 119.3 and 0 < m.predicted_downtime_ms <= 300
    assert p.power_off == (("n1", "emptied by the plan"),) and p.power_on == ()
    assert p.watts_after < p.watts_before - 90  # an ML110 G5 idles at 93.7 W
    assert where(sub) == {"v1": "n1", "v2": "n2", "v3": "n3"}  # planning changes nothing

    steps: list[Step] = []
    rep = apply(sub, spec, p, on_step=steps.append)
    assert rep.ok and rep.powered_off == ("n1",) and rep.kept_on == ()
    [res] = rep.migrations
    assert res.ok and res.network == "Migration" and res.total_s == pytest.approx(m.predicted_s,
                                                                                   rel=0.05)
    assert where(sub)["v1"] == m.target and states(sub)["n1"] == "off"
    kinds = [s.kind for s in steps]
    assert kinds[0] == "migrate" and kinds[-2:] == ["migrated", "power-off"]
    assert any(s.kind == "progress" and s.progress is not None and s.progress.sent_mib > 0
               for s in steps)
    assert "n1" not in sub.utilisation()  # an off node draws nothing and reports no load


def test_a_plan_applied_again_skips_what_moved_and_finishes_the_rest() -> None:
    """What a manager that took over an interrupted consolidation does: the VM already
    on its target is not moved again, nor counted as a failure."""
    spec, sub = cluster([(1, 0.05), (2, 0.3), (3, 0.3)])
    p = plan(sub, spec)
    [m] = p.migrations
    # the first run's migration, before its manager died
    assert migrate_here(sub, spec, MigrationRequest(m.vm, m.target), None, None).ok
    steps: list[Step] = []
    rep = apply(sub, spec, p, on_step=steps.append)
    assert rep.ok and rep.migrations == () and rep.powered_off == ("n1",), rep
    assert [(s.kind, s.subject) for s in steps][:1] == [("skip", m.vm)]


@pytest.mark.parametrize("policy", ["ours", "lr-mmt-1.2", "thr-mmt-0.8"])
def test_every_named_policy_consolidates_idle_nodes(policy: str) -> None:
    spec, sub = cluster([(1, 0.05), (2, 0.1), (3, 0.1)])
    p = plan(sub, spec, policy)
    assert p.policy == policy and p.migrations and p.power_off
    rep = apply(sub, spec, p)
    assert rep.ok
    st_ = states(sub)
    assert set(rep.powered_off) == {n for n, s in st_.items() if s == "off"}
    assert all(st_[node] == "up" for node in where(sub).values() if node is not None)


def test_overloaded_node_powers_a_node_on() -> None:
    spec, sub = cluster([(1, 0.9), (1, 0.8), (1, 0.7)], off=(2, 3))
    assert states(sub) == {"n1": "up", "n2": "off", "n3": "off"}
    p = plan(sub, spec)
    assert p.overloaded == ("n1",) and p.power_on == ("n2",) and p.power_off == ()
    assert [(m.source, m.target) for m in p.migrations] == [("n1", "n2")]
    assert p.watts_after > p.watts_before  # waking a host costs its idle power
    steps: list[Step] = []
    rep = apply(sub, spec, p, on_step=steps.append)
    assert rep.ok and rep.powered_on == ("n2",)
    assert steps[0].kind == "power-on"
    assert states(sub) == {"n1": "up", "n2": "up", "n3": "off"}
    assert where(sub)[p.migrations[0].vm] == "n2"


def test_failed_migration_leaves_vm_and_keeps_its_node_on() -> None:
    spec, sub = cluster([(1, 0.05), (2, 0.3), (3, 0.3)])
    p = plan(sub, spec)
    target = p.migrations[0].target
    for net in ("Migration", "Public", "Heartbeat"):  # the target cannot be reached any more
        sub.set_link(net, target, False)
    rep = apply(sub, spec, p)
    assert not rep.ok and len(rep.errors) == 1 and "stays on n1" in rep.errors[0]
    assert [r.ok for r in rep.migrations] == [False]
    assert rep.powered_off == () and rep.kept_on[0][0] == "n1"
    assert where(sub)["v1"] == "n1" and states(sub)["n1"] == "up"
    assert sub.status().vm("v1").state == "running"


def test_a_move_that_does_not_fit_in_memory_is_skipped() -> None:
    # n2 has room for the CPU but not for the memory (the paper's placement ignores RAM).
    spec, sub = cluster([(1, 0.05), (2, 0.1)], nodes=2, node_mem=(2048, 384))
    p = plan(sub, spec)
    assert p.migrations == () and p.power_off == ()
    assert p.skipped and p.skipped[0][0] == "v1" and "MiB free" in p.skipped[0][1]


def test_a_move_that_would_break_an_ha_rule_is_skipped_and_says_which() -> None:
    # v1 (nearly idle, on n1) is what the policy moves; each rule keeps it home.
    loads = [(1, 0.05), (2, 0.3), (3, 0.3)]
    for rules, said in (
        ({1: 'allowed_nodes = ["n1"]'}, "allowed_nodes"),
        ({i: 'anti_affinity = "replicas"' for i in (1, 2, 3)}, "anti_affinity replicas"),
    ):
        spec, sub = cluster(loads, rules=rules)
        p = plan(sub, spec)
        assert p.migrations == () and p.power_off == (), rules
        [(vm, why)] = p.skipped
        assert vm == "v1" and said in why, why
    # Only v2 shares its class: v1 never lands beside it (the policy's choice is kept or
    # skipped, never swapped for another node: the plan is the policy's).
    spec, sub = cluster(loads, rules={1: 'anti_affinity = "r"', 2: 'anti_affinity = "r"'})
    p = plan(sub, spec)
    assert all(m.target != "n2" for m in p.migrations) and len(p.migrations + p.skipped) == 1
    # An affinity group is kept together: v1 stays with v2's group on n2 or moves nowhere.
    spec, sub = cluster(loads, rules={1: 'affinity = "app"', 3: 'affinity = "app"'})
    p = plan(sub, spec)
    assert all(m.target == "n3" for m in p.migrations if m.vm == "v1"), p.migrations
    assert all("affinity app" in why for vm, why in p.skipped if vm == "v1")


def test_a_drain_plan_is_the_same_model_and_keeps_the_rules() -> None:
    """One plan model: a drain's moves carry networks and predictions, the node table has
    watts before/after, the drained node ends draining, nothing is powered off."""
    loads = [(1, 0.5), (1, 0.4), (1, 0.2), (2, 0.3), (3, 0.3)]
    rules = {1: 'allowed_nodes = ["n1", "n3"]', 2: 'allowed_nodes = ["n1"]',
             3: 'anti_affinity = "r"', 4: 'anti_affinity = "r"', 5: 'anti_affinity = "r"'}
    spec, sub = cluster(loads, rules=rules)
    p = drain_plan(observe(sub, spec), spec, "n1")
    assert p.kind == "drain" and p.policy == "drain:n1" and p.power_off == ()
    moved = {m.vm: m for m in p.migrations}
    assert moved["v1"].target == "n3" and moved["v1"].network and moved["v1"].predicted_s > 0
    assert moved["v3"].broke and "anti_affinity r" in moved["v3"].broke[0]  # non-strict
    [(vm, why)] = p.skipped
    assert vm == "v2" and "allowed" in why  # strict: it cannot leave n1
    nodes = {n.node: n for n in p.nodes}
    assert nodes["n1"].state_after == "draining" and nodes["n1"].vms_after == ("v2",)
    assert nodes["n1"].watts_after < nodes["n1"].watts_before
    assert p.watts_after == pytest.approx(sum(n.watts_after for n in p.nodes))
    again = ClusterPlan.from_json(json.loads(json.dumps(p.to_json())))
    assert again.kind == "drain" and again.to_json() == p.to_json()
    # A node that is off is neither drained nor a target.
    spec, sub = cluster(loads[:1], off=[3])
    assert drain_plan(observe(sub, spec), spec, "n1").migrations[0].target == "n2"
    with pytest.raises(UsageError, match="off"):
        drain_plan(observe(sub, spec), spec, "n3")


def test_an_empty_node_is_powered_off_but_never_the_last_one() -> None:
    spec, sub = cluster([], nodes=2)
    p = plan(sub, spec)
    assert p.power_off == (("n1", "already empty"),)
    apply(sub, spec, p)
    assert states(sub) == {"n1": "off", "n2": "up"}


def test_json_shape() -> None:
    spec, sub = cluster([(1, 0.05), (2, 0.3), (3, 0.3)])
    p = plan(sub, spec)
    out = json.loads(json.dumps(p.to_json()))
    assert set(out) == {"kind", "policy", "migrations", "power_on", "power_off", "skipped",
                        "overloaded", "nodes", "predicted_total_s", "watts_before", "watts_after",
                        "horizon_s", "energy_before_wh", "energy_after_wh", "kept_on",
                        "schedule", "predicted_end_s", "networks"}
    [m] = out["migrations"]
    assert set(m) == {"vm", "source", "target", "network", "fallbacks", "predicted_s",
                      "predicted_downtime_ms", "predicted_mib", "converges", "broke", "mode",
                      "setup_s"}
    assert out["power_off"] == [{"node": "n1", "reason": "emptied by the plan"}]
    assert [n["node"] for n in out["nodes"]] == ["n1", "n2", "n3"]
    assert out["nodes"][0]["state_after"] == "off" and out["nodes"][0]["watts_after"] == 0.0
    assert out["energy_before_wh"] == pytest.approx(out["watts_before"])
    rep = json.loads(json.dumps(apply(sub, spec, p).to_json()))
    assert set(rep) == {"ok", "migrations", "powered_on", "powered_off", "kept_on", "errors",
                        "cancelled"}
    assert rep["migrations"][0]["ok"] is True
    # What the manager is handed back: the plan as JSON, the report as JSON.
    again = ClusterPlan.from_json(out)
    assert [(m.vm, m.source, m.target, m.network) for m in again.migrations] == [
        (m["vm"], m["source"], m["target"], m["network"])]
    assert again.power_off == (("n1", "emptied by the plan"),)
    assert ApplyReport.from_json(rep).to_json() == rep
    with pytest.raises(InputError, match="plan"):
        ClusterPlan.from_json({"migrations": [{"vm": "x"}]})


def test_the_guard_keeps_quorum_and_the_managers_node_on() -> None:
    """Three idle nodes, each an etcd voter: the policy would power two off, but a second
    one off would lose the store's quorum; the manager's node never goes off."""
    spec, sub = cluster([(1, 0.05), (2, 0.05)])
    free = plan(sub, spec)
    assert len(free.power_off) == 2
    guard = PowerGuard(frozenset({"n1", "n2", "n3"}), manager=None)
    kept = plan(sub, spec, guard=guard)
    assert len(kept.power_off) == 1 and len(kept.kept_on) == 1
    assert "quorum" in kept.kept_on[0][1]
    mgr = next(n for n, _ in free.power_off)
    led = plan(sub, spec, guard=PowerGuard(frozenset(), manager=mgr))
    assert mgr not in {n for n, _ in led.power_off}
    assert (mgr, "it runs the cluster's elected manager") in led.kept_on
    # apply asks the guard again, as things are then: a plan older than the quorum
    rep = apply(sub, spec, free, guard=lambda: guard)
    assert len(rep.powered_off) == 1 and "quorum" in rep.kept_on[0][1]


def test_a_cancelled_apply_stops_before_the_next_migration_and_powers_nothing_off() -> None:
    spec, sub = cluster([(1, 0.05), (2, 0.05)])
    p = plan(sub, spec)
    assert p.migrations
    before = where(sub)
    rep = apply(sub, spec, p, cancelled=lambda: True)
    assert rep.cancelled and rep.migrations == () and rep.powered_off == ()
    assert where(sub) == before


def test_same_cluster_same_plan() -> None:
    loads = [(1, 0.2), (1, 0.1), (2, 0.05), (3, 0.4)]
    runs = []
    for _ in range(2):
        spec, sub = cluster(loads)
        runs.append(json.dumps(plan(sub, spec).to_json(), sort_keys=True))
    assert runs[0] == runs[1] and json.loads(runs[0])["migrations"]


def test_bad_policy_names_fail_clearly() -> None:
    spec, sub = cluster([(1, 0.1)], nodes=2)
    obs = observe(sub, spec)
    assert obs.vm_cpu == {"v1": pytest.approx(0.1)}
    with pytest.raises(UsageError, match="unknown policy"):
        plan(sub, spec, "fastest")
    with pytest.raises(UsageError, match="never moves"):
        plan(sub, spec, "npa")


def test_cli_is_registered_under_lab_and_refuses_a_lab_that_is_not_up() -> None:
    """As a user runs it: one line naming the lab and what to do, exit code 2 (the
    user's argument names no lab that is up)."""
    res = vmc("lab", "consolidate", "--lab", "nolab9", "--policy", "ours")
    assert res.returncode == 2 and res.stdout == "", res
    assert res.stderr.strip().splitlines() == [
        "vmcluster: error: lab 'nolab9' is not up (no /run/vmcluster/nolab9/harness/state.json);"
        " run `vmcluster lab up`"]


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(st.integers(1, 4), st.floats(0.0, 1.0)), min_size=1, max_size=7),
       st.sampled_from(["ours", "lr-mmt-1.2", "thr-mmt-0.8"]), st.booleans())
def test_applied_plans_end_where_they_said(vms: list[tuple[int, float]], policy: str,
                                           empty_off: bool) -> None:
    mems = (1024, 2048, 768, 2048)
    assume(all(sum(1 for o, _u in vms if o == i + 1) * 256 <= m for i, m in enumerate(mems)))
    off = [i for i in range(1, 5) if empty_off and all(o != i for o, _u in vms)]
    spec, sub = cluster(vms, nodes=4, node_mem=mems, vm_mem=256, off=off)
    p = plan(sub, spec, policy)
    after = {n.node: n for n in p.nodes}
    for n in p.nodes:  # memory always fits; off nodes hold nothing; someone stays up
        assert len(n.vms_after) * 256 <= spec.node(n.node).memory_mib
        assert n.state_after == "up" or not n.vms_after
    assert any(n.state_after == "up" for n in p.nodes)
    assert {n for n, _ in p.power_off}.isdisjoint(m.target for m in p.migrations)
    rep = apply(sub, spec, p)
    assert rep.ok, rep.errors
    assert states(sub) == {n: after[n].state_after for n in after}
    assert where(sub) == {v: n.node for n in p.nodes for v in n.vms_after}
