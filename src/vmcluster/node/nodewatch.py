"""A node's watch: heartbeats, its report to the store, and the isolation rule.

Runs as ``python -m vmcluster.node.nodewatch --config vmclusterd.toml``, the
``heartbeats`` part of the host's :mod:`vmcluster.node.daemon`. It reads the
cluster's spec from the store (waiting until it is there) and nothing from the
lab, and it

* runs the node's :class:`~vmcluster.heartbeat.daemon.HeartbeatDaemon` on every
  cluster (role >= 1) network, with the spec's delay and threshold;
* writes the node's report (routes, the VMs its agent runs, isolated or not)
  to ``reports/<node>`` every ``report_s`` and appends route changes to the
  event log; a store that does not answer (this node is cut off) is skipped,
  never waited on; and, every ``load.PUBLISH_S``, its VMs' measured CPU to
  ``loads/<node>`` (what consolidation plans are made of);
* enforces **isolation**: once this node reaches too few nodes for a quorum
  (it lost every cluster network), it stops every VM its agent runs, within
  one tick, and keeps stopping any that appears while it stays cut off. The
  majority waits ``restart_not_before`` (window + delay + stop budget) before
  restarting them, so a VM never runs on both sides. With a witness: a node that
  the manager declared down (its record in the store says ``failed``) stops its VMs
  though it still hears the witness (a split: the other side keeps them), and one
  that holds quorum only with the witness's vote stops them once it has not reached
  the store for ``STORE_GRACE_S`` (:func:`~vmcluster.policy.failover.stop_reason`);
* touches ``<run_dir>/heartbeats.alive`` every tick while its heartbeats go out on
  time: the daemon pets the host's watchdog only then;
* follows the spec in the store (every ``SPEC_CHECK_S``): when hosts were forgotten
  (``cluster recover``) its heartbeats go to the hosts left and the quorum is counted
  over them; a spec that no longer names this host cuts it off (it stops its VMs).

On the **witness** (``role = "witness"``) it runs the heartbeats and writes the report
(what it hears is the tie-breaker's view), and nothing else: no agent, no VM, no rule.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import queue
import signal
import sys
import threading
import time
from types import FrameType
from typing import Any

from vmcluster.control.events import Event, NodeIsolated, RouteDown, RouteUp
from vmcluster.control.manager import report_key
from vmcluster.errors import VmclusterError
from vmcluster.heartbeat.auth import load_key
from vmcluster.heartbeat.daemon import HeartbeatDaemon
from vmcluster.heartbeat.detector import (
    HeartbeatParams,
    RouteChange,
    heartbeat_plan,
    peers_down,
    view_to_json,
)
from vmcluster.model import ClusterSpec
from vmcluster.node import load
from vmcluster.node.bootstrap import promote_if_learner
from vmcluster.node.config import NodeConfig, load_config
from vmcluster.policy.failover import stop_reason
from vmcluster.store.state import declared_failed
from vmcluster.substrate.clock import MonotonicClock
from vmcluster.substrate.host.client import LocalAgent, speak_as

__all__ = ["HEARTBEAT_PORT", "MIGRATED_OUT", "main", "node_endpoints"]

HEARTBEAT_PORT = 3343
#: How often the watch looks for a changed spec in the store (see NodeWatch.follow_spec).
SPEC_CHECK_S = 2.0
#: QEMU run states of a copy that migrated out: paused after the copy, not the VM.
MIGRATED_OUT = ("postmigrate", "finish-migrate")


def node_endpoints(endpoints: list[str], mine: list[str]) -> list[str]:
    """``endpoints`` with this node's own member first (it answers even when peers are slow)."""
    return [e for e in endpoints if e in mine] + [e for e in endpoints if e not in mine]


class NodeWatch:
    def __init__(self, cfg: NodeConfig, report_s: float = 0.5) -> None:
        self.cfg, self.node, self.report_s = cfg, cfg.node, report_s
        node = cfg.node
        # The host's own member first: it answers even when the peers are slow.
        self.state = cfg.store(retry_s=0.5)
        self.spec = self.state.wait_spec(say=lambda m: print(json.dumps({"msg": m}),
                                                             flush=True))
        self.witness = cfg.role == "witness"  # heartbeats and a report, no VM
        self.agent = LocalAgent(node, cfg.agent_socket)  # its own host's agent
        self.events: queue.Queue[Event] = queue.Queue()
        self.changed = threading.Event()
        self.isolated = False
        self.vms: list[str] = []
        self.migrated: list[str] = []  # copies that migrated out (see enforce)
        self.incoming: list[str] = []  # migration targets
        self.listed_mono: float | None = None  # when the agent last answered a list
        self.cpu: dict[str, float] = {}  # cores busy, by VM, as the agent last measured
        self.cpu_source: dict[str, str] = {}  # how each was measured (node.load)
        self.clock = MonotonicClock()
        self._listed_at = -1e9
        self.vms_at: float | None = None  # wall time the agent last listed this host's VMs
        self.stored_at = self.clock.now()  # the last report the store took
        self.declared_down = False  # the manager's verdict on this node, as last read
        # A host's API part promotes its etcd member once it caught up; a witness has no
        # API, so its watch does (a witness that does not vote is no witness).
        self.voter = cfg.member is None or not self.witness
        self.key = load_key(cfg.heartbeat_key)
        # The text the spec was built from is not kept: the first look (SPEC_CHECK_S in)
        # reads it and builds the spec again, so a change made as this watch started is
        # not missed.
        self.spec_text: str | None = None
        self.removed = False  # the spec no longer names this host (it was forgotten)
        self._spec_checked = self.clock.now()
        self.hb = self._heartbeats(self.spec)

    def _heartbeats(self, spec: ClusterSpec) -> HeartbeatDaemon:
        binds, targets = heartbeat_plan(spec, self.node, self.cfg.heartbeat_port)
        return HeartbeatDaemon(self.cfg.cluster, self.node, binds, targets,
                               HeartbeatParams.from_settings(spec.cluster), MonotonicClock(),
                               self._on_change, key=self.key)

    def follow_spec(self) -> None:
        """The spec in the store changed (hosts forgotten by a recovery, say): heartbeats
        go to the hosts it names now, and the quorum is counted over them. A spec that no
        longer names this host leaves it cut off: it stops its VMs."""
        text = self.state.spec_text()
        if text is None or text == self.spec_text:
            return
        spec = self.state.spec(text)
        self.spec_text = text
        if self.node not in {h.name for h in spec.hosts}:
            self.removed = True
            print(json.dumps({"msg": f"the cluster's spec no longer names {self.node}: it "
                              "was forgotten; stopping its VMs", "at": time.time()}), flush=True)
            return
        old = self.hb
        if heartbeat_plan(spec, self.node, self.cfg.heartbeat_port) != (
                old.bindings, old.targets) or HeartbeatParams.from_settings(
                spec.cluster) != old.params:
            old.stop()
            self.hb = self._heartbeats(spec).start()
            print(json.dumps({"msg": "the spec changed: heartbeats to "
                              f"{', '.join(sorted({t.peer for t in self.hb.targets})) or 'nobody'}",
                              "at": time.time()}), flush=True)
        self.spec = spec

    def alive_loop(self, done: threading.Event, every_s: float = 0.2) -> None:
        """Say (to the daemon) that this host's heartbeats go out. A thread of its own:
        the isolation rule may wait on the agent, and that must not look like silence."""
        while not done.wait(every_s):
            if self.hb.sending():
                self.cfg.heartbeats_alive.touch()

    def _on_change(self, ch: RouteChange) -> None:
        cls = RouteUp if ch.up else RouteDown
        self.events.put(cls(time.time(), self.node, ch.peer, ch.network))
        self.changed.set()  # report now: the manager's detection time waits on this
        print(json.dumps({"route": f"{ch.peer}/{ch.network}", "up": ch.up, "at": time.time()}),
              flush=True)

    def _list(self) -> list[dict[str, Any]] | None:
        """What the agent runs; None when it does not answer (restarting, say)."""
        try:
            return list(self.agent.call("list", timeout_s=5)["vms"])
        except VmclusterError:
            return None

    def stop_reason(self) -> str | None:
        """Why this node must stop its VMs now (see module docstring), or None."""
        if self.removed:
            return f"the cluster's spec no longer names {self.node}"
        states = self.hb.states()
        if not states:
            return None  # a cluster of one: nobody to lose
        down = peers_down(states)
        w = self.spec.cluster.witness
        total = len(self.spec.nodes)
        reachable = total - len(down - {w})
        sees_witness = w is not None and w not in down and any(p == w for p, _ in states)
        return stop_reason(total, reachable, self.spec.cluster, sees_witness,
                           self.clock.now() - self.stored_at, self.declared_down)

    def enforce(self) -> None:
        """The isolation rule (see module docstring); called every tick."""
        if self.witness:
            return
        why = self.stop_reason()
        cut_off = why is not None
        now = self.clock.now()
        if not cut_off and now - self._listed_at < self.report_s:
            self.isolated = cut_off
            return
        self._listed_at = now
        got = self._list()
        if got is None and not cut_off:
            return  # an agent that does not answer has not stopped its VMs: report them still
        listed = got or []
        # A copy that migrated out (paused after the copy, the switchover done or not) is
        # not the running VM: it must not pull the VM's placement back to this host.
        self.vms = sorted(v["vm"] for v in listed if v.get("role") == "run"
                          and v.get("status") not in MIGRATED_OUT)
        # ... as is a post-copy source once its last page has followed (while it serves
        # them it is neither: powering it off would lose the VM).
        self.migrated = sorted(v["vm"] for v in listed if (
            (v.get("role") == "run" and v.get("status") in MIGRATED_OUT)
            or (v.get("role") == "serving" and v.get("status") == "postmigrate")))
        self.incoming = sorted(v["vm"] for v in listed if v.get("role") == "incoming")
        if got is not None:
            self.listed_mono = now
        self.vms_at = time.time() if got is not None else self.vms_at
        self.cpu = {v["vm"]: float(v["cpu"]) for v in listed
                    if v.get("role") == "run" and isinstance(v.get("cpu"), int | float)}
        self.cpu_source = {v["vm"]: str(v.get("cpu_source", "process")) for v in listed
                           if v["vm"] in self.cpu}
        if cut_off and listed:
            stopped = []
            for v in listed:
                try:
                    self.agent.call("stop", timeout_s=20, vm=v["vm"])
                    stopped.append(v["vm"])
                except VmclusterError as exc:
                    print(json.dumps({"error": f"stopping {v['vm']}: {exc}"}), flush=True)
            self.vms = []
            self.events.put(NodeIsolated(time.time(), self.node, tuple(stopped)))
            print(json.dumps({"isolated": True, "why": why, "stopped": stopped,
                              "at": time.time()}), flush=True)
        self.isolated = cut_off

    def last_words(self) -> None:
        """Shut down on purpose (SIGTERM: powered off): say so, so it is not a failure."""
        body = {"routes": view_to_json(self.hb.states()), "vms": self.vms,
                "isolated": self.isolated, "leaving": True}
        # Cut off, it cannot say so; then it is treated as failed, which is the safe side.
        with contextlib.suppress(VmclusterError):
            self.state.client.put(report_key(self.state, self.node),
                                  json.dumps(body, sort_keys=True).encode())

    def report_loop(self, done: threading.Event) -> None:
        """Write the report and pending events; the store being away only skips a round."""
        pending: list[Event] = []
        loads_at = -1e9
        while not done.is_set():
            self.changed.wait(self.report_s)
            self.changed.clear()
            while not self.events.empty():
                pending.append(self.events.get())
            listed = self.listed_mono
            body = {"routes": view_to_json(self.hb.states()), "vms": self.vms,
                    "migrated": self.migrated, "incoming": self.incoming,
                    "vms_at": self.vms_at, "isolated": self.isolated,
                    "vms_age_s": None if listed is None else
                    round(self.clock.now() - listed, 2)}
            try:
                self.state.client.put(report_key(self.state, self.node),
                                      json.dumps(body, sort_keys=True).encode())
                self.stored_at = self.clock.now()
                if not self.voter:
                    self.voter = promote_if_learner(self.cfg, self.state)
                    if self.voter:
                        print(json.dumps({"etcd": "voter", "at": time.time()}), flush=True)
                if self.spec.witness is not None and not self.witness:
                    # The manager's verdict: a node declared down while it still reaches
                    # the store (a split the witness sees both sides of) stops its VMs.
                    self.declared_down = declared_failed(self.state.node_record(self.node))
                while pending and not self.changed.is_set():
                    self.state.append_event(pending[0].to_json())
                    pending.pop(0)
                if self.clock.now() - self._spec_checked >= SPEC_CHECK_S:
                    self._spec_checked = self.clock.now()
                    self.follow_spec()
            except VmclusterError:
                continue
            # After the report (liveness first), and tried once per PUBLISH_S even when it
            # fails: a slow store must not cost every round a second timeout.
            if self.clock.now() - loads_at >= load.PUBLISH_S and not self.isolated \
                    and not self.witness:
                loads_at = self.clock.now()
                with contextlib.suppress(VmclusterError):
                    load.publish(self.state, self.node, self.cpu, self.cpu_source)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m vmcluster.node.nodewatch")
    ap.add_argument("--config", required=True, help="the host's vmclusterd.toml")
    ap.add_argument("--tick-s", type=float, default=0.1)
    args = ap.parse_args(argv)
    cfg = load_config(args.config)
    speak_as(cfg.node)  # this host's certificate, for the agents it calls
    watch = NodeWatch(cfg)
    done = threading.Event()

    def on_signal(_sig: int, _frame: FrameType | None) -> None:
        done.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    reporter = threading.Thread(target=watch.report_loop, args=(done,), daemon=True)
    watch.hb.start()
    try:
        reporter.start()
        print(json.dumps({"started": cfg.node, "at": time.time()}), flush=True)
        threading.Thread(target=watch.alive_loop, args=(done,), daemon=True).start()
        while not done.wait(args.tick_s):
            watch.enforce()
    finally:
        watch.hb.stop()  # the one running now: a changed spec may have replaced the first
    reporter.join(timeout=5)
    watch.last_words()
    return 0


if __name__ == "__main__":
    sys.exit(main())
