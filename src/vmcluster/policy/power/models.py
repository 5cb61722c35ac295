"""Host power models: watts as a function of CPU utilisation (0..1).

* :data:`HP_ML110_G4` and :data:`HP_ML110_G5` are SPECpower_ssj2008 results
  (watts at 0 %, 10 %, ..., 100 % load), published by SPEC for the HP ProLiant
  ML110 G4 (Intel Xeon 3040, 2 x 1860 MHz) and ML110 G5 (Intel Xeon 3075,
  2 x 2660 MHz), as used by Beloglazov & Buyya (CCPE 2012) and by CloudSim
  3.0.3 (``PowerModelSpecPowerHpProLiantMl110G4Xeon3040`` / ``...G5Xeon3075``).
  Between the published points the power is interpolated linearly, as CloudSim
  does.
* :class:`LinearPowerModel`: ``idle + (max - idle) * u`` (Fan, Weber & Barroso,
  ISCA 2007, found server power close to linear in CPU utilisation).
* :class:`PerCorePowerModel`: for core parking. The package (uncore, memory,
  fans, PSU loss) draws a constant; each active core draws an idle share plus
  a dynamic part linear in its own load; a parked core (deep C-state, C6)
  draws almost nothing. The defaults split the ML110 G5's SPECpower idle and
  peak between uncore and two cores; the C6 residual (0.5 W per core) is of
  the order Intel documents for package C6/core C6 on that generation. The
  split is an assumption (SPECpower does not publish it) and is a parameter.

Energy of a host whose utilisation is exactly 0 is taken to be 0 W by the
engine (the host is switched off), following CloudSim; the models themselves
return the idle power at 0.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

__all__ = [
    "HP_ML110_G4",
    "HP_ML110_G5",
    "LinearPowerModel",
    "PerCorePowerModel",
    "SpecPowerModel",
]

FloatArray = npt.NDArray[np.float64]
_LOADS = np.linspace(0.0, 1.0, 11)


@dataclass(frozen=True)
class SpecPowerModel:
    """Watts at 0, 10, ..., 100 % load, interpolated linearly in between."""

    name: str
    watts: tuple[float, ...]

    def __post_init__(self) -> None:
        if len(self.watts) != 11:
            raise ValueError("a SPECpower model needs 11 points (0 %, 10 %, ..., 100 %)")

    @property
    def idle_w(self) -> float:
        return self.watts[0]

    @property
    def max_w(self) -> float:
        return self.watts[-1]

    def power(self, utilisation: npt.ArrayLike) -> FloatArray:
        """Watts at each utilisation (clipped to 0..1)."""
        u = np.clip(np.asarray(utilisation, dtype=np.float64), 0.0, 1.0)
        return np.interp(u, _LOADS, np.asarray(self.watts, dtype=np.float64))


@dataclass(frozen=True)
class LinearPowerModel:
    """``idle + (max - idle) * u``."""

    name: str
    idle_w: float
    max_w: float

    def power(self, utilisation: npt.ArrayLike) -> FloatArray:
        u = np.clip(np.asarray(utilisation, dtype=np.float64), 0.0, 1.0)
        return self.idle_w + (self.max_w - self.idle_w) * u


@dataclass(frozen=True)
class PerCorePowerModel:
    """Package constant + per active core (idle share + dynamic * load) + per parked core."""

    name: str
    cores: int
    uncore_w: float
    core_idle_w: float
    core_max_w: float
    core_parked_w: float

    def __post_init__(self) -> None:
        if not 0 <= self.core_parked_w <= self.core_idle_w <= self.core_max_w:
            raise ValueError("need 0 <= parked <= idle <= max watts per core")

    def power(self, core_loads: npt.ArrayLike, parked: int) -> float:
        """Watts with the given per-active-core loads (0..1) and ``parked`` cores parked."""
        loads = np.clip(np.asarray(core_loads, dtype=np.float64), 0.0, 1.0)
        dynamic = (self.core_max_w - self.core_idle_w) * float(loads.sum())
        return (
            self.uncore_w
            + self.core_idle_w * loads.size
            + dynamic
            + self.core_parked_w * parked
        )


HP_ML110_G4 = SpecPowerModel(
    "HP ProLiant ML110 G4 (Xeon 3040)",
    (86.0, 89.4, 92.6, 96.0, 99.5, 102.0, 106.0, 108.0, 112.0, 114.0, 117.0),
)
HP_ML110_G5 = SpecPowerModel(
    "HP ProLiant ML110 G5 (Xeon 3075)",
    (93.7, 97.0, 101.0, 105.0, 110.0, 116.0, 121.0, 125.0, 129.0, 133.0, 135.0),
)
# ML110 G5 split: 93.7 W idle = 80 W package + 2 x 6.85 W idle cores; 135 W peak = 80 + 2 x 27.5.
G5_PER_CORE = PerCorePowerModel("ML110 G5 per core", 2, 80.0, 6.85, 27.5, 0.5)
