"""The consolidation policies' inner loops, compiled (numba), with CloudSim 3.0.3's
arithmetic: the same operations in the same order, so every comparison of nearly equal
numbers falls as CloudSim's does and the policies make its very decisions.

* :func:`watts`: ``PowerModelSpecPower.getPower`` (its interpolation formula).
* :func:`host_overloaded`: ``isHostOverUtilized`` of THR, IQR, MAD (``MathUtil.iqr``,
  ``MathUtil.mad`` on commons-math's legacy percentile) and LR/LRR (commons-math's
  ``SimpleRegression`` on the last 10 values, predicting the next migration's end).
* :func:`aggregate`: a host's sums over its VM list, in list order.
* :func:`pabfd_scan`: ``findHostForVm``: the first host with the least power increase
  among those with room that the VM would not overload.

Compiled on first use and cached on disk (``cache=True``); the first run in a fresh
install pays a few seconds for it.
"""

from __future__ import annotations

import math

import numpy as np
import numpy.typing as npt
from numba import njit

from vmcluster.policy.power.thresholds import FALLBACK_THR, LR_WINDOW, MIN_ROBUST

__all__ = [
    "IQR",
    "KINDS",
    "LR",
    "MAD",
    "THR",
    "aggregate",
    "aggregate_all",
    "fit_scan",
    "forecast",
    "host_overloaded",
    "lr_forecast",
    "mc_pick",
    "overloaded_rows",
    "pabfd_scan",
    "spread_rows",
    "watts",
]

# compiled once and cached on disk; division by zero gives inf or NaN, as in Java
_jit = njit(cache=True, error_model="numpy")

THR, IQR, MAD, LR = 0, 1, 2, 3
_DOUBLE_MAX = 1.7976931348623157e308  # Java's Double.MAX_VALUE: where a least-value search starts
KINDS = {"thr": THR, "iqr": IQR, "mad": MAD, "lr": LR, "lrr": LR}

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]
BoolArray = npt.NDArray[np.bool_]


@_jit
def _watts(row: FloatArray, u: float) -> float:
    """Watts at utilisation ``u`` (0..1) of a host whose table is ``row``."""
    if u < 0.0:
        u = 0.0
    elif u > 1.0:
        u = 1.0
    # CloudSim first returns the table point where u % 0.1 == 0; there u * 10 is whole,
    # floor == ceil and the formula below gives that same point, so no test is needed
    lo_i = math.floor(u * 10)
    hi_i = math.ceil(u * 10)
    lo = row[lo_i]
    delta = (row[hi_i] - lo) / 10
    return float(lo + delta * (u - lo_i / 10) * 100)


@_jit
def watts(table: FloatArray, hosts: IntArray, util: FloatArray) -> FloatArray:
    """Watts of each of ``hosts`` at ``util`` (clamped to 0..1)."""
    out = np.empty(hosts.size)
    for i in range(hosts.size):
        out[i] = _watts(table[hosts[i]], util[i])
    return out


@_jit
def _select(a: FloatArray, lo: int, hi: int, k: int) -> None:
    """Reorder ``a[lo:hi]`` so that ``a[k]`` holds the value it would hold sorted, the
    smaller ones before it and the larger after (quickselect: a history's order statistics
    without sorting it, and without allocating)."""
    while hi - lo > 1:
        x, y, z = a[lo], a[(lo + hi - 1) // 2], a[hi - 1]
        pivot = max(min(x, y), min(max(x, y), z))  # the median of three
        i, j = lo, hi - 1
        while i <= j:
            while a[i] < pivot:
                i += 1
            while a[j] > pivot:
                j -= 1
            if i <= j:
                a[i], a[j] = a[j], a[i]
                i += 1
                j -= 1
        if k <= j:
            hi = j + 1
        elif k >= i:
            lo = i
        else:
            return


@_jit
def _median(a: FloatArray, n: int) -> float:
    """commons-math's legacy 50th percentile of ``a[:n]`` (reordered in place)."""
    if n == 1:
        return float(a[0])
    pos = 50.0 * (n + 1) / 100
    fpos = math.floor(pos)
    if pos < 1 or pos >= n:  # n == 1 only, handled above
        return float(a[0])
    _select(a, 0, n, fpos - 1)
    lower = a[fpos - 1]
    dif = pos - fpos
    if dif == 0.0:
        return float(lower)  # lower + 0 * (upper - lower), as commons-math has it
    upper = a[fpos]  # the next order statistic: the least of those after it
    for i in range(fpos + 1, n):
        upper = min(upper, a[i])
    return float(lower + dif * (upper - lower))


@_jit
def _spread(kind: int, values: FloatArray, n: int, a: FloatArray) -> float:
    """MAD or IQR of ``values[:n]`` as CloudSim's MathUtil computes them (``a``: room for
    ``n`` values)."""
    for i in range(n):
        a[i] = values[i]
    if kind == MAD:
        med = _median(a, n)
        for i in range(n):
            a[i] = abs(med - values[i])
        return _median(a, n)
    q1 = min(max(math.floor(0.25 * (n + 1) + 0.5) - 1, 0), n - 1)
    q3 = min(max(math.floor(0.75 * (n + 1) + 0.5) - 1, 0), n - 1)
    _select(a, 0, n, q1)
    low = a[q1]
    if q3 > q1:
        _select(a, q1 + 1, n, q3)
    return float(a[q3] - low)


@_jit
def _lr_forecast(hist: FloatArray, ahead: float) -> float:
    """OLS (commons-math SimpleRegression) on the last 10 values, oldest at x = 1,
    evaluated at x = 10 + ``ahead``."""
    n = 0
    xbar = ybar = sxx = sxy = sx = sy = 0.0
    for i in range(LR_WINDOW):
        x = i + 1.0
        y = hist[LR_WINDOW - 1 - i]
        if n == 0:
            xbar = x
            ybar = y
        else:
            fact1 = 1.0 + n
            fact2 = n / (1.0 + n)
            dx = x - xbar
            dy = y - ybar
            sxx += dx * dx * fact2
            sxy += dx * dy * fact2
            xbar += dx / fact1
            ybar += dy / fact1
        sx += x
        sy += y
        n += 1
    slope = sxy / sxx
    intercept = (sy - slope * sx) / n
    return float(intercept + slope * (LR_WINDOW + ahead))


@_jit
def host_overloaded(kind: int, param: float, hist: FloatArray, length: int, util: float,
                    ahead: float, scratch: FloatArray) -> bool:
    """One host's overload test: ``hist`` its utilisation history (now first),
    ``length`` its length without the trailing zeros, ``util`` its requested MIPS over
    its capacity, ``ahead`` the intervals its longest migration takes (LR); ``scratch``:
    room for a history."""
    if kind == THR:
        return util > param
    if kind == LR:
        if length < LR_WINDOW:
            return util > FALLBACK_THR
        return _lr_forecast(hist, ahead) * param >= 1.0
    if length < MIN_ROBUST:
        return util > FALLBACK_THR
    # exact shortcuts: the spread is at least 0 and at most the range of the values
    if util > 1.0:
        return True
    lo = hi = hist[0]
    for i in range(1, length):
        lo = min(lo, hist[i])
        hi = max(hi, hist[i])
    if util <= 1.0 - param * (hi - lo):
        return False
    return util > 1.0 - param * _spread(kind, hist, length, scratch)


@_jit
def overloaded_rows(kind: int, param: float, hist: FloatArray, length: IntArray,
                    util: FloatArray, ahead: FloatArray) -> BoolArray:
    """:func:`host_overloaded` for each row."""
    out = np.empty(hist.shape[0], dtype=np.bool_)
    scratch = np.empty(hist.shape[1])
    for i in range(hist.shape[0]):
        out[i] = host_overloaded(kind, param, hist[i], length[i], util[i], ahead[i], scratch)
    return out


@_jit
def spread_rows(kind: int, hist: FloatArray, length: IntArray) -> FloatArray:
    """MAD or IQR of each row's first ``length`` values (0 for an empty row)."""
    out = np.zeros(hist.shape[0])
    scratch = np.empty(hist.shape[1])
    for i in range(hist.shape[0]):
        if length[i] > 0:
            out[i] = _spread(kind, hist[i], length[i], scratch)
    return out


@_jit
def lr_forecast(hist: FloatArray, ahead: float) -> FloatArray:
    """:func:`_lr_forecast` for each row."""
    out = np.empty(hist.shape[0])
    for i in range(hist.shape[0]):
        out[i] = _lr_forecast(hist[i], ahead)
    return out


@_jit
def _trimmed(row: FloatArray) -> int:
    n = row.size
    while n > 0 and row[n - 1] == 0.0:
        n -= 1
    return n


@_jit
def aggregate(vms: IntArray, pe: float, cap: float, vm_req: FloatArray,
              vm_mips: FloatArray, vm_ram: FloatArray, vm_bw: FloatArray,
              vm_hist: FloatArray, hist_out: FloatArray) -> tuple[float, float, float,
                                                                  float, float, float, int]:
    """A host's sums over its VM list, in list order: requested MIPS, allocated MIPS
    (over-subscribed: scaled and floored), free MIPS, RAM, bandwidth, the largest VM
    RAM, and its utilisation history (into ``hist_out``) with its trimmed length."""
    req = 0.0
    total = 0.0
    ram = 0.0
    bw = 0.0
    ram_max = 0.0
    hist_out[:] = 0.0
    for v in vms:
        r = vm_req[v]
        req += r
        total += min(r, pe)
        ram += vm_ram[v]
        bw += vm_bw[v]
        ram_max = max(ram_max, vm_ram[v])
        for i in range(hist_out.size):
            hist_out[i] += vm_hist[v, i] * vm_mips[v] / cap
    if total <= cap:
        alloc = total
        avail = cap - total
    else:  # over-subscribed: all scaled down and floored (TimeSharedOverSubscription)
        scale = cap / total
        alloc = 0.0
        for v in vms:
            alloc += math.floor(min(vm_req[v], pe) * scale)
        avail = 0.0
    return req, alloc, avail, ram, bw, ram_max, _trimmed(hist_out)


@_jit
def aggregate_all(flat: IntArray, start: IntArray, pe: FloatArray, cap: FloatArray,
                  vm_req: FloatArray, vm_mips: FloatArray, vm_ram: FloatArray,
                  vm_bw: FloatArray, vm_hist: FloatArray, out: FloatArray,
                  hist_out: FloatArray, hlen: IntArray) -> None:
    """:func:`aggregate` for every host; host ``h``'s VMs are
    ``flat[start[h]:start[h + 1]]``; ``out[h]`` gets its six sums."""
    for h in range(start.size - 1):
        a, b = start[h], start[h + 1]
        if a == b:
            continue
        req, alloc, avail, ram, bw, ram_max, n = aggregate(
            flat[a:b], pe[h], cap[h], vm_req, vm_mips, vm_ram, vm_bw, vm_hist, hist_out[h])
        out[h, 0] = req
        out[h, 1] = alloc
        out[h, 2] = avail
        out[h, 3] = ram
        out[h, 4] = bw
        out[h, 5] = ram_max
        hlen[h] = n


@_jit
def _alike_seen(k: int, seen: BoolArray) -> bool:
    """Is a host of class ``k`` (>= 0: switched off and untouched, of one type) one of
    its kind after the first? The first is marked seen; -1 is never alike."""
    if k < 0:
        return False
    if seen[k]:
        return True
    seen[k] = True
    return False


@_jit
def pabfd_scan(
    r: float, v_mips: float, v_hist: FloatArray, v_len: int, v_ram: float, v_bw: float,
    excluded: BoolArray, host_pe: FloatArray, host_mips: FloatArray, host_ram: FloatArray,
    host_bw: FloatArray, avail: FloatArray, alloc: FloatArray, req: FloatArray,
    ram: FloatArray, bw: FloatArray, ram_max: FloatArray, hist: FloatArray,
    hlen: IntArray, table: FloatArray, power_now: FloatArray, ram_aware: bool,
    kind: int, param: float, mig_mbps: FloatArray, interval_s: float, klass: IntArray,
    n_klass: int,
) -> int:
    """The host CloudSim's PABFD gives a VM (``r`` MIPS requested now), or -1.

    In host order, among hosts not excluded with PE, MIPS (and, ``ram_aware``, RAM and
    bandwidth) room: the least power increase wins, the first on a tie; a host already
    running VMs must not be overloaded with the VM added (tested only on a host that
    would win, which gives the same host as testing every one). Hosts with the same
    ``klass`` (>= 0: switched off, untouched, of one type) are alike: only the first
    that is not excluded can win a tie, the others are skipped.
    """
    best = -1
    best_diff = _DOUBLE_MAX
    row = np.empty(hist.shape[1])
    scratch = np.empty(hist.shape[1])
    seen = np.zeros(max(n_klass, 1), dtype=np.bool_)
    for h in range(host_pe.size):
        if excluded[h] or _alike_seen(klass[h], seen):
            continue
        if host_pe[h] < r or avail[h] < r:
            continue
        if ram_aware and (ram[h] + v_ram > host_ram[h] or bw[h] + v_bw > host_bw[h]):
            continue
        u = (alloc[h] + r) / host_mips[h]
        if u > 1.0:
            continue  # CloudSim's power model refuses it
        diff = _watts(table[h], u) - power_now[h]
        if not diff < best_diff:
            continue
        if alloc[h] != 0.0:
            cap = host_mips[h]
            for i in range(row.size):
                row[i] = hist[h, i] + v_hist[i] * v_mips / cap
            length = max(hlen[h], v_len)
            ahead = math.ceil(max(ram_max[h], v_ram) / mig_mbps[h] / interval_s)
            if host_overloaded(kind, param, row, length, (req[h] + r) / cap, ahead, scratch):
                continue
        best = h
        best_diff = diff
    return best


@_jit
def _r_squared(data: FloatArray, i: int, qrt: FloatArray, rdiag: FloatArray,
               y: FloatArray, beta: FloatArray) -> tuple[float, bool]:
    """R^2 of VM ``i``'s history regressed (with intercept) on the others', as
    commons-math's OLSMultipleLinearRegression computes it (Householder QR), and whether
    the design is singular (there commons-math throws, and CloudSim falls back to MMT).
    ``qrt`` (n x m), ``rdiag``, ``y`` (m) and ``beta`` (n) are scratch."""
    n, m = data.shape
    qrt[0, :] = 1.0  # the design's columns as rows: the intercept, then the others
    c = 1
    for j in range(n):
        if j != i:
            qrt[c, :] = data[j]
            c += 1
    for minor in range(min(m, n)):
        norm_sq = 0.0
        for row in range(minor, m):
            norm_sq += qrt[minor, row] * qrt[minor, row]
        a = -math.sqrt(norm_sq) if qrt[minor, minor] > 0 else math.sqrt(norm_sq)
        rdiag[minor] = a
        if a != 0.0:
            qrt[minor, minor] -= a
            for col in range(minor + 1, n):
                alpha = 0.0
                for row in range(minor, m):
                    alpha -= qrt[col, row] * qrt[minor, row]
                alpha /= a * qrt[minor, minor]
                for row in range(minor, m):
                    qrt[col, row] -= alpha * qrt[minor, row]
    for d in rdiag:
        if abs(d) <= 0.0:
            return math.nan, True
    y[:] = data[i]
    for minor in range(min(m, n)):
        dot = 0.0
        for row in range(minor, m):
            dot += y[row] * qrt[minor, row]
        dot /= rdiag[minor] * qrt[minor, minor]
        for row in range(minor, m):
            y[row] += dot * qrt[minor, row]
    for row in range(rdiag.size - 1, -1, -1):
        y[row] /= rdiag[row]
        beta[row] = y[row]
        for k in range(row):
            y[k] -= y[row] * qrt[row, k]
    rss = 0.0
    for row in range(m):
        fit = beta[0]  # 0 + 1.0 x the intercept's coefficient, then the others in order
        c = 1
        for j in range(n):
            if j != i:
                fit += data[j, row] * beta[c]
                c += 1
        r = data[i, row] - fit
        rss += r * r
    # SecondMoment: the streaming sum of squared deviations
    m1 = m2 = 0.0
    for row in range(m):
        count = row + 1
        dev = data[i, row] - m1
        ndev = dev / count
        m1 += ndev
        m2 += (count - 1.0) * dev * ndev
    return 1 - rss / m2, False


@_jit
def mc_pick(data: FloatArray) -> int:
    """CloudSim's maximum-correlation choice among a host's VMs (rows of ``data``, each
    VM's history, now first): the largest R^2 (the first on a tie, none above the
    smallest double: the first VM), or -1 where CloudSim falls back to MMT (one VM, fewer
    values than VMs, a singular design)."""
    n, m = data.shape
    if n < 2 or n > m:
        return -1
    best = 0
    best_r2 = 5e-324  # Java's Double.MIN_VALUE
    qrt, rdiag, y, beta = np.empty((n, m)), np.empty(n), np.empty(m), np.empty(n)
    for i in range(n):
        r2, singular = _r_squared(data, i, qrt, rdiag, y, beta)
        if singular:
            return -1
        if r2 > best_r2:
            best = i
            best_r2 = r2
    return best


@_jit
def fit_scan(
    r: float, v_mips: float, v_hist: FloatArray, v_len: int, excluded: BoolArray,
    n_in: IntArray, max_in: int, active: BoolArray, allow_off: bool, host_pe: FloatArray,
    host_mips: FloatArray, avail: FloatArray, alloc: FloatArray, req: FloatArray,
    hist: FloatArray, hlen: IntArray, table: FloatArray, power_now: FloatArray,
    wake_cost: FloatArray, target: float, safety: float, klass: IntArray, n_klass: int,
) -> int:
    """``ours``'s target for a VM (``r`` MIPS now), or -1: among hosts not excluded, with
    room for another in-coming VM, PE and MIPS room, where the VM takes at most 90 % of a
    PE and the host stays at or under ``target`` now and on the LR forecast (times
    ``safety`` under 1): an active host with the least power increase, else (``allow_off``)
    the switched-off host with the least ``wake_cost``; the first on a tie. The
    forecast is computed only for a host that would win; switched-off untouched hosts of
    one ``klass`` are alike, only the first counts."""
    best_on = -1
    best_diff = _DOUBLE_MAX
    best_off = -1
    best_cost = _DOUBLE_MAX
    row = np.empty(hist.shape[1])
    seen = np.zeros(max(n_klass, 1), dtype=np.bool_)
    for h in range(host_pe.size):
        if excluded[h] or n_in[h] >= max_in or _alike_seen(klass[h], seen):
            continue
        if host_pe[h] < r or avail[h] < r or r > host_pe[h] * 0.9:
            continue
        cap = host_mips[h]
        after = (req[h] + r) / cap
        if not after <= target:
            continue
        diff = 0.0
        cost = 0.0
        if active[h]:
            diff = _watts(table[h], (alloc[h] + r) / cap) - power_now[h]
            if not diff < best_diff:
                continue
        else:
            if not allow_off or best_on >= 0:
                continue
            cost = wake_cost[h]
            if not cost < best_cost:
                continue
        pr = after
        if max(hlen[h], v_len) >= LR_WINDOW:
            for i in range(row.size):
                row[i] = hist[h, i] + v_hist[i] * v_mips / cap
            pr = _lr_forecast(row, 1.0)
        if not pr * safety < 1.0:
            continue
        if active[h]:
            best_on = h
            best_diff = diff
        else:
            best_off = h
            best_cost = cost
    return best_on if best_on >= 0 else best_off


@_jit
def forecast(hist: FloatArray, length: int, now: float) -> float:
    """One host's LR forecast one interval ahead, or its utilisation ``now`` when its
    history is too short."""
    if length < LR_WINDOW:
        return now
    return _lr_forecast(hist, 1.0)
