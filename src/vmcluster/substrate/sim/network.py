"""The simulated cluster networks: per-node links, flows over them, traffic accounting.

Each node's interface on a network is two links (transmit, receive) of the
network's ``bandwidth_mbps``; a flow from ``a`` to ``b`` on network ``n``
crosses ``(n, a, tx)`` and ``(n, b, rx)`` (a non-blocking switch in between).
Rates are max-min fair (:mod:`.flows`). Traffic is integrated per
(class, network) and kept as a step series of rates for the report.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable

from vmcluster.model import ClusterSpec
from vmcluster.policy.prediction import network_mibps
from vmcluster.substrate.sim.flows import Flow, max_min_rates
from vmcluster.substrate.sim.state import FlowRec

__all__ = ["Fabric"]

TrafficKey = tuple[str, str]  # (class, network)


class Fabric:
    """Flows over the cluster networks and what they carried."""

    def __init__(self, spec: ClusterSpec, now: Callable[[], float]) -> None:
        self._now = now
        self.capacity = {n.name: network_mibps(n) for n in spec.networks}
        self.flows: dict[int, FlowRec] = {}
        self._next_id = 0
        self._last = 0.0
        self.rates: dict[TrafficKey, float] = {}
        self.carried_mib: dict[TrafficKey, float] = {}
        self.series: list[tuple[float, str, str, float]] = []  # (t, class, network, MiB/s)
        self.on_rate: Callable[[FlowRec, float], None] | None = None

    def add(self, cls: str, network: str, src: str, dst: str, demand: float) -> FlowRec:
        self._next_id += 1
        links: tuple[Hashable, ...] = ((network, src, "tx"), (network, dst, "rx"))
        rec = FlowRec(self._next_id, cls, network, links, demand)
        self.flows[rec.id] = rec
        return rec

    def remove(self, rec: FlowRec | None) -> None:
        if rec is not None:
            self.flows.pop(rec.id, None)

    def set_constant(self, cls: str, network: str | None, rate: float) -> None:
        """A class whose rate is known and too small to share links (heartbeats)."""
        self._integrate()
        for key in [k for k in self.rates if k[0] == cls]:
            self._set_rate(key, 0.0)
        if network is not None and rate > 0:
            self._set_rate((cls, network), rate)

    def reallocate(self) -> None:
        """Recompute every flow's fair rate; tell the owners of flows whose rate changed."""
        self._integrate()
        flows = [Flow(r.id, r.links, r.demand) for r in self.flows.values()]
        cap = {k: self.capacity[k[0]] for f in flows for k in f.links}  # type: ignore[index]
        rates = max_min_rates(flows, cap)
        sums: dict[TrafficKey, float] = {k: 0.0 for k in self.rates if k[0] != "heartbeat"}
        for rec in list(self.flows.values()):
            new = rates[rec.id]
            key = (rec.cls, rec.network)
            sums[key] = sums.get(key, 0.0) + new
            if new != rec.rate:
                old, rec.rate = rec.rate, new
                if self.on_rate is not None:
                    self.on_rate(rec, old)
        for key, total in sums.items():
            self._set_rate(key, total)

    def _set_rate(self, key: TrafficKey, rate: float) -> None:
        if abs(self.rates.get(key, 0.0) - rate) > 1e-9:
            self.rates[key] = rate
            self.series.append((self._now(), key[0], key[1], rate))

    def _integrate(self) -> None:
        now = self._now()
        dt = now - self._last
        if dt > 0:
            for key, rate in self.rates.items():
                if rate:
                    self.carried_mib[key] = self.carried_mib.get(key, 0.0) + rate * dt
        self._last = now

    def totals(self) -> dict[TrafficKey, float]:
        """MiB carried so far per (class, network)."""
        self._integrate()
        return dict(self.carried_mib)
