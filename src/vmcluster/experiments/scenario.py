"""The PlanetLab experiment's setup as data (``examples/scenarios/planetlab-<day>.toml``).

Defaults are Beloglazov & Buyya's / CloudSim 3.0.3's (``examples/power/Constants.java``):
800 hosts alternating HP ML110 G4 and G5 (2 cores of 1860 / 2660 MIPS, 4096 MB,
1 Gbit/s); VMs of four types in contiguous blocks (``type = i // ceil(n / 4)``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from vmcluster.experiments.engine import Datacenter
from vmcluster.experiments.traces import default_trace_dir
from vmcluster.model.tomlsource import TableRef, TomlSource, load_toml
from vmcluster.policy.power.models import HP_ML110_G4, HP_ML110_G5, SpecPowerModel

__all__ = [
    "BOOT_S", "HostType", "Scenario", "VmType", "is_power_scenario", "load_scenario",
    "scenario_from_source",
]

_MODELS: dict[str, SpecPowerModel] = {"ml110-g4": HP_ML110_G4, "ml110-g5": HP_ML110_G5}


@dataclass(frozen=True)
class HostType:
    power_model: str
    pe_mips: float
    pes: int
    ram_mb: float
    bw_mbit: float


@dataclass(frozen=True)
class VmType:
    mips: float
    ram_mb: float
    bw_mbit: float = 100.0


PAPER_HOSTS = (HostType("ml110-g4", 1860, 2, 4096, 1000), HostType("ml110-g5", 2660, 2, 4096, 1000))
PAPER_VMS = (VmType(2500, 870), VmType(2000, 1740), VmType(1000, 1740), VmType(500, 613))


# A host boot when boots are charged: seconds at its peak power (the setup delay Gandhi,
# Gupta, Harchol-Balter and Kozuch take for servers of that generation, spent at busy
# power; docs/power.md)
BOOT_S = 200.0


@dataclass(frozen=True)
class Scenario:
    """Hosts (types alternate ``i % len(types)``), VM types, timing, trace and policy."""

    name: str = "planetlab"
    hosts: int = 800
    host_types: tuple[HostType, ...] = PAPER_HOSTS
    vm_types: tuple[VmType, ...] = PAPER_VMS
    interval_s: float = 300.0
    duration_s: float = 86400.0
    trace: str = ""
    policy: str = "lr-mmt-1.2"
    # host boots charged: each takes boot_s seconds at the host's peak power (0: free, as
    # in CloudSim)
    boot_s: float = 0.0
    extra: dict[str, str] = field(default_factory=dict)

    def datacenter(self, n_vms: int, hosts: int | None = None) -> Datacenter:
        n_h = self.hosts if hosts is None else hosts
        ht = [self.host_types[i % len(self.host_types)] for i in range(n_h)]
        block = max(1, math.ceil(n_vms / len(self.vm_types)))
        vt = [self.vm_types[min(i // block, len(self.vm_types) - 1)] for i in range(n_vms)]
        return Datacenter(
            host_pe_mips=np.array([h.pe_mips for h in ht], dtype=np.float64),
            host_pes=np.array([h.pes for h in ht], dtype=np.int64),
            host_ram=np.array([h.ram_mb for h in ht], dtype=np.float64),
            host_bw=np.array([h.bw_mbit for h in ht], dtype=np.float64),
            power_table=np.array([_MODELS[h.power_model].watts for h in ht], dtype=np.float64),
            vm_mips=np.array([v.mips for v in vt], dtype=np.float64),
            vm_ram=np.array([v.ram_mb for v in vt], dtype=np.float64),
            vm_bw=np.array([v.bw_mbit for v in vt], dtype=np.float64),
            interval_s=self.interval_s,
        )


_TOP = {"name", "datacenter", "vm_types", "simulation", "policy"}
_DC = {"hosts", "host_types"}
_HOST = {"power_model", "pe_mips", "pes", "ram_mb", "bw_mbit"}
_VM = {"mips", "ram_mb", "bw_mbit"}
_SIM = {"interval_s", "duration_s", "trace", "boot_s"}
_POLICY = {"name"}


def is_power_scenario(data: dict[str, object]) -> bool:
    """A datacenter-consolidation scenario (rather than a cluster scenario for the sim)."""
    return "datacenter" in data or "vm_types" in data


def _number(src: TomlSource, table: TableRef, data: dict[str, Any], key: str,
            default: float | None = None) -> float:
    value = data.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
        raise src.error(table, key, f"{key} must be a positive number, got {value!r}")
    return float(value)


def _whole(src: TomlSource, table: TableRef, data: dict[str, Any], key: str,
           default: int) -> int:
    value = _number(src, table, data, key, default)
    if value != int(value):
        raise src.error(table, key, f"{key} must be a whole number, got {value:g}")
    return int(value)


def _trace_path(src: TomlSource, text: str) -> Path:
    """A trace named relative to the scenario file, else to the package's data."""
    here = Path(src.filename).parent / text
    if here.exists():
        return here
    shipped = default_trace_dir().parent / text
    if shipped.exists():
        return shipped
    raise src.error(TableRef("simulation"), "trace", f"no trace file {text!r}",
                    "give a path relative to the scenario file, or planetlab/<day>.csv")


def load_scenario(path: Path) -> Scenario:
    """Read a scenario TOML; errors name file:line and what to fix."""
    return scenario_from_source(load_toml(path))


def scenario_from_source(src: TomlSource) -> Scenario:
    data = src.data
    for key in data:
        if key not in _TOP:
            raise src.error(None, None, f"unknown top-level key {key!r}",
                            f"allowed: {', '.join(sorted(_TOP))}")
    dc = data.get("datacenter", {})
    dct = TableRef("datacenter")
    src.check_keys(dct, dc, _DC, set())
    hts = []
    for i, h in enumerate(dc.get("host_types", [])):
        t = TableRef("datacenter.host_types", i)
        src.check_keys(t, h, _HOST, _HOST - {"bw_mbit"})
        if h["power_model"] not in _MODELS:
            raise src.error(t, "power_model", f"unknown power model {h['power_model']!r}",
                            f"known: {', '.join(_MODELS)}")
        hts.append(HostType(str(h["power_model"]), _number(src, t, h, "pe_mips"),
                            _whole(src, t, h, "pes", 0), _number(src, t, h, "ram_mb"),
                            _number(src, t, h, "bw_mbit", 1000.0)))
    vts = []
    for i, v in enumerate(data.get("vm_types", [])):
        t = TableRef("vm_types", i)
        src.check_keys(t, v, _VM, {"mips", "ram_mb"})
        vts.append(VmType(_number(src, t, v, "mips"), _number(src, t, v, "ram_mb"),
                          _number(src, t, v, "bw_mbit", 100.0)))
    sim = data.get("simulation", {})
    simt = TableRef("simulation")
    src.check_keys(simt, sim, _SIM, set())
    pol = data.get("policy", {})
    src.check_keys(TableRef("policy"), pol, _POLICY, set())
    trace = sim.get("trace")
    return Scenario(
        name=str(data.get("name", Path(src.filename).stem)),
        hosts=_whole(src, dct, dc, "hosts", 800),
        host_types=tuple(hts) or PAPER_HOSTS,
        vm_types=tuple(vts) or PAPER_VMS,
        interval_s=_number(src, simt, sim, "interval_s", 300.0),
        duration_s=_number(src, simt, sim, "duration_s", 86400.0),
        trace="" if trace is None else str(_trace_path(src, str(trace))),
        policy=str(pol.get("name", "lr-mmt-1.2")),
        boot_s=_number(src, simt, sim, "boot_s") if "boot_s" in sim else 0.0,
    )
