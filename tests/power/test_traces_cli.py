"""Trace validation (file:line) and the evaluate CLI's JSON."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from vmcluster.cli.main import cli, main
from vmcluster.errors import TraceError, UsageError
from vmcluster.experiments.traces import default_trace_dir, load_day, load_dir
from vmcluster.policy.power.registry import make_policy


def _write(path: Path, rows: list[str]) -> Path:
    header = "vm," + ",".join(f"t{i}" for i in range(288))
    path.write_text("\n".join([header, *rows]) + "\n", encoding="utf-8")
    return path


def _row(name: str, value: int = 10, n: int = 288) -> str:
    return name + "," + ",".join(str(value) for _ in range(n))


def test_shipped_days_load() -> None:
    days = load_dir(default_trace_dir())
    assert [d.day for d in days] == ["20110303", "20110306", "20110309", "20110322", "20110325"]
    assert days[0].util.shape == (1052, 288)


def test_short_row_names_file_and_line(tmp_path: Path) -> None:
    f = _write(tmp_path / "d.csv", [_row("a"), _row("b", n=287)])
    with pytest.raises(TraceError, match=r"d\.csv:3: expected"):
        load_day(f)


def test_out_of_range_and_non_integer(tmp_path: Path) -> None:
    with pytest.raises(TraceError, match=r"d\.csv:2: sample 1 is 101"):
        load_day(_write(tmp_path / "d.csv", [_row("a", 101)]))
    bad = _row("a").replace(",10", ",x", 1)
    with pytest.raises(TraceError, match=r"e\.csv:2: sample 1 is 'x'"):
        load_day(_write(tmp_path / "e.csv", [bad]))


def test_empty_dir(tmp_path: Path) -> None:
    with pytest.raises(TraceError, match="no trace files"):
        load_dir(tmp_path)


def test_unknown_policy_and_parameter() -> None:
    with pytest.raises(UsageError):
        make_policy("foo-mmt")
    with pytest.raises(UsageError):
        make_policy("thr-mmt-abc")


def test_cli_json_shape(tmp_path: Path) -> None:
    _write(tmp_path / "day1.csv", [_row(f"vm{i}", 20 + i) for i in range(6)])
    res = CliRunner().invoke(
        cli, ["evaluate", "--traces", str(tmp_path), "--policies", "thr-mmt-0.8,ours,dvfs",
              "--workers", "1", "--json"], standalone_mode=False)
    assert res.exit_code == 0, res.output
    out = json.loads(res.stdout)
    assert list(out) == ["results"]
    assert [r["policy"] for r in out["results"]] == ["thr-mmt-0.8", "ours", "dvfs",
                                                     "lower-bound"]
    for r in out["results"]:
        assert set(r) == {"policy", "day", "energy_kwh", "slatah", "pdm", "slav", "esv",
                          "migrations", "overload_pct", "mips_lost_pct", "boots",
                          "hosts_active_mean", "hosts_active_peak", "boot_kwh"}
        assert isinstance(r["migrations"], int) and r["day"] == "day1"


def test_cli_bad_input_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _write(tmp_path / "bad.csv", [_row("a", 200)])
    with pytest.raises(SystemExit) as exc:
        main(["evaluate", "--traces", str(tmp_path), "--policies", "dvfs"])
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "bad.csv:2" in err[0]
    with pytest.raises(SystemExit) as exc2:
        main(["evaluate", "--policies", "nope"])
    assert exc2.value.code == 2


def test_cli_plot_writes_png_charts(tmp_path: Path) -> None:
    out = tmp_path / "charts"
    res = subprocess.run(
        [sys.executable, "-m", "vmcluster", "evaluate", "--days", "20110306",
         "--policies", "thr-mmt-0.8,ours", "--workers", "1", "--plot", str(out), "--json"],
        capture_output=True, text=True, timeout=300, check=False,
    )
    assert res.returncode == 0, res.stderr
    pngs = sorted(out.glob("*.png"))
    assert pngs, "no chart written"
    for png in pngs:
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 5000
    # each run over the day: a chart and its numbers, one row per scheduling instant
    rows = (out / "series-ours-20110306.csv").read_text(encoding="utf-8").splitlines()
    assert rows[0] == "time_s,active_hosts,power_kw,overloaded_hosts,migrations"
    assert len(rows) == 1 + 287 and (out / "series-thr-mmt-0.8-20110306.png").exists()
    assert float(rows[1].split(",")[1]) > 0  # hosts are on at the first instant


def test_cli_boots_charged_on_request_and_never_against_cloudsim(
        capsys: pytest.CaptureFixture[str]) -> None:
    base = ["evaluate", "--days", "20110306", "--policies", "thr-mmt-0.8", "--workers", "1",
            "--json"]
    main(base)
    free = json.loads(capsys.readouterr().out)["results"][0]
    main([*base, "--charge-boots"])
    charged = json.loads(capsys.readouterr().out)["results"][0]
    assert free["boot_kwh"] == 0.0 and charged["boot_kwh"] > 0
    # the boots' energy is in the total (the policy's later choices change too: VMs wait
    # for their hosts to boot)
    assert charged["energy_kwh"] > free["energy_kwh"]
    assert charged["energy_kwh"] > charged["boot_kwh"]
    for bad in (["--charge-boots", "--compare-cloudsim"], ["--charge-boots=0"]):
        with pytest.raises(SystemExit) as exc:
            main([*base, *bad])
        assert exc.value.code == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "--charge-boots" in err[0]
