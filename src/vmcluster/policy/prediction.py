"""Predict a live migration before it starts: which network, how long, how long paused.

The network is the one the policy would pick for the node pair
(:func:`~vmcluster.policy.networks.live_migration_order`), its bandwidth the
spec's ``bandwidth_mbps`` shared equally (max-min fairly, every flow wanting
all it can get) with the other flows known to be on it, and the VM's dirty
profile its spec's ``dirty_mibps`` and ``wws_mib``. Pure.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from vmcluster.errors import PolicyError, UsageError
from vmcluster.model import ClusterSpec, Network, Vm
from vmcluster.policy.migration_mode import MigrationProfile, ModeChoice, choose_mode
from vmcluster.policy.migration_model import (
    Action,
    Advice,
    PrecopyInput,
    PrecopyResult,
)
from vmcluster.policy.networks import Health, live_migration_order

__all__ = [
    "DEFAULT_BANDWIDTH_MBPS",
    "Prediction",
    "delta_ratio_for",
    "deltas_allowed",
    "mbps_to_mibps",
    "network_mibps",
    "precopy_input",
    "predict",
]

DEFAULT_BANDWIDTH_MBPS = 1000.0  # assumed where the spec does not say


def mbps_to_mibps(mbps: float) -> float:
    """Megabits per second (decimal, as links are rated) to MiB per second."""
    return mbps * 1e6 / 8.0 / 1048576.0


def network_mibps(net: Network) -> float:
    return mbps_to_mibps(net.bandwidth_mbps or DEFAULT_BANDWIDTH_MBPS)


def precopy_input(
    vm: Vm,
    bandwidth_mibps: float,
    *,
    downtime_ms: float | None = None,
    max_passes: int = 30,
    state_mib: float = 0.0,
    on_no_convergence: Action = "throttle",
) -> PrecopyInput:
    """The model's input for a spec VM at a given bandwidth."""
    return PrecopyInput(
        memory_mib=float(vm.memory_mib),
        dirty_mibps=vm.dirty_mibps,
        wws_mib=vm.working_set_mib,
        bandwidth_mibps=bandwidth_mibps,
        downtime_ms=vm.max_downtime_ms if downtime_ms is None else downtime_ms,
        max_passes=max_passes,
        state_mib=state_mib,
        on_no_convergence=on_no_convergence,
    )


def deltas_allowed(spec: ClusterSpec, vm: Vm) -> bool:
    """May ``vm``'s re-sent pages go as XBZRLE deltas? Not if it said no
    (``migration_deltas``), nor where the cluster asks for multifd channels (QEMU refuses
    XBZRLE with multifd)."""
    return vm.migration_deltas and spec.cluster.migration_channels == 1


def delta_ratio_for(spec: ClusterSpec, vm: Vm, profile: MigrationProfile | None
                    ) -> float | None:
    """The measured delta ratio the mode may be chosen on for ``vm`` (None: no deltas)."""
    if profile is None or not deltas_allowed(spec, vm):
        return None
    return profile.delta_ratio


@dataclass(frozen=True)
class Prediction:
    """What a migration of ``vm`` from ``source`` to ``target`` is expected to do."""

    vm: str
    source: str
    target: str
    network: str
    link_mibps: float
    other_flows: int
    bandwidth_assumed: bool
    result: PrecopyResult
    advice: tuple[Advice, ...]
    fallbacks: tuple[str, ...]  # the networks tried next if this one fails
    choice: ModeChoice | None = None
    measured: str = "the spec's"  # where the dirty profile came from

    @property
    def bandwidth_mibps(self) -> float:
        return self.result.input.bandwidth_mibps

    def to_json(self) -> dict[str, object]:
        return {
            "vm": self.vm,
            "source": self.source,
            "target": self.target,
            "network": self.network,
            "link_mibps": round(self.link_mibps, 3),
            "other_flows": self.other_flows,
            "bandwidth_mibps": round(self.bandwidth_mibps, 3),
            "bandwidth_assumed": self.bandwidth_assumed,
            "fallbacks": list(self.fallbacks),
            **(self.choice.to_json() if self.choice is not None else {}),
            "dirty_mibps": round(self.result.input.dirty_mibps, 3),
            "wws_mib": round(self.result.input.effective_wws_mib, 3),
            "vcpu_busy": round(self.result.input.vcpu_busy, 3),
            **({"delta_ratio": round(self.result.input.delta_ratio, 5)}
               if self.result.input.delta_ratio < 1 else {}),
            "profile_from": self.measured,
            **self.result.to_json(),
            "advice": [a.to_json() for a in self.advice],
        }


def predict(
    spec: ClusterSpec,
    health: Health,
    vm_name: str,
    target: str,
    *,
    source: str | None = None,
    flows: Mapping[str, int] | None = None,
    downtime_ms: float | None = None,
    max_passes: int = 30,
    state_mib: float = 0.0,
    on_no_convergence: Action | None = None,
    profile: MigrationProfile | None = None,
) -> Prediction:
    """Predict migrating ``vm_name`` (from ``source``, default its owner) to ``target``,
    and the mode it would take (:func:`~vmcluster.policy.migration_mode.choose_mode`).

    ``flows`` counts the other flows already on each network (by name); the
    migration gets an equal share of that network's bandwidth. ``profile``: the guest
    as its substrate measured it (dirty rate, working set, vCPU use, whether post-copy
    can be used, the hypervisor's costs) instead of its spec's.
    """
    vm = spec.vm(vm_name)
    action = on_no_convergence or vm.on_no_convergence
    spec.node(target)
    src = source or vm.owner
    spec.node(src)
    if src == target:
        raise UsageError(f"{vm.name} is on {target} already; pick another node with --to")
    order = live_migration_order(spec, health, vm, src, target)
    if not order:
        raise PolicyError(
            f"no live-migration network is available between {src} and {target} for"
            f" {vm.name}; bring one up or change its live_migration_networks"
        )
    flows = flows or {}

    def at(network: str) -> tuple[float, int, ModeChoice]:
        net = spec.network(network)
        others = max(0, flows.get(network, 0))
        link = network_mibps(net)
        inp = precopy_input(
            vm, link / (1 + others), downtime_ms=downtime_ms, max_passes=max_passes,
            state_mib=state_mib, on_no_convergence=action,  # type: ignore[arg-type]
        )
        if profile is not None:
            inp = profile.applied(inp)
        return link, others, choose_mode(
            inp, allow_postcopy=vm.allow_postcopy,
            blocker=None if profile is None else profile.postcopy_blocker,
            delta_ratio=delta_ratio_for(spec, vm, profile))

    link, others, choice = at(order[0])
    result = choice.result
    advice = list(choice.advice)
    if not result.converged:  # refused, or forced through over the budget
        for alt in order[1:]:
            _, alt_others, alt_choice = at(alt)
            if alt_choice.mode != "refuse" and alt_choice.result.converged:
                advice.append(Advice(
                    "network", alt,
                    f"migrate over {alt!r} ({alt_choice.result.input.bandwidth_mibps:.1f} "
                    f"MiB/s, {alt_others} other flows): put it first in "
                    "live_migration_networks",
                ))
    return Prediction(
        vm=vm.name,
        source=src,
        target=target,
        network=order[0],
        link_mibps=link,
        other_flows=others,
        bandwidth_assumed=spec.network(order[0]).bandwidth_mbps is None,
        result=result,
        advice=tuple(advice),
        fallbacks=tuple(order[1:]),
        choice=choice,
        measured="the spec's" if profile is None else profile.measured,
    )
