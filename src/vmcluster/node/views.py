"""What the API shows: the cluster's nodes, networks, volumes, VMs and migrations, built
from one :class:`~vmcluster.store.state.ClusterState` (the API's cached one) by the same
policies the manager decides with, so the dashboard shows what the cluster does.

A node's report counts as fresh while this host saw it change within
``REPORT_FRESH_S`` (the reports are rewritten about twice a second), as the manager
judges freshness by its own clock.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from typing import Any

from vmcluster.control.consolidate import Observation, recorded
from vmcluster.control.liveness import Assessment, NodeReport, assess
from vmcluster.control.manager import report_key
from vmcluster.csv.coordinator import StoreBook
from vmcluster.csv.paths import access_modes
from vmcluster.model import ClusterSpec
from vmcluster.node import load
from vmcluster.policy.networks import routes
from vmcluster.store import intents, vms
from vmcluster.store.state import ClusterState, Migration, Placement

__all__ = ["REPORT_FRESH_S", "assessment", "consolidation", "migrations", "networks", "nodes",
           "vm_get", "vm_json", "vm_list", "volumes", "witness"]

REPORT_FRESH_S = 3.0
Age = Callable[[str], "float | None"]  # seconds since a key changed, None: never seen


def assessment(state: ClusterState, spec: ClusterSpec, age: Age) -> Assessment:
    """The manager's assessment of the nodes' reports, as this host reads them now."""
    kvs, _ = state.client.get_prefix(report_key(state))
    reports = {}
    for kv in kvs:
        node = kv.key.rsplit("/", 1)[1]
        seen = age(kv.key)
        reports[node] = NodeReport.from_json(node, kv.json(),
                                             fresh=seen is not None and seen <= REPORT_FRESH_S)
    return assess(spec, reports)


def vm_json(rec: vms.VmRecord, placement: Placement | None,
            migrating: dict[str, Any] | None = None,
            node_record: Mapping[str, Any] | None = None,
            now: float | None = None, load: Mapping[str, Any] | None = None
            ) -> dict[str, Any]:
    """A VM as the API shows it: its definition, what is wanted of it (``desired``), and
    what is (``state``: running, paused, migrating, stopped; fence: its node was declared
    down and the manager waits until the isolated side has stopped it (``restart_at``);
    recovery: the manager restarts it elsewhere; error: its starts failed max_restart
    times on a node and max_relocate times elsewhere; ``node``), and its measured
    ``load`` while it runs (cores busy, how its host measured it: node.load)."""
    node = placement.node if placement else None
    state = placement.state if placement and (node or placement.state == "error") \
        else "stopped"
    restart_at = None
    if migrating is not None:
        state = "migrating"
    elif node is not None and node_record is not None and node_record.get("state") == "down":
        restart_at = node_record.get("restart_at")
        fenced = restart_at is not None and float(restart_at) > (
            time.time() if now is None else now)
        state = "fence" if fenced else "recovery"
    return {"name": rec.name, "definition": rec.definition, "desired": rec.desired,
            "machine": rec.machine, "node": node, "state": state, "migration": migrating,
            "load": dict(load) if load is not None and node is not None else None,
            **({"restart_at": restart_at} if state == "fence" else {})}


def _migration_json(m: Migration) -> dict[str, Any]:
    return {"source": m.source, "target": m.target, "network": m.network, "id": m.id}


def _in_flight(state: ClusterState) -> dict[str, dict[str, Any]]:
    return {vm: _migration_json(m) for vm, m in state.migrations().items()}


def vm_get(state: ClusterState, name: str) -> dict[str, Any] | None:
    """One VM as :func:`vm_list` shows it; None when no such VM is defined."""
    rec = vms.get(state, name)
    if rec is None:
        return None
    placed = state.placement(name)
    flying = state.migrations().get(name)
    return vm_json(rec, placed, None if flying is None else _migration_json(flying),
                   state.node_states().get(placed.node or ""),
                   load=load.vm_loads(state).get(name))


def vm_list(state: ClusterState) -> list[dict[str, Any]]:
    placements, flying = state.placements(), _in_flight(state)
    nodes = state.node_states()
    loads = load.vm_loads(state)
    now = time.time()
    out = []
    for n, r in vms.records(state).items():
        p = placements.get(n)
        out.append(vm_json(r, p, flying.get(n), nodes.get(p.node) if p and p.node else None,
                           now, loads.get(n)))
    return out


def nodes(state: ClusterState, spec: ClusterSpec, seen: Assessment,
          age: Age) -> list[dict[str, Any]]:
    """Every node: its state, resources, the VMs placed on it, its daemon's record and its
    report (fresh or not, isolated or not)."""
    states = state.node_states()
    daemons = state.daemons()
    placed: dict[str, list[str]] = {}
    for vm, p in state.placements().items():
        if p.node:
            placed.setdefault(p.node, []).append(vm)
    defs = {r.name: r.definition for r in vms.records(state).values()}
    out = []
    for n in spec.nodes:
        here = sorted(placed.get(n.name, []))
        rep_age = age(report_key(state, n.name))
        d = daemons.get(n.name, {})
        out.append({
            "name": n.name, "state": states.get(n.name, {}).get("state", "unknown"),
            "cores": n.cores, "memory_mib": n.memory_mib, "interfaces": list(n.interfaces),
            "vms": here,
            "memory_used_mib": sum(int(defs.get(v, {}).get("memory_mib", 0)) for v in here),
            "vcpus_used": sum(int(defs.get(v, {}).get("vcpus", 1)) for v in here),
            "report": {"fresh": rep_age is not None and rep_age <= REPORT_FRESH_S,
                       "age_s": None if rep_age is None else round(rep_age, 2),
                       "dead": n.name in seen.dead, "healthy": n.name in seen.healthy},
            "api_url": d.get("api_url"), "version": d.get("version"),
            "qemu_version": d.get("qemu_version"), "parts": d.get("parts", []),
            # how it is powered on again (None: vmcluster cannot)
            "power_driver": None if n.power is None else n.power.driver,
        })
    return out


def witness(state: ClusterState, spec: ClusterSpec, age: Age) -> dict[str, Any] | None:
    """The spec's witness: whether its report is fresh, and whom it hears (by its
    heartbeats); None when the cluster has none."""
    w = spec.witness
    if w is None:
        return None
    key = report_key(state, w.name)
    rep_age = age(key)
    kv = state.client.get(key)
    heard: dict[str, list[str]] = {}
    if kv is not None:
        for (peer, net), up in NodeReport.from_json(w.name, kv.json()).routes.items():
            if up:
                heard.setdefault(peer, []).append(net)
    fresh = rep_age is not None and rep_age <= REPORT_FRESH_S
    return {"name": w.name, "interfaces": list(w.interfaces),
            "report": {"fresh": fresh, "age_s": None if rep_age is None else round(rep_age, 2)},
            "hears": {p: sorted(nets) for p, nets in sorted(heard.items())} if fresh else {}}


def networks(state: ClusterState, spec: ClusterSpec, seen: Assessment) -> dict[str, Any]:
    """Each network's role, metric (and whether automatic), state and what it carries now,
    cluster-wide and per node pair, from the nodes' heartbeat views."""
    r = routes(spec, seen.health)
    first = {vm: order[0] for vm, order in r.live_migration.items() if order}
    out = []
    for props, net_state in r.networks:
        name = props.name
        movers = sorted(vm for vm, net in first.items() if net == name)
        carries = [c for c, on in (("heartbeat", r.cluster == name), ("csv", r.csv == name),
                                   ("client", name in r.client), ("live_migration", movers))
                   if on]
        spec_net = spec.network(name)
        out.append({"name": name, "role": int(props.role), "metric": props.metric,
                    "auto_metric": props.auto_metric, "state": net_state,
                    "subnet": str(spec_net.subnet),
                    "gateway": str(spec_net.gateway) if spec_net.gateway else None,
                    "bandwidth_mbps": spec_net.bandwidth_mbps, "carries": carries,
                    "live_migration_vms": movers,
                    "down": sorted(node for (nw, node) in seen.health.down if nw == name)})
    pairs = r.to_json()["pairs"]
    return {"networks": out, "cluster": r.cluster, "csv": r.csv, "client": list(r.client),
            "pairs": pairs}


def volumes(state: ClusterState, spec: ClusterSpec) -> list[dict[str, Any]]:
    """Each shared volume: its coordinator (as recorded) and every node's access, direct or
    redirected (via which node, over which network), without electing anyone: a read."""
    book = StoreBook(state)
    view = book.view(spec)
    defs = vms.records(state)
    out = []
    for vol in spec.volumes:
        coord = book.recorded(vol.name)
        modes = access_modes(spec, view.health, view.up, view.has_path(vol.network), coord,
                             vol.network)
        out.append({"name": vol.name, "size_gib": vol.size_gib, "network": vol.network,
                    "coordinator": coord,
                    "vms": sorted(n for n, r in defs.items()
                                  if r.definition.get("volume") == vol.name),
                    "nodes": [{**a.to_json(), "describe": a.describe()} for a in modes.values()]})
    return out


def migrations(state: ClusterState, limit: int = 50) -> list[dict[str, Any]]:
    """Migrations in flight and the latest migration intents, newest first, each with its
    progress (pass by pass) and result."""
    flying = _in_flight(state)
    out = []
    for it in reversed(intents.every(state)):
        if it.kind != "migrate":
            continue
        vm = str(it.args.get("vm"))
        out.append({"id": it.id, "vm": vm, "to": it.args.get("to"),
                    "mode": it.args.get("mode", "live"), "state": it.state,
                    "by": it.record.get("by"), "at": it.record.get("at"),
                    "in_flight": flying.get(vm) if it.state in ("running", "cancelling")
                    else None,
                    "progress": it.record.get("progress"), "result": it.record.get("result"),
                    "error": it.record.get("error")})
        if len(out) >= limit:
            break
    return out


def consolidation(state: ClusterState, spec: ClusterSpec, seen: Assessment,
                  busy: Mapping[str, float]) -> Observation:
    """The cluster as a plan sees it, from the store (:func:`recorded`) and ``busy``, each
    VM's measured cores (:mod:`vmcluster.node.load`)."""
    return recorded(spec, state.node_states(), state.placements(), seen, busy)
