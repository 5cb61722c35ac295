"""The fault campaign: every fault a cluster must survive, injected on the lab, checked.

``vmcluster lab chaos`` (and ``bench/bench_faults.py``) runs scenarios one after
the other on one lab. Each starts from a known state (every VM running once,
every host heard, its agent answering), injects its fault, watches, checks and
restores. For the whole campaign:

* a sampler asks every host for its QEMUs every 50 ms (behind a silent agent's
  back: QEMU's own QMP socket); a VM seen running on two hosts in one sample is
  a **double run** and fails the scenario it happened in;
* after each scenario, every VM's disk is checked against the writes its guest
  acknowledged: a lost or corrupt acknowledged write fails it.

A scenario reports: the fault, what must happen, what did, its figures (seconds
from the fault to detection, to the cluster's action, to the VM running again
and to its guest answering; client blackouts), and pass or fail. Scenarios
marked ``ci`` make the short campaign the test suite runs.

What a campaign does not cover: a wall-clock jump (etcd reads time through the
vDSO, and the lab has no per-namespace clock); two sides of four nodes; post-copy.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import vmcluster
from vmcluster.errors import LabError, SubstrateError, UsageError, VmclusterError
from vmcluster.lab.faults import (
    SIGNALS,
    blackhole_etcd,
    blip_net,
    crash_node,
    cut_between,
    freeze_part,
    isolate_node,
    kill_part,
    part_pids,
    rejoin_node,
    restart_part,
    start_node,
    start_nodes,
)
from vmcluster.lab.guestctl import DISKWRITER_PORT, guest_request
from vmcluster.lab.lab import set_net
from vmcluster.lab.probe import ClientProbe
from vmcluster.lab.sampler import RunSampler, Sample
from vmcluster.lab.services import LabStore, lab_access
from vmcluster.lab.substrate import LabSubstrate
from vmcluster.lab.watch import (
    FAILOVER_KINDS,
    Mark,
    check_disks,
    etcd_leader,
    events_after,
    manager,
    settle,
    wait_event,
)
from vmcluster.policy.networks import node_cluster_networks
from vmcluster.store import intents
from vmcluster.substrate.host.client import AgentClient

__all__ = ["SCENARIOS", "Campaign", "Outcome", "Row", "Scenario", "pick"]

#: The clients' probe intervals during the campaign (a UDP datagram, a TCP echo line),
#: per VM: fine enough for a failover's seconds, light enough for two cores.
PROBE_S = {"udp": 0.02, "tcp": 0.05}
SAMPLE_S = 0.05
RUN_AGAIN_S = 90.0  # generous: a restarted guest boots under TCG on a loaded machine


@dataclass
class Outcome:
    """What a scenario saw: a sentence, whether its own checks held, its figures."""

    observed: str
    ok: bool
    figures: dict[str, float | int | None] = field(default_factory=dict)


@dataclass(frozen=True)
class Scenario:
    name: str
    fault: str
    expected: str
    run: Callable[[Campaign], Outcome]
    ci: bool = False
    #: A cell of the migration fault matrix (its index there): a campaign of several
    #: passes shares the cells out among them, so that each runs in some pass.
    cell: int | None = None
    #: The lab it needs: this many hosts that run VMs (None: any lab).
    hosts: int | None = None


@dataclass
class Row:
    """One scenario's line of the campaign's table (and its JSON)."""

    scenario: str
    fault: str
    expected: str
    observed: str
    passed: bool
    double_runs: int
    lost_writes: int
    seconds: float
    figures: dict[str, float | int | None]

    def figure(self) -> str:
        shown = [f"{k} {v}" for k, v in self.figures.items() if v is not None]
        return ", ".join(shown) or "-"

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


class Campaign:
    """One lab, its store, a sampler running throughout, and the helpers scenarios share."""

    def __init__(self, sub: LabSubstrate, store: LabStore, sampler: RunSampler,
                 say: Callable[[str], None] = lambda _m: None) -> None:
        self.sub, self.store, self.sampler, self.say = sub, store, sampler, say
        self.layout, self.spec = sub.layout, sub.spec
        self.vms = [v.name for v in sub.spec.vms]
        self.nodes = [n.name for n in sub.spec.nodes]

    # -- state ---------------------------------------------------------------------------
    def settle(self) -> dict[str, str]:
        """Every VM runs once, every host is heard, every guest answers; vm -> node."""
        where = settle(self.layout, self.spec, self.store, self.sampler)
        m = self.mark()
        for vm in where:
            if self.answering(vm, m, timeout_s=60) is None:
                raise LabError(f"{vm} runs on {where[vm]} but its guest does not answer")
        return where

    def mark(self) -> Mark:
        return Mark.now(self.store, self.sampler)

    def manager_node(self) -> str | None:
        held = manager(self.store)
        return held.name if held is not None else None

    def victim(self, where: Mapping[str, str], *, with_manager: bool | None = False) -> str:
        """A node that runs VMs: not the manager's (``with_manager=False``), the manager's
        (True, VMs or not), or any (None)."""
        mgr = self.manager_node()
        if with_manager and mgr is not None:
            return mgr
        hosts = sorted(set(where.values()))
        pool = [n for n in hosts if with_manager is None or n != mgr] or hosts
        return pool[0]

    def events(self, mark: Mark) -> list[dict[str, Any]]:
        return events_after(self.store, mark.seq)

    def failovers(self, mark: Mark) -> list[str]:
        """Failover events since ``mark`` (none may follow a harmless fault)."""
        return [f"{e['kind']} {e.get('peer') or e.get('vm') or e.get('node')}"
                for e in self.events(mark) if e["kind"] in FAILOVER_KINDS]

    def event_at(self, mark: Mark, timeout_s: float, **match: Any) -> float | None:
        got = wait_event(self.store, mark.seq, timeout_s, **match)
        return mark.after(got["at"]) if got else None

    def running_again(self, vms: Sequence[str], mark: Mark, avoid: str | None = None,
                      timeout_s: float = RUN_AGAIN_S) -> float | None:
        took = self.sampler.wait(vms, since=mark.mono, timeout_s=timeout_s, avoid=avoid)
        return None if took is None else round(took, 3)

    def _first_sample(self, mark: Mark, timeout_s: float,
                      holds: Callable[[Sample], bool]) -> float | None:
        """Seconds from ``mark`` to the first sample after it for which ``holds``; None if
        none within ``timeout_s``."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            s = self.sampler.latest()
            if s is not None and s.at > mark.mono and holds(s):
                return round(s.at - mark.mono, 3)
            time.sleep(SAMPLE_S)
        return None

    def gone_from(self, node: str, vms: Sequence[str], mark: Mark,
                  timeout_s: float = 30.0) -> float | None:
        """Seconds from ``mark`` until none of ``vms`` is seen running on ``node`` (it
        stopped them, or was fenced); None if they still run there after ``timeout_s``."""
        return self._first_sample(mark, timeout_s, lambda s: not any(
            node in s.running.get(vm, ()) for vm in vms))

    def gone_from_all(self, vms: Sequence[str], mark: Mark,
                      timeout_s: float = 30.0) -> float | None:
        """Seconds from ``mark`` until none of ``vms`` is seen running anywhere."""
        return self._first_sample(mark, timeout_s, lambda s: not any(
            s.running.get(vm) for vm in vms))

    def answering(self, vm: str, mark: Mark, timeout_s: float = RUN_AGAIN_S) -> float | None:
        """Seconds from ``mark`` until ``vm``'s guest answers a request (its workload)."""
        addr = self.spec.vm(vm).address
        if addr is None:
            return None
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            with contextlib.suppress(LabError):
                if guest_request(self.layout, str(addr), "STATS", timeout_s=3).startswith(
                        "STATS "):
                    return round(time.monotonic() - mark.mono, 3)
            time.sleep(0.2)
        return None

    @contextlib.contextmanager
    def clients(self, vm: str) -> Iterator[dict[str, dict[str, Any]]]:
        """A TCP echo and a UDP probe against ``vm`` for the block; their reports after."""
        out: dict[str, dict[str, Any]] = {}
        addr = self.spec.vm(vm).address
        probes = []
        if addr is not None:
            for mode in ("tcp", "udp"):
                p = ClientProbe(self.layout, str(addr), mode, interval_s=PROBE_S[mode])
                with contextlib.suppress(LabError):
                    p.start()
                    probes.append(p)
        try:
            yield out
        finally:
            for p in probes:
                p.interrupt()
            for p in probes:
                out[p.mode] = p.stop()

    def node_back(self, node: str, mark: Mark) -> None:
        """Bring ``node`` back into service after a scenario (started if its daemon is
        gone) and forget its failures (scenarios are independent: no flap quarantine)."""
        if not part_pids(self.layout, node, "vmclusterd"):
            start_node(self.layout, node)
        wait_event(self.store, mark.seq, 60, kind="node_up", peer=node)
        self.store.call(lambda: self.store.state.set_node_state(node, "up", None, failures=[],
                                                                failed=False))

    def vmc(self, *args: str) -> list[str]:
        """The argv of the vmcluster CLI run from the lab's admin namespace."""
        return ["ip", "netns", "exec", self.layout.client_ns, sys.executable, "-m",
                "vmcluster", *args]

    def vmc_env(self) -> dict[str, str]:
        access = lab_access(self.layout)
        src = str(Path(vmcluster.__file__).resolve().parent.parent)
        return {**os.environ, "PYTHONPATH": src, "VMCLUSTER_URL": ",".join(access.urls),
                "VMCLUSTER_TOKEN": access.token, "VMCLUSTER_CA": str(access.ca)}

    def copies(self, vm: str) -> dict[str, str]:
        """Every QEMU of ``vm`` on a host whose agent answers: node -> run status."""
        out = {}
        for n in self.nodes:
            with contextlib.suppress(VmclusterError):
                for v in AgentClient(self.layout, n).call("list", timeout_s=5)["vms"]:
                    if v["vm"] == vm:
                        out[n] = str(v["status"])
        return out

    def asked(self, vm: str) -> list[intents.Intent]:
        """The migrations of ``vm`` the cluster was asked for and has not ended."""
        return list(self.store.call(lambda: [
            i for i in intents.every(self.store.state) if i.kind == "migrate"
            and i.args.get("vm") == vm and i.state in ("pending", "running", "cancelling")]))

    def one_copy(self, vm: str, timeout_s: float = 60.0) -> str | None:
        """Wait until ``vm`` has exactly one QEMU, running, no migration recorded and none
        asked for still under way; its node (None if it never settles)."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            copies = self.copies(vm)
            flying = self.store.call(self.store.state.migrations)
            if (vm not in flying and len(copies) == 1 and "running" in copies.values()
                    and not self.asked(vm)):
                return next(iter(copies))
            time.sleep(0.3)
        return None

    def damage(self) -> dict[str, int]:
        """Per VM, acknowledged blocks now missing or corrupt on its disk."""
        return {c.vm: c.missing + c.corrupt for c in check_disks(self.layout, self.spec)}

    def run(self, sc: Scenario) -> Row:
        """Settle, run one scenario, check disks; a scenario that raises fails (its row
        says why) and the campaign goes on from a settled lab."""
        self.say(f"scenario {sc.name}: {sc.fault}")
        try:
            self.settle()
        except LabError as exc:
            return Row(sc.name, sc.fault, sc.expected, f"lab not settled before: {exc}", False,
                       0, 0, 0.0, {})
        t0, doubles = time.monotonic(), len(self.sampler.doubles)
        try:
            before = self.damage()
        except (VmclusterError, OSError):
            before = {}
        seen: dict[str, dict[str, dict[str, Any]]] = {}
        with contextlib.ExitStack() as watching:  # every VM's clients, until settled again
            for vm in self.vms:
                seen[vm] = watching.enter_context(self.clients(vm))
            try:
                out = sc.run(self)
            except (VmclusterError, OSError, subprocess.SubprocessError) as exc:
                out = Outcome(f"the scenario broke: {exc}", False)
            doubled = len(self.sampler.doubles) - doubles
            lost = 0
            try:
                self.settle()
                # This scenario's own losses: a disk an earlier one damaged stays damaged.
                lost = sum(max(0, n - before.get(vm, 0)) for vm, n in self.damage().items())
            except (VmclusterError, OSError) as exc:
                out = Outcome(f"{out.observed}; after it: {exc}", False, out.figures)
        return Row(sc.name, sc.fault, sc.expected, out.observed,
                   out.ok and doubled == 0 and lost == 0, doubled, lost,
                   round(time.monotonic() - t0, 1), {**out.figures, **_client_figures(seen)})


def _client_figures(seen: Mapping[str, Mapping[str, Mapping[str, Any]]]
                    ) -> dict[str, float | int | None]:
    """What the clients saw through a scenario: the longest UDP blackout of any VM (ms;
    a VM restarted elsewhere is dark from its failure until its guest answers again) and
    how many VMs' TCP sessions broke (a live migration keeps them, a restart cannot)."""
    gaps = [float(r["udp"]["blackout_ms"]) for r in seen.values()
            if isinstance(r.get("udp", {}).get("blackout_ms"), int | float)]
    tcp = [r["tcp"] for r in seen.values() if "session_survived" in r.get("tcp", {})]
    return {"blackout_ms": max(gaps) if gaps else None,
            "tcp_broken": sum(not t["session_survived"] for t in tcp) if tcp else None}


# -- the scenarios --------------------------------------------------------------------------

def _crash(c: Campaign, with_manager: bool) -> Outcome:
    where = c.settle()
    victim = c.victim(where, with_manager=with_manager)
    lost = [vm for vm, n in where.items() if n == victim]
    m = c.mark()
    crash_node(c.layout, victim)
    running = c.running_again(lost, m, avoid=victim) if lost else 0.0
    answering = c.answering(lost[0], m) if lost else None
    fig: dict[str, float | int | None] = {
        "detect_s": c.event_at(m, 30, kind="node_down", peer=victim),
        "act_s": None, "running_s": running, "answering_s": answering}
    restarted = [e["at"] for e in c.events(m) if e["kind"] == "vm_restarted"]
    fig["act_s"] = m.after(min(restarted)) if restarted else None
    if with_manager:
        fig["new_manager_s"] = c.event_at(m, 30, kind="leader_elected")
    c.node_back(victim, m)
    ok = fig["detect_s"] is not None and (not lost or running is not None)
    return Outcome(f"{victim} crashed ({', '.join(lost) or 'no VMs'}); "
                   + ("its VMs run again elsewhere" if lost and running is not None else
                      "nothing to restart" if not lost else "its VMs did NOT run again"),
                   ok, fig)


def sc_node_crash(c: Campaign) -> Outcome:
    return _crash(c, with_manager=False)


def sc_manager_node_crash(c: Campaign) -> Outcome:
    return _crash(c, with_manager=True)


def _quiet(c: Campaign, what: str, fault: Callable[[], object]) -> Outcome:
    m = c.mark()
    fault()
    time.sleep(3)  # what the cluster would do about it, it would have started by now
    spurious = c.failovers(m)
    downs = sum(1 for e in c.events(m) if e["kind"] == "route_down")
    return Outcome(f"{what}: " + (f"spurious {spurious}" if spurious else "no failover"),
                   not spurious, {"route_downs": downs, "failovers": len(spurious)})


def _net_down_for(c: Campaign, target: str, seconds: float) -> None:
    """``target`` (NETWORK[@NODE]) down for ``seconds``, then up again (also on error)."""
    set_net(c.sub, target, False)
    try:
        time.sleep(seconds)
    finally:
        set_net(c.sub, target, True)


def sc_heartbeat_down(c: Campaign) -> Outcome:
    return _quiet(c, "Heartbeat down 8 s, traffic on the next network",
                  lambda: _net_down_for(c, "Heartbeat", 8))


def sc_blips(c: Campaign) -> Outcome:
    node = c.nodes[-1]
    return _quiet(c, f"three 0.8 s blips of Heartbeat@{node}", lambda: blip_net(
        lambda up: set_net(c.sub, f"Heartbeat@{node}", up), 0.8, 3, 2.0))


def sc_isolation(c: Campaign) -> Outcome:
    where = c.settle()
    victim = c.victim(where)
    lost = [vm for vm, n in where.items() if n == victim]
    m = c.mark()
    isolate_node(c.layout, victim)
    try:
        stop = c.gone_from(victim, lost, m)
        running = c.running_again(lost, m, avoid=victim)
    finally:
        rejoin_node(c.layout, victim)
    c.node_back(victim, m)
    ok = stop is not None and running is not None and running >= stop
    return Outcome(f"{victim} isolated: " + (f"stopped its VMs at {stop} s" if stop is not None
                                             else "did NOT stop its VMs")
                   + (f"; they run on the majority at {running} s" if running is not None else
                      "; they did NOT run again"), ok, {"stop_s": stop, "running_s": running})


def sc_one_way_partition(c: Campaign) -> Outcome:
    where = c.settle()
    victim = c.victim(where)
    lost = [vm for vm, n in where.items() if n == victim]
    others = [n for n in c.nodes if n != victim]
    m = c.mark()
    for other in others:  # it hears everyone; nobody hears it
        cut_between(c.layout, victim, other, True, one_way=True)
    try:
        stop = c.gone_from(victim, lost, m, timeout_s=20)
        running = c.running_again(lost, m, avoid=victim, timeout_s=30)
    finally:
        for other in others:
            cut_between(c.layout, victim, other, False, one_way=True)
    c.node_back(victim, m)
    ok = running is not None and stop is not None and running >= stop
    return Outcome(f"{victim} can no longer send to anyone (it still hears them): "
                   + (f"stopped its VMs at {stop} s" if stop is not None else
                      "did NOT stop its VMs")
                   + (f", they run elsewhere at {running} s" if running is not None else
                      ", they did not run elsewhere"), ok,
                   {"stop_s": stop, "running_s": running})


def sc_split_2_2(c: Campaign) -> Outcome:
    """Four hosts split two and two (every path between the halves cut, each half whole):
    neither half holds a majority, so neither may run VMs; healed, every VM runs again,
    once."""
    where = c.settle()
    halves = (c.nodes[:2], c.nodes[2:])
    m = c.mark()
    for a in halves[0]:
        for b in halves[1]:
            cut_between(c.layout, a, b, True)
    both = 0
    stopped = None
    try:
        stopped = c.gone_from_all(c.vms, m, timeout_s=20)
        hold = time.monotonic() + 12  # the split lasts: nothing may start on either side
        while time.monotonic() < hold:
            s = c.sampler.latest()
            if s is not None:
                sides = {i for i, half in enumerate(halves) for nodes in s.running.values()
                         for n in nodes if n in half}
                both += len(sides) > 1
            time.sleep(SAMPLE_S)
    finally:
        for a in halves[0]:
            for b in halves[1]:
                cut_between(c.layout, a, b, False)
    healed = Mark(time.time(), time.monotonic(), m.seq, m.doubles)
    running = c.running_again(c.vms, healed, timeout_s=180)
    ok = stopped is not None and both == 0 and running is not None
    return Outcome(f"{'+'.join(halves[0])} | {'+'.join(halves[1])} split ("
                   f"{len(where)} VMs): "
                   + (f"neither half runs a VM from {stopped} s" if stopped is not None else
                      "a VM kept running")
                   + (f"; both halves ran VMs at once in {both} samples" if both else "")
                   + (f"; healed, every VM runs again, once, {running} s later"
                      if running is not None else "; healed, a VM did NOT run again"),
                   ok, {"stop_s": stopped, "running_s": running})


#: A directory whose ``sitecustomize`` steps a Python process's wall clock (see there).
CLOCKSTEP_DIR = Path(__file__).resolve().parent / "clockstep"


def _stepped_clock(seconds: float) -> dict[str, str]:
    """The environment that steps a host's Python processes' wall clock by ``seconds``, as
    an NTP step would (see vmcluster/lab/clockstep/sitecustomize.py)."""
    return {"PYTHONPATH": os.pathsep.join([str(CLOCKSTEP_DIR), *filter(None, [
        os.environ.get("PYTHONPATH")])]), "VMCLUSTER_CLOCK_STEP_S": f"{seconds:g}"}


def _rehost(c: Campaign, node: str, env: Mapping[str, str]) -> None:
    """``node``'s daemon started again (as ``systemctl restart``) with ``env``, and its
    watchdog too (a restart adopts it: killed, the new daemon starts one with ``env``)."""
    restart_part(c.layout, node, "vmclusterd", env=env)
    old = part_pids(c.layout, node, "watchdog")
    with contextlib.suppress(UsageError):
        kill_part(c.layout, node, "watchdog")
    deadline = time.monotonic() + 20
    while not set(part_pids(c.layout, node, "watchdog")) - set(old):
        if time.monotonic() > deadline:
            raise LabError(f"{node}'s daemon did not start its watchdog again")
        time.sleep(0.1)


def sc_clock_jump(c: Campaign) -> Outcome:
    """The manager's host steps its wall clock an hour ahead (the Python clock of its
    daemon, manager, agent, API and watchdog; monotonic clocks, file times, etcd, QEMU and
    OpenSSL stay true): nothing may fail over, fence or move; a crash of another host is
    handled as ever; stepping back changes nothing."""
    env = _stepped_clock(3600)
    where = c.settle()
    jumped = c.manager_node() or c.nodes[0]
    m = c.mark()
    quiet: list[str] = []
    moved: dict[str, str] = {}
    crashed = next((n for n in sorted(set(where.values())) if n != jumped),
                   next(n for n in c.nodes if n != jumped))
    fig: dict[str, float | int | None] = {}
    try:
        _rehost(c, jumped, env)
        time.sleep(15)  # past the fence window and the failure detection, several times
        quiet = c.failovers(m)
        moved = {vm: n for vm, n in where.items() if c.copies(vm).get(n) != "running"}
        lost = [vm for vm, n in where.items() if n == crashed]
        m2 = c.mark()
        crash_node(c.layout, crashed)
        fig["detect_s"] = c.event_at(m2, 30, kind="node_down", peer=crashed)
        fig["running_s"] = c.running_again(lost, m2, avoid=crashed) if lost else 0.0
        c.node_back(crashed, m2)
    finally:
        m3 = c.mark()
        _rehost(c, jumped, {"VMCLUSTER_CLOCK_STEP_S": "0"})  # the clock steps back
    time.sleep(10)
    spurious_back = c.failovers(m3)
    ok = (not quiet and not moved and fig.get("detect_s") is not None
          and fig.get("running_s") is not None and not spurious_back)
    return Outcome(f"{jumped}'s wall clock an hour ahead: "
                   + (f"spurious {quiet}" if quiet else "no failover")
                   + (f", {', '.join(moved)} stopped or moved" if moved else ", nothing moved")
                   + f"; {crashed} crashed meanwhile: detected at {fig.get('detect_s')} s, "
                   f"its VMs running at {fig.get('running_s')} s; stepped back: "
                   + (f"spurious {spurious_back}" if spurious_back else "no failover"),
                   ok, fig)


def _store_writes(c: Campaign, m: Mark, timeout_s: float) -> float | None:
    """Seconds from ``m`` until the store takes a write again."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with contextlib.suppress(VmclusterError, OSError):
            c.store.call(c.store.state.append_event,
                         {"kind": "chaos_marker", "at": time.time(), "node": "chaos"},
                         timeout=5)
            return round(time.monotonic() - m.mono, 3)
        time.sleep(0.2)
    return None


def _etcd_leader_fault(c: Campaign, how: str, seconds: float = 10.0) -> Outcome:
    """The etcd raft leader's member killed (``kill``), frozen (``freeze``: SIGSTOP for
    ``seconds``) or cut off from its peers (``blackhole``: raft traffic dropped for
    ``seconds``, the host otherwise fine): a new leader, writes resume, no failover."""
    c.settle()
    leader = etcd_leader(c.store, c.spec)
    if leader is None:
        return Outcome("no etcd member says it leads", False)
    m = c.mark()
    frozen: list[int] = []
    if how == "kill":
        kill_part(c.layout, leader, "etcd")
    elif how == "freeze":
        frozen = _freeze(part_pids(c.layout, leader, "etcd"))
    else:
        blackhole_etcd(c.layout, leader, True)
    try:
        back = _store_writes(c, m, 30)
        if how != "kill":
            time.sleep(max(0.0, m.mono + seconds - time.monotonic()))
    finally:
        _thaw(frozen)
        if how == "blackhole":
            blackhole_etcd(c.layout, leader, False)
    time.sleep(2)
    new = etcd_leader(c.store, c.spec)
    spurious = c.failovers(m)
    what = {"kill": "killed", "freeze": f"frozen {seconds:g} s",
            "blackhole": f"cut off from its peers {seconds:g} s"}[how]
    return Outcome(f"etcd leader on {leader} {what}: store "
                   + (f"writes again after {back} s" if back is not None else "did NOT recover")
                   + f"; leader now on {new}"
                   + (f"; spurious {spurious}" if spurious else ""),
                   back is not None and not spurious, {"store_back_s": back})


def sc_etcd_leader_kill(c: Campaign) -> Outcome:
    return _etcd_leader_fault(c, "kill")


def sc_etcd_leader_freeze(c: Campaign) -> Outcome:
    return _etcd_leader_fault(c, "freeze")


def sc_etcd_leader_blackhole(c: Campaign) -> Outcome:
    return _etcd_leader_fault(c, "blackhole")


def sc_etcd_quorum_loss(c: Campaign) -> Outcome:
    c.settle()
    two = c.nodes[:2]
    m = c.mark()
    freezers = [threading.Thread(target=freeze_part, args=(c.layout, n, "etcd", 10.0))
                for n in two]
    for t in freezers:
        t.start()
    for t in freezers:
        t.join()
    back = _store_writes(c, m, 30)
    running = c.running_again(c.vms, c.mark(), timeout_s=30)
    return Outcome(f"etcd of {' and '.join(two)} frozen 10 s (no quorum): store "
                   + (f"writes again {back} s after the loss" if back is not None else
                      "did NOT recover")
                   + ("; every VM runs" if running is not None else "; a VM does NOT run"),
                   back is not None and running is not None, {"store_back_s": back})


def sc_manager_freeze(c: Campaign) -> Outcome:
    c.settle()
    old = c.manager_node()
    if old is None:
        return Outcome("no manager elected", False)
    m = c.mark()
    freeze_part(c.layout, old, "manager", 8.0)  # the lease is 3 s
    new = wait_event(c.store, m.seq, 5, kind="leader_elected")
    time.sleep(2)
    now = c.manager_node()
    return Outcome(f"manager on {old} frozen 8 s: "
                   + (f"{new['node']} elected after {m.after(new['at'])} s" if new else
                      "no new manager")
                   + f"; manager now {now}", new is not None and now is not None,
                   {"new_manager_s": m.after(new["at"]) if new else None})


def sc_agent_kill(c: Campaign) -> Outcome:
    where = c.settle()
    victim = c.victim(where, with_manager=None)
    mine = sorted(vm for vm, n in where.items() if n == victim)
    m = c.mark()
    kill_part(c.layout, victim, "agent")
    deadline = time.monotonic() + 30
    while not AgentClient(c.layout, victim).alive() and time.monotonic() < deadline:
        time.sleep(0.1)
    back = round(time.monotonic() - m.mono, 3) if time.monotonic() < deadline else None
    time.sleep(3)
    spurious = c.failovers(m)
    s = c.sampler.latest()
    still = sorted(vm for vm, ns in (s.running if s else {}).items() if victim in ns)
    ok = back is not None and not spurious and still == mine
    return Outcome(f"{victim}'s agent killed: back after {back} s, VMs {still} still there"
                   + (f"; spurious {spurious}" if spurious else ""), ok, {"agent_back_s": back})


def sc_agent_freeze(c: Campaign) -> Outcome:
    where = c.settle()
    victim = c.victim(where, with_manager=None)
    mine = sorted(vm for vm, n in where.items() if n == victim)
    m = c.mark()
    frozen = threading.Thread(target=freeze_part, args=(c.layout, victim, "agent", 25.0))
    frozen.start()
    try:
        time.sleep(1)
        got = subprocess.run([sys.executable, "-m", "vmcluster", "lab", "status", "--json",
                              "--name", c.layout.name], capture_output=True, text=True,
                             timeout=60, env=c.vmc_env())
    finally:
        frozen.join()
    doc = _json_line(got.stdout)
    node: dict[str, Any] = next((n for n in doc.get("nodes", []) if n["name"] == victim), {})
    vms = {v["name"]: v for v in doc.get("vms", [])}
    told = node.get("state") == "unknown" and all(
        vms.get(vm, {}).get("state") == "unknown" and vm in vms[vm].get("last_report", {})
        .get("vms", []) for vm in mine)
    time.sleep(3)
    spurious = c.failovers(m)
    return Outcome(f"{victim}'s agent frozen 25 s: lab status said {victim} "
                   f"{node.get('state')}, its VMs "
                   f"{ {vm: vms.get(vm, {}).get('state') for vm in mine} }"
                   + (f"; spurious {spurious}" if spurious else "; no failover"),
                   told and not spurious, {})


def sc_vmclusterd_kill(c: Campaign, freeze: bool = False) -> Outcome:
    where = c.settle()
    victim = c.victim(where)
    lost = [vm for vm, n in where.items() if n == victim]
    m = c.mark()
    if freeze:
        threading.Thread(target=freeze_part, args=(c.layout, victim, "vmclusterd", 15.0),
                         daemon=True).start()
    else:
        kill_part(c.layout, victim, "vmclusterd")
    fenced = c.gone_from(victim, lost, m)  # its watchdog killed its QEMUs
    running = c.running_again(lost, m, avoid=victim)
    time.sleep(16 if freeze else 0)  # a frozen daemon wakes up (fenced) before the restore
    c.node_back(victim, m)
    ok = fenced is not None and running is not None and running >= fenced
    return Outcome(f"{victim}'s vmclusterd {'frozen' if freeze else 'killed'}: "
                   + (f"fenced by its watchdog at {fenced} s" if fenced is not None else
                      "NOT fenced")
                   + (f", VMs running elsewhere at {running} s" if running is not None else
                      ", VMs NOT running again"), ok,
                   {"fenced_s": fenced, "running_s": running})


def sc_vmclusterd_freeze(c: Campaign) -> Outcome:
    return sc_vmclusterd_kill(c, freeze=True)


def sc_daemon_restart_under_load(c: Campaign) -> Outcome:
    where = c.settle()
    victim = c.victim(where)
    code = "import time\nend = time.monotonic() + 12\nwhile time.monotonic() < end: pass"
    burners = [subprocess.Popen([sys.executable, "-c", code]) for _ in range(os.cpu_count() or 2)]
    m = c.mark()
    try:
        restart_part(c.layout, victim, "vmclusterd")
    finally:
        for b in burners:
            b.wait(timeout=60)
    time.sleep(3)
    spurious = c.failovers(m)
    moved = {vm: n for vm, n in c.settle().items() if where[vm] != n}
    return Outcome(f"{victim}'s vmclusterd restarted under full CPU load: "
                   + (f"spurious {spurious}" if spurious else "no failover")
                   + (f", moved {moved}" if moved else ", every VM where it was"),
                   not spurious and not moved, {"failovers": len(spurious)})


def _migration(c: Campaign, vm: str, target: str, *more: str) -> subprocess.Popen[str]:
    return subprocess.Popen(c.vmc("vm", "migrate", vm, "--to", target, "--json", *more),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=c.vmc_env())


def _wait_phase(c: Campaign, vm: str, proc: subprocess.Popen[str], phase: str,
                timeout_s: float = 60.0, seen: list[str] | None = None) -> bool:
    """Wait until the migration the CLI asked for reaches ``phase``: ``setup`` (the
    cluster has its intent: asked, not yet copying), ``copying`` (the CLI printed its first
    pass line). False if the CLI ended first. The CLI's stderr lines read on the way go to
    ``seen``."""
    deadline = time.monotonic() + timeout_s
    if phase == "setup":
        while proc.poll() is None and time.monotonic() < deadline:
            if c.asked(vm):
                return True
            time.sleep(0.05)
        return False
    assert proc.stderr is not None
    for line in proc.stderr:
        if seen is not None:
            seen.append(line)
        if " pass " in line and " active " in line:
            return True
        if time.monotonic() > deadline:
            break
    return False


#: The migration fault matrix: which process of a migration gets which signal in which
#: phase. ``setup``: the cluster has the migration's intent, nothing copied yet;
#: ``copying``: the first pre-copy pass is under way; ``switchover``: QEMU finished the
#: copy and the store moved ownership (held there by freezing the target's agent, which
#: the switchover waits on to start the target), the target not yet running.
MIG_PROCS = ("source-qemu", "target-qemu", "source-agent", "target-agent", "cli")
MIG_PHASES = ("setup", "copying", "switchover")
MIG_SIGNALS = ("INT", "TERM", "KILL")
MIG_CELLS = [(proc, sig, phase) for phase in MIG_PHASES for proc in MIG_PROCS
             for sig in MIG_SIGNALS]
#: Cells the CI subset runs (one per process class that has a known past defect).
MIG_CI = {("cli", "TERM", "copying"), ("target-qemu", "KILL", "switchover")}


def _switchover(c: Campaign, vm: str, target: str, proc: subprocess.Popen[str],
                seen: list[str], timeout_s: float = 120.0) -> list[int]:
    """Hold ``vm``'s migration at its switchover: freeze the target's agent while the copy
    runs, then wait until the store places ``vm`` on ``target`` (QEMU finished the copy, the
    switchover committed, the target waits for its agent to run it). Returns the pids frozen
    (the caller thaws them), none if the migration ended first."""
    if not _wait_phase(c, vm, proc, "copying", seen=seen):
        return []
    frozen = _freeze(part_pids(c.layout, target, "agent"))
    deadline = time.monotonic() + timeout_s
    while proc.poll() is None and time.monotonic() < deadline:
        placed = c.store.call(c.store.state.placements).get(vm)
        if placed is not None and placed.node == target:
            return frozen
        time.sleep(0.05)
    _thaw(frozen)
    return []


def _who(who: str) -> str:
    """A matrix process as a sentence names it: ``source-qemu`` -> ``source QEMU``."""
    return "the CLI" if who == "cli" else who.replace("-", " ").replace("qemu", "QEMU")


def _freeze(pids: list[int]) -> list[int]:
    """SIGSTOP ``pids`` (until :func:`_thaw`); returns them."""
    _signal(pids, signal.SIGSTOP)
    return pids


def _thaw(pids: Sequence[int]) -> None:
    _signal(pids, signal.SIGCONT)


def _signal(pids: Sequence[int], sig: signal.Signals) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)


def _migration_fault(c: Campaign, who: str, sig: str, phase: str) -> Outcome:
    """One cell of the matrix: signal ``who`` at ``phase`` of a migration (see
    :func:`_migrate_with`). SIGINT of the CLI asks the cluster to cancel; TERM or KILL of
    the CLI changes nothing; a QEMU or agent that dies is the cluster's to repair."""

    def fault(vm: str, source: str, target: str, proc: subprocess.Popen[str]) -> None:
        if who == "cli":
            with contextlib.suppress(ProcessLookupError):
                os.kill(proc.pid, SIGNALS[sig])
            return
        side, part = who.split("-")
        with contextlib.suppress(UsageError):  # it may have ended by itself
            kill_part(c.layout, source if side == "source" else target, part,
                      vm if part == "qemu" else None, sig)

    return _migrate_with(c, phase, fault, f"{_who(who)} got SIG{sig} at {phase}",
                         cli_sig=sig if who == "cli" else None)


def _mid_migration(c: Campaign, what: str, fault: Callable[[str, str, str], object]) -> Outcome:
    return _migrate_with(c, "copying", lambda vm, s, t, _p: fault(vm, s, t), what)


def _migrate_with(c: Campaign, phase: str,
                  fault: Callable[[str, str, str, subprocess.Popen[str]], object],
                  what: str, cli_sig: str | None = None) -> Outcome:
    """Migrate a VM, call ``fault(vm, source, target, cli)`` at ``phase``, and check that
    the VM runs once, where the store places it, and that what the CLI said (unless
    ``cli_sig`` was sent to it) is true."""
    where = c.settle()
    vm = sorted(where)[-1]
    source = where[vm]
    target = next(n for n in reversed(c.nodes) if n != source)
    addr = str(c.spec.vm(vm).address)
    if phase == "copying":
        guest_request(c.layout, addr, "RATE 24")  # a longer copy to hit
    proc = _migration(c, vm, target)
    out = err = ""
    frozen: list[int] = []
    seen: list[str] = []
    try:
        if phase == "switchover":
            frozen = _switchover(c, vm, target, proc, seen)
            reached = bool(frozen)
        else:
            reached = _wait_phase(c, vm, proc, phase, seen=seen)
        if reached:
            fault(vm, source, target, proc)
        _thaw(frozen)
        out, err = proc.communicate(timeout=180)
        err = "".join(seen) + err
    finally:
        _thaw(frozen)
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
        if phase == "copying":
            with contextlib.suppress(LabError):
                guest_request(c.layout, addr, "RATE 8")
    node = c.one_copy(vm, 120)
    placed = c.store.call(c.store.state.placements).get(vm)
    res = _json_line(out)
    if cli_sig is not None:
        # The CLI died or was interrupted: what it said is not the test; where it runs is.
        told = node in ({source, target} if cli_sig == "INT" else {target})
    else:
        # What the CLI said must be true: done means on the target; failed, on the source
        # (or the error says where it runs, or to whom it belongs now).
        error = f"{err} {res.get('error') or ''}"
        told = (node == target if proc.returncode == 0 else
                node == source or f"runs on {node}" in error or f"on {node}" in error
                or f"belongs to {node}" in error)
    ok = reached and node is not None and placed is not None and placed.node == node and told
    fig: dict[str, float | int | None] = {
        "attempts": 1 + len(res.get("tried") or []) if res else None,
        "total_s": res.get("total_s"), "downtime_ms": res.get("downtime_ms")}
    return Outcome(f"{what} while {vm} migrated {source}->{target}"
                   + ("" if reached else f" (the migration ended before {phase})")
                   + f": CLI exit {proc.returncode}"
                   + ("" if cli_sig else
                      f" ({res.get('state') or '?'}: "
                      f"{res.get('error') or (err.strip()[-300:] if proc.returncode else '')}"
                      f"{'' if res.get('error') or proc.returncode else 'no error'})")
                   + f", one copy on {node}, placed on {placed.node if placed else None}"
                   + ("" if told else " (NOT what the CLI said)")
                   + "".join(f"; before, over {t.get('network')}: {t.get('error')}"
                             for t in res.get("tried") or []), ok, fig)


def _cell(who: str, sig: str, phase: str) -> Callable[[Campaign], Outcome]:
    return lambda c: _migration_fault(c, who, sig, phase)


def _json_line(text: str) -> dict[str, Any]:
    """The last line of a CLI's ``--json`` output as an object ({} if there is none)."""
    with contextlib.suppress(ValueError, IndexError):
        got = json.loads(text.strip().splitlines()[-1])
        return got if isinstance(got, dict) else {}
    return {}


def sc_migration_net_cut(c: Campaign, seconds: float = 5) -> Outcome:
    return _mid_migration(c, f"Migration network cut {seconds:g} s",
                          lambda _vm, _s, _t: _net_down_for(c, "Migration", seconds))


def sc_migration_net_cut_long(c: Campaign) -> Outcome:
    return sc_migration_net_cut(c, 40)


def _postcopy(c: Campaign, fault: Callable[[str, str, str], object], running: bool
              ) -> tuple[bool, str, str, str, dict[str, Any], int | None]:
    """Migrate a VM that allows post-copy and dirties 300 MiB/s (so post-copy it is);
    call ``fault(vm, source, target)`` once its source serves pages (``running``: and
    the guest runs on the target); put everything back. (reached, vm, source, target,
    the CLI's JSON, its exit code)."""
    where = c.settle()
    vm = sorted(where)[-1]
    source = where[vm]
    target = next(n for n in reversed(c.nodes) if n != source)
    addr = str(c.spec.vm(vm).address)
    subprocess.run(c.vmc("vm", "set", vm, "allow_postcopy=true"), env=c.vmc_env(),
                   capture_output=True, text=True, timeout=60, check=True)
    guest_request(c.layout, addr, "RATE 300")
    guest_request(c.layout, addr, "WWS 160")
    proc = _migration(c, vm, target)
    reached = False
    try:
        deadline = time.monotonic() + 60
        while proc.poll() is None and time.monotonic() < deadline and not reached:
            with contextlib.suppress(LabError, SubstrateError):
                listed = AgentClient(c.layout, source).call("list", timeout_s=5)["vms"]
                reached = any(v["vm"] == vm and v["role"] == "serving" for v in listed)
                if reached and running:
                    there = AgentClient(c.layout, target).call("list", timeout_s=5)["vms"]
                    reached = any(v["vm"] == vm and v["role"] == "run"
                                  and v.get("status") == "running" for v in there)
            if not reached:
                time.sleep(0.05)
        if reached:
            fault(vm, source, target)
        out, _ = proc.communicate(timeout=240)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
        with contextlib.suppress(LabError):
            guest_request(c.layout, addr, "RATE 8", timeout_s=60)
            guest_request(c.layout, addr, "WWS 16", timeout_s=60)
        subprocess.run(c.vmc("vm", "set", vm, "allow_postcopy=null"), env=c.vmc_env(),
                       capture_output=True, text=True, timeout=60)
    return reached, vm, source, target, _json_line(out), proc.returncode


def sc_postcopy_source_kill(c: Campaign, running: bool = False) -> Outcome:
    """The source's QEMU killed once it serves pages (``running``: and the guest runs on
    the target): the running copy is lost (its memory was split); the VM is started
    again from its disk, once, where it is placed (the target once the switchover
    committed, else the source)."""
    reached, vm, source, target, res, code = _postcopy(
        c, lambda vm, src, _t: kill_part(c.layout, src, "qemu", vm), running=running)
    node = c.one_copy(vm, 120)
    placed = c.store.call(c.store.state.placements).get(vm)
    ok = reached and node is not None and placed is not None and placed.node == node and (
        node == target or not running)
    return Outcome(f"{vm}'s source QEMU on {source} killed mid-post-copy to {target}: CLI "
                   f"exit {code} ({(res.get('error') or '')[:160]}), one copy on {node}, "
                   f"placed on {placed.node if placed else None}"
                   + ("" if reached else " (post-copy never began)"), ok, {})


def sc_postcopy_source_kill_running(c: Campaign) -> Outcome:
    return sc_postcopy_source_kill(c, running=True)


def sc_postcopy_net_cut(c: Campaign) -> Outcome:
    """The migration network cut at the target mid-post-copy: both ends pause and the
    source resumes over the next network; the guest comes through whole."""
    reached, vm, source, target, res, code = _postcopy(
        c, lambda _vm, _s, tgt: _net_down_for(c, f"Migration@{tgt}", 6), running=True)
    node = c.one_copy(vm, 120)
    ok = reached and code == 0 and node == target and res.get("memory_ok") is not False
    return Outcome(f"Migration@{target} cut 6 s mid-post-copy of {vm} from {source}: CLI "
                   f"exit {code}, {res.get('postcopy_recoveries')} recoveries, one copy on "
                   f"{node}" + ("" if reached else " (post-copy never began)"), ok,
                   {"total_s": res.get("total_s"),
                    "recoveries": res.get("postcopy_recoveries")})


def sc_cancel(c: Campaign) -> Outcome:
    where = c.settle()
    vm = sorted(where)[0]
    source = where[vm]
    target = next(n for n in c.nodes if n != source)
    addr = str(c.spec.vm(vm).address)
    guest_request(c.layout, addr, "RATE 300")  # a copy long enough to cancel
    guest_request(c.layout, addr, "WWS 160")
    proc = _migration(c, vm, target, "--downtime-ms", "20")
    try:
        reached = _wait_phase(c, vm, proc, "copying")
        got = subprocess.run(c.vmc("vm", "migrate", vm, "--cancel", "--json"), env=c.vmc_env(),
                             capture_output=True, text=True, timeout=120)
        proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
        with contextlib.suppress(LabError):
            guest_request(c.layout, addr, "RATE 8")
            guest_request(c.layout, addr, "WWS 16")
    res = _json_line(got.stdout)
    node = c.one_copy(vm, 60)
    # Cancelled: on the source. Done first (the switchover won the race): on the target.
    expect = source if res.get("state") == "cancelled" else target
    ok = reached and got.returncode == 0 and node == expect
    return Outcome(f"vm migrate {vm} {source}->{target} cancelled mid-copy: "
                   f"{res.get('state') or got.stderr.strip()[-200:]}, one copy on {node}", ok, {})


def sc_over_budget(c: Campaign) -> Outcome:
    where = c.settle()
    vm = sorted(where)[-1]
    source = where[vm]
    target = next(n for n in c.nodes if n != source)
    addr = str(c.spec.vm(vm).address)
    guest_request(c.layout, addr, "RATE 300")  # far more than a 20 ms budget lets it copy
    guest_request(c.layout, addr, "WWS 160")
    try:
        got = subprocess.run(c.vmc("vm", "migrate", vm, "--to", target, "--downtime-ms", "20",
                                   "--json"), env=c.vmc_env(), capture_output=True, text=True,
                             timeout=300)
    finally:
        with contextlib.suppress(LabError):
            guest_request(c.layout, addr, "RATE 8")
            guest_request(c.layout, addr, "WWS 16")
    res = _json_line(got.stdout)
    node = c.one_copy(vm, 60)
    gave_up = got.returncode != 0 and "downtime budget" in got.stderr
    down = res.get("downtime_ms")
    # Given up (it stays), or through within the budget, or over it and saying so.
    said = down is not None and (down <= 20 or res.get("over_budget") is True)
    ok = (gave_up and node == source) or (got.returncode == 0 and node == target and said)
    return Outcome(f"{vm} dirtying 300 MiB/s, budget 20 ms: "
                   + ("given up, " if gave_up else f"{res.get('state')} "
                      f"(over budget: {res.get('over_budget')}), ")
                   + f"one copy on {node}", ok, {"downtime_ms": down})


def sc_stopped_stays_stopped(c: Campaign) -> Outcome:
    where = c.settle()
    victim = c.victim(where)
    vm = sorted(v for v, n in where.items() if n == victim)[0]
    stop = subprocess.run(c.vmc("vm", "stop", vm, "--force"), env=c.vmc_env(),
                          capture_output=True, text=True, timeout=120)
    if stop.returncode != 0:
        return Outcome(f"vm stop {vm} failed: {stop.stderr.strip()[-200:]}", False)
    m = c.mark()
    crash_node(c.layout, victim)
    time.sleep(15)  # the crash is detected and the node's other VMs restarted by now
    ran = [s.at for s in list(c.sampler.samples) if s.at > m.mono and vm in s.running]
    c.node_back(victim, m)
    m2 = c.mark()
    start = subprocess.run(c.vmc("vm", "start", vm), env=c.vmc_env(), capture_output=True,
                           text=True, timeout=120)
    back = c.running_again([vm], m2)
    ok = not ran and start.returncode == 0 and back is not None
    return Outcome(f"{vm} stopped by the operator, then its node {victim} crashed: "
                   + (f"it ran again {round(ran[0] - m.mono, 1)} s later, against the "
                      "operator's word" if ran else "it stayed stopped")
                   + ("; started again by `vm start`" if back is not None else
                      "; `vm start` did NOT start it"), ok, {"start_s": back})


def sc_cold_start(c: Campaign) -> Outcome:
    c.settle()
    for node in c.nodes:  # everything at once: a power cut
        crash_node(c.layout, node)
    time.sleep(2)
    t0 = time.monotonic()  # no mark from the store: it is down with every host
    start_nodes(c.layout, c.nodes)
    mark = Mark(time.time(), t0, 0, len(c.sampler.doubles))
    running = c.running_again(c.vms, mark, timeout_s=180)
    answering = c.answering(c.vms[0], mark, timeout_s=120) if running is not None else None
    return Outcome("every host crashed at once and booted again: "
                   + (f"every VM runs again, once, {running} s after the boot"
                      if running is not None else "a VM did NOT run again"),
                   running is not None, {"running_s": running, "answering_s": answering})


def _lab_cli(c: Campaign, *args: str, timeout_s: float = 300) -> subprocess.CompletedProcess[str]:
    """``vmcluster ARGS --lab LAB`` from the machine's side (the lab's own commands)."""
    return subprocess.run([sys.executable, "-m", "vmcluster", *args, "--lab", c.layout.name],
                          env=c.vmc_env(), capture_output=True, text=True, timeout=timeout_s)


def sc_backup_restore(c: Campaign) -> Outcome:
    where = c.settle()
    vm = sorted(where)[0]
    with tempfile.TemporaryDirectory(prefix="vmc-chaos-") as d:
        path = str(Path(d) / "cluster.backup")
        saved = _lab_cli(c, "cluster", "backup", path, timeout_s=120)
        if saved.returncode != 0:
            return Outcome(f"cluster backup failed: {saved.stderr.strip()[-300:]}", False)
        stop = subprocess.run(c.vmc("vm", "stop", vm, "--force"), env=c.vmc_env(),
                              capture_output=True, text=True, timeout=120)  # undone by it
        m = c.mark()
        done = _lab_cli(c, "cluster", "restore", path)
    if done.returncode != 0:
        return Outcome(f"cluster restore failed: {done.stderr.strip()[-300:]}", False)
    mark = Mark(time.time(), m.mono, 0, m.doubles)
    running = c.running_again(c.vms, mark, timeout_s=180)
    ok = stop.returncode == 0 and running is not None
    return Outcome(f"backup, then {vm} stopped, then every host restored from the backup: "
                   + (f"every VM (the backup's desired state) runs again, once, {running} s "
                      "after the restore began" if running is not None else
                      "a VM did NOT run again"), ok, {"running_s": running})


def sc_majority_lost(c: Campaign) -> Outcome:
    """Two of three hosts gone for good: the survivor stops its VMs (no quorum), then the
    operator recovers on it (`cluster recover --forget` the two): every VM runs there, once.
    Afterwards the lab is put back as it was by restoring a backup taken first."""
    where = c.settle()
    survivor = c.victim(where, with_manager=None)
    gone = [n for n in c.nodes if n != survivor]
    mine = [vm for vm, n in where.items() if n == survivor]
    with tempfile.TemporaryDirectory(prefix="vmc-chaos-") as d:
        path = str(Path(d) / "before.backup")
        saved = _lab_cli(c, "cluster", "backup", path, timeout_s=120)
        if saved.returncode != 0:
            return Outcome(f"cluster backup failed: {saved.stderr.strip()[-300:]}", False)
        m = c.mark()
        for node in gone:
            crash_node(c.layout, node)
        stopped = c.gone_from(survivor, mine, m, timeout_s=30) if mine else 0.0
        t_recover = round(time.monotonic() - m.mono, 3)
        done = _lab_cli(c, "cluster", "recover", *[a for n in gone for a in ("--forget", n)],
                        timeout_s=300)
        # Every VM running again, counted from the recovery (they all stopped before it).
        began = Mark(time.time(), m.mono + t_recover, 0, m.doubles)
        running = (c.running_again(c.vms, began, timeout_s=180) if done.returncode == 0
                   else None)
        running = None if running is None else round(running + t_recover, 3)
        latest = c.sampler.latest()
        on = {vm: tuple(latest.running.get(vm, ())) for vm in c.vms} if latest else {}
        back = _lab_cli(c, "cluster", "restore", path)
    ok = (stopped is not None and done.returncode == 0 and running is not None
          and set(on.values()) == {(survivor,)} and back.returncode == 0)
    return Outcome(f"{', '.join(gone)} gone for good: {survivor} "
                   + (f"stopped its VMs at {stopped} s (no quorum)" if stopped is not None
                      else "did NOT stop its VMs")
                   + (f"; recovered alone (cluster recover at {t_recover} s): every VM runs "
                      f"there, once, {running} s after the loss" if running is not None else
                      f"; the recovery failed: {done.stderr.strip()[-300:] or 'VMs not running'}")
                   + ("" if back.returncode == 0 else
                      f"; putting the lab back failed: {back.stderr.strip()[-200:]}"), ok,
                   {"stop_s": stopped, "recover_at_s": t_recover, "running_s": running})


def _acked(c: Campaign, addr: str) -> int | None:
    """How many writes the guest's disk writer has had acknowledged (None: no answer)."""
    with contextlib.suppress(LabError, ValueError):
        reply = guest_request(c.layout, addr, "STATS", DISKWRITER_PORT, timeout_s=5)
        return int(dict(kv.split("=") for kv in reply.split()[1:])["acked"])
    return None


def _redirected_through(c: Campaign, node: str, vm: str) -> str | None:
    """The host ``vm``'s disk on ``node`` goes through now (None: direct, or unknown)."""
    with contextlib.suppress(VmclusterError):
        uri = str(AgentClient(c.layout, node).call("csv_paths", timeout_s=10)["paths"][vm])
        host = uri.removeprefix("nbd://").split(":", 1)[0]
        return next((n.name for n in c.spec.nodes
                     if host in map(str, n.interfaces.values())), None)
    return None


def sc_storage_double_fault(c: Campaign, then_coordinator: bool = False) -> Outcome:
    where = c.settle()
    victim = c.victim(where)
    vm = sorted(v for v, n in where.items() if n == victim)[0]
    addr = str(c.spec.vm(vm).address)
    guest_request(c.layout, addr, "RATE 50", DISKWRITER_PORT)
    seen: list[tuple[float, int]] = []
    stop = threading.Event()

    def watch() -> None:
        while not stop.is_set():
            got = _acked(c, addr)
            if got is not None:
                seen.append((time.monotonic(), got))
            stop.wait(0.3)

    t = threading.Thread(target=watch, daemon=True)
    t.start()
    csv_net = node_cluster_networks(c.spec, victim)[0].name  # the lowest metric
    via = crashed = None
    m = c.mark()
    try:
        time.sleep(2)
        c.sub.set_storage_path(victim, False)  # its disks go through another host
        time.sleep(6)
        second = time.monotonic()
        set_net(c.sub, f"{csv_net}@{victim}", False)  # and then that path's network
        time.sleep(8)
        via = _redirected_through(c, victim, vm)
        if then_coordinator and via is not None and via != victim:
            second = time.monotonic()  # measured from the third fault on
            crash_node(c.layout, via)  # and then the host it goes through
            crashed = via
        time.sleep(15)
    finally:
        mended = time.monotonic()
        set_net(c.sub, f"{csv_net}@{victim}", True)
        c.sub.set_storage_path(victim, True)
        if crashed is not None:
            c.node_back(crashed, m)
        time.sleep(5)
        stop.set()
        t.join()
        with contextlib.suppress(LabError):
            guest_request(c.layout, addr, "RATE 0", DISKWRITER_PORT)
    # The longest time the guest's writes were not acknowledged while the faults held,
    # and whether they went on before the faults were mended.
    during = [(at, n) for at, n in seen if second <= at <= mended]
    stall, last_t, last_n = 0.0, second, max((n for at, n in seen if at < second), default=-1)
    for at, n in during:
        if n != last_n:
            stall, last_t, last_n = max(stall, at - last_t), at, n
    stall = max(stall, mended - last_t)
    went_on = any(n > max((k for a, k in seen if a < second), default=0) for _, n in during)
    ok = went_on and stall < 10 and (crashed is not None or not then_coordinator)
    third = f", then {crashed} it went through crashed" if crashed else (
        ", then (no host to crash: it was not redirected)" if then_coordinator else "")
    return Outcome(f"{vm}'s host {victim} lost its storage path, then its {csv_net} link"
                   f"{third}: longest write stall {stall:.1f} s of {mended - second:.0f} s "
                   "(aim < 5 s); writes " + ("went on" if went_on else "did NOT go on")
                   + " before the faults were mended", ok, {"stall_s": round(stall, 2)})


def sc_storage_triple_fault(c: Campaign) -> Outcome:
    return sc_storage_double_fault(c, then_coordinator=True)


def _drain(c: Campaign, also: Callable[[str, dict[str, str]], str]) -> Outcome:
    """Drain a host with VMs (their copies slowed down); once its first migration is in
    flight, ``also(drained, where)`` injects a second fault and says what it did."""
    where = c.settle()
    drained = c.victim(where)
    mine = sorted(vm for vm, n in where.items() if n == drained)
    for vm in mine:
        guest_request(c.layout, str(c.spec.vm(vm).address), "RATE 24")
    proc = subprocess.Popen(c.vmc("node", "drain", drained, "--json"), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=c.vmc_env())
    did = "nothing (the drain ended first)"
    try:
        deadline = time.monotonic() + 60
        while proc.poll() is None and time.monotonic() < deadline:
            if c.store.call(c.store.state.migrations):
                did = also(drained, where)
                break
            time.sleep(0.1)
        out, err = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
        for vm in mine:
            with contextlib.suppress(LabError):
                guest_request(c.layout, str(c.spec.vm(vm).address), "RATE 8")
    res = _json_line(out)
    copies = {vm: c.one_copy(vm, 90) for vm in c.vms}
    resume = subprocess.run(c.vmc("node", "resume", drained), env=c.vmc_env(),
                            capture_output=True, text=True, timeout=120)
    ok = all(n is not None for n in copies.values()) and resume.returncode == 0
    left = [vm for vm in mine if copies[vm] == drained]
    # Exit 0: drained (none of its VMs on it); else the report names those left behind.
    failed = {str(f.get("vm")) if isinstance(f, dict) else str(f)
              for f in [*res.get("failed", []), *res.get("unplaced", [])]}
    ok = ok and (not left if proc.returncode == 0 else set(left) <= failed)
    why = f"; {err.strip()[-150:]}" if err.strip() and proc.returncode else ""
    return Outcome(f"drain of {drained} ({', '.join(mine)}), meanwhile {did}: exit "
                   f"{proc.returncode} (moved {len(res.get('moved', []))}, failed "
                   f"{len(res.get('failed', []))}{why}), every VM once: {copies}", ok, {})


def sc_crash_during_drain(c: Campaign) -> Outcome:
    crashed: list[str] = []

    def crash(drained: str, _where: dict[str, str]) -> str:
        mig = c.store.call(c.store.state.migrations)
        target = next((mg.target for mg in mig.values()), None)
        victim = target if target not in (None, drained) else next(
            n for n in c.nodes if n not in (drained, c.manager_node()))
        crash_node(c.layout, victim)
        crashed.append(victim)
        return f"{victim} (the copy's target) crashed"

    m = c.mark()
    try:
        return _drain(c, crash)
    finally:
        for node in crashed:
            c.node_back(node, m)


def sc_migration_during_drain(c: Campaign) -> Outcome:
    def migrate(drained: str, where: dict[str, str]) -> str:
        vm = sorted(v for v, n in where.items() if n == drained)[0]
        to = next(n for n in c.nodes if n != drained)
        got = subprocess.run(c.vmc("vm", "migrate", vm, "--to", to, "--json"),
                             env=c.vmc_env(), capture_output=True, text=True, timeout=300)
        said = (_json_line(got.stdout).get("state") or
                (got.stderr.strip().splitlines() or ["?"])[-1][:100])
        return f"`vm migrate {vm} --to {to}` exited {got.returncode} ({said})"

    return _drain(c, migrate)


def sc_two_migrations(c: Campaign) -> Outcome:
    where = c.settle()
    vm = sorted(where)[0]
    source = where[vm]
    a, b = [n for n in c.nodes if n != source][:2]
    p1, p2 = _migration(c, vm, a), _migration(c, vm, b)
    outs = [p.communicate(timeout=180) for p in (p1, p2)]
    node = c.one_copy(vm, 90)
    codes = (p1.returncode, p2.returncode)
    ok = node in (a, b) and 0 in codes
    refused = [o[1].strip().splitlines()[-1] for o, p in zip(outs, (p1, p2), strict=True)
               if p.returncode and o[1].strip()]
    return Outcome(f"two `vm migrate {vm}` at once (to {a}, to {b}): exits {codes}, one copy "
                   f"on {node}" + (f"; refused: {refused[0][:80]}" if refused else ""), ok, {})


def _scenarios() -> list[Scenario]:
    out = [
        Scenario("node-crash", "SIGKILL every process of a node running VMs (not the "
                 "manager's)", "its VMs run again on a survivor, once", sc_node_crash, ci=True),
        Scenario("manager-node-crash", "SIGKILL every process of the manager's node",
                 "a new manager; its VMs run again, once", sc_manager_node_crash),
        Scenario("heartbeat-down", "the Heartbeat network down 8 s",
                 "heartbeats move to the next network; no failover", sc_heartbeat_down,
                 ci=True),
        Scenario("blips", "three 0.8 s blips of one node's Heartbeat link",
                 "below the threshold: no failover", sc_blips, ci=True),
        Scenario("isolation", "every cluster link of a node running VMs down",
                 "it stops its VMs; the majority runs them, once", sc_isolation),
        Scenario("one-way-partition", "a host with VMs can no longer send (it still "
                 "hears the others)", "it stops its VMs before the others start them",
                 sc_one_way_partition, ci=True),
        Scenario("split-2-2", "four hosts split two and two (examples/lab4.toml)",
                 "neither half runs VMs while split; healed, every VM runs again, once",
                 sc_split_2_2, hosts=4),
        Scenario("clock-jump", "the manager's host steps its wall clock an hour ahead, then "
                 "back (its Python processes' clock)", "no failover, fencing or move; a "
                 "crash meanwhile is handled as ever", sc_clock_jump),
        Scenario("etcd-leader-kill", "SIGKILL the etcd raft leader's member",
                 "a new raft leader; writes resume; no failover", sc_etcd_leader_kill,
                 ci=True),
        Scenario("etcd-leader-freeze", "the etcd raft leader's member frozen 10 s",
                 "a new raft leader; writes resume; no failover", sc_etcd_leader_freeze),
        Scenario("etcd-leader-blackhole", "the etcd raft leader cut off from its peers 10 s "
                 "(its host otherwise fine)", "a new raft leader; writes resume; no failover",
                 sc_etcd_leader_blackhole),
        Scenario("etcd-quorum-loss", "two of three etcd members frozen 10 s",
                 "no VM stopped or doubled; writes resume after", sc_etcd_quorum_loss),
        Scenario("manager-freeze", "the manager frozen 8 s (its lease is 3 s)",
                 "another manager is elected; nothing doubled", sc_manager_freeze),
        Scenario("agent-kill", "SIGKILL a host's agent", "restarted; its VMs untouched; "
                 "no failover", sc_agent_kill, ci=True),
        Scenario("agent-freeze", "a host's agent frozen 25 s (its heartbeats go on)",
                 "status says unknown (last report and its age), not down; no failover",
                 sc_agent_freeze),
        Scenario("vmclusterd-kill", "SIGKILL a host's vmclusterd, its QEMUs running",
                 "its watchdog fences it before its VMs run elsewhere", sc_vmclusterd_kill),
        Scenario("vmclusterd-freeze", "a host's vmclusterd frozen 15 s",
                 "its watchdog fences it before its VMs run elsewhere", sc_vmclusterd_freeze),
        Scenario("daemon-restart-load", "systemctl-restart of vmclusterd under full CPU load",
                 "no VM stops or moves; no failover", sc_daemon_restart_under_load, ci=True),
        Scenario("migration-net-cut", "the Migration network down 5 s mid-copy",
                 "one copy, where the store says", sc_migration_net_cut, ci=True),
        Scenario("migration-net-cut-40", "the Migration network down 40 s mid-copy",
                 "given up on it, done over the next network; one copy",
                 sc_migration_net_cut_long),
        Scenario("postcopy-source-kill", "the source QEMU killed mid-post-copy",
                 "the running copy is lost: started again from its disk where it is "
                 "placed, once",
                 sc_postcopy_source_kill),
        Scenario("postcopy-source-kill-running", "the source QEMU killed once the guest "
                 "runs on the target, mid-post-copy", "lost: started again from its disk "
                 "on the target, once", sc_postcopy_source_kill_running),
        Scenario("postcopy-net-cut", "the Migration network cut 6 s at the target "
                 "once the guest runs there, mid-post-copy",
                 "paused at both ends, resumed over the next network; the guest whole",
                 sc_postcopy_net_cut),
        Scenario("cancel", "vm migrate --cancel mid-copy",
                 "cancelled: the VM stays on its source, once", sc_cancel, ci=True),
        Scenario("over-budget", "a VM dirtying faster than a 20 ms budget can copy",
                 "throttled, then given up: it stays on its source, never paused long",
                 sc_over_budget),
        Scenario("stopped-stays-stopped", "a VM stopped by the operator, then its node "
                 "crashes", "failover leaves it stopped; `vm start` starts it",
                 sc_stopped_stays_stopped),
        Scenario("cold-start", "every host crashed at once (a power cut), then booted",
                 "every VM whose desired state is running starts again, once",
                 sc_cold_start),
        Scenario("backup-restore", "cluster backup, a change, every host restored",
                 "the store is the backup's again; its running VMs run, once",
                 sc_backup_restore),
        Scenario("majority-lost", "two of three hosts gone for good (the store has no "
                 "quorum)", "the survivor stops its VMs; `cluster recover --forget` the two: "
                 "every VM runs on it, once", sc_majority_lost),
        Scenario("storage-double-fault", "a host's storage path lost, then its CSV network",
                 "its disks move to the next CSV network; the guest stalls at most a few s",
                 sc_storage_double_fault),
        Scenario("storage-triple-fault", "as storage-double-fault, then the host its "
                 "disks go through crashes", "its disks go through another host; a few s "
                 "of stall, nothing lost", sc_storage_triple_fault),
        Scenario("crash-during-drain", "a drain, and its copy's target crashes mid-copy",
                 "every VM runs once; the drain says what it moved and what failed",
                 sc_crash_during_drain),
        Scenario("migration-during-drain", "a drain, and `vm migrate` of one of its VMs",
                 "one of the two moves it; every VM runs once", sc_migration_during_drain),
        Scenario("two-migrations", "two migrations of one VM at once",
                 "one runs, one is refused; one copy", sc_two_migrations),
    ]
    for n, (who, sig, phase) in enumerate(MIG_CELLS):
        expected = ("cancelled, or finished by the cluster; one copy"
                    if (who, sig) == ("cli", "INT") else
                    "the cluster finishes it; one copy" if who == "cli" else
                    "one copy, where the store places it; the CLI says where")
        out.append(Scenario(f"{who}-{sig.lower()}-{phase}",
                            f"{_who(who)} of a migration gets SIG{sig} at {phase}",
                            expected, _cell(who, sig, phase),
                            ci=(who, sig, phase) in MIG_CI, cell=n))
    return out


SCENARIOS: tuple[Scenario, ...] = tuple(_scenarios())


def pick(names: Sequence[str] = (), ci_only: bool = False,
         part: tuple[int, int] = (0, 1), hosts: int | None = None) -> list[Scenario]:
    """The scenarios named (all, or the CI subset); an unknown name is a usage error.
    ``part`` ``(k, n)``: of the migration fault matrix's cells not named, only every
    n-th from the k-th (a campaign of n passes runs each cell in one of them). ``hosts``:
    the lab's host count; a scenario that needs another lab is left out (named: an error)."""
    by_name = {s.name: s for s in SCENARIOS}
    unknown = [n for n in names if n not in by_name]
    if unknown:
        raise UsageError(f"no scenario {unknown[0]!r}; scenarios: {', '.join(by_name)}")
    k, n = part
    if not 0 <= k < n:
        raise UsageError(f"part {k + 1} of {n}: the part is 1 to {n}")
    wrong = [by_name[n] for n in names if not _fits(by_name[n], hosts)]
    if wrong:
        raise UsageError(f"scenario {wrong[0].name} needs a lab of {wrong[0].hosts} hosts "
                         f"(this one has {hosts}): examples/lab{wrong[0].hosts}.toml")
    chosen = [by_name[n] for n in names] if names else [
        s for s in SCENARIOS if (s.cell is None or s.cell % n == k) and _fits(s, hosts)]
    return [s for s in chosen if s.ci] if ci_only else chosen


def _fits(sc: Scenario, hosts: int | None) -> bool:
    return sc.hosts is None or hosts is None or sc.hosts == hosts


def run_campaign(sub: LabSubstrate, store: LabStore, scenarios: Sequence[Scenario],
                 say: Callable[[str], None] = lambda _m: None) -> list[Row]:
    """Every scenario in turn with one sampler watching throughout."""
    with RunSampler(sub.layout, [n.name for n in sub.spec.nodes], period_s=SAMPLE_S) as sampler:
        c = Campaign(sub, store, sampler, say)
        rows = []
        for sc in scenarios:
            row = c.run(sc)
            say(f"  {'pass' if row.passed else 'FAIL'}: {row.observed} (double runs "
                f"{row.double_runs}, acknowledged writes lost {row.lost_writes})")
            rows.append(row)
        return rows


def table(rows: Sequence[Row]) -> list[str]:
    """The campaign as lines: one row per scenario."""
    out = [f"{'scenario':<30}{'pass':<6}{'doubles':>8}{'lost':>6}{'s':>7}  observed / figures"]
    for r in rows:
        out.append(f"{r.scenario:<30}{'yes' if r.passed else 'NO':<6}{r.double_runs:>8}"
                   f"{r.lost_writes:>6}{r.seconds:>7.1f}  {r.observed}")
        out.append(f"{'':<57}{r.figure()}")
    passed = sum(r.passed for r in rows)
    out.append(f"{passed}/{len(rows)} scenarios passed; double runs "
               f"{sum(r.double_runs for r in rows)}, acknowledged writes lost "
               f"{sum(r.lost_writes for r in rows)}")
    return out
