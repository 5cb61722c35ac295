"""Live migration on the lab, measured as its clients see it, beside the model's prediction.

A two-node lab with one 256 MiB guest and a 1 Gbit/s (tc tbf) migration
network; the guest dirties its 128 MiB working set at three rates (idle,
moderate, near the link's bandwidth, set at run time with the workload's
``RATE`` command). For each QEMU (``--qemu``: the installed one, and
``debian-7.2``, Debian 12 main's QEMU 7.2 extracted into the cache, run on
both hosts) and each rate, the VM is migrated back and forth ``--runs`` times
while three clients in the client namespace watch it: a TCP echo (its gap is
bounded below by TCP's 200 ms retransmission timeout), a UDP probe every 5 ms
(the blackout), and ApacheBench against the guest's httpd (failed requests,
longest request). The blackout is split by QEMU's own STOP/RESUME event times
into before-pause, paused (source stop -> target run) and after-resume.
``--tls both`` runs each QEMU with and without TLS on the migration stream;
``--channels N`` spreads pre-copy over N multifd connections, and ``--link-mbps 0``
leaves the migration network unshaped (with both: which limits, the CPU or the link).
The guest has the default 100 ms downtime budget; each migration chooses its
mode (pre-copy, auto-converge, post-copy where ``--postcopy on`` lets the VM,
or a refusal) from its guest's dirty rate as its QEMU measures it just before,
and the row keeps the mode, the reason, the measured rate and the prediction
it was chosen on beside what happened.
Prints a table (p50/p95 over the runs) and writes bench/results/migration.json.
Needs root.

    python bench/bench_migration.py [--runs 10] [--rates 0,20,100] [--qemu system,debian-7.2]
        [--tls on|off|both] [--postcopy on|off] [--channels 1] [--link-mbps 1000]
        [--out bench/results/migration.json]
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

from vmcluster.errors import MigrationRefused
from vmcluster.lab.lab import lab_down, lab_up
from vmcluster.lab.observe import migrate_observed
from vmcluster.policy.networks import Health
from vmcluster.policy.prediction import predict
from vmcluster.substrate.host.layout import LabLayout

SPEC = """
[cluster]
name = "bench"
migration_tls = {tls}
migration_channels = {channels}
[[networks]]
name = "Public"
subnet = "198.18.1.0/24"
gateway = "198.18.1.1"
[[networks]]
name = "Heartbeat"
subnet = "198.18.2.0/24"
[[networks]]
name = "Migration"
subnet = "198.18.3.0/24"
{bandwidth}
{mtu}
[[nodes]]
name = "node1"
cores = 2
memory_mib = 2048
interfaces = { Public = "198.18.1.11", Heartbeat = "198.18.2.11", Migration = "198.18.3.11" }
[[nodes]]
name = "node2"
cores = 2
memory_mib = 2048
interfaces = { Public = "198.18.1.12", Heartbeat = "198.18.2.12", Migration = "198.18.3.12" }
[[vms]]
name = "vm"
owner = "node1"
memory_mib = {memory_mib}
wws_mib = 128
dirty_mibps = 0
allow_postcopy = {postcopy}
"""


MEMORY_MIB = 256  # the guest's
MIB = 1 << 20


def set_rate(layout: LabLayout, addr: str, mibps: float) -> None:
    code = ("import socket,sys;s=socket.create_connection((sys.argv[1],7777),5);"
            "s.sendall(('RATE %s\\n'%sys.argv[2]).encode());print(s.recv(100).decode().strip())")
    subprocess.run(["ip", "netns", "exec", layout.client_ns, sys.executable, "-c", code, addr,
                    str(mibps)], check=True, capture_output=True, timeout=20)


def pct(values: list[float], q: float) -> float | None:
    """The q-quantile (0..1) of ``values``, nearest rank; None when empty."""
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]


def run_qemu(qemu: str, tls: bool, rates: list[float], runs: int, postcopy: bool = False,
             channels: int = 1, bandwidth_mbps: int | None = 1000, mtu: int | None = None
             ) -> tuple[float, str, list[dict[str, Any]]]:
    """One lab whose two hosts both run ``qemu``; ``runs`` migrations per rate."""
    name = f"b{os.getpid()}"
    with tempfile.TemporaryDirectory() as tmp:
        spec_path = Path(tmp) / "bench.toml"
        spec_path.write_text(SPEC.replace("{tls}", "true" if tls else "false")
                             .replace("{postcopy}", "true" if postcopy else "false")
                             .replace("{channels}", str(channels))
                             .replace("{memory_mib}", str(MEMORY_MIB))
                             .replace("{mtu}", f"mtu = {mtu}" if mtu else "")
                             .replace("{bandwidth}", f"bandwidth_mbps = {bandwidth_mbps}"
                                      if bandwidth_mbps else ""))
        t0 = time.monotonic()
        choice = {} if qemu == "system" else {"node1": qemu, "node2": qemu}
        sub = lab_up(spec_path, name, say=lambda m: print(m, file=sys.stderr), qemu=choice)
        up_s = time.monotonic() - t0
        version = sub.facts("node1").version
        rows: list[dict[str, Any]] = []
        try:
            addr = str(sub.spec.vm("vm").address)
            for rate in rates:
                set_rate(sub.layout, addr, rate)
                time.sleep(2.0)  # let the dirty rate settle
                for _ in range(runs):
                    source = sub.owner("vm") or "node1"
                    target = "node2" if source == "node1" else "node1"
                    spec = replace(sub.spec, vms=tuple(
                        replace(v, dirty_mibps=rate) for v in sub.spec.vms))
                    pred = predict(spec, Health(), "vm", target, source=source).result
                    try:
                        r = migrate_observed(sub, "vm", target)
                    except MigrationRefused as exc:  # the mode chosen: none keeps the budget
                        rows.append({"qemu": version, "tls": tls, "channels": channels,
                                     "link_mbps": bandwidth_mbps, "mtu": mtu or 1500,
                                     "dirty_mibps": rate, "ok": False, "mode": "refuse",
                                     "reason": str(exc)})
                        print(json.dumps(rows[-1]), file=sys.stderr)
                        continue
                    bd = r.extra.get("breakdown") or {}
                    profile = r.extra.get("profile") or {}
                    live_total = r.extra.get("predicted_total_s")
                    rows.append({
                        "qemu": version, "tls": tls, "channels": channels,
                        "link_mbps": bandwidth_mbps, "mtu": mtu or 1500, "dirty_mibps": rate,
                        "ok": r.ok,
                        "error": r.error, "mode": r.extra.get("mode"),
                        "reason": r.extra.get("reason"),
                        "measured_dirty_mibps": profile.get("dirty_mibps"),
                        "measured_wws_mib": profile.get("wws_mib"),
                        "measured_vcpu_busy": profile.get("vcpu_busy"),
                        "measured_delta_ratio": profile.get("delta_ratio"),
                        "delta_cache_mib": r.extra.get("delta_cache_mib"),
                        "live_pred_total_s": live_total,
                        "live_pred_downtime_ms": r.extra.get("predicted_downtime_ms"),
                        "live_total_error_pct": round(
                            100 * (float(live_total) - r.total_s) / r.total_s, 1)
                        if r.ok and r.total_s and live_total is not None else None,
                        "throttle_pct": r.extra.get("throttle_pct"),
                        "aim_ms": r.extra.get("aim_ms"),
                        "throttle_initial": r.extra.get("throttle_initial"),
                        "throttle_trigger": r.extra.get("throttle_trigger"),
                        "throttle_steps": r.extra.get("throttle_steps"),
                        "postcopy_after_mib": r.extra.get("postcopy_after_mib"),
                        "commit_ms": r.extra.get("commit_ms"),
                        "takeover_ms": r.extra.get("takeover_ms"),
                        "network": r.network,
                        "passes": r.passes, "sent_mib": round(r.sent_mib, 1),
                        "stream_mibps": round(r.sent_mib / r.total_s, 1) if r.ok and r.total_s
                        else None,
                        "total_s": round(r.total_s, 3), "downtime_ms": r.downtime_ms,
                        "client_gap_ms": r.extra.get("client_gap_ms"),
                        "blackout_ms": r.extra.get("blackout_ms"),
                        "before_pause_ms": bd.get("before_pause_ms"),
                        "paused_ms": bd.get("paused_ms"),
                        "after_resume_ms": bd.get("after_resume_ms"),
                        "ab_requests": r.extra.get("ab_requests"),
                        "ab_failed": r.extra.get("ab_failed"),
                        "ab_max_ms": r.extra.get("ab_max_ms"),
                        "tcp_session_survived": r.extra.get("tcp_session_survived"),
                        "memory_ok": r.extra.get("memory_ok"),
                        "client_errors": r.extra.get("client_errors"),
                        "pred_total_s": round(pred.total_s, 3),
                        "pred_downtime_ms": round(pred.downtime_ms, 1),
                        "pred_passes": len(pred.passes),
                        "total_error_pct": round(100 * (pred.total_s - r.total_s) / r.total_s, 1)
                        if r.ok and r.total_s else None,
                    })
                    print(json.dumps(rows[-1]), file=sys.stderr)
        finally:
            lab_down(LabLayout(name))
    return up_s, version, rows


def summarise(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per (QEMU, dirty rate): p50/p95 and worst cases over the runs."""
    out = []
    def k(r: dict[str, Any]) -> tuple[Any, ...]:
        return (r["qemu"], r["tls"], r.get("channels", 1), r.get("link_mbps") or 0,
                r["dirty_mibps"], r.get("mtu", 1500))

    for key in sorted({k(r) for r in rows}):
        grp = [r for r in rows if k(r) == key]
        ok = [r for r in grp if r["ok"]]

        def col(name: str, rs: list[dict[str, Any]] = ok) -> list[float]:
            return [float(r[name]) for r in rs if r.get(name) is not None]

        errs = [abs(e) for e in col("total_error_pct")]
        live_errs = [abs(e) for e in col("live_total_error_pct")]
        modes = collections.Counter(str(r.get("mode")) for r in grp)
        out.append({
            "qemu": key[0], "tls": "on" if key[1] else "off", "channels": key[2],
            "link": f"{key[3]} Mbit/s" if key[3] else "unshaped", "dirty_mibps": key[4],
            "mtu": key[5],
            "runs": len(grp), "ok": len(ok),
            "mode": ", ".join(f"{m} {n}" if len(modes) > 1 else m
                              for m, n in modes.most_common()),
            "measured_dirty_p50": pct(col("measured_dirty_mibps", grp), 0.5),
            "passes_p50": pct(col("passes"), 0.5), "total_s_p50": pct(col("total_s"), 0.5),
            "stream_mibps_p50": pct(col("stream_mibps"), 0.5),
            "downtime_ms_p50": pct(col("downtime_ms"), 0.5),
            "downtime_ms_p95": pct(col("downtime_ms"), 0.95),
            "blackout_ms_p50": pct(col("blackout_ms"), 0.5),
            "blackout_ms_p95": pct(col("blackout_ms"), 0.95),
            "before_pause_ms_p50": pct(col("before_pause_ms"), 0.5),
            "paused_ms_p50": pct(col("paused_ms"), 0.5),
            "after_resume_ms_p50": pct(col("after_resume_ms"), 0.5),
            "tcp_gap_ms_p50": pct(col("client_gap_ms"), 0.5),
            "tcp_gap_ms_max": max(col("client_gap_ms"), default=None),
            "ab_failed": int(sum(col("ab_failed", grp))),
            "ab_max_ms": max(col("ab_max_ms"), default=None),
            "mean_abs_total_error_pct": round(statistics.mean(errs), 1) if errs else None,
            "live_abs_total_error_pct": round(statistics.mean(live_errs), 1)
            if live_errs else None,
            "live_max_total_error_pct": max(live_errs, default=None),
            "deltas": sum(1 for r in grp if r.get("delta_cache_mib")),
            # the total against one copy of memory at the link's nominal rate (the
            # migration issue's 1.5x aim)
            "total_over_mb_p50": pct([t / (MEMORY_MIB / (key[3] * 1e6 / 8 / MIB))
                                      for t in col("total_s")], 0.5) if key[3] else None,
            "tcp_kept": sum(1 for r in grp if r.get("tcp_session_survived")),
            "memory_ok": sum(1 for r in grp if r.get("memory_ok")),
        })
    return out


def fmt(v: object) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.3g}" if abs(v) < 10 else f"{v:.0f}"
    return str(v)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=10)
    ap.add_argument("--rates", default="0,20,100")
    ap.add_argument("--qemu", default="system,debian-7.2",
                    help="comma-separated: system (the installed QEMU) and/or debian-7.2")
    ap.add_argument("--tls", choices=("on", "off", "both"), default="on",
                    help="migration streams with TLS (the spec's migration_tls); both: each QEMU "
                         "twice, to measure what TLS costs")
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results"
                    / "migration.json", help="where the JSON goes")
    ap.add_argument("--channels", type=int, default=1,
                    help="migration_channels: more than 1 uses QEMU's multifd")
    ap.add_argument("--link-mbps", type=int, default=1000,
                    help="the migration network's shaped rate (0: unshaped, as fast as the "
                         "hosts go: to see whether the CPU or the link limits)")
    ap.add_argument("--mtu", type=int, default=None,
                    help="the migration network's MTU (default 1500; 9000: jumbo frames)")
    ap.add_argument("--postcopy", choices=("on", "off"), default="off",
                    help="on: the VM allows post-copy (allow_postcopy), which a migration "
                         "that pre-copy would make slow or refuse then takes")
    args = ap.parse_args()
    if os.geteuid() != 0:
        sys.exit("bench_migration: needs root (the lab uses network namespaces)")
    rates = [float(r) for r in args.rates.split(",")]
    rows: list[dict[str, Any]] = []
    ups: dict[str, float] = {}
    tls_modes = {"on": [True], "off": [False], "both": [True, False]}[args.tls]
    for qemu in args.qemu.split(","):
        for tls in tls_modes:
            up_s, version, got = run_qemu(qemu.strip(), tls, rates, args.runs,
                                          args.postcopy == "on", args.channels,
                                          args.link_mbps or None, args.mtu)
            ups[version] = round(up_s, 2)
            rows += got
    summary = summarise(rows)
    cols = [("qemu", "QEMU"), ("tls", "TLS"), ("channels", "chan"), ("link", "link"),
            ("mtu", "MTU"),
            ("dirty_mibps", "dirty MiB/s"),
            ("measured_dirty_p50", "measured"), ("mode", "mode"), ("ok", "ok"),
            ("passes_p50", "passes"), ("total_s_p50", "total s"),
            ("stream_mibps_p50", "MiB/s"),
            ("downtime_ms_p50", "downtime p50"), ("downtime_ms_p95", "p95"),
            ("blackout_ms_p50", "blackout p50"), ("blackout_ms_p95", "p95"),
            ("before_pause_ms_p50", "pre-pause"), ("paused_ms_p50", "paused"),
            ("after_resume_ms_p50", "post-resume"), ("tcp_gap_ms_p50", "TCP gap p50"),
            ("tcp_gap_ms_max", "max"), ("ab_failed", "ab failed"), ("ab_max_ms", "ab max ms"),
            ("mean_abs_total_error_pct", "spec pred err %"),
            ("live_abs_total_error_pct", "live pred err %"),
            ("live_max_total_error_pct", "max"), ("deltas", "deltas"),
            ("total_over_mb_p50", "x M/b"), ("memory_ok", "mem ok")]
    widths = [max(len(h), *(len(fmt(s[k])) for s in summary)) for k, h in cols]
    print(" | ".join(h.rjust(w) for (_, h), w in zip(cols, widths, strict=True)))
    for srow in summary:
        print(" | ".join(fmt(srow[k]).rjust(w) for (k, _), w in zip(cols, widths, strict=True)))
    print("(ms unless said; pre-pause + paused + post-resume = the UDP blackout, medians; "
          "paused = source STOP to target RESUME, QEMU's own event times)")
    out = args.out
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"lab_up_s": ups, "summary": summary, "runs": rows}, indent=1))
    print(f"lab up: {', '.join(f'QEMU {v} {s:.1f} s' for v, s in ups.items())}; wrote {out}")


if __name__ == "__main__":
    main()
