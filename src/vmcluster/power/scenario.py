"""The PlanetLab experiment's setup as data (``examples/scenarios/planetlab-<day>.toml``).

Defaults are Beloglazov & Buyya's / CloudSim 3.0.3's (``examples/power/Constants.java``):
800 hosts alternating HP ML110 G4 and G5 (2 cores of 1860 / 2660 MIPS, 4096 MB,
1 Gbit/s); VMs of four types in contiguous blocks (``type = i // ceil(n / 4)``).
"""

from __future__ import annotations

import math
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from vmcluster.errors import SpecError
from vmcluster.power.engine import Datacenter
from vmcluster.power.models import HP_ML110_G4, HP_ML110_G5, SpecPowerModel

__all__ = ["HostType", "Scenario", "VmType", "load_scenario"]

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


def load_scenario(path: Path) -> Scenario:
    """Read a scenario TOML; errors name the file and what to fix."""
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise SpecError(str(path), f"cannot read scenario: {exc.strerror}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise SpecError(str(path), f"invalid TOML: {exc}") from exc
    try:
        dc = data.get("datacenter", {})
        hts = tuple(
            HostType(str(h["power_model"]), float(h["pe_mips"]), int(h["pes"]),
                     float(h["ram_mb"]), float(h["bw_mbit"]))
            for h in dc.get("host_types", [])
        ) or PAPER_HOSTS
        for h in hts:
            if h.power_model not in _MODELS:
                raise SpecError(str(path), f"unknown power model {h.power_model!r}",
                                f"known: {', '.join(_MODELS)}")
        vts = tuple(
            VmType(float(v["mips"]), float(v["ram_mb"]), float(v.get("bw_mbit", 100)))
            for v in data.get("vm_types", [])
        ) or PAPER_VMS
        sim = data.get("simulation", {})
        return Scenario(
            name=str(data.get("name", path.stem)), hosts=int(dc.get("hosts", 800)),
            host_types=hts, vm_types=vts, interval_s=float(sim.get("interval_s", 300)),
            duration_s=float(sim.get("duration_s", 86400)), trace=str(sim.get("trace", "")),
            policy=str(data.get("policy", {}).get("name", "lr-mmt-1.2")),
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise SpecError(str(path), f"bad scenario field: {exc}",
                        "see examples/scenarios/planetlab-*.toml") from exc
