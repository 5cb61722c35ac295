"""The host's watchdog: it kills this host's QEMUs when ``vmclusterd`` stops petting it.

``python -m vmcluster.node.watchdog --config /etc/vmcluster/vmclusterd.toml`` runs as
its own process in its own session (``vmclusterd`` starts it detached and finds it
again by its pid file), so that it outlives a daemon that hangs or is killed.

The daemon sends ``pet`` datagrams to ``<run_dir>/watchdog.sock`` while this host's
heartbeats go out. The first pet arms the watchdog. It fences the host once it
has not been petted for ``fence_window_s``, or once the heartbeat part has not
said for ``fence_window_s`` that its heartbeats go out (``heartbeats.alive``,
which the watchdog reads itself). A daemon that stops on purpose (SIGTERM:
``systemctl restart``) says ``restart``: then pets may pause for
``restart_grace_s`` while the heartbeats go on (the next daemon adopts the
heartbeat part), but the heartbeats themselves may not. Fencing is:

1. SIGKILL every QEMU this host's agent recorded (``<state_dir>/qemu/*.json``; a pid
   counts only while its command line names the record's QMP socket), and waits
   until they are gone;
2. SIGKILL the daemon's process group and its heartbeat part (which outlives a
   stopped daemon): the heartbeats stop, so that the survivors see this host as
   dead even if only the daemon's main loop hung;
3. appends one JSON line to ``<state_dir>/log/fenced.jsonl``, and is disarmed until
   the next pet (a daemon started again arms it again).

The survivors restart this host's VMs no earlier than
:func:`~vmcluster.policy.failover.restart_not_before`, which waits this window out.
A daemon restarted within the grace (``systemctl restart vmclusterd``) finds its
VMs still running, and the others never saw its heartbeats stop. ``disarm``
(sent by a daemon configured without heartbeats) disarms it; nothing disarms
it on an ordinary stop, because a host whose heartbeats stop must not keep
running VMs the others will restart.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import socket
import sys
import time
from pathlib import Path
from typing import Any

from vmcluster.errors import VmclusterError
from vmcluster.node.config import NodeConfig, load_config
from vmcluster.substrate.procs import pid_in_file
from vmcluster.substrate.qemu.process import pid_matches

__all__ = ["AliveFile", "Watchdog", "main", "pet"]

POLL_S = 0.05


def pet(cfg: NodeConfig, word: bytes = b"pet") -> bool:
    """Send one datagram to the host's watchdog; False when none listens."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
        try:
            s.sendto(word, str(cfg.watchdog_socket))
        except OSError:
            return False
    return True


class AliveFile:
    """How long ago a file was last touched, on this process's monotonic clock: the age of
    ``heartbeats.alive``. A file's time is the wall clock's, which an NTP step moves at
    once; comparing it with the wall clock now would make a touch a second ago an hour
    old (and fence a healthy host) after a step forward. So a touch is each change of the
    file's time, counted from the monotonic moment this process saw it; the first sight
    counts as a touch (how old the file was then cannot be told), so a file nobody
    touches any more ages from there. Whoever starts a new heartbeat part removes the
    file first (what a dead part last touched must not pass for it)."""

    def __init__(self, path: Path, now: Any = time.monotonic) -> None:
        self.path, self.now = path, now
        self._mtime: int | None = None
        self._seen = float("-inf")

    def age(self) -> float:
        """Seconds since the last touch seen; infinite when there is no file."""
        try:
            mtime = self.path.stat().st_mtime_ns
        except OSError:
            self._mtime = None
            return float("inf")
        now = float(self.now())
        if mtime != self._mtime:
            self._mtime, self._seen = mtime, now
        return now - self._seen


def _recorded_qemus(qemu_dir: Path) -> list[tuple[str, int, str]]:
    out = []
    for rec in sorted(qemu_dir.glob("*.json")):
        try:
            data = json.loads(rec.read_text())
            out.append((str(data["vm"]), int(data["pid"]), str(data["qmp"])))
        except (OSError, ValueError, KeyError, TypeError):
            continue
    return out


def _part_pid(pidfile: Path, module: str, cfg: NodeConfig) -> int | None:
    """The live process a pid file names, if its command line is ``module`` of this
    host's config (never a reused pid)."""
    return pid_in_file(pidfile, module, str(cfg.path))


def _daemon_pid(cfg: NodeConfig) -> int | None:
    """The running vmclusterd of this config, from its pid file."""
    return _part_pid(cfg.pidfile, "vmcluster.node.daemon", cfg) or _part_pid(
        cfg.pidfile, "vmclusterd", cfg)


class Watchdog:
    def __init__(self, cfg: NodeConfig, now: Any = time.monotonic,
                 wall: Any = time.time) -> None:
        self.cfg, self.now, self.wall = cfg, now, wall
        self.armed = False
        self.last_pet = 0.0
        self.allowed = cfg.fence_window_s  # how long pets may pause now
        self.alive = AliveFile(cfg.heartbeats_alive, now)

    def on_message(self, word: bytes) -> None:
        if word == b"pet":
            if not self.armed:
                _log(f"armed: fence window {self.cfg.fence_window_s:.2f} s")
            self.armed, self.last_pet = True, self.now()
            self.allowed = self.cfg.fence_window_s
        elif word == b"restart" and self.armed:
            self.last_pet, self.allowed = self.now(), self.cfg.restart_grace_s
            _log(f"the daemon restarts: pets may pause {self.allowed:.0f} s, heartbeats not")
        elif word == b"disarm" and self.armed:
            self.armed = False
            _log("disarmed by the daemon")

    def heartbeats_age(self) -> float:
        return self.alive.age()

    def due(self) -> str | None:
        """Why the host must be fenced now, or None."""
        if not self.armed:
            return None
        unpetted = self.now() - self.last_pet
        if unpetted > self.allowed:
            return f"not petted for {unpetted:.2f} s"
        silent = self.heartbeats_age()
        if silent > self.cfg.fence_window_s:
            return f"no heartbeats for {silent:.2f} s"
        return None

    def fence(self, why: str = "") -> dict[str, Any]:
        """Kill this host's QEMUs, then its daemon; one JSON line says what was done."""
        unpetted = self.now() - self.last_pet
        self.armed = False
        killed = []
        qemus = _recorded_qemus(self.cfg.qemu_dir)
        for vm, pid, qmp in qemus:
            if pid_matches(pid, qmp):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
                killed.append({"vm": vm, "pid": pid})
        deadline = time.monotonic() + 5.0
        while time.monotonic() < deadline and any(pid_matches(p, q) for _, p, q in qemus):
            time.sleep(0.01)
        survivors = [vm for vm, p, q in qemus if pid_matches(p, q)]
        qemus_dead_at = time.time()
        daemon = _daemon_pid(self.cfg)
        if daemon is not None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(os.getpgid(daemon), signal.SIGKILL)
        beats = _part_pid(self.cfg.heartbeats_pidfile, "vmcluster.node.nodewatch", self.cfg)
        if beats is not None:  # it outlives a daemon that stopped (see node.daemon)
            with contextlib.suppress(ProcessLookupError):
                os.kill(beats, signal.SIGKILL)
        record = {"at": qemus_dead_at, "node": self.cfg.node, "why": why,
                  "unpetted_s": round(unpetted, 3),
                  "killed": killed, "survivors": survivors, "daemon_killed": daemon}
        self.cfg.fence_log.parent.mkdir(parents=True, exist_ok=True)
        with self.cfg.fence_log.open("a") as f:
            f.write(json.dumps(record) + "\n")
        _log(f"fenced: {why}; killed {len(killed)} QEMU(s)"
             + (f" and vmclusterd {daemon}" if daemon else ""))
        return record

    def run(self, stop: Any = lambda: False) -> None:
        path = self.cfg.watchdog_socket
        path.parent.mkdir(parents=True, exist_ok=True)
        path.unlink(missing_ok=True)
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
            sock.bind(str(path))
            os.chmod(path, 0o600)
            sock.settimeout(POLL_S)
            while not stop():
                with contextlib.suppress(TimeoutError):
                    self.on_message(sock.recv(64).strip())
                why = self.due()
                if why:
                    self.fence(why)
                    _drain(sock)  # pets the killed daemon sent before it died: not a re-arm
        path.unlink(missing_ok=True)


def _drain(sock: socket.socket) -> None:
    sock.setblocking(False)
    try:
        while True:
            sock.recv(64)
    except (BlockingIOError, InterruptedError):
        pass
    finally:
        sock.settimeout(POLL_S)


def _log(msg: str) -> None:
    print(f"{time.strftime('%H:%M:%S')} watchdog: {msg}", flush=True)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m vmcluster.node.watchdog")
    ap.add_argument("--config", required=True)
    args = ap.parse_args(argv)
    try:
        cfg = load_config(args.config)
    except VmclusterError as exc:
        print(f"vmcluster watchdog: {exc}", file=sys.stderr)
        return exc.exit_code
    cfg.run_dir.mkdir(parents=True, exist_ok=True)
    cfg.watchdog_pidfile.write_text(f"{os.getpid()}\n")
    done = []
    signal.signal(signal.SIGTERM, lambda *_: done.append(1))
    signal.signal(signal.SIGINT, lambda *_: done.append(1))
    Watchdog(cfg).run(lambda: bool(done))
    cfg.watchdog_pidfile.unlink(missing_ok=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
