"""``vmclusterd --config /etc/vmcluster/vmclusterd.toml``: what one host runs, and all of it.

The daemon is a small supervisor. Its parts run as processes of their own, so
that one part's crash is not a dead node and each can be restarted alone:

* ``etcd``: this host's etcd member (Debian's ``etcd``; ``[etcd.member]``),
  client and peer TLS with the host's certificate;
* ``agent``: owns this host's QEMUs (:mod:`vmcluster.node.agent`); QEMU runs
  daemonized, so an agent that restarts adopts its VMs and never stops one;
* ``heartbeats``: heartbeats on every cluster network, this host's report and
  the isolation rule (:mod:`vmcluster.node.nodewatch`);
* ``manager``: a manager candidate (:mod:`vmcluster.node.managerd`);
* ``api``: the cluster API over HTTPS (:mod:`vmcluster.node.api`);
* the **watchdog** (:mod:`vmcluster.node.watchdog`), in its own session so that it
  outlives the daemon.

Every ``TICK_S`` the daemon starts again any part that exited (backoff from
0.5 s to 8 s), kills a heartbeat part that stopped sending (it is then started
again) and, only while this host's heartbeats go out, pets the watchdog. A
daemon that hangs or dies therefore stops petting; the watchdog kills this
host's QEMUs and the daemon's process group within ``fence_window_s``, before
the survivors restart the VMs (they wait that window out). Parts but the
heartbeats get ``PR_SET_PDEATHSIG``: they die with the daemon.

SIGTERM stops the parts (the agent leaves every QEMU running) except the
heartbeats, and tells the watchdog ``restart``: a daemon started again within
``restart_grace_s`` (``systemctl restart``) adopts the heartbeat part and every
running VM, and the others never see a silence. A daemon killed outright must
be back within ``fence_window_s`` (systemd's ``Restart=on-failure``). A host
left stopped is fenced when the grace ends (the watchdog kills its QEMUs and
its heartbeats), because the others will then restart its VMs. Drain a host
before stopping it for good.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from importlib.resources import files
from pathlib import Path
from typing import IO

import vmcluster
from vmcluster.errors import VmclusterError
from vmcluster.node.config import NodeConfig, load_config
from vmcluster.node.watchdog import AliveFile, pet
from vmcluster.pki import NodeCredentials
from vmcluster.store.members import DEFAULT_TUNING, MemberSpec
from vmcluster.substrate.procs import live_cmdline, pid_in_file

__all__ = ["PART_MODULES", "Daemon", "Part", "child_env", "main", "unit_text"]

TICK_S = 0.25
HEARTBEATS_FRESH_S = 1.0  # the heartbeat part touches its file at least this often
HEARTBEATS_HUNG_S = 3.0  # ... and is killed (then restarted) when it has not for this long
BACKOFF_S = (0.5, 1.0, 2.0, 4.0, 8.0)
STABLE_S = 30.0  # a part that ran this long starts its backoff from the beginning again

PART_MODULES = {
    "agent": "vmcluster.node.agent",
    "heartbeats": "vmcluster.node.nodewatch",
    "manager": "vmcluster.node.managerd",
    "api": "vmcluster.node.api",
}
_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    """In the child, before exec: SIGKILL when the daemon dies."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)


@dataclass
class Part:
    """One supervised process. A part with a ``pidfile`` outlives the daemon (no
    PDEATHSIG; not stopped with it) and is adopted by the next daemon: the heartbeats,
    so that restarting the daemon is not a silence the others would take for a death."""

    name: str
    argv: list[str]
    log: Path
    pidfile: Path | None = None
    proc: subprocess.Popen[bytes] | None = None
    adopted: int | None = None
    started_at: float = 0.0
    failures: int = 0
    next_start: float = 0.0
    _out: IO[bytes] | None = field(default=None, repr=False)

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else self.adopted

    def running(self) -> bool:
        if self.adopted is not None:
            return bool(live_cmdline(self.adopted))
        return self.proc is not None and self.proc.poll() is None

    def adopt(self, now: float) -> bool:
        """Take over the part a previous daemon left running, if its pid file names it."""
        pid = None if self.pidfile is None else pid_in_file(self.pidfile)
        if pid is None or live_cmdline(pid) != b"\0".join(a.encode() for a in self.argv) + b"\0":
            return False
        self.adopted, self.started_at = pid, now
        return True

    def start(self, now: float, env: dict[str, str]) -> None:
        self.log.parent.mkdir(parents=True, exist_ok=True)
        if self._out is not None:
            self._out.close()
        self._out = self.log.open("ab")
        self.adopted = None
        self.proc = subprocess.Popen(
            self.argv, stdin=subprocess.DEVNULL, stdout=self._out, stderr=self._out, env=env,
            preexec_fn=None if self.pidfile is not None else _die_with_parent)
        if self.pidfile is not None:
            self.pidfile.write_text(f"{self.proc.pid}\n")
        self.started_at = now

    def kill(self) -> None:
        pid = self.pid
        if pid is not None and self.running():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        if self.proc is not None:
            self.proc.wait(5)

    def terminate(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.send_signal(signal.SIGCONT)
                self.proc.terminate()

    def reap(self, deadline: float) -> None:
        if self.proc is not None:
            try:
                self.proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        if self._out is not None:
            self._out.close()
            self._out = None


def etcd_argv(cfg: NodeConfig) -> list[str]:
    """This host's etcd member: "new" the first time (the member ``cluster init`` made),
    "existing" once it has data or when it was added to a running cluster (``join``)."""
    assert cfg.member is not None
    member = MemberSpec(cfg.node, cfg.etcd_dir, cfg.member.peer_urls, cfg.member.client_urls,
                        tls=NodeCredentials(cfg.tls_dir))
    state = "existing" if (cfg.etcd_dir / "member").exists() else cfg.member.state
    return member.argv(cfg.member.initial_cluster, cfg.member.token, state, DEFAULT_TUNING)


def part_argv(cfg: NodeConfig, name: str, python: str = sys.executable) -> list[str]:
    if name == "etcd":
        return etcd_argv(cfg)
    return [python, "-m", PART_MODULES[name], "--config", str(cfg.path)]


class Daemon:
    def __init__(self, cfg: NodeConfig, now: Callable[[], float] = time.monotonic,
                 say: Callable[[str], None] | None = None) -> None:
        self.cfg, self.now = cfg, now
        self.alive = AliveFile(cfg.heartbeats_alive, now)  # heartbeats.alive, aged
        self.say = say or _say
        self.env = child_env()
        self.parts = [Part(n, part_argv(cfg, n), cfg.log_dir / f"{n}.log",
                           cfg.heartbeats_pidfile if n == "heartbeats" else None)
                      for n in ("heartbeats", "etcd", "agent", "manager", "api")
                      if n in cfg.parts]
        # A witness runs no QEMU: nothing for a watchdog to fence.
        self.fencing = "heartbeats" in cfg.parts and cfg.role != "witness"
        self.watchdog: subprocess.Popen[bytes] | None = None

    # -- the watchdog ----------------------------------------------------------------
    def _watchdog_pid(self) -> int | None:
        return pid_in_file(self.cfg.watchdog_pidfile, "vmcluster.node.watchdog",
                           str(self.cfg.path))

    def ensure_watchdog(self) -> None:
        if self.watchdog is not None:
            if self.watchdog.poll() is None:
                return  # ours, and alive (it may still be starting)
            self.watchdog = None  # reaped: it died; start another below
        if self._watchdog_pid() is not None:
            return  # one an earlier daemon started
        self.cfg.log_dir.mkdir(parents=True, exist_ok=True)
        self.cfg.watchdog_socket.unlink(missing_ok=True)  # a dead watchdog's
        with (self.cfg.log_dir / "watchdog.log").open("ab") as out:
            self.watchdog = subprocess.Popen(
                [sys.executable, "-m", "vmcluster.node.watchdog", "--config", str(self.cfg.path)],
                stdin=subprocess.DEVNULL, stdout=out, stderr=out, env=self.env,
                start_new_session=True)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and not self.cfg.watchdog_socket.exists():
            time.sleep(0.02)
        self.say(f"watchdog started (pid {self.watchdog.pid}, fence window "
                 f"{self.cfg.fence_window_s:.2f} s)")

    def heartbeats_fresh(self) -> bool:
        return self.alive.age() < HEARTBEATS_FRESH_S

    # -- one round ---------------------------------------------------------------------
    def supervise(self) -> None:
        now = self.now()
        for part in self.parts:
            if part.running():
                if now - part.started_at > STABLE_S:
                    part.failures = 0
                if part.name == "heartbeats" and self._hung(part, now):
                    self.say("heartbeats stopped sending; killing the part to start it again")
                    part.kill()
                continue
            if part.proc is None and part.adopted is None and part.failures == 0 \
                    and part.next_start == 0.0 and part.adopt(now):
                self.say(f"{part.name}: adopted pid {part.adopted} from the previous daemon")
                continue
            if part.proc is not None or part.adopted is not None:  # it ran and exited
                rc = part.proc.returncode if part.proc is not None else "?"
                part.proc = part.adopted = None
                part.next_start = now + BACKOFF_S[min(part.failures, len(BACKOFF_S) - 1)]
                part.failures += 1
                self.say(f"{part.name} exited ({rc}); starting it again in "
                         f"{part.next_start - now:.1f} s (see {part.log})")
            if now >= part.next_start:
                if part.name == "heartbeats":
                    # What an earlier heartbeat part (crashed with the host) last touched
                    # says nothing of this one: it must not pet the watchdog before this
                    # one sends (it waits for the store first, after a power cut).
                    self.cfg.heartbeats_alive.unlink(missing_ok=True)
                try:
                    part.start(now, self.env)
                except OSError as exc:
                    part.failures += 1
                    part.next_start = now + BACKOFF_S[-1]
                    self.say(f"cannot start {part.name}: {exc}")

    def _hung(self, part: Part, now: float) -> bool:
        if now - part.started_at < HEARTBEATS_HUNG_S + 5.0:  # give it time to start
            return False
        return self.alive.age() > HEARTBEATS_HUNG_S

    def tick(self) -> None:
        self.supervise()
        if self.fencing:
            self.ensure_watchdog()
            if self.heartbeats_fresh():
                pet(self.cfg)

    def run(self, stop: Callable[[], bool], sleep: Callable[[float], None] = time.sleep) -> None:
        for d in (self.cfg.run_dir, self.cfg.state_dir, self.cfg.log_dir):
            d.mkdir(parents=True, exist_ok=True)
        if not self.fencing:
            pet(self.cfg, b"disarm")  # a watchdog left by an earlier config must not fire
        self.say(f"vmclusterd {self.cfg.node} of cluster {self.cfg.cluster}: parts "
                 f"{', '.join(p.name for p in self.parts)}")
        try:
            while not stop():
                self.tick()
                sleep(TICK_S)
        finally:
            # Every part at once, and the heartbeats not at all: they keep going (and the
            # watchdog petted) until the parts are down, then the next daemon adopts them.
            stopping = [p for p in self.parts if p.pidfile is None]
            for part in stopping:
                part.terminate()
            deadline = time.monotonic() + 10.0
            while time.monotonic() < deadline and any(p.running() for p in stopping):
                if self.fencing and self.heartbeats_fresh():
                    pet(self.cfg)
                sleep(0.05)
            for part in stopping:
                part.reap(deadline)
            if self.fencing and self.heartbeats_fresh():
                pet(self.cfg, b"restart")  # pets may pause for the grace; heartbeats may not
            self.say("stopped; heartbeats and the watchdog stay: a daemon started within "
                     f"{self.cfg.restart_grace_s:.0f} s adopts them and every running VM")


def unit_text() -> str:
    """``vmclusterd.service``, its ExecStart pointing at this installation's daemon."""

    script = Path(sys.executable).with_name("vmclusterd")
    command = str(script) if script.exists() else f"{sys.executable} -m vmcluster.node.daemon"
    text = files("vmcluster.node").joinpath("vmclusterd.service").read_text()
    return text.replace("@VMCLUSTERD@", command)


def child_env() -> dict[str, str]:
    env = dict(os.environ)

    src = str(Path(vmcluster.__file__).resolve().parent.parent)
    env["PYTHONPATH"] = src + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    return env


def _say(msg: str) -> None:
    print(f"{time.strftime('%H:%M:%S')} vmclusterd: {msg}", flush=True)


def _claim_pidfile(cfg: NodeConfig) -> None:
    """One daemon per host: refuse to start beside a live one."""
    pid = pid_in_file(cfg.pidfile, str(cfg.path))
    if pid is not None and pid != os.getpid():
        raise VmclusterError(f"vmclusterd for {cfg.node} already runs (pid {pid}, "
                             f"{cfg.pidfile}); stop it first")
    cfg.pidfile.write_text(f"{os.getpid()}\n")


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="vmclusterd", description="the vmcluster node daemon")
    ap.add_argument("--config", default="/etc/vmcluster/vmclusterd.toml")
    ap.add_argument("--print-unit", action="store_true",
                    help="print the systemd unit for this installation and exit")
    args = ap.parse_args(argv)
    if args.print_unit:
        print(unit_text(), end="")
        return 0
    try:
        cfg = load_config(args.config)
        cfg.run_dir.mkdir(parents=True, exist_ok=True)
        _claim_pidfile(cfg)
    except VmclusterError as exc:
        print(f"vmclusterd: {exc}", file=sys.stderr)
        return exc.exit_code
    done: list[int] = []

    def on_signal(sig: int, _frame: object) -> None:
        done.append(sig)

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    try:
        Daemon(cfg).run(lambda: bool(done))
    finally:
        with contextlib.suppress(OSError, ValueError):
            if int(cfg.pidfile.read_text().split()[0]) == os.getpid():
                cfg.pidfile.unlink()
    return 0


if __name__ == "__main__":
    sys.exit(main())
