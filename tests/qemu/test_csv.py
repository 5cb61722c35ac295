"""Cluster shared volumes for real: one LUN on the SAN over NBD, redirected I/O, coordinator.

Needs root. One lab per module, named "c<pid>", torn down (and checked gone)
even when a test fails. Every VM's disk is a region of the CSV1 LUN and its
guest writes checksummed, sequence-numbered blocks with O_DSYNC, printing
DISKACK for each durable one; `check_vm_disk` compares the acks with the LUN.
"""

from __future__ import annotations

import json
import os
import signal
import ssl
import subprocess
import sys
import time
from itertools import pairwise
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from vmcluster.csv.checkdisk import DiskCheck, check_vm_disk, highest_ack
from vmcluster.csv.coordinator import coordinator_call
from vmcluster.csv.nbd import NbdClient, NbdError
from vmcluster.csv.storage import NbdTarget, san_target
from vmcluster.csv.volume import FileBlock, read_table
from vmcluster.lab.credentials import lab_ca
from vmcluster.lab.observe import migrate_observed
from vmcluster.lab.services import lab_csv_book, lab_store
from vmcluster.lab.substrate import LabSubstrate
from vmcluster.pki import CertificateAuthority, NodeCredentials
from vmcluster.substrate.host.client import AgentClient
from vmcluster.substrate.host.nsenter import NetnsThread

if TYPE_CHECKING:
    from conftest import LabStarter

pytestmark = [
    pytest.mark.lab,
    pytest.mark.skipif(os.geteuid() != 0, reason="the lab needs root"),
]
ROOT = Path(__file__).resolve().parents[2]
SPEC = ROOT / "examples" / "lab.toml"
SAN = "nbd://198.18.4.250:10809/csv-CSV1"


@pytest.fixture(scope="module")
def lab(start_lab: LabStarter) -> LabSubstrate:
    return start_lab(SPEC, "c")


def _logs(sub: LabSubstrate, vm: str) -> list[Path]:
    return [sub.layout.serial_log(vm, n.name) for n in sub.spec.nodes]


def _check(sub: LabSubstrate, vm: str) -> DiskCheck:
    return check_vm_disk(sub.layout.lun("CSV1"), "CSV1", vm, _logs(sub, vm))


def _more_acks(sub: LabSubstrate, vm: str, n: int = 50, timeout_s: float = 60) -> int:
    """Wait until the guest acknowledged ``n`` more blocks; the new highest ack."""
    start = highest_ack(_logs(sub, vm))
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        now = highest_ack(_logs(sub, vm))
        if now >= start + n:
            return now
        time.sleep(0.2)
    pytest.fail(f"{vm} acknowledged only {highest_ack(_logs(sub, vm)) - start} more blocks "
                f"in {timeout_s:.0f} s")


def _paths(sub: LabSubstrate, node: str) -> dict[str, str]:
    return dict(AgentClient(sub.layout, node).call("csv_paths")["paths"])


def _status(sub: LabSubstrate) -> dict[str, object]:
    out = subprocess.run(
        [sys.executable, "-m", "vmcluster", "csv", "status", "--name", sub.layout.name, "--json"],
        capture_output=True, text=True, timeout=60, cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT / "src")})
    assert out.returncode == 0, out.stderr
    return dict(json.loads(out.stdout))


def test_every_disk_is_a_region_of_one_lun_and_direct(lab: LabSubstrate) -> None:
    table = read_table(FileBlock(str(lab.layout.lun("CSV1"))))
    assert {(d.name, d.owner) for d in table.disks} == {
        ("web", "node1"), ("db", "node2"), ("batch", "node3")}
    spans = sorted((d.offset, d.end) for d in table.disks)
    assert all(a[1] <= b[0] for a, b in pairwise(spans))
    st = _status(lab)
    vol = st["volumes"][0]  # type: ignore[index]
    assert vol["coordinator"] == "node1"
    assert {n["node"]: n["mode"] for n in vol["nodes"]} == {
        "node1": "direct", "node2": "direct", "node3": "direct"}
    for vm in ("web", "db", "batch"):
        _more_acks(lab, vm, 20)
        r = _check(lab, vm)
        assert r.acked > 0 and r.ok, r


def test_storage_cut_redirects_live_and_loses_no_acknowledged_write(lab: LabSubstrate) -> None:
    node = lab.owner("web")
    assert node == "node1"
    _more_acks(lab, "web", 20)
    lab.set_storage_path(node, False)
    try:
        assert [s["vm"] for s in lab.last_switches] == ["web"]
        assert lab.last_switches[0]["from"] == SAN
        via = _paths(lab, node)["web"]
        assert via != SAN and via.startswith("nbd://198.18.2.")  # a node's Heartbeat address
        vol = _status(lab)["volumes"][0]  # type: ignore[index]
        mine = next(n for n in vol["nodes"] if n["node"] == node)
        assert (mine["mode"], mine["network"]) == ("redirected", "Heartbeat")
        assert vol["coordinator"] != node  # the coordinator lost its path: handed over
        assert mine["via"] == vol["coordinator"]
        _more_acks(lab, "web", 100)  # keeps writing through the other node
        assert lab.status().vm("web").state == "running"
        r = _check(lab, "web")
        assert r.ok and r.missing == 0 and r.corrupt == 0, r
    finally:
        lab.set_storage_path(node, True)
    assert _paths(lab, node)["web"] == SAN  # back to direct
    _more_acks(lab, "web", 50)
    r = _check(lab, "web")
    assert r.ok, r


def test_live_migration_hands_the_disk_over(lab: LabSubstrate) -> None:
    source = lab.owner("db")
    target = "node3" if source != "node3" else "node1"
    _more_acks(lab, "db", 20)
    r = migrate_observed(lab, "db", target)
    assert r.ok and r.extra["memory_ok"] is True
    table = read_table(FileBlock(str(lab.layout.lun("CSV1"))))
    assert table.need("db").owner == target
    assert "db" in _paths(lab, target) and "db" not in _paths(lab, source or "")
    _more_acks(lab, "db", 50)
    check = _check(lab, "db")
    assert check.ok, check


def test_a_hung_coordinator_loses_the_role(lab: LabSubstrate) -> None:
    # (A killed agent is started again by its host's vmclusterd within a second; a hung
    # one answers nobody until it is woken.)
    layout = lab.layout
    with lab_csv_book(layout) as book:  # the records are in etcd: the hosts keep them there
        old = coordinator_call(layout, book, lab.spec, "CSV1", "csv_table")["coordinator"]
        pid = AgentClient(layout, old).call("ping")["pid"]
        os.kill(pid, signal.SIGSTOP)
        try:
            deadline = time.monotonic() + 30
            new = old
            while time.monotonic() < deadline and new == old:
                new = book.recorded("CSV1")  # the other agents re-elect
                time.sleep(0.2)
            assert new != old and new == min(n.name for n in lab.spec.nodes if n.name != old)
            reply = coordinator_call(layout, book, lab.spec, "CSV1", "csv_table")
            assert reply["coordinator"] == new
            assert {d["name"] for d in reply["table"]["disks"]} == {"web", "db", "batch"}
        finally:
            os.kill(pid, signal.SIGCONT)
    for vm in ("web", "db", "batch"):
        assert _check(lab, vm).ok


def test_check_disk_cli_json(lab: LabSubstrate) -> None:
    out = subprocess.run(
        [sys.executable, "-m", "vmcluster", "vm", "check-disk", "batch", "--lab",
         lab.layout.name, "--json"], capture_output=True, text=True, timeout=60, cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT / "src")})
    assert out.returncode == 0, out.stderr
    r = json.loads(out.stdout)
    assert r["ok"] is True and r["acked"] > 0 and r["missing"] == 0 and r["corrupt"] == 0


def test_the_shared_lun_is_served_only_over_tls_to_cluster_certificates(
    lab: LabSubstrate, tmp_path: Path,
) -> None:
    """The SAN's NBD export: refused in the clear and to another CA's certificate, served
    over TLS to a host of the cluster (the server's name checked)."""
    san = san_target(lab.spec, "CSV1")
    node2 = NodeCredentials(lab.layout.tls_dir("node2"))
    foreign = NodeCredentials(tmp_path / "foreign")
    foreign.issue(CertificateAuthority.create("other"), "node2", [])

    def attach(tls: ssl.SSLContext | None) -> str:
        try:
            with NbdClient(san.host, san.port, san.export, tls=tls, tls_hostname=san.name) as lun:
                return f"size {lun.size}"
        except NbdError as exc:
            return f"refused: {exc}"

    with NetnsThread(lab.layout.node_ns("node2")) as t:
        plain = t.call(attach, None)
        other = t.call(attach, foreign.client_context(ca=node2.ca))
        good = t.call(attach, node2.client_context())
    assert plain.startswith("refused") and "TLS" in plain
    assert other.startswith("refused")
    assert good == f"size {1024 ** 3}"


def test_a_re_export_serves_only_the_clusters_member_hosts(
    lab: LabSubstrate, tmp_path: Path,
) -> None:
    """node1's re-export of CSV1 (redirected I/O): a member host attaches; a certificate
    of this very CA for a name that is no member (a host that left) is refused; once
    etcd lists it as a member the re-export lets it in, without restarting, and shuts it
    out again when it is gone."""
    reply = AgentClient(lab.layout, "node1").call("csv_export", volume="CSV1",
                                                  network="Migration")
    target = NbdTarget.from_json(reply["target"])
    node2 = NodeCredentials(lab.layout.tls_dir("node2"))
    gone = NodeCredentials(tmp_path / "gone")
    gone.issue(lab_ca(lab.layout), "gone", [])

    def attach(creds: NodeCredentials) -> str:
        try:
            with NbdClient(target.host, target.port, target.export,
                           tls=creds.client_context(ca=node2.ca),
                           tls_hostname=target.name) as lun:
                return f"size {lun.size}"
        except NbdError as exc:
            return f"refused: {exc}"

    def attach_until(creds: NodeCredentials, good: bool) -> str:
        deadline = time.monotonic() + 20  # the agent rewrites the list every 5 s
        while True:
            with NetnsThread(lab.layout.node_ns("node2")) as t:
                got = str(t.call(attach, creds))
            if got.startswith("size") == good or time.monotonic() > deadline:
                return got
            time.sleep(0.5)

    assert attach_until(node2, True) == f"size {1024 ** 3}"
    assert attach_until(gone, False).startswith("refused")
    with lab_store(lab.layout) as s:
        key = s.state.key("members", "gone")
        s.call(s.state.client.put, key, b'{"serial": 0}')
        try:
            assert attach_until(gone, True).startswith("size")
        finally:
            s.call(s.state.client.delete, key)
    assert attach_until(gone, False).startswith("refused")
    assert attach_until(node2, True).startswith("size")
