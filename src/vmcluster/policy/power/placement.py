"""Power-aware best-fit decreasing (PABFD) and the paper's consolidation policy.

Beloglazov & Buyya (CCPE 2012), section 6.3, as CloudSim 3.0.3 runs it
(``PowerVmAllocationPolicyMigrationAbstract``):

1. Overloaded hosts (the detector) give up VMs, one by one (the selection
   policy), until the detector no longer calls them overloaded.
2. Those VMs, largest current MIPS first, go to the host whose power grows
   least (PABFD): a host must have PE, MIPS, RAM and bandwidth room, and a
   non-empty host must not become overloaded (the detector, with the VM
   added). Overloaded hosts are excluded; switched-off hosts are not: this is
   how hosts are powered back on. A switched-off host's increase is measured
   from its idle power (CloudSim's ``host.getPower()`` at utilisation 0).
3. Under-load: from the least-utilised active host upwards, every host's VMs
   are offered to the other active hosts (not overloaded, not switched off,
   not already evacuated); if all fit the host is evacuated and switched
   off, otherwise nothing moves from it. Hosts that received VMs in this
   step's under-load phase are not evacuated. (CloudSim means to exclude the
   targets of step 2 too, but passes an empty list; we keep that behaviour
   with ``exclude_overload_targets=False``, the default, to match its figures.)
"""

from __future__ import annotations

from dataclasses import dataclass
from itertools import chain

import numpy as np
import numpy.typing as npt

from vmcluster.policy.power.detection import HISTORY, Detector, overloaded
from vmcluster.policy.power.lazy import kernels
from vmcluster.policy.power.plan import (
    Action,
    Migrate,
    Plan,
    PowerOff,
    PowerOn,
    Snapshot,
    host_classes,
    power_at,
)
from vmcluster.policy.power.selection import select_vm
from vmcluster.policy.power.thresholds import FALLBACK_THR

__all__ = ["PaperPolicy", "Planner", "first_fit", "initial_placement"]

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]
BoolArray = npt.NDArray[np.bool_]


def trimmed_length(hist: FloatArray) -> IntArray:
    """Per row: index of the last non-zero value + 1 (CloudSim's trimZeroTail)."""
    nz = hist != 0
    any_nz = nz.any(axis=1)
    last = hist.shape[1] - np.argmax(nz[:, ::-1], axis=1)
    return np.where(any_nz, last, 0).astype(np.int64)


class _Lists:
    """Each host's VM list, copied from the snapshot's tuples when first touched."""

    def __init__(self, base: tuple[tuple[int, ...], ...]) -> None:
        self._base = base
        self._own: dict[int, list[int]] = {}

    def __getitem__(self, h: int) -> list[int]:
        own = self._own.get(h)
        if own is None:
            own = self._own[h] = list(self._base[h])
        return own

    def __len__(self) -> int:
        return len(self._base)


def _host_classes(snap: Snapshot) -> tuple[IntArray, int]:
    """The snapshot's host types (its own numbering if it has one) and how many."""
    klass = snap.host_class
    if klass is None:
        klass = host_classes(snap.host_pe_mips, snap.host_mips, snap.host_ram, snap.host_bw,
                             snap.power_table)
    return klass, int(klass.max(initial=-1)) + 1


class Planner:
    """A working copy of a snapshot's allocation, changed while a policy plans.

    ``ram_aware=False`` is CloudSim's behaviour: once created, a PlanetLab VM
    requests 0 MB of RAM and 0 bandwidth (its cloudlet's RAM and bandwidth
    utilisation models are null), so after the initial placement only CPU
    constrains where a VM may go.

    Internal to a policy call (a policy stays pure: it builds one, plans on
    it and returns a Plan).
    """

    def __init__(self, snap: Snapshot, ram_aware: bool = False) -> None:
        self.s = snap
        self.ram_aware = ram_aware
        self.vm_len = trimmed_length(snap.vm_hist)
        self.host_vms = _Lists(snap.host_vms)
        n_h = snap.n_hosts
        self.power_now = power_at(snap.power_table, np.arange(n_h), snap.host_util)
        self._vm_hist = np.ascontiguousarray(snap.vm_hist, dtype=np.float64)
        self._mig_mbps = np.asarray(snap.migration_mbps, dtype=np.float64)
        counts = np.fromiter(map(len, snap.host_vms), dtype=np.int64, count=n_h)
        start = np.zeros(n_h + 1, dtype=np.int64)
        np.cumsum(counts, out=start[1:])
        flat = np.fromiter(chain.from_iterable(snap.host_vms), dtype=np.int64,
                           count=int(start[-1]))
        sums = np.zeros((n_h, 6))
        sums[:, 2] = snap.host_mips
        self.hist = np.zeros((n_h, HISTORY))
        self.hlen = np.zeros(n_h, dtype=np.int64)
        kernels.aggregate_all(flat, start, snap.host_pe_mips, snap.host_mips, snap.vm_req,
                              snap.vm_mips, snap.vm_ram, snap.vm_bw, self._vm_hist, sums,
                              self.hist, self.hlen)
        self.req, self.alloc, self.avail, self.ram, self.bw, self.ram_max = (
            np.ascontiguousarray(c) for c in sums.T)
        # switched-off, untouched hosts of one type are alike for PABFD: their class
        klass, self._n_klass = _host_classes(snap)
        self._klass = np.where((counts == 0) & (snap.host_util == 0), klass, -1)

    def recompute(self, h: int) -> None:
        """Refresh host ``h``'s aggregates from its VM list (as CloudSim's scheduler would:
        sums in list order)."""
        s = self.s
        self._klass[h] = -1
        (self.req[h], self.alloc[h], self.avail[h], self.ram[h], self.bw[h],
         self.ram_max[h], self.hlen[h]) = kernels.aggregate(
            np.asarray(self.host_vms[h], dtype=np.int64), float(s.host_pe_mips[h]),
            float(s.host_mips[h]), s.vm_req, s.vm_mips, s.vm_ram, s.vm_bw, self._vm_hist,
            self.hist[h])

    @property
    def vm_hist(self) -> FloatArray:
        """The VMs' histories, contiguous (as the compiled scans take them)."""
        return self._vm_hist

    @property
    def pristine(self) -> tuple[IntArray, int]:
        """Each host's type if it is switched off and untouched so far (else -1), and how
        many types: such hosts of one type are alike to a placement scan."""
        return self._klass, self._n_klass

    def _ahead(self, hosts: IntArray, ram: FloatArray) -> FloatArray:
        """LR's intervals to the end of the longest migration off each host."""
        return np.ceil(ram / self._mig_mbps[hosts] / self.s.interval_s)

    def add(self, h: int, vm: int) -> None:
        self.host_vms[h].append(vm)
        self.recompute(h)

    def remove(self, h: int, vm: int) -> None:
        self.host_vms[h].remove(vm)
        self.recompute(h)

    def is_overloaded(self, det: Detector, hosts: IntArray) -> BoolArray:
        return overloaded(det, self.hist[hosts], self.hlen[hosts],
                          self.req[hosts] / self.s.host_mips[hosts],
                          self._ahead(hosts, self.ram_max[hosts]))

    def suitable(self, vm: int, excluded: BoolArray) -> IntArray:
        s = self.s
        r = s.vm_req[vm]
        ok = ~excluded & (s.host_pe_mips >= r) & (self.avail >= r)
        if self.ram_aware:
            ok &= (self.ram + s.vm_ram[vm] <= s.host_ram) & (self.bw + s.vm_bw[vm] <= s.host_bw)
        return np.flatnonzero(ok)

    def pabfd(self, vm: int, det: Detector, excluded: BoolArray) -> int:
        """The host whose power grows least with ``vm``, or -1 (CloudSim's
        ``findHostForVm``, :func:`.kernels.pabfd_scan`)."""
        s = self.s
        return int(kernels.pabfd_scan(
            float(s.vm_req[vm]), float(s.vm_mips[vm]), self._vm_hist[vm], int(self.vm_len[vm]),
            float(s.vm_ram[vm]), float(s.vm_bw[vm]), excluded, s.host_pe_mips, s.host_mips,
            s.host_ram, s.host_bw, self.avail, self.alloc, self.req, self.ram, self.bw,
            self.ram_max, self.hist, self.hlen, s.power_table, self.power_now, self.ram_aware,
            kernels.KINDS[det.kind], float(det.param), self._mig_mbps, float(s.interval_s),
            *self.pristine))


def _by_mips_desc(vms: list[int], req: FloatArray) -> list[int]:
    return sorted(vms, key=lambda v: -req[v])  # stable, like Collections.sort


@dataclass(frozen=True)
class PaperPolicy:
    """Beloglazov & Buyya's dynamic consolidation: detector + selection + PABFD."""

    detector: Detector
    selection: str = "mmt"
    exclude_overload_targets: bool = False

    def decide(self, snap: Snapshot, seed: int = 0) -> Plan:
        rng = np.random.default_rng([seed, snap.step])
        p = Planner(snap)
        det = self.detector
        all_hosts = np.arange(snap.n_hosts)
        over = p.is_overloaded(det, all_hosts)
        over_list = [int(h) for h in np.flatnonzero(over)]
        to_move: list[int] = []
        for h in over_list:
            while True:
                vm = select_vm(self.selection, p.host_vms[h], snap.vm_ram, snap.vm_hist,
                               snap.vm_hist_count, rng)
                if vm is None:
                    break
                to_move.append(vm)
                p.remove(h, vm)
                if not p.is_overloaded(det, np.asarray([h]))[0]:
                    break
        actions: list[Action] = []
        targets: set[int] = set()
        for vm in _by_mips_desc(to_move, snap.vm_req):
            h = p.pabfd(vm, det, over)
            if h >= 0:
                p.add(h, vm)
                actions.append(Migrate(vm, int(snap.vm_host[vm]), h))
                targets.add(h)
        actions.extend(self._underload(snap, p, over, targets))
        return Plan(_with_power_actions(snap, actions), tuple(over_list))

    def _underload(self, snap: Snapshot, p: Planner, over: BoolArray,
                   overload_targets: set[int]) -> list[Action]:
        det = self.detector
        off = snap.host_util == 0
        excl_place = over | off
        excl_under = excl_place.copy()
        if self.exclude_overload_targets:
            excl_under[list(overload_targets)] = True
        util = snap.host_util
        order = [int(h) for h in np.lexsort((np.arange(util.size), util))
                 if 0 < util[h] < 1 and not excl_under[h]]
        actions: list[Action] = []
        for h in order:
            if excl_under[h]:
                continue
            excl_under[h] = True
            excl_place[h] = True
            vms = p.host_vms[h]
            if not vms:
                continue
            placed: list[tuple[int, int]] = []
            for vm in _by_mips_desc(vms, snap.vm_req):
                t = p.pabfd(vm, det, excl_place)
                if t < 0:
                    for pvm, ph in placed:
                        p.remove(ph, pvm)
                    placed = []
                    break
                p.add(t, vm)
                placed.append((vm, t))
            for vm, t in placed:
                excl_under[t] = True
                actions.append(Migrate(vm, int(snap.vm_host[vm]), t))
        return actions


def _with_power_actions(snap: Snapshot, actions: list[Action]) -> tuple[Action, ...]:
    """Add PowerOn for off hosts that receive VMs and PowerOff for hosts left empty."""
    final = {a.vm: a.target for a in actions if isinstance(a, Migrate)}
    count = np.bincount(snap.vm_host[snap.vm_host >= 0], minlength=snap.n_hosts)
    for vm, t in final.items():
        count[snap.vm_host[vm]] -= 1
        count[t] += 1
    out: list[Action] = list(actions)
    on = sorted({t for t in final.values() if snap.host_util[t] == 0})
    out.extend(PowerOn(h) for h in on)
    sources = sorted({int(snap.vm_host[vm]) for vm in final})
    out.extend(PowerOff(h) for h in sources if count[h] == 0)
    return tuple(out)


def initial_placement(snap: Snapshot, det: Detector) -> IntArray:
    """Place every VM, in VM order, by PABFD at its full MIPS; -1 if none fits.

    As CloudSim creates VMs: a VM being created requests its full MIPS and is
    allocated that; once created it requests nothing until its cloudlet starts.
    So room is judged on full MIPS (and RAM and bandwidth), the overload check (THR 0.7
    fallback: no history yet) sees only the new VM, and every host's power "now" is idle.
    ``det`` is accepted for symmetry; with no history every detector falls back.
    """
    del det
    s = snap
    n_h = s.n_hosts
    alloc = np.zeros(n_h)
    avail = s.host_mips.astype(np.float64)
    ram = np.zeros(n_h)
    bw = np.zeros(n_h)
    nothing = np.zeros(n_h)
    none = np.zeros(n_h, dtype=bool)
    no_hist = np.zeros((n_h, HISTORY))
    no_len = np.zeros(n_h, dtype=np.int64)
    vm_no_hist = np.zeros(HISTORY)
    idle = power_at(s.power_table, np.arange(n_h), np.zeros(n_h))
    klass, n_klass = _host_classes(s)
    klass = klass.copy()
    mig = np.asarray(s.migration_mbps, dtype=np.float64)
    thr = kernels.KINDS["thr"]
    out = np.full(s.vm_mips.shape[0], -1, dtype=np.int64)
    for vm in range(out.size):
        m = float(s.vm_mips[vm])
        h = int(kernels.pabfd_scan(
            m, m, vm_no_hist, 0, float(s.vm_ram[vm]), float(s.vm_bw[vm]), none,
            s.host_pe_mips, s.host_mips, s.host_ram, s.host_bw, avail, alloc, nothing, ram,
            bw, nothing, no_hist, no_len, s.power_table, idle, True, thr,
            FALLBACK_THR, mig, float(s.interval_s), klass, n_klass))
        if h < 0:
            continue
        alloc[h] += m
        avail[h] -= m
        ram[h] += s.vm_ram[vm]
        bw[h] += s.vm_bw[vm]
        klass[h] = -1
        out[vm] = h
    return out


def first_fit(snap: Snapshot) -> IntArray:
    """CloudSim's PowerVmAllocationPolicySimple: the first host with room (DVFS, NPA)."""
    p = Planner(snap, ram_aware=True)  # a VM being created requests its RAM and bandwidth
    none = np.zeros(snap.n_hosts, dtype=bool)
    out = np.full(snap.vm_mips.shape[0], -1, dtype=np.int64)
    for vm in range(out.size):
        cand = p.suitable(vm, none)
        if cand.size:
            h = int(cand[0])
            p.add(h, vm)
            out[vm] = h
    return out
