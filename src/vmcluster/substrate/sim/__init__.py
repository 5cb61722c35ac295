"""The simulation substrate: a deterministic discrete-event model of the cluster in virtual time."""

from vmcluster.substrate.sim.kernel import Kernel, SimClock
from vmcluster.substrate.sim.substrate import SimSubstrate
from vmcluster.substrate.sim.workload import Workload

__all__ = ["Kernel", "SimClock", "SimSubstrate", "Workload"]
