"""What consolidation policies see and return.

A policy is a pure function ``decide(snapshot, seed) -> Plan``. The snapshot
is a datacenter at one scheduling instant (arrays indexed by host and by VM;
callers must not mutate them); the plan is a tuple of frozen actions.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from vmcluster.policy.power.lazy import kernels

__all__ = ["Action", "Migrate", "Plan", "Policy", "PowerOff", "PowerOn", "Snapshot", "host_classes",
           "power_at"]

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]


@dataclass(frozen=True)
class Migrate:
    """Live-migrate ``vm`` from host ``source`` to host ``target``."""

    vm: int
    source: int
    target: int


@dataclass(frozen=True)
class PowerOff:
    """Switch ``host`` off (it holds no VM once the plan's migrations are done)."""

    host: int


@dataclass(frozen=True)
class PowerOn:
    """Switch ``host`` on (a migration in the plan targets it)."""

    host: int


Action = Migrate | PowerOff | PowerOn


@dataclass(frozen=True)
class Plan:
    """A policy's decision for one instant."""

    actions: tuple[Action, ...] = ()
    overloaded: tuple[int, ...] = ()

    @property
    def migrations(self) -> tuple[Migrate, ...]:
        return tuple(a for a in self.actions if isinstance(a, Migrate))


@dataclass(frozen=True, eq=False)
class Snapshot:
    """A datacenter at one instant. Hosts ``h``, VMs ``v``; MIPS, MB, Mbit/s, seconds.

    ``vm_hist[v, i]`` is VM ``v``'s CPU utilisation (0..1 of its MIPS) ``i``
    intervals ago (0 = now), ``vm_hist_count[v]`` how many values it has;
    ``host_util[h]`` the host's utilisation (0..1) measured now, before any
    action; ``host_vms[h]`` the VMs on ``h`` in placement order.
    """

    host_pe_mips: FloatArray
    host_mips: FloatArray
    host_ram: FloatArray
    host_bw: FloatArray
    power_table: FloatArray  # (hosts, 11): watts at 0, 10, ..., 100 %
    vm_mips: FloatArray
    vm_ram: FloatArray
    vm_bw: FloatArray
    vm_host: IntArray
    host_vms: tuple[tuple[int, ...], ...]
    vm_req: FloatArray  # requested MIPS now
    vm_hist: FloatArray
    vm_hist_count: IntArray
    host_util: FloatArray
    interval_s: float = 300.0
    step: int = 0
    # hosts numbered by type (alike in MIPS, RAM, bandwidth and power table), if the
    # caller knows it; a policy works it out otherwise
    host_class: IntArray | None = None

    @property
    def n_hosts(self) -> int:
        return int(self.host_mips.shape[0])

    @functools.cached_property
    def watts_per_mips(self) -> FloatArray:
        """Each host's watts per MIPS when full: what a MIPS costs on it."""
        return np.asarray(self.power_table[:, -1] / self.host_mips, dtype=np.float64)

    @functools.cached_property
    def migration_mbps(self) -> FloatArray:
        """MB/s available for migration per host: half the link (CloudSim's model)."""
        return self.host_bw / 16.0


def power_at(table: FloatArray, hosts: IntArray, util: FloatArray) -> FloatArray:
    """Watts of ``hosts`` at utilisations ``util`` (0..1), interpolating each host's table
    with CloudSim's ``PowerModelSpecPower`` arithmetic (:func:`.kernels.watts`), so a
    policy's comparisons of nearly equal powers fall as CloudSim's do."""
    return np.asarray(kernels.watts(np.asarray(table, dtype=np.float64),
                                    np.asarray(hosts, dtype=np.int64),
                                    np.asarray(util, dtype=np.float64)), dtype=np.float64)


def host_classes(pe_mips: FloatArray, mips: FloatArray, ram: FloatArray, bw: FloatArray,
                 power_table: FloatArray) -> IntArray:
    """Hosts numbered by type: alike in PE MIPS, MIPS, RAM, bandwidth and power table."""
    key = np.column_stack([pe_mips, mips, ram, bw, power_table])
    _, inverse = np.unique(key, axis=0, return_inverse=True)
    return np.asarray(inverse, dtype=np.int64).reshape(-1)


Policy = Callable[[Snapshot, int], Plan]
"""A consolidation policy: ``decide(snapshot, seed) -> plan``."""
