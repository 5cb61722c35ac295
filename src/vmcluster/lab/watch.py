"""What a fault campaign, a benchmark or a lab test watches while it breaks things.

The cluster's event log (through the lab's store, from the client namespace): the
events after a mark, waiting for one; the elected manager and the etcd raft leader;
a settled lab (every VM runs once, every host heard and its agent answering); and
every VM's disk checked against what its guest acknowledged.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from vmcluster.csv.checkdisk import DiskCheck, check_vm_disk
from vmcluster.errors import LabError, VmclusterError
from vmcluster.lab.sampler import RunSampler
from vmcluster.lab.services import LabStore, lab_store
from vmcluster.model import ClusterSpec
from vmcluster.store.election import Leadership, current_leader
from vmcluster.store.etcd import EtcdClient
from vmcluster.substrate.host.client import AgentClient
from vmcluster.substrate.host.layout import LabLayout

__all__ = ["FAILOVER_KINDS", "Mark", "check_disks", "etcd_leader", "events_after", "last_seq",
           "manager", "settle", "silent_hosts", "wait_event"]

#: Events that say the cluster failed something over: none may follow a harmless fault.
FAILOVER_KINDS = ("node_down", "vm_restarted", "node_isolated")


def events_after(store: LabStore, seq: int) -> list[dict[str, Any]]:
    """The cluster's events after sequence number ``seq``, oldest first."""
    got, _ = store.call(store.state.events, seq)
    return [rec for _, rec in got]


def last_seq(store: LabStore) -> int:
    got, _ = store.call(store.state.events)
    return int(got[-1][0]) if got else 0


@dataclass(frozen=True)
class Mark:
    """A moment to measure from: wall clock (events carry ``at``), monotonic (the
    sampler's), the event log's position and the double runs seen so far."""

    wall: float
    mono: float
    seq: int
    doubles: int

    @classmethod
    def now(cls, store: LabStore, sampler: RunSampler) -> Mark:
        seq = last_seq(store)
        return cls(time.time(), time.monotonic(), seq, len(sampler.doubles))

    def after(self, at: float | None) -> float | None:
        """Seconds from this mark to the wall-clock time ``at`` (None stays None)."""
        return None if at is None else round(at - self.wall, 3)


def wait_event(store: LabStore, after: int, timeout_s: float,
               **match: Any) -> dict[str, Any] | None:
    """The first event after ``after`` whose fields equal ``match``; None after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while True:
        for rec in events_after(store, after):
            if all(rec.get(k) == v for k, v in match.items()):
                return rec
        if time.monotonic() >= deadline:
            return None
        time.sleep(0.2)


def manager(store: LabStore) -> Leadership | None:
    """The elected manager now (None between terms)."""
    got: Leadership | None = store.call(current_leader, store.state.client, store.state.cluster)
    return got


def etcd_leader(store: LabStore, spec: ClusterSpec) -> str | None:
    """The host whose etcd member leads the raft group now (None if no member says so)."""
    client = store.state.client
    if not isinstance(client, EtcdClient):
        return None
    for url in client.endpoints:
        try:
            st = store.call(client.status, url)
        except (OSError, LabError):
            continue
        if st.get("leader") == st.get("header", {}).get("member_id"):
            return next((n.name for n in spec.hosts
                         if any(f"//{a}:" in url for a in map(str, n.interfaces.values()))), None)
    return None


def settle(layout: LabLayout, spec: ClusterSpec, store: LabStore, sampler: RunSampler,
           timeout_s: float = 90.0) -> dict[str, str]:
    """Wait until every spec VM runs exactly once, every node is heard (state up) and
    every agent answers; returns vm -> node. A lab that does not settle is an error."""
    vms = [v.name for v in spec.vms]
    nodes = [n.name for n in spec.nodes]
    t0 = time.monotonic()
    if sampler.wait(vms, since=t0, timeout_s=timeout_s) is None:
        s = sampler.latest()
        raise LabError(f"the lab did not settle in {timeout_s:.0f} s: VMs running "
                       f"{dict(s.running) if s else {}}")
    deadline = time.monotonic() + timeout_s
    while True:
        states = store.call(store.state.node_states)
        s = sampler.latest()
        once = s is not None and all(len(s.running.get(vm, ())) == 1 for vm in vms)
        if once and all(states.get(n, {}).get("state") == "up" for n in nodes) and all(
                AgentClient(layout, n).alive() for n in nodes):
            break
        if time.monotonic() > deadline:
            raise LabError(f"the lab did not settle in {timeout_s:.0f} s: nodes "
                           f"{ {n: states.get(n, {}).get('state') for n in nodes} }, VMs "
                           f"running {dict(s.running) if s else {}}")
        time.sleep(0.2)
    s = sampler.latest()
    assert s is not None
    return {vm: s.running[vm][0] for vm in vms if vm in s.running}


def check_disks(layout: LabLayout, spec: ClusterSpec,
                vms: Iterable[str] | None = None) -> list[DiskCheck]:
    """Every VM's disk on a cluster shared volume against the writes its guest
    acknowledged (serial logs of every node): one check per such VM."""
    names = set(vms) if vms is not None else None
    out = []
    for vm in spec.vms:
        if vm.volume is None or (names is not None and vm.name not in names):
            continue
        logs = [layout.serial_log(vm.name, n.name) for n in spec.nodes]
        out.append(check_vm_disk(layout.lun(vm.volume), vm.volume, vm.name, logs))
    return out


def silent_hosts(layout: LabLayout, nodes: Iterable[str]) -> dict[str, dict[str, Any]]:
    """What the store says of hosts whose agent does not answer: for each one its peers
    still hear (node state up), the VMs it last reported running and how long ago its
    agent listed them. A host absent from the result is down as far as anyone knows (or
    the store is unreachable): nothing is made up for it."""
    names = list(nodes)
    if not names:
        return {}
    out: dict[str, dict[str, Any]] = {}
    try:
        with lab_store(layout) as store:
            states = store.call(store.state.node_states)
            for node in names:
                if states.get(node, {}).get("state") != "up":
                    continue
                kv = store.call(store.state.client.get, store.state.key("reports", node))
                report = json.loads(kv.value) if kv is not None else {}
                at = report.get("vms_at")
                out[node] = {"vms": list(report.get("vms", [])),
                             "age_s": None if at is None else round(time.time() - at, 1)}
    except (VmclusterError, OSError, ValueError):
        return {}
    return out
