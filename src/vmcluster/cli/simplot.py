"""PNG charts of a simulation report (matplotlib, Agg backend: no display needed)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

from vmcluster.control.simulate import Report

__all__ = ["plot"]


def plot(report: Report, out: Path) -> list[Path]:
    """Write utilisation.png, hosts.png, migrations.png and traffic.png into ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    j = report.to_json()
    hours = [t / 3600 for t in j["series"]["t"]]
    written = []

    def save(fig: object, name: str) -> None:
        path = out / name
        fig.savefig(path, dpi=100)  # type: ignore[attr-defined]
        plt.close(fig)  # type: ignore[arg-type]
        written.append(path)

    fig, ax = plt.subplots(figsize=(8, 3.5))
    ax.plot(hours, [u * 100 for u in j["series"]["mean_util"]], label="mean CPU of active hosts")
    ax.set(xlabel="hours", ylabel="%", title=f"{j['scenario']}: utilisation", ylim=(0, 100))
    ax.legend()
    save(fig, "utilisation.png")

    fig, ax = plt.subplots(figsize=(8, 3.5))
    ax.step(hours, j["series"]["active_hosts"], where="post", label="active hosts")
    ax2 = ax.twinx()
    ax2.plot(hours, [p / 1000 for p in j["series"]["power_w"]], color="tab:red", label="kW")
    ax.set(xlabel="hours", ylabel="hosts", title=f"{j['scenario']}: active hosts and power")
    ax2.set_ylabel("kW")
    save(fig, "hosts.png")

    fig, ax = plt.subplots(figsize=(8, 3.5))
    starts = [m["started_s"] / 3600 for m in j["migrations"] if m.get("started_s") is not None]
    bins = max(1, int(j["duration_s"] // j["traffic"]["bin_s"]))
    ax.hist(starts, bins=bins, range=(0, j["duration_s"] / 3600))
    ax.set(xlabel="hours", ylabel="migrations started", title=f"{j['scenario']}: migrations")
    save(fig, "migrations.png")

    fig, ax = plt.subplots(figsize=(8, 3.5))
    keys = sorted({(t["class"], t["network"]) for t in j["traffic"]["series"]})
    bin_s = j["traffic"]["bin_s"]
    for cls, net in keys:
        pts = [(t["t"] / 3600, t["mib"] / bin_s) for t in j["traffic"]["series"]
               if (t["class"], t["network"]) == (cls, net)]
        ax.step([p[0] for p in pts], [p[1] for p in pts], where="post", label=f"{cls} / {net}")
    ax.set(xlabel="hours", ylabel="MiB/s (bin mean)", title=f"{j['scenario']}: traffic")
    if keys:
        ax.legend(fontsize="small")
    save(fig, "traffic.png")
    return written
