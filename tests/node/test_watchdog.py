"""The host's watchdog, as a real process, against real processes standing in for QEMU.

A stand-in is any process whose command line names its record's QMP socket path (that
is how the watchdog tells a host's QEMU from a reused pid)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from vmcluster.node.config import NodeConfig
from vmcluster.node.watchdog import AliveFile, pet

ROOT = Path(__file__).resolve().parents[2]
FENCE_S = 0.6


@pytest.fixture
def host(tmp_path: Path) -> Iterator[NodeConfig]:
    cfg = NodeConfig(path=tmp_path / "etc" / "vmclusterd.toml", node="n1", cluster="t",
                     parts=("agent",), config_dir=tmp_path / "etc",
                     state_dir=tmp_path / "var", run_dir=tmp_path / "run",
                     fence_window_s=FENCE_S, restart_grace_s=3.0)
    cfg.path.parent.mkdir(parents=True)
    cfg.path.write_text(cfg.render())
    cfg.qemu_dir.mkdir(parents=True)
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    dog = subprocess.Popen([sys.executable, "-m", "vmcluster.node.watchdog", "--config",
                            str(cfg.path)], env=env, stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 20
        while not cfg.watchdog_socket.exists() and time.monotonic() < deadline:
            time.sleep(0.02)
        assert cfg.watchdog_socket.exists()
        yield cfg
    finally:
        dog.terminate()
        dog.wait(10)


def _fake_qemu(cfg: NodeConfig, vm: str) -> subprocess.Popen[bytes]:
    qmp = cfg.qemu_dir / f"{vm}.qmp"
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)", str(qmp)])
    (cfg.qemu_dir / f"{vm}.json").write_text(json.dumps(
        {"vm": vm, "pid": proc.pid, "qmp": str(qmp)}))
    return proc


def _beat(cfg: NodeConfig) -> None:
    cfg.heartbeats_alive.touch()


def _gone(proc: subprocess.Popen[bytes], within_s: float) -> bool:
    try:
        proc.wait(within_s)
    except subprocess.TimeoutExpired:
        return False
    return True


def _fenced(cfg: NodeConfig, wait_s: float = 0.0) -> list[dict[str, Any]]:
    """The fence records so far (waiting up to ``wait_s`` for the first: the watchdog
    writes it once every QEMU is gone)."""
    deadline = time.monotonic() + wait_s
    while True:
        text = cfg.fence_log.read_text() if cfg.fence_log.exists() else ""
        if text.endswith("\n") or time.monotonic() >= deadline:
            return [json.loads(line) for line in text.splitlines()]
        time.sleep(0.02)


def test_unarmed_it_never_fires(host: NodeConfig) -> None:
    vm = _fake_qemu(host, "web")
    try:
        assert not _gone(vm, 2 * FENCE_S)
        assert _fenced(host) == []
    finally:
        vm.kill()
        vm.wait()


def test_unpetted_for_the_window_it_kills_the_hosts_qemus(host: NodeConfig) -> None:
    web, db = _fake_qemu(host, "web"), _fake_qemu(host, "db")
    bystander = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        for _ in range(10):  # petted while heartbeats go out: nothing happens
            _beat(host)
            assert pet(host)
            last_pet = time.time()
            time.sleep(FENCE_S / 4)
        assert web.poll() is None and db.poll() is None
        _beat(host)
        assert _gone(web, 5) and _gone(db, 5)
        (record,) = _fenced(host, 5)
        assert str(record["why"]).startswith("not petted")
        assert sorted(k["vm"] for k in record["killed"]) == ["db", "web"]
        assert record["survivors"] == []
        assert FENCE_S <= record["at"] - last_pet < FENCE_S + 1.0
        assert bystander.poll() is None  # a process that is not a recorded QEMU is left alone
    finally:
        for p in (web, db, bystander):
            p.kill()
            p.wait()


def test_petted_but_silent_heartbeats_fire_it_too(host: NodeConfig) -> None:
    web = _fake_qemu(host, "web")
    try:
        _beat(host)
        deadline = time.monotonic() + 5
        # The daemon's loop runs, but no heartbeat goes out (and once fenced, the daemon
        # is dead: it pets no more).
        while web.poll() is None and not host.fence_log.exists() and \
                time.monotonic() < deadline:
            pet(host)
            time.sleep(FENCE_S / 4)
        assert _gone(web, 5)
        (record,) = _fenced(host, 5)
        assert str(record["why"]).startswith("no heartbeats")
    finally:
        web.kill()
        web.wait()


def test_a_restarting_daemon_may_pause_its_pets_but_not_the_heartbeats(
    host: NodeConfig,
) -> None:
    web = _fake_qemu(host, "web")
    try:
        _beat(host)
        pet(host)
        pet(host, b"restart")
        for _ in range(int(2.0 / 0.1)):  # 2 s without a pet: more than the fence window
            _beat(host)
            time.sleep(0.1)
        assert web.poll() is None and _fenced(host) == []
        pet(host)  # the next daemon pets: the window is the short one again
        assert _gone(web, 5)  # ... and the heartbeats are now silent
        (record,) = _fenced(host, 5)
        assert record["killed"] == [{"vm": "web", "pid": web.pid}]
    finally:
        web.kill()
        web.wait()


def test_a_wall_clock_step_does_not_age_a_fresh_heartbeat(tmp_path: Path) -> None:
    """heartbeats.alive carries wall-clock times; an NTP step forward must not make a touch
    a moment ago look an hour old (the watchdog would fence a healthy host): touches are
    changes of the file's time, aged on the monotonic clock."""
    alive = tmp_path / "heartbeats.alive"
    alive.touch()
    os.utime(alive, (time.time() - 3600, time.time() - 3600))  # touched before a step back
    mono = [100.0]
    age = AliveFile(alive, lambda: mono[0])
    assert age.age() == 0.0  # first sight: a touch
    mono[0] += 5.0
    assert age.age() == 5.0  # untouched since: it ages on the monotonic clock
    mtime = alive.stat().st_mtime_ns
    os.utime(alive, ns=(mtime + 1, mtime + 1))
    assert age.age() == 0.0
    alive.unlink()
    assert age.age() == float("inf")
