"""Failover in the lab: detection time, time until the VMs run again, spurious
failovers and double runs, with real etcd, heartbeats, managers and QEMU.

One lab (examples/lab.toml, 250 ms x 8 heartbeats) runs these trials while a
sampler asks every agent for its VMs every 100 ms:

* crash: SIGKILL every process of a node hosting VMs (rotating over the nodes);
  crash-mgr: of the node the manager runs on (a standby deposes it once the
  heartbeats say its node is dead, and takes over); detection = crash -> the
  manager's node_down event; new manager = crash -> its leader_elected event;
  restart = crash -> every lost VM seen running on a survivor;
* split 1|2: every cluster interface of one node down; stop = cut -> the
  isolated node's node_isolated event; restart as above;
* cut (a spec with a witness): every path between one node (not the manager's) and
  the other nodes cut, none to the witness: the split a witness must break; the cut
  node is declared down, reads that verdict and stops its VMs (stop = its
  node_isolated event), then they restart on the manager's side;
* quiet under load: no fault, busy loops on every core for ``--load-s``; and
  one cluster network down for the same time: any node_down / vm_restarted /
  node_isolated event is a spurious failover.

Usage: python bench/bench_failover.py [--crashes 3] [--splits 1] [--manager-crashes 2]
       [--cuts 0] [--load-s 30] [--spec examples/lab.toml]
Writes bench/results/failover.json (failover-<spec>.json for another spec) and prints a
table. Two nodes and a witness: --spec examples/lab-witness.toml --cuts 3.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from vmcluster.control.simulate import predict_crash  # noqa: E402
from vmcluster.lab.faults import (  # noqa: E402
    crash_node,
    cut_between,
    isolate_node,
    rejoin_node,
    start_node,
)
from vmcluster.lab.lab import lab_down, lab_up, set_net  # noqa: E402
from vmcluster.lab.sampler import RunSampler  # noqa: E402
from vmcluster.lab.services import LabStore, lab_store  # noqa: E402
from vmcluster.store.election import current_leader  # noqa: E402
from vmcluster.substrate.host.layout import LabLayout  # noqa: E402
from vmcluster.substrate.host.netns import ns_pids  # noqa: E402

SPEC = ROOT / "examples" / "lab.toml"
FAILOVER_KINDS = ("node_down", "vm_restarted", "node_isolated")


def events_after(store: LabStore, seq: int) -> list[tuple[int, dict[str, Any]]]:
    got, _ = store.call(store.state.events, seq)
    return list(got)


def last_seq(store: LabStore) -> int:
    got = events_after(store, 0)
    return got[-1][0] if got else 0


def wait_event(store: LabStore, seq: int, timeout_s: float, **match: Any) -> dict[str, Any] | None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        for _, rec in events_after(store, seq):
            if all(rec.get(k) == v for k, v in match.items()):
                return rec
        time.sleep(0.2)
    return None


def settle(
    store: LabStore, sampler: RunSampler, vms: list[str], nodes: list[str]
) -> dict[str, str]:
    t0 = time.monotonic()
    if sampler.wait(vms, since=t0, timeout_s=90) is None:
        raise SystemExit("the lab did not settle: some VM runs nowhere")
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        states = store.call(store.state.node_states)
        if all(states.get(n, {}).get("state") == "up" for n in nodes):
            break
        time.sleep(0.3)
    time.sleep(3)  # let every node's view settle
    s = sampler.latest()
    assert s is not None
    return {vm: s.running[vm][0] for vm in vms if vm in s.running}


def _give_a_vm(layout: LabLayout, where: dict[str, str], node: str) -> None:
    """Live-migrate one VM to ``node`` when none runs there (a cut trial's node must hold
    VMs to show they stop before they start on the other side)."""
    if node in where.values() or not where:
        return
    vm = sorted(where)[0]
    subprocess.run([sys.executable, "-m", "vmcluster", "vm", "migrate", vm, "--to", node,
                    "--lab", layout.name, "--json"], capture_output=True, timeout=180,
                   check=True, env={**os.environ, "PYTHONPATH": str(ROOT / "src")})


def fault_trial(kind: str, layout: LabLayout, store: LabStore, sampler: RunSampler,
                vms: list[str], nodes: list[str], victim: str) -> dict[str, Any]:
    where = settle(store, sampler, vms, nodes)
    if kind == "cut":
        _give_a_vm(layout, where, victim)
        where = settle(store, sampler, vms, nodes)
    lost = [vm for vm, n in where.items() if n == victim]
    held = store.call(current_leader, store.state.client, store.state.cluster)
    seq = last_seq(store)
    doubles_before = len(sampler.doubles)
    t_wall, t0 = time.time(), time.monotonic()
    others = [n for n in nodes if n != victim]
    if kind == "split":
        isolate_node(layout, victim)
    elif kind == "cut":
        for other in others:
            cut_between(layout, victim, other, True)
    else:
        crash_node(layout, victim)
    took = sampler.wait(lost, since=t0, timeout_s=120, avoid=victim)
    down = wait_event(store, seq, 30, kind="node_down", peer=victim)
    elected = wait_event(store, seq, 1, kind="leader_elected")
    row: dict[str, Any] = {
        "fault": kind, "node": victim, "vms": lost,
        "manager_on_node": held is not None and held.name == victim,
        "detect_s": None if down is None else round(down["at"] - t_wall, 3),
        "restart_s": None if took is None else round(took, 3),
        "new_manager_s": None if elected is None else round(elected["at"] - t_wall, 3),
    }
    if kind == "cut":
        iso = wait_event(store, seq, 30, kind="node_isolated", node=victim)
        row["isolated_stop_s"] = None if iso is None else round(iso["at"] - t_wall, 3)
        for other in others:
            cut_between(layout, victim, other, False)
    elif kind != "split":
        # What the simulator predicts for the same cluster and crash: the same hosts, and
        # the restarts issued after the same wait (the lab's first vm_restarted event).
        predicted = predict_crash(store.call(store.state.spec), where, victim)
        restarted = [rec for _, rec in events_after(store, seq) if rec["kind"] == "vm_restarted"]
        row["restart_issued_s"] = (round(min(r["at"] for r in restarted) - t_wall, 3)
                                   if restarted else None)
        row["sim_restart_issued_s"] = (None if predicted.after_s is None
                                       else round(predicted.after_s, 3))
        row["sim_same_hosts"] = {r["vm"]: r["node"] for r in restarted} == predicted.restarts
        start_node(layout, victim)
    else:
        rejoin_node(layout, victim)
        iso = wait_event(store, seq, 30, kind="node_isolated", node=victim)
        row["isolated_stop_s"] = None if iso is None else round(iso["at"] - t_wall, 3)
    wait_event(store, seq, 60, kind="node_up", peer=victim)
    # Trials are independent: forget the failure history (no flapping quarantine).
    store.call(lambda: store.state.set_node_state(victim, "up", None, failures=[],
                                                 failed=False))
    row["double_runs"] = len(sampler.doubles) - doubles_before
    row["events"] = [
        [round(rec["at"] - t_wall, 3), rec["kind"], rec["node"], rec.get("peer") or rec.get("vm")]
        for _, rec in events_after(store, seq) if rec["kind"] not in ("route_up", "route_down")]
    return row


def quiet_trial(what: str, layout: LabLayout, store: LabStore, sampler: RunSampler,
                vms: list[str], nodes: list[str], load_s: float, sub: Any) -> dict[str, Any]:
    settle(store, sampler, vms, nodes)
    seq = last_seq(store)
    doubles_before = len(sampler.doubles)
    burners: list[subprocess.Popen[bytes]] = []
    if what == "cpu load":
        code = f"import time\nend = time.monotonic() + {load_s}\nwhile time.monotonic() < end: pass"
        burners = [subprocess.Popen([sys.executable, "-c", code])
                   for _ in range(os.cpu_count() or 2)]
    else:
        set_net(sub, "Heartbeat", up=False)
    try:
        time.sleep(load_s)
    finally:
        for b in burners:
            b.wait(timeout=load_s + 30)
        if what != "cpu load":
            set_net(sub, "Heartbeat", up=True)
    time.sleep(5)
    evs = [rec for _, rec in events_after(store, seq)]
    return {"fault": what, "seconds": load_s,
            "spurious_failovers": sum(1 for e in evs if e["kind"] in FAILOVER_KINDS),
            "route_downs": sum(1 for e in evs if e["kind"] == "route_down"),
            "double_runs": len(sampler.doubles) - doubles_before}


def _rss_mib(ns: str) -> float:
    """The resident memory of every process in the network namespace ``ns`` (a host)."""
    total = 0
    for pid in ns_pids(ns):
        try:
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
        except OSError:
            continue
    return round(total / 1024, 1)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--crashes", type=int, default=3)
    ap.add_argument("--splits", type=int, default=1)
    ap.add_argument("--manager-crashes", type=int, default=2,
                    help="trials that crash the node the manager runs on")
    ap.add_argument("--cuts", type=int, default=0,
                    help="trials that cut one node from the others only (a witness spec)")
    ap.add_argument("--load-s", type=float, default=30.0)
    ap.add_argument("--spec", type=Path, default=SPEC)
    args = ap.parse_args()
    spec_path = args.spec.resolve()
    if os.geteuid() != 0:
        raise SystemExit("the lab needs root")
    layout = LabLayout(f"bf{os.getpid() % 100000}")
    rows: list[dict[str, Any]] = []
    quiet: list[dict[str, Any]] = []
    witness_rss: float | None = None
    try:
        sub = lab_up(spec_path, layout.name, say=lambda m: print(m, file=sys.stderr))
        vms = [v.name for v in sub.spec.vms]
        nodes = [n.name for n in sub.spec.nodes]
        with lab_store(layout) as store, RunSampler(layout, nodes) as sampler:
            for what in ("cpu load", "Heartbeat network down"):
                print(f"quiet: {what} for {args.load_s:.0f} s", file=sys.stderr)
                quiet.append(quiet_trial(what, layout, store, sampler, vms, nodes,
                                         args.load_s, sub))
            plan = [("crash", i) for i in range(args.crashes)] + \
                   [("split", i) for i in range(args.splits)] + \
                   [("cut", i) for i in range(args.cuts)] + \
                   [("crash-mgr", i) for i in range(args.manager_crashes)]
            for i, (kind, _) in enumerate(plan):
                where = settle(store, sampler, vms, nodes)
                hosts = sorted({n for n in where.values()})
                victim = hosts[i % len(hosts)]
                held = store.call(current_leader, store.state.client, store.state.cluster)
                if kind == "crash-mgr":  # the manager's own node, VMs or not
                    victim = held.name if held is not None else victim
                elif kind == "cut":  # the side without the manager is the one that yields
                    victim = next((n for n in hosts + nodes if held is None
                                   or n != held.name), victim)
                print(f"{kind} {victim}", file=sys.stderr)
                rows.append(fault_trial(kind, layout, store, sampler, vms, nodes, victim))
            if sub.spec.witness is not None:  # the witness host's memory, after the trials
                witness_rss = _rss_mib(layout.node_ns(sub.spec.witness.name))
    finally:
        lab_down(layout)
    def stat(key: str, sel: list[dict[str, Any]]) -> dict[str, float | None]:
        vals = [r[key] for r in sel if r.get(key) is not None]
        return {"median": round(statistics.median(vals), 3) if vals else None,
                "max": round(max(vals), 3) if vals else None}
    summary = {
        "detect_s": stat("detect_s", rows),
        "restart_s": stat("restart_s", [r for r in rows if r["vms"]]),
        "restart_s_manager_elsewhere": stat("restart_s", [r for r in rows if r["vms"]
                                                          and not r["manager_on_node"]]),
        "restart_s_manager_on_node": stat("restart_s", [r for r in rows if r["manager_on_node"]
                                                        and r["vms"]]),
        "new_manager_s": stat("new_manager_s", [r for r in rows if r["manager_on_node"]]),
        "restart_issued_s": stat("restart_issued_s", [r for r in rows if r["vms"]]),
        "sim_restart_issued_s": stat("sim_restart_issued_s", [r for r in rows if r["vms"]]),
        "sim_same_hosts": all(r.get("sim_same_hosts", True) for r in rows),
        "spurious_failovers": sum(q["spurious_failovers"] for q in quiet),
        "double_runs": sum(r["double_runs"] for r in rows) + sum(q["double_runs"] for q in quiet),
        "witness_rss_mib": witness_rss,
    }
    out = {"spec": str(spec_path.relative_to(ROOT)), "heartbeat": "250 ms x 8",
           "trials": rows, "quiet": quiet, "summary": summary}
    res = ROOT / "bench" / "results" / ("failover.json" if spec_path == SPEC.resolve()
                                        else f"failover-{spec_path.stem}.json")
    res.parent.mkdir(parents=True, exist_ok=True)
    res.write_text(json.dumps(out, indent=1))
    print(f"{'fault':<10}{'node':<7}{'mgr?':<6}{'vms':<14}{'detect s':>9}{'stop s':>8}"
          f"{'issued s':>9}{'sim s':>7}{'same':>6}{'run again s':>12}{'new mgr s':>10}"
          f"{'doubles':>8}")
    for r in rows:
        stop = r.get("isolated_stop_s")
        same = {True: "yes", False: "NO", None: "-"}[r.get("sim_same_hosts")]
        print(f"{r['fault']:<10}{r['node']:<7}{'yes' if r['manager_on_node'] else 'no':<6}"
              f"{','.join(r['vms']) or '-':<14}{r['detect_s'] or '-':>9}"
              f"{stop if stop else '-':>8}{r.get('restart_issued_s') or '-':>9}"
              f"{r.get('sim_restart_issued_s') or '-':>7}{same:>6}"
              f"{r['restart_s'] if r['vms'] else '-':>12}"
              f"{r['new_manager_s'] or '-':>10}{r['double_runs']:>8}")
    for q in quiet:
        print(f"quiet: {q['fault']:<24} {q['seconds']:.0f} s: spurious failovers "
              f"{q['spurious_failovers']}, route downs {q['route_downs']}, "
              f"double runs {q['double_runs']}")
    print(f"summary: {json.dumps(summary)}")
    print(f"wrote {res}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
