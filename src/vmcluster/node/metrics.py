"""``/metrics``: the cluster in Prometheus' text format (``prometheus-client``).

Collected at each scrape from the API's cached store, so every host exports the
same cluster-wide figures (scrape one, or all and deduplicate by the labels):
migrations by result, downtime and total-time histograms of the migrations the
store remembers, node and network states, routes down in the nodes' heartbeat
views, CSV redirection, the manager's term (fencing token), the VMs by state and
each node's power draw as its power model gives it for the vCPUs placed on it.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence

from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector, CollectorRegistry

from vmcluster.control.consolidate import DEFAULT_POWER_MODEL, POWER_MODELS
from vmcluster.control.liveness import Assessment
from vmcluster.model import ClusterSpec
from vmcluster.node import views
from vmcluster.node.views import Age
from vmcluster.store import intents
from vmcluster.store.election import leader_key
from vmcluster.store.state import ClusterState

__all__ = ["ClusterCollector", "registry"]

DOWNTIME_BUCKETS_S = (0.025, 0.05, 0.1, 0.2, 0.3, 0.5, 1.0, 2.0, 5.0, 10.0)
TOTAL_BUCKETS_S = (0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)
NODE_STATES = ("up", "down", "draining", "quarantined", "joining", "left", "powered_off")
NETWORK_STATES = ("up", "partitioned", "down")


def _histogram(name: str, doc: str, values: Sequence[float],
               buckets: Sequence[float]) -> HistogramMetricFamily:
    counts = [(str(b), sum(1 for v in values if v <= b)) for b in buckets]
    counts.append(("+Inf", len(values)))
    return HistogramMetricFamily(name, doc, buckets=counts, sum_value=sum(values))


class ClusterCollector(Collector):
    def __init__(self, state: ClusterState, spec: ClusterSpec, age: Age) -> None:
        self.state, self.spec, self.age = state, spec, age

    def collect(self) -> Iterator[Metric]:
        seen = views.assessment(self.state, self.spec, self.age)  # once per scrape
        yield from self._migrations()
        yield from self._nodes(seen)
        yield from self._networks(seen)
        yield from self._volumes()
        yield from self._manager()

    def _migrations(self) -> Iterable[Metric]:
        by_result = CounterMetricFamily("vmcluster_migrations", "Migrations the store "
                                        "remembers, by mode and result",
                                        labels=["mode", "result"])
        counts: dict[tuple[str, str], int] = {}
        downtimes, totals = [], []
        for it in intents.every(self.state):
            if it.kind != "migrate" or it.state not in intents.DONE:
                continue
            key = (str(it.args.get("mode", "live")), it.state)
            counts[key] = counts.get(key, 0) + 1
            result = it.record.get("result") or {}
            if isinstance(result, dict) and it.state == "done":
                if isinstance(result.get("downtime_ms"), (int, float)):
                    downtimes.append(float(result["downtime_ms"]) / 1000.0)
                if isinstance(result.get("total_s"), (int, float)):
                    totals.append(float(result["total_s"]))
        for (mode, result), n in sorted(counts.items()):
            by_result.add_metric([mode, result], n)
        yield by_result
        yield _histogram("vmcluster_migration_downtime_seconds", "QEMU's downtime of "
                         "completed migrations", downtimes, DOWNTIME_BUCKETS_S)
        yield _histogram("vmcluster_migration_total_seconds", "Total time of completed "
                         "migrations", totals, TOTAL_BUCKETS_S)
        yield GaugeMetricFamily("vmcluster_migrations_in_flight", "Migrations in flight",
                                value=len(self.state.migrations()))

    def _nodes(self, seen: Assessment) -> Iterable[Metric]:
        node_state = GaugeMetricFamily("vmcluster_node_state", "1 for the state each node "
                                       "is in", labels=["node", "state"])
        fresh = GaugeMetricFamily("vmcluster_node_report_fresh", "1 when the node's report "
                                  "is fresh", labels=["node"])
        power = GaugeMetricFamily("vmcluster_node_power_watts", "Power drawn by each node "
                                  "per its power model, at the vCPUs placed on it",
                                  labels=["node"])
        vm_state = GaugeMetricFamily("vmcluster_vms", "VMs by observed and desired state",
                                     labels=["state", "desired"])
        for n in views.nodes(self.state, self.spec, seen, self.age):
            for s in sorted({*NODE_STATES, n["state"]}):
                node_state.add_metric([n["name"], s], 1.0 if s == n["state"] else 0.0)
            fresh.add_metric([n["name"]], 1.0 if n["report"]["fresh"] else 0.0)
            if n["state"] in ("up", "draining", "quarantined"):
                util = min(1.0, n["vcpus_used"] / max(1, n["cores"]))
                # a model the spec names but this version lacks: the default, as a scrape
                # must not fail (`lab consolidate` refuses such a spec, naming the node)
                name = self.spec.node(n["name"]).power_model or DEFAULT_POWER_MODEL
                model = POWER_MODELS.get(name, POWER_MODELS[DEFAULT_POWER_MODEL])
                power.add_metric([n["name"]], float(model.power(util)))
            else:
                power.add_metric([n["name"]], 0.0)
        counts: dict[tuple[str, str], int] = {}
        for vm in views.vm_list(self.state):
            key = (vm["state"], vm["desired"])
            counts[key] = counts.get(key, 0) + 1
        for (s, d), c in sorted(counts.items()):
            vm_state.add_metric([s, d], c)
        yield from (node_state, fresh, power, vm_state)

    def _networks(self, seen: Assessment) -> Iterable[Metric]:
        net_state = GaugeMetricFamily("vmcluster_network_state", "1 for the state each "
                                      "cluster network is in", labels=["network", "state"])
        metric = GaugeMetricFamily("vmcluster_network_metric", "Each network's metric",
                                   labels=["network", "role"])
        got = views.networks(self.state, self.spec, seen)
        for net in got["networks"]:
            for s in NETWORK_STATES:
                net_state.add_metric([net["name"], s], 1.0 if s == net["state"] else 0.0)
            metric.add_metric([net["name"], str(net["role"])], net["metric"])
        routes_down = GaugeMetricFamily("vmcluster_heartbeat_routes_down", "Routes (peer, "
                                        "network) each node's heartbeats find down",
                                        labels=["node"])
        kvs, _ = self.state.client.get_prefix(self.state.key("reports", ""))
        for kv in kvs:
            down = sum(1 for up in dict(kv.json().get("routes", {})).values() if not up)
            routes_down.add_metric([kv.key.rsplit("/", 1)[1]], down)
        yield from (net_state, metric, routes_down)

    def _volumes(self) -> Iterable[Metric]:
        redirected = GaugeMetricFamily("vmcluster_csv_redirected", "1 when a node reaches a "
                                       "shared volume through another node",
                                       labels=["volume", "node"])
        for vol in views.volumes(self.state, self.spec):
            for a in vol["nodes"]:
                redirected.add_metric([vol["name"], a["node"]],
                                      1.0 if a["mode"] == "redirected" else 0.0)
        yield redirected

    def _manager(self) -> Iterable[Metric]:
        kv = self.state.client.get(leader_key(self.state.cluster))
        yield GaugeMetricFamily("vmcluster_manager_fencing_token", "The elected manager's "
                                "fencing token (its term; 0: no manager)",
                                value=kv.create_revision if kv else 0)


def registry(state: ClusterState, spec: ClusterSpec, age: Age) -> CollectorRegistry:
    """A registry of one scrape's collector (no process-global state)."""
    reg = CollectorRegistry(auto_describe=False)
    reg.register(ClusterCollector(state, spec, age))
    return reg
