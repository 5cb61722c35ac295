"""`vmcluster migration model|predict` as a user runs them."""

from __future__ import annotations

import json
from pathlib import Path

from tests.helpers import vmc

ROOT = Path(__file__).resolve().parents[2]


def test_model_json_is_one_object_with_the_documented_keys() -> None:
    out = vmc("migration", "model", "--memory-mib", "1024", "--dirty-mibps", "50", "--wws-mib",
              "1024", "--bandwidth-mibps", "100", "--downtime-ms", "300", "--json")
    assert out.returncode == 0, out.stderr
    obj = json.loads(out.stdout)
    assert {"passes", "downtime_ms", "total_s", "converged"} <= set(obj)
    assert [p["sent_mib"] for p in obj["passes"]] == [1024, 512, 256, 128, 64, 32]
    assert all(set(p) == {"sent_mib", "seconds"} for p in obj["passes"])
    assert obj["converged"] is True
    assert abs(obj["total_s"] - 20.32) < 1e-6


def test_model_human_table_and_advice() -> None:
    out = vmc("migration", "model", "--memory-mib", "1024", "--dirty-mibps", "150", "--wws-mib",
              "600", "--bandwidth-mibps", "110", "--downtime-ms", "300")
    assert out.returncode == 0, out.stderr
    assert "throttled" in out.stdout and "to converge" in out.stdout
    forced = vmc("migration", "model", "--memory-mib", "1024", "--dirty-mibps", "150",
                 "--wws-mib", "600", "--bandwidth-mibps", "110", "--downtime-ms", "300",
                 "--on-no-convergence", "force")
    assert forced.returncode == 0 and "forced" in forced.stdout, forced.stderr


def test_model_bad_input_is_one_line_exit_2() -> None:
    out = vmc("migration", "model", "--memory-mib", "1024", "--dirty-mibps", "1", "--wws-mib",
              "1", "--bandwidth-mibps", "0", "--downtime-ms", "300")
    assert out.returncode == 2
    assert out.stderr.count("\n") == 1 and "bandwidth" in out.stderr


def test_predict_json_and_errors() -> None:
    out = vmc("migration", "predict", "--spec", "examples/lab.toml", "db", "--to", "node3",
              "--down", "Migration", "--json")
    assert out.returncode == 0, out.stderr
    obj = json.loads(out.stdout)
    assert obj["network"] == "Public" and obj["converged"] is True
    bad = vmc("migration", "predict", "--spec", "examples/lab.toml", "db", "--to", "node9")
    assert bad.returncode == 2 and "node9" in bad.stderr and "Traceback" not in bad.stderr
    human = vmc("migration", "predict", "--spec", "examples/seed.toml", "vm1", "--to", "node2")
    assert human.returncode == 0 and "Cluster Network 1" in human.stdout


def test_predict_says_the_mode_and_why() -> None:
    out = vmc("migration", "predict", "--spec", "examples/lab.toml", "db", "--to", "node3",
              "--json")
    obj = json.loads(out.stdout)
    assert obj["mode"] == "precopy" and "converges in" in obj["reason"]
    assert obj["profile_from"] == "the spec's" and obj["dirty_mibps"] == 16
    tight = vmc("migration", "predict", "--spec", "examples/lab.toml", "db", "--to", "node3",
                "--flows", "Migration=40", "--downtime-ms", "30", "--on-no-convergence",
                "abort")
    assert tight.returncode == 0, tight.stderr
    assert "mode: refuse" in tight.stdout and "allow_postcopy" in tight.stdout
    # Without --spec it asks the live cluster, which knows its own owner, links and flows.
    live = vmc("migration", "predict", "db", "--to", "node3", "--down", "Migration")
    assert live.returncode == 2
    assert live.stderr.strip().splitlines() == [
        "vmcluster: error: --down: with --spec only (the live cluster's own owner, links "
        "and flows are used)"]
