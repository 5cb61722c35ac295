"""The systemd unit that ships with the package: what systemd would run, and how it stops."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from vmcluster.node.daemon import unit_text


def test_the_unit_keeps_vms_alive_across_a_restart_and_restarts_a_crash() -> None:
    text = unit_text()
    service = dict(line.split("=", 1) for line in text.splitlines()
                   if "=" in line and not line.startswith("#"))
    assert service["KillMode"] == "process"  # systemd's default would kill every QEMU
    assert service["Restart"] == "on-failure"
    assert service["RuntimeDirectoryPreserve"] == "yes"  # the watchdog's socket stays
    command = service["ExecStart"].split(" --config ")[0]
    assert command.endswith("vmclusterd") or command.endswith("-m vmcluster.node.daemon")
    assert "@" not in service["ExecStart"]


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd not installed")
def test_systemd_accepts_the_unit(tmp_path: Path) -> None:
    unit = tmp_path / "vmclusterd.service"
    unit.write_text(unit_text())
    out = subprocess.run(["systemd-analyze", "verify", str(unit)], capture_output=True,
                         text=True, timeout=60, check=False)
    assert out.returncode == 0, out.stderr
    assert "vmclusterd.service" not in out.stderr, out.stderr  # no warning about our unit


def test_print_unit_is_the_console_script() -> None:
    out = subprocess.run([sys.executable, "-m", "vmcluster.node.daemon", "--print-unit"],
                         capture_output=True, text=True, timeout=60, check=True)
    assert out.stdout == unit_text()
