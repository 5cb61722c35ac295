"""Our consolidation policy: fewer, cheaper, better-aimed migrations.

What it uses that the paper's policies do not:

* the pre-copy model (:mod:`vmcluster.policy.migration_model`) predicts each
  candidate migration's time, downtime and bytes on the migration network
  (half the host link, as the datacenter reserves it), with a dirty rate that
  grows with the VM's CPU load; the SLA cost of a migration is the MIPS it
  degrades times that time;
* true power increase: waking a switched-off host costs its idle power too
  (PABFD counts only the slope above idle, so it keeps waking hosts that the
  under-load step then empties again);
* an energy break-even test: a host is emptied and switched off only when its
  idle power over the expected idle window pays back the migrations' energy
  and one boot, and the expected window is long enough that the fleet, on the
  linear-regression forecast of its load, will not need the host again soon;
* limits: at most ``max_in`` in-coming and ``max_out`` out-going migrations per
  host and ``net_mb`` MB over the network per decision; targets are filled
  only to ``target_util`` of their MIPS, now and as forecast;
* the cheapest hosts per MIPS: a host is woken by its watts per MIPS when full (the
  ML110 G5 before the G4), and the dearest active hosts are the first emptied.

Pure: a snapshot and a seed in, a plan out.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import numpy.typing as npt

from vmcluster.policy.migration_model import PrecopyInput, run
from vmcluster.policy.power.detection import lr_predict
from vmcluster.policy.power.lazy import kernels
from vmcluster.policy.power.placement import Planner, _with_power_actions
from vmcluster.policy.power.plan import Action, Migrate, Plan, Snapshot, power_at
from vmcluster.policy.power.thresholds import LR_WINDOW

__all__ = ["OursPolicy", "predicted_migration"]

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]


@lru_cache(maxsize=4096)
def predicted_migration(ram_mb: float, cpu: float, bw_mbps: float) -> tuple[float, float, float]:
    """(seconds, downtime ms, MB sent) for a VM of ``ram_mb`` at CPU load ``cpu`` (0..1)."""
    dirty = 2.0 + 30.0 * min(max(cpu, 0.0), 1.0)  # MB/s: a busier guest dirties more pages
    res = run(PrecopyInput(memory_mib=ram_mb, dirty_mibps=dirty, wws_mib=0.25 * ram_mb,
                           bandwidth_mibps=bw_mbps, downtime_ms=300.0, max_passes=30))
    return res.total_s, res.downtime_ms, res.sent_mib


@dataclass(frozen=True)
class OursPolicy:
    """Parameters: see the module docstring."""

    # tuned on the five shipped PlanetLab days (docs/power.md, "Our policy"): with these,
    # each day has less energy than LR-MMT-1.2, less real overload and fewer MIPS lost
    # than IQR-MMT-1.5, and under a fifth of LR-MMT's migrations
    over_util: float = 0.95
    lr_safety: float = 1.4
    target_util: float = 0.75
    under_util: float = 0.5
    max_in: int = 2
    max_out: int = 8
    # MB a decision may send; the default does not bind: the first decision packs the
    # spread the VMs were created with in one go, as the paper's policies do (a budget
    # of 60 GB took an hour there, at twice the power)
    net_mb: float = 1_000_000.0
    boot_s: float = 120.0
    horizon_steps: int = 6
    fleet_util: float = 0.8

    def decide(self, snap: Snapshot, seed: int = 0) -> Plan:
        del seed  # deterministic
        p = Planner(snap)
        s = snap
        cap = s.host_mips
        n_h = s.n_hosts
        util_now = p.req / cap
        pred = np.where(p.hlen >= LR_WINDOW, lr_predict(p.hist), util_now)
        capped = np.zeros(n_h, dtype=bool)
        placed = np.flatnonzero(s.vm_host >= 0)
        hot = placed[s.vm_req[placed] > s.host_pe_mips[s.vm_host[placed]]]
        capped[s.vm_host[hot]] = True
        over = (util_now > self.over_util) | (pred * self.lr_safety >= 1.0) | capped
        over &= p.alloc > 0
        n_in = np.zeros(n_h, dtype=np.int64)
        n_out = np.zeros(n_h, dtype=np.int64)
        budget = [self.net_mb]
        cost = self._cost_fn(s)
        actions: list[Action] = []
        to_move: list[tuple[int, int]] = []
        for h in (int(x) for x in np.flatnonzero(over)):
            while p.host_vms[h] and n_out[h] < self.max_out:
                vms = p.host_vms[h]
                ok = [v for v in vms if not self._still_over(p, h, v)]
                if ok:
                    vm = min(ok, key=lambda v: (cost(v), v))
                else:
                    vm = max(vms, key=lambda v: (s.vm_req[v] / max(cost(v), 1e-9), -v))
                p.remove(h, vm)
                n_out[h] += 1
                to_move.append((vm, h))
                if not self._host_over(p, h):
                    break
        active = p.alloc > 0
        for vm, h in sorted(to_move, key=lambda x: -s.vm_req[x[0]]):
            t = self._fit(p, vm, over, active, n_in, allow_off=True)
            if t < 0:
                p.add(h, vm)  # stays where it is
                continue
            p.add(t, vm)
            n_in[t] += 1
            active[t] = True
            budget[0] -= predicted_migration(float(s.vm_ram[vm]), float(s.vm_hist[vm, 0]),
                                             float(s.migration_mbps[t]))[2]
            actions.append(Migrate(vm, int(s.vm_host[vm]), t))
        actions.extend(self._underload(p, over, active, n_in, n_out, budget, pred))
        return Plan(_with_power_actions(s, actions), tuple(int(h) for h in np.flatnonzero(over)))

    def _cost_fn(self, s: Snapshot) -> Callable[[int], float]:
        def cost(v: int) -> float:
            h = int(s.vm_host[v])
            secs = predicted_migration(float(s.vm_ram[v]), float(s.vm_hist[v, 0]),
                                       float(s.migration_mbps[h]))[0]
            return float(s.vm_req[v]) * secs + 1e-3 * secs
        return cost

    def _host_over(self, p: Planner, h: int) -> bool:
        s = p.s
        u = float(p.req[h] / s.host_mips[h])
        if u > self.target_util:
            return True
        pe = s.host_pe_mips[h]
        if any(s.vm_req[v] > pe for v in p.host_vms[h]):
            return True
        return bool(kernels.forecast(p.hist[h], int(p.hlen[h]), u) * self.lr_safety >= 1.0)

    def _still_over(self, p: Planner, h: int, v: int) -> bool:
        p.remove(h, v)
        res = self._host_over(p, h)
        p.add(h, v)
        return res

    def _fit(self, p: Planner, vm: int, excluded: npt.NDArray[np.bool_],
             active: npt.NDArray[np.bool_], n_in: IntArray, allow_off: bool) -> int:
        """The target for ``vm`` (:func:`.kernels.fit_scan`), or -1."""
        s = p.s
        klass, n_klass = p.pristine
        return int(kernels.fit_scan(
            float(s.vm_req[vm]), float(s.vm_mips[vm]), p.vm_hist[vm], int(p.vm_len[vm]),
            excluded, n_in, self.max_in, active, allow_off, s.host_pe_mips, s.host_mips,
            p.avail, p.alloc, p.req, p.hist, p.hlen, s.power_table, p.power_now,
            s.watts_per_mips, self.target_util, self.lr_safety, klass, n_klass))

    def _underload(self, p: Planner, over: npt.NDArray[np.bool_], active: npt.NDArray[np.bool_],
                   n_in: IntArray, n_out: IntArray, budget: list[float],
                   pred: FloatArray) -> list[Action]:
        s = p.s
        cap = s.host_mips
        util = p.req / cap
        # fleet forecast: will the remaining active capacity hold the forecast load?
        demand = float(np.maximum(pred, util)[active].dot(cap[active]))
        capacity = float(cap[active].sum())
        idle = power_at(s.power_table, np.arange(s.n_hosts), np.zeros(s.n_hosts))
        excluded = over.copy() | ~active
        actions: list[Action] = []
        # the dearest hosts per MIPS served first (they are the ones to switch off), the
        # least loaded first among alike
        dear = s.watts_per_mips
        order = [int(h) for h in np.lexsort((np.arange(util.size), util, -dear))
                 if active[h] and not over[h] and util[h] < self.under_util and n_in[h] == 0]
        for h in order:
            if excluded[h] or n_in[h] > 0:
                continue
            if capacity - cap[h] < demand / self.fleet_util:
                break  # the fleet will need this host again within the horizon
            vms = list(p.host_vms[h])
            if not vms or len(vms) > self.max_out:
                continue
            mig = [predicted_migration(float(s.vm_ram[v]), float(s.vm_hist[v, 0]),
                                       float(s.migration_mbps[h])) for v in vms]
            mb = sum(m[2] for m in mig)
            if mb > budget[0]:
                continue
            # break-even: idle power over the window vs migration energy and one boot
            window_s = self.horizon_steps * s.interval_s
            mig_j = sum(m[0] for m in mig) * 2 * 10.0  # ~10 W extra on each end while copying
            boot_j = self.boot_s * float(idle[h])
            if float(p.power_now[h]) * window_s <= mig_j + boot_j:
                continue
            excluded[h] = True
            placed: list[tuple[int, int]] = []
            for vm in sorted(vms, key=lambda v: -s.vm_req[v]):
                t = self._fit(p, vm, excluded, active, n_in, allow_off=False)
                if t < 0:
                    for pv, pt in placed:
                        p.remove(pt, pv)
                        n_in[pt] -= 1
                    placed = []
                    break
                p.add(t, vm)
                n_in[t] += 1
                placed.append((vm, t))
            if not placed:
                continue
            for vm in vms:
                p.host_vms[h].remove(vm)
            p.recompute(h)
            for vm, t in placed:
                excluded[t] = True  # a host that receives is not emptied in the same step
                actions.append(Migrate(vm, int(s.vm_host[vm]), t))
            active[h] = False
            capacity -= cap[h]
            budget[0] -= mb
        return actions
