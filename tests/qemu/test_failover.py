"""Failover for real: etcd members, heartbeats and managers in the lab's node namespaces.

Faults are injected as on hardware: SIGKILL a node's processes, take its interfaces
down, kill the etcd leader, SIGSTOP the manager past its lease. A sampler asks every
agent for its VMs every 100 ms throughout; no VM may ever run on two nodes.
One lab per module ("f<pid>"), torn down (and checked gone) even when a test fails.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
import tomlkit

from vmcluster.control.simulate import predict_crash
from vmcluster.errors import SubstrateError
from vmcluster.lab.faults import crash_node, isolate_node, rejoin_node, start_node
from vmcluster.lab.guestctl import guest_request
from vmcluster.lab.lab import set_net
from vmcluster.lab.sampler import RunSampler
from vmcluster.lab.services import (
    LabStore,
    service_log,
    service_pids,
    services_file,
    start_member,
)
from vmcluster.lab.substrate import LabSubstrate
from vmcluster.node.daemon import TICK_S
from vmcluster.store.election import Leadership, current_leader
from vmcluster.substrate.host.client import AgentClient

if TYPE_CHECKING:
    from conftest import LabStarter

pytestmark = [
    pytest.mark.lab,
    pytest.mark.skipif(os.geteuid() != 0, reason="the lab needs root"),
]
ROOT = Path(__file__).resolve().parents[2]
SPEC = ROOT / "examples" / "lab.toml"
NODES = ("node1", "node2", "node3")
RESTART_BOUND_S = 60.0  # generous: the machine may be loaded by other tests


@pytest.fixture(scope="module")
def spec_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The lab's spec with what makes a restart a decision: web and db must not share a
    host (anti-affinity), db comes first (priority) and prefers node2, then node1 (where
    web runs, so it may not go there)."""
    doc = tomlkit.parse(SPEC.read_text())
    for vm in doc["vms"]:
        vm["priority"] = {"db": 3, "web": 2}.get(vm["name"], 1)
        if vm["name"] in ("web", "db"):
            vm["anti_affinity"] = "front"
        if vm["name"] == "db":
            vm["preferred_owners"] = ["node2", "node1"]
    path = tmp_path_factory.mktemp("failover") / "lab.toml"
    path.write_text(tomlkit.dumps(doc))
    return path


@pytest.fixture(scope="module")
def lab(start_lab: LabStarter, spec_file: Path) -> LabSubstrate:
    sub = start_lab(spec_file, "f")  # agents, VMs, then the control plane
    assert services_file(sub.layout).exists()
    return sub


def last_seq(store: LabStore) -> int:
    got, _ = store.call(store.state.events)
    return int(got[-1][0]) if got else 0


def events_after(store: LabStore, seq: int) -> list[dict[str, Any]]:
    got, _ = store.call(store.state.events, seq)
    return [rec for _, rec in got]


def wait_event(store: LabStore, after: int, timeout_s: float, **match: Any) -> dict[str, Any]:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        for rec in events_after(store, after):
            if all(rec.get(k) == v for k, v in match.items()):
                return rec
        time.sleep(0.2)
    seen = [(e["kind"], e.get("peer") or e.get("vm")) for e in events_after(store, after)]
    pytest.fail(f"no event {match} within {timeout_s:.0f} s; got {seen}")


def leader(store: LabStore) -> Leadership | None:
    got: Leadership | None = store.call(current_leader, store.state.client, store.state.cluster)
    return got


def wait_settled(lab: LabSubstrate, sampler: RunSampler, store: LabStore) -> dict[str, str]:
    """Every VM runs exactly once and every node is heard; returns vm -> node."""
    t0 = time.monotonic()
    vms = [v.name for v in lab.spec.vms]
    assert sampler.wait(vms, since=t0, timeout_s=RESTART_BOUND_S) is not None
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        states = store.call(store.state.node_states)
        # Heard (up) is not yet serving: a host started again heartbeats before its
        # agent listens on the cluster networks (it first probes its QEMU and adopts).
        nodes = [n.name for n in lab.spec.nodes]
        if all(states.get(n, {}).get("state") == "up" for n in nodes) and all(
                AgentClient(lab.layout, n).alive() for n in nodes):
            break
        time.sleep(0.2)
    s = sampler.latest()
    assert s is not None
    return {vm: s.running[vm][0] for vm in vms}


def check_disks(lab: LabSubstrate) -> None:
    """No acknowledged write lost, where the VM has a disk on a cluster shared volume."""
    for vm in lab.spec.vms:
        if getattr(vm, "volume", None) is None:
            continue
        out = subprocess.run(
            [sys.executable, "-m", "vmcluster", "vm", "check-disk", vm.name, "--json",
             "--lab", lab.layout.name], capture_output=True, text=True, timeout=120,
            env={**os.environ, "PYTHONPATH": str(ROOT / "src")})
        assert out.returncode == 0, out.stderr + out.stdout
        assert json.loads(out.stdout)["ok"] is True


def test_one_network_down_reroutes_without_failover(
    lab: LabSubstrate, store: LabStore, sampler: RunSampler
) -> None:
    before = wait_settled(lab, sampler, store)
    seq = last_seq(store)
    set_net(lab, "Heartbeat", up=False)
    try:
        ev = wait_event(store, seq, 30, kind="network_state_changed", network="Heartbeat",
                        state="down")
        assert ev["cluster_network"] == "Migration"  # the lowest metric left
        time.sleep(8)  # well past detection + the restart wait: nothing may fail over
    finally:
        set_net(lab, "Heartbeat", up=True)
    ev = wait_event(store, seq, 30, kind="network_state_changed", network="Heartbeat",
                    state="up")
    assert ev["cluster_network"] == "Heartbeat"  # and it takes the traffic back
    kinds = [e["kind"] for e in events_after(store, seq)]
    assert "node_down" not in kinds and "vm_restarted" not in kinds and "node_isolated" not in kinds
    s = sampler.latest()
    assert s is not None and {vm: ns[0] for vm, ns in s.running.items()} == before


def test_crashed_node_vms_restart_once_on_survivors(
    lab: LabSubstrate, store: LabStore, sampler: RunSampler
) -> None:
    where = wait_settled(lab, sampler, store)
    victim = where["db"]
    lost = [vm for vm, n in where.items() if n == victim]
    seq = last_seq(store)
    t0 = time.monotonic()
    crash_node(lab.layout, victim)
    took = sampler.wait(lost, since=t0, timeout_s=RESTART_BOUND_S, avoid=victim)
    assert took is not None, f"{lost} did not run again within {RESTART_BOUND_S:.0f} s"
    wait_event(store, seq, 10, kind="node_down", peer=victim)
    restarted = [e for e in events_after(store, seq) if e["kind"] == "vm_restarted"]
    assert sorted(e["vm"] for e in restarted) == sorted(lost)
    assert all(e["node"] != victim for e in restarted)
    # The simulator, given the same cluster and crash, restarts them on the same hosts.
    predicted = predict_crash(store.call(store.state.spec), where, victim)
    assert {e["vm"]: e["node"] for e in restarted} == predicted.restarts, predicted
    if (victim, where["web"]) == ("node2", "node1"):  # anti-affinity over preference
        assert predicted.restarts == {"db": "node3"}
    placements = store.call(store.state.placements)
    assert all(placements[vm].node != victim for vm in lost)
    check_disks(lab)
    start_node(lab.layout, victim)
    wait_event(store, seq, 30, kind="node_up", peer=victim)


def test_split_one_two_isolated_side_stops_majority_restarts(
    lab: LabSubstrate, store: LabStore, sampler: RunSampler
) -> None:
    where = wait_settled(lab, sampler, store)
    counts = {n: sum(1 for v in where.values() if v == n) for n in NODES}
    victim = max(NODES, key=lambda n: (counts[n], n))
    lost = [vm for vm, n in where.items() if n == victim]
    seq = last_seq(store)
    t0 = time.monotonic()
    isolate_node(lab.layout, victim)
    try:
        took = sampler.wait(lost, since=t0, timeout_s=RESTART_BOUND_S, avoid=victim)
        assert took is not None
        s = sampler.latest()
        assert s is not None and all(victim not in s.running.get(vm, ()) for vm in lost)
    finally:
        rejoin_node(lab.layout, victim)
    iso = wait_event(store, seq, 30, kind="node_isolated", node=victim)
    assert sorted(iso["vms_stopped"]) == sorted(lost)
    wait_event(store, seq, 30, kind="node_up", peer=victim)
    check_disks(lab)


def test_etcd_leader_killed_store_keeps_working(
    lab: LabSubstrate, store: LabStore, sampler: RunSampler
) -> None:
    wait_settled(lab, sampler, store)
    client = store.state.client
    raft_leader = None
    for url in client.endpoints:
        try:
            st = store.call(client.status, url)
        except OSError:
            continue
        if st.get("leader") == st.get("header", {}).get("member_id"):
            raft_leader = next(n.name for n in lab.spec.nodes
                               if any(f"//{a}:" in url for a in map(str, n.interfaces.values())))
            break
    assert raft_leader is not None
    for pid in service_pids(lab.layout, raft_leader)["etcd"]:
        os.kill(pid, signal.SIGKILL)
    try:
        seq = store.call(store.state.append_event,
                         {"kind": "test_marker", "at": time.time(), "node": "test"})
        assert seq > 0
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and leader(store) is None:
            time.sleep(0.2)
        assert leader(store) is not None
        assert store.call(store.state.placements)
    finally:
        start_member(lab.layout, raft_leader)


def test_stopped_manager_is_replaced_and_fenced_when_it_wakes(
    lab: LabSubstrate, store: LabStore, sampler: RunSampler
) -> None:
    wait_settled(lab, sampler, store)
    old = leader(store)
    assert old is not None
    pids = service_pids(lab.layout, old.name)["managerd"]
    assert len(pids) == 1
    os.kill(pids[0], signal.SIGSTOP)
    try:
        deadline = time.monotonic() + 60
        new = leader(store)
        while time.monotonic() < deadline and (new is None or new.token == old.token):
            time.sleep(0.2)
            new = leader(store)
        assert new is not None and new.token > old.token and new.name != old.name
        # Every agent refuses a request that carries the stale token, and takes the new one.
        for node in NODES:
            agent = AgentClient(lab.layout, node)
            with pytest.raises(SubstrateError, match="fenced"):
                agent.call("ping", token=old.token)
            assert agent.call("ping", token=new.token)["node"] == node
    finally:
        os.kill(pids[0], signal.SIGCONT)
    # ... and the stale manager, once awake, notices it lost and campaigns again.
    log = service_log(lab.layout, "managerd", old.name)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and "lost leadership" not in log.read_text():
        time.sleep(0.2)
    assert "lost leadership" in log.read_text() or "fenced" in log.read_text()
    now = leader(store)
    assert now is not None and now.token >= new.token


def _sigint_default() -> None:
    # A test run started in the background (`cmd &` in a script) inherits SIGINT ignored,
    # and a Python started with it ignored never turns it into KeyboardInterrupt: the
    # CLI would not see the test's Ctrl-C at all.
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _drain_cli(lab: LabSubstrate, node: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "vmcluster", "node", "drain", node, "--json", "--lab",
         lab.layout.name], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT / "src")}, preexec_fn=_sigint_default)


def test_drain_moves_every_vm_and_ctrl_c_cancels(
    lab: LabSubstrate, store: LabStore, sampler: RunSampler
) -> None:
    where = wait_settled(lab, sampler, store)
    node = max(NODES, key=lambda n: (sum(1 for v in where.values() if v == n), n))
    mine = sorted(vm for vm, n in where.items() if n == node)
    # Ctrl-C as soon as the first migration reports progress: that VM stays put. Its
    # guests dirty memory meanwhile, so that a copy lasts long enough to be seen at it
    # (an idle one can end between two of the CLI's looks: seen on CI).
    for vm in mine:  # a copy of several seconds: 100 MiB/s over a 160 MiB working set
        guest_request(lab.layout, str(lab.spec.vm(vm).address), "RATE 100")
        guest_request(lab.layout, str(lab.spec.vm(vm).address), "WWS 160")
    proc = _drain_cli(lab, node)
    try:
        # Ctrl-C once the first copy is recorded in the store (the CLI's progress lines
        # come from its looks at the intent, which an idle copy can fall between).
        deadline = time.monotonic() + 60
        while proc.poll() is None and time.monotonic() < deadline:
            if store.call(store.state.migrations):
                time.sleep(0.5)
                proc.send_signal(signal.SIGINT)
                break
            time.sleep(0.05)
        out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)
        for vm in mine:
            spec_vm = lab.spec.vm(vm)
            guest_request(lab.layout, str(spec_vm.address), f"RATE {spec_vm.dirty_mibps:g}",
                          timeout_s=60)
            guest_request(lab.layout, str(spec_vm.address), f"WWS {spec_vm.working_set_mib:g}",
                          timeout_s=60)
    result = json.loads(out)
    assert result["cancelled"] is True and result["state"] == "up"
    assert store.call(store.state.node_states)[node]["state"] == "up"
    s = sampler.latest()
    assert s is not None
    still = [vm for vm in mine if node in s.running.get(vm, ())]
    assert len(still) >= 1  # the one in flight went back to (stayed on) the source
    # Now drain for real: every VM leaves, the node stays out of placement until resumed.
    proc = _drain_cli(lab, node)
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err
    result = json.loads(out)
    assert result["state"] == "draining" and not result["failed"], result
    assert sorted(m["vm"] for m in result["moved"]) == sorted(still)
    placements = store.call(store.state.placements)
    assert all(p.node != node for p in placements.values())
    assert lab.status().vm(still[0]).node != node
    assert store.call(store.state.node_states)[node]["state"] == "draining"
    done = subprocess.run([sys.executable, "-m", "vmcluster", "node", "resume", node, "--json",
                          "--lab", lab.layout.name], capture_output=True, text=True,
                         timeout=60, env={**os.environ, "PYTHONPATH": str(ROOT / "src")})
    assert json.loads(done.stdout) == {"node": node, "was": "draining", "state": "up"}


def _qemu_pids(lab: LabSubstrate, node: str) -> dict[str, int]:
    listed = AgentClient(lab.layout, node).call("list")["vms"]
    return {v["vm"]: int(v["pid"]) for v in listed if v["role"] == "run"}


def _fence_records(lab: LabSubstrate, node: str) -> list[dict[str, Any]]:
    path = lab.layout.host_state_dir(node) / "log" / "fenced.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def _alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[-1].split()[0] != "Z"


def test_restarting_vmclusterd_leaves_its_vms_running_and_nobody_notices(
    lab: LabSubstrate, store: LabStore, sampler: RunSampler
) -> None:
    where = wait_settled(lab, sampler, store)
    node = where["db"]
    before = _qemu_pids(lab, node)
    beats = service_pids(lab.layout, node)["nodewatch"]
    fenced = len(_fence_records(lab, node))
    seq = last_seq(store)
    (daemon,) = service_pids(lab.layout, node)["vmclusterd"]
    os.kill(daemon, signal.SIGTERM)  # what `systemctl restart vmclusterd` does first
    deadline = time.monotonic() + 30
    while _alive(daemon) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not _alive(daemon)
    start_node(lab.layout, node)
    time.sleep(lab.spec.cluster.fence_window_s + 3.0)
    assert _qemu_pids(lab, node) == before  # the same QEMUs, adopted
    assert service_pids(lab.layout, node)["nodewatch"] == beats  # heartbeats never stopped
    assert len(_fence_records(lab, node)) == fenced
    assert not [e for e in events_after(store, seq)
                if e["kind"] in ("node_down", "vm_restarted")]


@pytest.mark.parametrize("sig", [signal.SIGSTOP, signal.SIGKILL], ids=["SIGSTOP", "SIGKILL"])
def test_a_host_whose_vmclusterd_stops_is_fenced_by_its_watchdog_before_failover(
    lab: LabSubstrate, store: LabStore, sampler: RunSampler, sig: signal.Signals
) -> None:
    where = wait_settled(lab, sampler, store)
    node = where["batch"]
    victims = _qemu_pids(lab, node)
    fenced = len(_fence_records(lab, node))
    seq = last_seq(store)
    (daemon,) = service_pids(lab.layout, node)["vmclusterd"]
    stopped_at = time.time()
    os.kill(daemon, sig)
    try:
        restarts = [wait_event(store, seq, RESTART_BOUND_S, kind="vm_restarted", vm=vm)
                    for vm in victims]
        records = _fence_records(lab, node)[fenced:]
        assert len(records) == 1, records
        (record,) = records
        # The watchdog waited its window (from the last pet, at most a tick before the
        # signal), then killed exactly this host's QEMUs ...
        assert record["at"] - stopped_at >= lab.spec.cluster.fence_window_s - TICK_S - 0.05
        assert {k["vm"] for k in record["killed"]} == set(victims)
        assert record["survivors"] == []
        assert not any(_alive(pid) for pid in victims.values())
        # ... before any survivor started one of them again.
        assert all(record["at"] < r["at"] for r in restarts), (record, restarts)
        assert not _alive(daemon)  # its process group went with them
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(daemon, signal.SIGCONT)
        start_node(lab.layout, node)
    wait_settled(lab, sampler, store)
