"""CloudSim 3.0.3's published figures for the PlanetLab days, for comparison."""

from __future__ import annotations

import csv
from importlib import resources
from pathlib import Path

__all__ = ["cloudsim_figures", "cloudsim_key"]


def cloudsim_key(policy: str) -> str:
    """Our policy name as CloudSim's runner names it (lr-mmt-1.2 -> lr_mmt_1.2)."""
    parts = policy.split("-")
    defaults = {"thr": "0.8", "iqr": "1.5", "mad": "2.5", "lr": "1.2", "lrr": "1.2"}
    if len(parts) == 2 and parts[0] in defaults:
        parts.append(defaults[parts[0]])
    return "_".join(parts)


def cloudsim_figures(path: Path | None = None) -> dict[tuple[str, str], dict[str, float]]:
    """(day, cloudsim policy) -> energy_kwh, migrations, slatah, pdm, slav (fractions)."""
    src = path or Path(str(resources.files("vmcluster") / "data" / "planetlab"
                           / "cloudsim-3.0.3.tsv"))
    out: dict[tuple[str, str], dict[str, float]] = {}
    with src.open(encoding="utf-8") as fh:
        rows = [line for line in fh if not line.startswith("#")]
    for row in csv.DictReader(rows, delimiter="\t"):
        energy = float(row["energy_kwh"])
        slav = float(row["slav_pct"]) / 100.0
        out[(row["day"], row["policy"])] = {
            "energy_kwh": energy, "migrations": float(row["migrations"]),
            "slatah": float(row["slatah_pct"]) / 100.0, "pdm": float(row["pdm_pct"]) / 100.0,
            "slav": slav, "esv": energy * slav,
        }
    return out
