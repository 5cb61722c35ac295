"""Consolidation on a real lab powers a host off when load falls and back on, through
its power driver, when load returns; each VM's load as its guest reports it.

Needs root. Three one-core nodes whose power driver is the lab's switch (Wake-on-LAN on
the public network); three idle VMs, none on node3. The first consolidation powers an
emptied node off. Then every guest keeps its vCPU 45 % busy (the workload's ``CPU``
command): two such VMs overload a one-core node, so the next plan needs the node that
is off, and applying it powers that node on by its driver before moving a VM there.
"""

from __future__ import annotations

import json
import os
import time
from functools import partial
from typing import TYPE_CHECKING, Any

import pytest
from tests import helpers

from vmcluster.lab.guestctl import guest_request
from vmcluster.lab.substrate import LabSubstrate
from vmcluster.substrate.host.client import AgentClient

if TYPE_CHECKING:
    from conftest import LabStarter

vmc = partial(helpers.vmc, timeout=600)

pytestmark = [
    pytest.mark.lab,
    pytest.mark.skipif(os.geteuid() != 0, reason="the lab needs root"),
]

SPEC = """
[cluster]
name = "power"

[[networks]]
name = "Public"
subnet = "198.18.1.0/24"
gateway = "198.18.1.1"

[[networks]]
name = "Heartbeat"
subnet = "198.18.2.0/24"

[[networks]]
name = "Migration"
subnet = "198.18.3.0/24"
bandwidth_mbps = 1000
{nodes}{vms}"""
NODE = """
[[nodes]]
name = "node{i}"
cores = 1
memory_mib = 2048
interfaces = {{ Public = "198.18.1.1{i}", Heartbeat = "198.18.2.1{i}", \
Migration = "198.18.3.1{i}" }}
power = {{ driver = "lab", boot_s = 60 }}
"""
VM = """
[[vms]]
name = "{name}"
owner = "{owner}"
memory_mib = 256
dirty_mibps = 1
wws_mib = 8
"""


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory, start_lab: LabStarter) -> LabSubstrate:
    spec = tmp_path_factory.mktemp("power") / "spec.toml"
    spec.write_text(SPEC.format(
        nodes="".join(NODE.format(i=i) for i in (1, 2, 3)),
        vms="".join(VM.format(name=n, owner=o)
                    for n, o in (("a", "node1"), ("b", "node2"), ("c", "node2")))))
    return start_lab(spec, "w")


def _plan(lab: LabSubstrate) -> dict[str, Any]:
    got = vmc("plan", "consolidate", "--lab", lab.layout.name, "--json")
    assert got.returncode == 0, got.stderr
    return dict(json.loads(got.stdout))


def _until(lab: LabSubstrate, ok: Any, what: str, timeout_s: float = 90.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout_s
    while True:
        got = _plan(lab)
        if ok(got):
            return got
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} within {timeout_s:.0f} s; last plan: {got}")
        time.sleep(2.0)


def _apply(lab: LabSubstrate) -> dict[str, Any]:
    got = vmc("consolidate", "--lab", lab.layout.name, "--apply", "--json")
    assert got.returncode == 0, got.stderr
    applied = dict(json.loads(got.stdout)["applied"])
    assert applied["ok"], applied
    return applied


def test_power_off_when_idle_and_on_through_the_driver_when_load_returns(
        lab: LabSubstrate) -> None:
    # idle: every VM's load measured, and low enough (just after their boot the guests are
    # busy for a while) that the plan empties a host
    _until(lab, lambda p: p["load"]["vms_measured"] == 3 and p["plan"]["power_off"],
           "every VM's load measured and a plan that powers an idle host off")
    applied = _apply(lab)
    [off] = applied["powered_off"]
    assert not AgentClient(lab.layout, off).alive()
    addrs = [str(v.address) for v in lab.spec.vms]
    try:
        for addr in addrs:
            assert guest_request(lab.layout, addr, "CPU 45") == "OK CPU 45"
        plan = _until(lab, lambda p: p["plan"]["power_on"] == [off],
                      f"a plan that powers {off} on")
        # each VM's load is its guest's own report (the TCG threads measure emulation)
        assert set(plan["load"]["sources"].values()) == {"guest"}, plan["load"]
        applied = _apply(lab)
        assert applied["powered_on"] == [off], applied
        assert any(m["target"] == off and m["ok"] for m in applied["migrations"]), applied
        assert AgentClient(lab.layout, off).alive()
        assert lab.status().node(off).state == "up"
        log = (lab.layout.harness_dir / "powerswitch.log").read_text()
        assert f"{off}: powering on (magic packet from 198.18.1." in log, log
    finally:
        for addr in addrs:
            guest_request(lab.layout, addr, "CPU 0")
