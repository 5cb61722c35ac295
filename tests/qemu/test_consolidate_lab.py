"""`vmcluster lab consolidate` on a real lab: plan, apply with live migrations, power off, on.

Needs root. Three nodes, two tiny (nearly idle) VMs on node1 and node2, node3 empty:
every node is under-loaded, so the plan empties one of node1/node2 into the other. Of
the two empty nodes only one may go off: every node runs an etcd voter, and a second
one off would lose the store's quorum (nor does the elected manager's node go off).
The elected manager carries the plan out (an intent through the API). The lab is torn
down, and checked gone, even when a test fails.
"""

from __future__ import annotations

import json
import os
import time
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from tests import helpers

from vmcluster.lab.probe import memory_ok, serial_sizes
from vmcluster.lab.substrate import LabSubstrate
from vmcluster.substrate.host import netns
from vmcluster.substrate.host.client import AgentClient

vmc = partial(helpers.vmc, timeout=600)  # this module's commands run longer

if TYPE_CHECKING:
    from conftest import LabStarter

pytestmark = [
    pytest.mark.lab,
    pytest.mark.skipif(os.geteuid() != 0, reason="the lab needs root"),
]
ROOT = Path(__file__).resolve().parents[2]

SPEC = """
[cluster]
name = "consolidate"
max_concurrent_migrations = 2

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
{nodes}
[[vms]]
name = "web"
owner = "node1"
memory_mib = 256
dirty_mibps = 4
wws_mib = 16

[[vms]]
name = "db"
owner = "node2"
memory_mib = 256
dirty_mibps = 8
wws_mib = 32
"""
NODE = """
[[nodes]]
name = "node{i}"
cores = 2
memory_mib = 2048
power_model = "ml110-g{g}"
interfaces = {{Public = "198.18.1.1{i}", Heartbeat = "198.18.2.1{i}", Migration = "198.18.3.1{i}"}}
"""


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory, start_lab: LabStarter) -> LabSubstrate:
    spec = tmp_path_factory.mktemp("consolidate") / "spec.toml"
    nodes = "".join(NODE.format(i=i, g=4 if i == 3 else 5) for i in (1, 2, 3))
    spec.write_text(SPEC.format(nodes=nodes), encoding="utf-8")
    return start_lab(spec, "k")


def _placement(sub: LabSubstrate) -> dict[str, str | None]:
    return {v.name: v.node for v in sub.status().vms}


def _wait_no_pids(ns: str, timeout_s: float = 20.0) -> list[int]:
    deadline = time.monotonic() + timeout_s
    pids = netns.ns_pids(ns)
    while pids and time.monotonic() < deadline:
        time.sleep(0.2)
        pids = netns.ns_pids(ns)
    return pids


def test_plan_only_changes_nothing(lab: LabSubstrate) -> None:
    before = _placement(lab)
    # The plan is the API's, from the CPU each host measured of its own QEMUs (published
    # every few seconds once two samples exist): wait until both VMs are measured.
    deadline = time.monotonic() + 60
    while True:
        res = vmc("consolidate", "--lab", lab.layout.name, "--json")
        assert res.returncode == 0, res.stderr
        out: dict[str, Any] = json.loads(res.stdout)
        if out["load"]["vms_measured"] == 2 or time.monotonic() > deadline:
            break
        time.sleep(2)
    assert out["load"] == {"vms_measured": 2, "vms_running": 2,
                           "oldest_s": out["load"]["oldest_s"],
                           "sources": out["load"]["sources"]}, out["load"]
    # a TCG host's source is the guest's own report, or, before its first one, the process
    assert set(out["load"]["sources"]) == {"web", "db"}
    assert set(out["load"]["sources"].values()) <= {"guest", "process"}
    assert all(n["util_before"] > 0 for n in out["plan"]["nodes"] if n["vms_before"])
    res = vmc("lab", "consolidate", "--name", lab.layout.name, "--json")
    assert res.returncode == 0, res.stderr
    out = json.loads(res.stdout)
    plan = out["plan"]
    assert out["applied"] is None and plan["policy"] == "ours"
    assert len(plan["migrations"]) == 1
    m = plan["migrations"][0]
    assert m["network"] == "Migration" and m["predicted_s"] > 0 and m["predicted_downtime_ms"] >= 0
    empty = {m["source"], "node3"}
    off = {p["node"] for p in plan["power_off"]}
    kept = {k["node"]: k["reason"] for k in plan["kept_on"]}
    assert len(off) == 1 and off | set(kept) == empty, plan
    assert all("quorum" in why or "manager" in why for why in kept.values()), kept
    assert plan["watts_after"] < plan["watts_before"]
    assert _placement(lab) == before
    assert [n.state for n in lab.status().nodes] == ["up", "up", "up"]
    for policy in ("lr-mmt-1.2", "thr-mmt-0.8"):
        res = vmc("lab", "consolidate", "--name", lab.layout.name, "--policy", policy, "--json")
        assert res.returncode == 0, res.stderr
        assert json.loads(res.stdout)["plan"]["policy"] == policy
    text = vmc("lab", "consolidate", "--name", lab.layout.name)
    assert text.returncode == 0 and "power off" in text.stdout and "predicted" in text.stdout


def test_apply_moves_for_real_powers_off_and_back_on(lab: LabSubstrate) -> None:
    nodes = [n.name for n in lab.spec.nodes]
    sizes = {vm: serial_sizes(lab.layout, vm, nodes) for vm in ("web", "db")}
    pids = {vm: _pid(lab, vm) for vm in ("web", "db")}
    res = vmc("lab", "consolidate", "--name", lab.layout.name, "--apply", "--json")
    assert res.returncode == 0, res.stderr
    out = json.loads(res.stdout)
    applied, plan = out["applied"], out["plan"]
    assert applied["ok"] is True, applied["errors"]
    [m] = plan["migrations"]
    [r] = applied["migrations"]
    assert r["ok"] and (r["vm"], r["source"], r["target"]) == (m["vm"], m["source"], m["target"])
    assert r["network"] == "Migration" and r["passes"] >= 1 and r["sent_mib"] > 0
    assert "[migrate]" in res.stderr and "[power-off]" in res.stderr  # progress on stderr
    assert "intent" in res.stderr  # the manager carried it out
    # The VM really moved: a new QEMU process on the target, the guest's memory intact.
    st = lab.status()
    assert st.vm(m["vm"]).node == m["target"] and st.vm(m["vm"]).state == "running"
    assert _pid(lab, m["vm"]) != pids[m["vm"]]
    assert memory_ok(lab.layout.serial_log(m["vm"], m["target"]), sizes[m["vm"]][m["target"]])
    # One empty node is off (it powered itself off): state "off", no process left.
    assert len(applied["powered_off"]) == 1
    assert {p["node"] for p in plan["power_off"]} == set(applied["powered_off"])
    for node in applied["powered_off"]:
        assert st.node(node).state == "off"
        assert _wait_no_pids(lab.layout.node_ns(node)) == []
        assert not AgentClient(lab.layout, node).alive()
    # A second plan: nothing left to empty (one node holds both VMs; the other empty one
    # keeps the store's quorum).
    again = json.loads(vmc("lab", "consolidate", "--name", lab.layout.name, "--json").stdout)
    assert again["plan"]["migrations"] == [] and again["plan"]["power_off"] == []
    # Power it back on: its agent runs again and it can take a VM.
    for node in applied["powered_off"]:
        lab.set_power(node, True)
        assert lab.status().node(node).state == "up"
        assert AgentClient(lab.layout, node).alive()


def _pid(sub: LabSubstrate, vm: str) -> int:
    node = sub.owner(vm)
    assert node is not None
    listed = AgentClient(sub.layout, node).call("list")["vms"]
    return int(next(v["pid"] for v in listed if v["vm"] == vm and v["role"] == "run"))
