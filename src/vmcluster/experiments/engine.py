"""Interval simulation of a datacenter on CPU traces, with CloudSim 3.0.3's metrics.

Time advances in scheduling intervals (300 s); in interval ``k`` a VM requests
``mips * u_k`` at its start, linearly interpolated towards ``u_{k+1}``
(CloudSim's ``UtilizationModelPlanetLabInMemory``). At each interval's start
(from the second) the policy decides; its migrations start at once and take
``RAM / (host bandwidth / 2)`` (CloudSim: 62.5 MB/s on 1 Gbit/s). While a VM
migrates it gets 90 % of its capped request on the source (that host still
counts it in full) and the target carries 10 % of it. A migration ends inside
the interval, so the interval splits into frames at the completion times.

Metrics, as CloudSim's ``PowerDatacenter`` and examples ``Helper`` compute them:

* energy: per host and frame, the trapezoid of the power at the frame's start
  and end utilisation; 0 when the utilisation at the start is 0 (switched off);
* SLATAH: time a host was active with allocated < requested MIPS, over the
  time hosts were active (a migration target counts its in-coming VM's full
  request but only 10 % of it allocated, so every migration costs SLATAH);
* PDM: MIPS not allocated to VMs while they migrate, over all MIPS requested;
* SLAV = SLATAH x PDM, ESV = energy x SLAV; migrations.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from vmcluster.policy.power.detection import HISTORY, Detector
from vmcluster.policy.power.placement import first_fit, initial_placement
from vmcluster.policy.power.plan import Migrate, Policy, Snapshot, host_classes, power_at

__all__ = ["INSTANT_OFFSET_S", "Datacenter", "Metrics", "place_initial", "simulate"]

# CloudSim's scheduling instants are 0.1 s into each interval (the broker's VMs are
# acknowledged at 0.1 s and every later event is a multiple of the interval after)
INSTANT_OFFSET_S = 0.1

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]


@dataclass(frozen=True, eq=False)
class Datacenter:
    """Hosts and VMs (MIPS, MB, Mbit/s); ``power_table[h]`` = watts at 0, 10, ..., 100 %."""

    host_pe_mips: FloatArray
    host_pes: IntArray
    host_ram: FloatArray
    host_bw: FloatArray
    power_table: FloatArray
    vm_mips: FloatArray
    vm_ram: FloatArray
    vm_bw: FloatArray
    interval_s: float = 300.0

    @property
    def host_mips(self) -> FloatArray:
        return np.asarray(self.host_pe_mips * self.host_pes, dtype=np.float64)

    @property
    def n_hosts(self) -> int:
        return int(self.host_pe_mips.shape[0])

    @functools.cached_property
    def host_class(self) -> IntArray:
        """Hosts numbered by type (:func:`~vmcluster.policy.power.plan.host_classes`)."""
        return host_classes(self.host_pe_mips, self.host_mips, self.host_ram, self.host_bw,
                            self.power_table)


@dataclass(frozen=True)
class Metrics:
    """One simulated run."""

    energy_kwh: float
    slatah: float
    pdm: float
    slav: float
    esv: float
    migrations: int
    sla_overall: float
    decisions: int
    decision_s: float  # mean wall time per decision (0 without a clock)
    active_hosts_mean: float
    # What an operator reads beside CloudSim's metrics: the share of active host time a
    # host was really short of MIPS for the VMs running on it (no migration charge), the
    # share of requested MIPS not delivered, hosts switched on after the start, and the
    # most hosts active at once.
    overload_pct: float = 0.0
    mips_lost_pct: float = 0.0
    boots: int = 0
    active_hosts_peak: int = 0
    boot_kwh: float = 0.0  # host boots charged (included in energy_kwh; 0 when not charged)
    # per instant: time (s), active hosts, mean power to the next instant (kW), hosts
    # really short of MIPS, migrations started
    series: tuple[tuple[float, float, float, float, float], ...] = ()


@dataclass
class _Acc:
    energy_ws: float = 0.0
    active_s: float = 0.0
    viol_s: float = 0.0
    requested: float = 0.0
    allocated: float = 0.0
    under_mig: float = 0.0
    active_host_s: float = 0.0
    overload_s: float = 0.0
    boots: int = 0
    peak: int = 0
    boot_ws: float = 0.0


def _frame(
    dc: Datacenter, vm: IntArray, host: IntArray, kind: IntArray, r: FloatArray
) -> tuple[FloatArray, FloatArray, FloatArray]:
    """Host utilised MIPS, host requested MIPS and per-entry allocated MIPS.

    ``kind`` per (vm, host) entry: 0 resident, 1 migrating out (source), 2 migrating in.
    Entries come in the hosts' list order, so each host's sums add up in the order
    CloudSim's do (the same floating-point result, down to the tests of equality).
    """
    n_h = dc.n_hosts
    cap = dc.host_mips
    req = r[vm]
    capped = np.minimum(req, dc.host_pe_mips[host])
    eff = np.where(kind == 2, capped * 0.1, capped)
    need = np.bincount(host, eff, n_h)
    over = need > cap
    alloc = np.where(kind == 1, capped * 0.9, eff)
    if over.any():
        scale = np.where(over, cap / np.where(need > 0, need, 1.0), 1.0)[host]
        o = over[host]
        alloc = np.where(o, np.floor(alloc * scale), alloc)
    counted = np.where(kind == 1, alloc / 0.9, alloc)
    used = np.bincount(host, counted, n_h)
    requested = np.bincount(host, req, n_h)
    return (used.astype(np.float64), requested.astype(np.float64),
            np.asarray(alloc, dtype=np.float64))


def _util(used: FloatArray, cap: FloatArray) -> FloatArray:
    u = used / cap
    return np.where((u > 1) & (u < 1.01), 1.0, u)


def _snapshot(
    dc: Datacenter, vm_host: IntArray, host_vms: list[list[int]], r: FloatArray,
    hist: FloatArray, count: IntArray, util: FloatArray, step: int,
) -> Snapshot:
    return Snapshot(
        host_pe_mips=dc.host_pe_mips, host_mips=dc.host_mips, host_ram=dc.host_ram,
        host_bw=dc.host_bw, power_table=dc.power_table, vm_mips=dc.vm_mips, vm_ram=dc.vm_ram,
        vm_bw=dc.vm_bw, vm_host=vm_host.copy(), host_vms=tuple(tuple(v) for v in host_vms),
        vm_req=r, vm_hist=hist, vm_hist_count=count, host_util=util,
        interval_s=dc.interval_s, step=step, host_class=dc.host_class,
    )


def place_initial(dc: Datacenter, placement: str = "pabfd") -> IntArray:
    """Where each VM is created (-1: nowhere): PABFD at full MIPS (THR 0.7 check) or
    first fit, as CloudSim creates VMs (see :func:`simulate`)."""
    n_vm, n_h = dc.vm_mips.shape[0], dc.n_hosts
    empty = _snapshot(dc, np.full(n_vm, -1, dtype=np.int64), [[] for _ in range(n_h)],
                      dc.vm_mips.copy(), np.zeros((n_vm, HISTORY)),
                      np.zeros(n_vm, dtype=np.int64), np.zeros(n_h), 0)
    return (first_fit(empty) if placement == "first-fit"
            else initial_placement(empty, Detector("thr", 0.7)))


def simulate(
    dc: Datacenter,
    util_pct: npt.NDArray[np.uint8] | npt.NDArray[np.float64],
    policy: Policy | None,
    *,
    placement: str = "pabfd",
    seed: int = 0,
    clock: Callable[[], float] | None = None,
    progress: Callable[[int], None] | None = None,
    drop_idle_vms: bool = True,
    offset_s: float = INSTANT_OFFSET_S,
    boot_s: float = 0.0,
) -> Metrics:
    """Run one day (``util_pct``: VMs x intervals, percent). ``policy=None``: no migrations.

    ``placement`` is the initial placement: ``pabfd`` (power-aware, THR 0.7 check, as the
    migration policies do in CloudSim) or ``first-fit`` (CloudSim's DVFS/NPA runs).
    ``drop_idle_vms``: CloudSim destroys a VM whose requested MIPS is 0 at a
    scheduling instant (``HostDynamicWorkload.getCompletedVms``); sampled 0.1 s
    after the interval start, that is a VM whose samples ``k`` and ``k+1`` are
    both 0. About half the PlanetLab VMs leave that way during a day.

    Time runs as in CloudSim 3.0.3: the VMs are created at 0 and ask for nothing until
    the first scheduling instant, ``interval + offset_s`` (300.1 s); from there every
    ``interval`` a VM history value is taken, the policy decides and its migrations
    start, each instant's requests read ``offset_s`` into the interval (interpolated
    between the samples around it). Energy and the SLA metrics count from the first
    instant to the day's end; the last interval's frame that would end after the day
    (at ``steps * interval + offset_s``) is not counted, as CloudSim stops at its limit.
    """
    n_vm, steps = util_pct.shape
    if n_vm != dc.vm_mips.shape[0]:
        raise ValueError("trace rows and datacenter VMs differ")
    cap = dc.host_mips
    n_h = dc.n_hosts
    hosts_ix = np.arange(n_h)
    dt_full = dc.interval_s
    day_end = steps * dt_full
    u = util_pct.astype(np.float64) / 100.0
    u = np.concatenate([u, u[:, -1:], u[:, -1:]], axis=1)  # CloudSim repeats the last sample

    def level(t: float) -> FloatArray:
        """Each VM's utilisation at time ``t``, as UtilizationModelPlanetLabInMemory."""
        if t % dt_full == 0:
            return np.asarray(u[:, int(t) // int(dt_full)], dtype=np.float64)
        i1, i2 = math.floor(t / dt_full), math.ceil(t / dt_full)
        delta = (u[:, i2] - u[:, i1]) / ((i2 - i1) * dt_full)
        return np.asarray(u[:, i1] + delta * (t - i1 * dt_full), dtype=np.float64)

    hist = np.zeros((n_vm, HISTORY))
    count = np.zeros(n_vm, dtype=np.int64)
    # initial placement: every VM requests its full MIPS while being instantiated
    vm_host = place_initial(dc, placement)
    if (vm_host < 0).any():
        raise ValueError(f"{int((vm_host < 0).sum())} VMs do not fit on the hosts")
    host_vms: list[list[int]] = [[] for _ in range(n_h)]
    for v, h in enumerate(vm_host):
        host_vms[int(h)].append(v)
    # a VM's place in its host's list: the order in which it was added there
    seq = np.arange(n_vm, dtype=np.int64)
    next_seq = n_vm
    acc = _Acc()
    peak_w = dc.power_table[:, -1]
    series: list[tuple[float, float, float, float, float]] = []
    migrations = 0
    decisions = 0
    decision_s = 0.0
    vm_ix = np.arange(n_vm)
    alive = np.ones(n_vm, dtype=bool)
    was_active: npt.NDArray[np.bool_] | None = None
    instant = offset_s  # CloudSim's clock: each instant is the last plus the interval
    for k in range(1, steps):
        instant += dt_full
        now = level(instant)
        if drop_idle_vms:
            gone = np.flatnonzero(alive & (now == 0))
            for g in gone.tolist():
                host_vms[int(vm_host[g])].remove(g)
            alive[gone] = False
            vm_host[gone] = -1
            vm_ix = np.flatnonzero(alive)
        vm_ix = vm_ix[np.argsort(seq[vm_ix], kind="stable")]  # the hosts' list order
        r0 = dc.vm_mips * now * alive
        hist[:, 1:] = hist[:, :-1]
        hist[:, 0] = now
        count = np.minimum(count + 1, HISTORY)
        plan_moves: list[Migrate] = []
        used_now, _, _ = _frame(dc, vm_ix, vm_host[vm_ix], np.zeros(vm_ix.size, np.int64), r0)
        if policy is not None:
            snap = _snapshot(dc, vm_host, host_vms, r0, hist, count, _util(used_now, cap), k)
            t0 = clock() if clock else 0.0
            plan = policy(snap, seed)
            if clock:
                decision_s += clock() - t0
            decisions += 1
            plan_moves = list(plan.migrations)
        migrations += len(plan_moves)
        # migration durations and frame boundaries
        mig_vm = np.asarray([m.vm for m in plan_moves], dtype=np.int64)
        mig_tgt = np.asarray([m.target for m in plan_moves], dtype=np.int64)
        dur = dc.vm_ram[mig_vm] / (dc.host_bw[mig_tgt] / 16.0) if plan_moves else np.zeros(0)
        start = np.zeros(dur.size)
        if boot_s > 0 and plan_moves:  # off targets boot first; their VMs wait
            cold = used_now[mig_tgt] == 0
            start[cold] = boot_s
            booted = np.unique(mig_tgt[cold])
            acc.boot_ws += boot_s * float(peak_w[booted].sum())
        dur = np.minimum(start + dur, dt_full)
        start = np.minimum(start, dur)
        # in-coming VMs join the end of their target's list in plan order; when a
        # migration ends its VM leaves both lists and joins the target's end again
        in_seq = np.arange(next_seq, next_seq + mig_vm.size, dtype=np.int64)
        next_seq += mig_vm.size
        done_order = np.lexsort((np.arange(dur.size), dur))
        done_seq = np.empty(dur.size, dtype=np.int64)
        done_seq[done_order] = np.arange(next_seq, next_seq + dur.size)
        next_seq += dur.size
        bounds = np.unique(np.concatenate([[0.0, dt_full], start, dur]))
        ra = r0
        energy_before, overloaded_now, active_now = acc.energy_ws, 0, 0
        for i in range(bounds.size - 1):
            a, b = float(bounds[i]), float(bounds[i + 1])
            if instant + b > day_end:
                break  # CloudSim stops at the day's end: this frame is never closed
            dt = b - a
            live = (start <= a) & (dur > a)  # migrations in progress during this frame
            done = dur <= a
            host_now = vm_host.copy()
            kind_now = np.zeros(n_vm, dtype=np.int64)
            seq_now = seq.copy()
            kind_now[mig_vm[live]] = 1
            host_now[mig_vm[done]] = mig_tgt[done]  # the VM now lives on its (last) target
            seq_now[mig_vm[done]] = done_seq[done]
            ev = np.concatenate([vm_ix, mig_vm[live]])
            eh = np.concatenate([host_now[vm_ix], mig_tgt[live]])
            ek = np.concatenate([kind_now[vm_ix], np.full(int(live.sum()), 2, np.int64)])
            es = np.concatenate([seq_now[vm_ix], in_seq[live]])
            o = np.argsort(es, kind="stable")
            ev, eh, ek = ev[o], eh[o], ek[o]
            if i:
                ra = dc.vm_mips * level(instant + a)
            rb = dc.vm_mips * level(instant + b)
            used_a, req_a, alloc_a = _frame(dc, ev, eh, ek, ra)
            used_b, _, _ = _frame(dc, ev, eh, ek, rb)
            ua = _util(used_a, cap)
            ub = _util(used_b, cap)
            pa = power_at(dc.power_table, hosts_ix, ua)
            pb = power_at(dc.power_table, hosts_ix, ub)
            acc.energy_ws += float(np.where(ua == 0, 0.0, pa + (pb - pa) / 2.0).sum()) * dt
            active = used_a > 0
            acc.active_s += float(active.sum()) * dt
            acc.viol_s += float((active & (used_a < req_a)).sum()) * dt
            own = ek != 2
            vreq = ra[ev[own]]
            valloc = alloc_a[own]
            acc.requested += float(vreq.sum()) * dt
            acc.allocated += float(valloc.sum()) * dt
            mig_under = (ek[own] == 1) & (valloc < vreq)
            acc.under_mig += float((vreq - valloc)[mig_under].sum()) * dt
            acc.active_host_s += float(active.sum()) * dt
            # really short: the VMs running here (not the ones arriving) want more than
            # the host has
            here = eh[own]
            real = np.bincount(here, np.minimum(vreq, dc.host_pe_mips[here]), n_h)
            short = active & (real > cap * (1 + 1e-9))
            acc.overload_s += float(short.sum()) * dt
            if i == 0:
                overloaded_now, active_now = int(short.sum()), int(active.sum())
            if was_active is not None:
                acc.boots += int((active & ~was_active).sum())
            was_active = active
            acc.peak = max(acc.peak, int(active.sum()))
        span = min(dt_full, day_end - instant)
        series.append((instant, float(active_now), (acc.energy_ws - energy_before) / span / 1e3,
                       float(overloaded_now), float(len(plan_moves))))
        if plan_moves:
            seq[mig_vm[done_order]] = done_seq[done_order]
            for j in done_order:
                vm, t = int(mig_vm[j]), int(mig_tgt[j])
                src = int(vm_host[vm])
                if vm in host_vms[src]:
                    host_vms[src].remove(vm)
                if vm in host_vms[t]:
                    host_vms[t].remove(vm)
                host_vms[t].append(vm)
                vm_host[vm] = t
        if progress:
            progress(k)
    energy_kwh = (acc.energy_ws + acc.boot_ws) / 3.6e6
    slatah = acc.viol_s / acc.active_s if acc.active_s else 0.0
    pdm = acc.under_mig / acc.requested if acc.requested else 0.0
    slav = slatah * pdm
    return Metrics(
        energy_kwh=energy_kwh, slatah=slatah, pdm=pdm, slav=slav, esv=energy_kwh * slav,
        migrations=migrations,
        sla_overall=(acc.requested - acc.allocated) / acc.requested if acc.requested else 0.0,
        decisions=decisions, decision_s=decision_s / decisions if decisions else 0.0,
        active_hosts_mean=acc.active_host_s / (steps * dt_full),
        overload_pct=100.0 * acc.overload_s / acc.active_s if acc.active_s else 0.0,
        mips_lost_pct=100.0 * (acc.requested - acc.allocated) / acc.requested
        if acc.requested else 0.0,
        boots=acc.boots, active_hosts_peak=acc.peak, boot_kwh=acc.boot_ws / 3.6e6,
        series=tuple(series),
    )
