"""One plan model for every plan the cluster makes and shows.

A consolidation (the power policies, ``vmcluster consolidate``, ``lab consolidate``,
``GET /api/v1/plans/consolidation``) and a drain (``node drain``, the manager's drain
of a quarantined node, ``GET /api/v1/plans/drain``) are both a :class:`ClusterPlan`:
the same moves with the same predictions, the same node before/after table and watts,
the same JSON, applied by the same code and drawn by the same dashboard page.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from vmcluster.errors import InputError

__all__ = ["ClusterPlan", "NodeChange", "PlannedMigration"]


@dataclass(frozen=True)
class PlannedMigration:
    vm: str
    source: str
    target: str
    network: str
    fallbacks: tuple[str, ...]
    predicted_s: float
    predicted_downtime_ms: float
    predicted_mib: float
    converges: bool
    broke: tuple[str, ...] = ()  # the non-strict HA rules this move breaks, and why
    mode: str = "precopy"  # as vmcluster.policy.migration_mode would choose it
    setup_s: float = 0.0  # the substrate's own time around it (Costs.setup_s)

    @property
    def wall_s(self) -> float:
        """The whole move as a plan waits for it: its setup and the migration itself."""
        return self.setup_s + self.predicted_s

    def to_json(self) -> dict[str, object]:
        return _flat(self)


@dataclass(frozen=True)
class NodeChange:
    """A node before and after the plan; watts from its power model (0 when off)."""

    node: str
    power_model: str  # a key of POWER_MODELS
    power_model_assumed: bool  # the spec names none: DEFAULT_POWER_MODEL
    state_before: str
    state_after: str
    util_before: float
    util_after: float
    watts_before: float
    watts_after: float
    vms_before: tuple[str, ...]
    vms_after: tuple[str, ...]

    def to_json(self) -> dict[str, object]:
        return _flat(self)


@dataclass(frozen=True)
class ClusterPlan:
    """What a plan would do to the cluster, whoever made it: live migrations (each with
    its network and predicted time and downtime, and the non-strict rules it breaks),
    nodes powered on or off, moves wanted but impossible (``skipped``, why), and every
    node before and after with its watts. ``kind`` says who planned it: ``consolidation``
    (``policy`` names the power policy) or ``drain`` (``policy`` is ``drain:NODE``)."""

    policy: str
    migrations: tuple[PlannedMigration, ...]
    power_on: tuple[str, ...]
    power_off: tuple[tuple[str, str], ...]  # (node, why)
    skipped: tuple[tuple[str, str], ...]  # (vm, why) moves the policy wanted but cannot happen
    overloaded: tuple[str, ...]
    nodes: tuple[NodeChange, ...]
    horizon_s: float = 3600.0
    kept_on: tuple[tuple[str, str], ...] = ()  # (node, why) empty, but the guard keeps it on
    kind: str = "consolidation"  # or "drain"

    @property
    def watts_before(self) -> float:
        return sum(n.watts_before for n in self.nodes)

    @property
    def watts_after(self) -> float:
        return sum(n.watts_after for n in self.nodes)

    @property
    def empty(self) -> bool:
        return not (self.migrations or self.power_on or self.power_off)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ClusterPlan:
        """A plan from its JSON (``to_json``; an API body or answer): what applying it
        needs (migrations, power-ons, power-offs) and, when given, the rest to show it.
        A bad one is one InputError line."""
        try:
            migrations = tuple(PlannedMigration(
                vm=str(m["vm"]), source=str(m["source"]), target=str(m["target"]),
                network=str(m["network"]), fallbacks=tuple(str(f) for f in m.get("fallbacks", ())),
                predicted_s=float(m.get("predicted_s", 0.0)),
                predicted_downtime_ms=float(m.get("predicted_downtime_ms", 0.0)),
                predicted_mib=float(m.get("predicted_mib", 0.0)),
                converges=bool(m.get("converges", True)),
                broke=tuple(str(b) for b in m.get("broke", ())),
                mode=str(m.get("mode", "precopy")), setup_s=float(m.get("setup_s", 0.0)))
                for m in data.get("migrations", []))
            power_on = tuple(str(n) for n in data.get("power_on", []))
            power_off = tuple((str(o["node"]), str(o.get("reason", "")))
                              for o in data.get("power_off", []))
            skipped = tuple((str(o["vm"]), str(o.get("reason", "")))
                            for o in data.get("skipped", []))
            kept_on = tuple((str(o["node"]), str(o.get("reason", "")))
                            for o in data.get("kept_on", []))
            nodes = tuple(NodeChange(
                node=str(n["node"]), power_model=str(n["power_model"]),
                power_model_assumed=bool(n.get("power_model_assumed", False)),
                state_before=str(n["state_before"]), state_after=str(n["state_after"]),
                util_before=float(n["util_before"]), util_after=float(n["util_after"]),
                watts_before=float(n["watts_before"]), watts_after=float(n["watts_after"]),
                vms_before=tuple(str(v) for v in n.get("vms_before", ())),
                vms_after=tuple(str(v) for v in n.get("vms_after", ())))
                for n in data.get("nodes", []))
            return cls(str(data.get("policy", "")), migrations, power_on, power_off, skipped,
                       tuple(str(n) for n in data.get("overloaded", [])), nodes,
                       float(data.get("horizon_s", 3600.0)), kept_on,
                       str(data.get("kind", "consolidation")))
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise InputError(f"plan: not a plan as `vmcluster consolidate --json` prints one "
                             f"({type(exc).__name__}: {exc})") from exc

    def to_json(self) -> dict[str, object]:
        hours = self.horizon_s / 3600.0
        return {
            "kind": self.kind,
            "policy": self.policy,
            "migrations": [m.to_json() for m in self.migrations],
            "power_on": list(self.power_on),
            "power_off": [{"node": n, "reason": r} for n, r in self.power_off],
            "skipped": [{"vm": v, "reason": r} for v, r in self.skipped],
            "kept_on": [{"node": n, "reason": r} for n, r in self.kept_on],
            "overloaded": list(self.overloaded),
            "nodes": [n.to_json() for n in self.nodes],
            "predicted_total_s": round(sum(m.predicted_s for m in self.migrations), 3),
            **self.timeline(),
            "watts_before": round(self.watts_before, 2),
            "watts_after": round(self.watts_after, 2),
            "horizon_s": self.horizon_s,
            "energy_before_wh": round(self.watts_before * hours, 2),
            "energy_after_wh": round(self.watts_after * hours, 2),
        }


    def timeline(self) -> dict[str, object]:
        """When each move starts and ends, in seconds from the plan's start, moved one at a
        time in order as a drain or an applied consolidation moves them (each its setup
        and its migration: ``wall_s``); when the last ends (``predicted_end_s``); and per
        network, how many moves use it, for how long, and at what most (one at a time,
        so the peak is the fastest move's rate)."""
        t = 0.0
        schedule: list[dict[str, object]] = []
        nets: dict[str, dict[str, float]] = {}
        for m in self.migrations:
            schedule.append({"vm": m.vm, "source": m.source, "target": m.target,
                             "network": m.network, "mode": m.mode,
                             "start_s": round(t, 3), "end_s": round(t + m.wall_s, 3),
                             "downtime_ms": round(m.predicted_downtime_ms, 1)})
            n = nets.setdefault(m.network, {"moves": 0, "busy_s": 0.0, "peak_mibps": 0.0})
            n["moves"] += 1
            n["busy_s"] += m.predicted_s
            if m.predicted_s > 0:
                n["peak_mibps"] = max(n["peak_mibps"], m.predicted_mib / m.predicted_s)
            t += m.wall_s
        return {"schedule": schedule, "predicted_end_s": round(t, 3),
                "networks": {k: {"moves": v["moves"], "busy_s": round(v["busy_s"], 2),
                                 "peak_mibps": round(v["peak_mibps"], 1)}
                             for k, v in nets.items()}}


def _flat(obj: PlannedMigration | NodeChange) -> dict[str, object]:
    """A flat dataclass as JSON: tuples as lists, floats to 4 decimals."""
    out: dict[str, object] = {}
    for k, v in asdict(obj).items():
        out[k] = list(v) if isinstance(v, tuple) else round(v, 4) if isinstance(v, float) else v
    return out
