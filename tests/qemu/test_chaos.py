"""The fault campaign's short subset on a lab of its own, and each fault command by hand.

``vmcluster lab chaos --ci`` runs, as a user would, the scenarios marked for CI (a
node crash, the heartbeat network down, blips, the etcd leader killed, an agent
killed, vmclusterd restarted under load, the migration network cut mid-copy, a
migration cancelled, the migrating CLI killed): every one must pass, with no VM
running twice (sampled every 50 ms) and no acknowledged write lost. The whole
campaign is ``lab chaos`` without ``--ci`` (and bench/bench_faults.py).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from vmcluster.lab.faults import part_pids
from vmcluster.lab.substrate import LabSubstrate

if TYPE_CHECKING:
    from conftest import LabStarter

pytestmark = [
    pytest.mark.lab,
    pytest.mark.skipif(os.geteuid() != 0, reason="the lab needs root"),
]
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def lab(start_lab: LabStarter) -> LabSubstrate:
    return start_lab(ROOT / "examples" / "lab.toml", "ch")


def _vmc(lab: LabSubstrate, *args: str, timeout_s: float = 900) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "vmcluster", *args, "--name", lab.layout.name],
                          capture_output=True, text=True, timeout=timeout_s,
                          env={**os.environ, "PYTHONPATH": str(ROOT / "src")})


def test_the_fault_commands_one_by_one(lab: LabSubstrate) -> None:
    node = lab.owner("web")
    assert node is not None
    old = part_pids(lab.layout, node, "agent")
    got = _vmc(lab, "lab", "restart", node, "agent", "--json")
    assert got.returncode == 0, got.stderr
    new = json.loads(got.stdout)["pids"]
    assert new and set(new).isdisjoint(old)
    assert lab.owner("web") == node  # its VMs kept running
    got = _vmc(lab, "lab", "freeze", node, "manager", "--for", "0.5")
    assert got.returncode == 0 and "frozen 0.5 s" in got.stdout, got.stderr
    got = _vmc(lab, "lab", "dirty", "web", "12", "--wws", "8", "--json")
    assert got.returncode == 0, got.stderr
    assert json.loads(got.stdout)["replies"] == ["OK RATE 12", "OK WWS 8"]
    got = _vmc(lab, "lab", "net", "blip", f"Heartbeat@{node}", "--for", "0.5", "--times", "2",
               "--gap", "0.5")
    assert got.returncode == 0 and "2 blip(s)" in got.stdout, got.stderr
    # bad input: one line, exit 2, nothing done
    other = next(n.name for n in lab.spec.nodes if n.name != node)
    for args, says in ((("lab", "kill", other, "qemu", "web"), "runs no web's QEMU"),
                       (("lab", "kill", "node9", "agent"), "no node 'node9'"),
                       (("lab", "kill", node, "qemu"), "which VM's QEMU"),
                       (("lab", "freeze", node, "agent", "--for", "0"), "a freeze lasts"),
                       (("lab", "net", "blip", "Nope", "--for", "1"), "Nope"),
                       (("lab", "chaos", "--scenario", "nope"), "no scenario 'nope'")):
        got = _vmc(lab, *args)
        assert got.returncode == 2, (args, got.stdout, got.stderr)
        assert says in got.stderr and len(got.stderr.strip().splitlines()) == 1, got.stderr
    assert lab.owner("web") == node


def test_the_ci_campaign_passes_with_nothing_run_twice_or_lost(lab: LabSubstrate,
                                                                tmp_path: Path) -> None:
    out = tmp_path / "chaos.json"
    got = _vmc(lab, "lab", "chaos", "--ci", "--out", str(out))
    print(got.stdout)
    print(got.stderr[-3000:], file=sys.stderr)
    doc = json.loads(out.read_text())
    rows = doc["rows"]
    assert [r["scenario"] for r in rows] == [
        "node-crash", "heartbeat-down", "blips", "one-way-partition", "etcd-leader-kill",
        "agent-kill", "daemon-restart-load", "migration-net-cut", "cancel", "cli-term-copying",
        "target-qemu-kill-switchover"]
    for r in rows:
        assert r["double_runs"] == 0 and r["lost_writes"] == 0, r
        assert r["passed"], r
    crash = rows[0]["figures"]
    assert crash["detect_s"] is not None and crash["running_s"] is not None
    assert got.returncode == 0
    assert "11/11 scenarios passed; double runs 0, acknowledged writes lost 0" in got.stdout
