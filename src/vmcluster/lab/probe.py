"""What a client sees: a TCP echo loop from the client namespace, and the guest's memory check.

``python -m vmcluster.lab.probe --addr A --port P`` (run inside the client
namespace) sends ``<seq>\\n`` and waits for the same line back, one at a time,
every ``interval`` seconds; on SIGTERM it prints one JSON object: replies, the
longest silence between two replies (``max_gap_ms``), whether the first TCP
session lasted throughout (``session_survived``). :class:`EchoProbe` starts and
stops it from the host. :func:`memory_ok` reads a guest's serial log.
"""

from __future__ import annotations

import argparse
import json
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from vmcluster.errors import LabError
from vmcluster.lab.layout import LabLayout

__all__ = ["EchoProbe", "memory_ok", "serial_sizes"]


class EchoProbe:
    """An echo loop running in the lab's client namespace against one VM."""

    def __init__(self, layout: LabLayout, addr: str, port: int = 7777,
                 interval_s: float = 0.01) -> None:
        self.argv = ["ip", "netns", "exec", layout.client_ns, sys.executable, "-m",
                     "vmcluster.lab.probe", "--addr", addr, "--port", str(port),
                     "--interval", str(interval_s)]
        self.proc: subprocess.Popen[str] | None = None

    def start(self, ready_timeout_s: float = 20.0) -> None:
        import os

        import vmcluster

        env = dict(os.environ)
        src = str(Path(vmcluster.__file__).resolve().parent.parent)
        env["PYTHONPATH"] = src + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH")
                                   else "")
        self.proc = subprocess.Popen(self.argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                     stdin=subprocess.DEVNULL, text=True, env=env)
        assert self.proc.stderr is not None
        deadline = time.monotonic() + ready_timeout_s
        # The probe writes "connected" on stderr once its first reply came back.
        while time.monotonic() < deadline:
            line = self.proc.stderr.readline()
            if not line and self.proc.poll() is not None:
                break
            if line.startswith("connected"):
                return
        self.stop()
        raise LabError(f"the client cannot reach the VM ({' '.join(self.argv[-6:])})")

    def stop(self) -> dict[str, Any]:
        if self.proc is None:
            return {}
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            out, _ = self.proc.communicate(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            out, _ = self.proc.communicate()
        self.proc = None
        try:
            return dict(json.loads(out.strip().splitlines()[-1]))
        except (ValueError, IndexError):
            return {"error": "the probe printed no result"}


def serial_sizes(layout: LabLayout, vm: str, nodes: list[str]) -> dict[str, int]:
    """The current size of ``vm``'s serial log on each node (to read only what follows)."""
    out = {}
    for node in nodes:
        try:
            out[node] = layout.serial_log(vm, node).stat().st_size
        except OSError:
            out[node] = 0
    return out


def memory_ok(log: Path, offset: int, timeout_s: float = 15.0) -> bool:
    """After ``offset``: MEMOK is seen again and nothing says CORRUPT (the whole log is checked)."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            data = log.read_bytes()
        except OSError:
            data = b""
        if b"CORRUPT" in data:
            return False
        if b"MEMOK" in data[offset:]:
            return True
        if time.monotonic() > deadline:
            return False
        time.sleep(0.2)


def _run(addr: str, port: int, interval: float) -> dict[str, Any]:
    # SIGTERM means "the migration is over": stop after the next reply (or 10 s), so a
    # silence still going on when the migration ends is measured in full.
    stop = False
    stop_at: float | None = None

    def on_term(_sig: int, _frame: object) -> None:
        nonlocal stop_at
        stop_at = time.monotonic() + 10.0

    signal.signal(signal.SIGTERM, on_term)
    replies, sessions, errors = 0, 0, []
    max_gap = 0.0
    last: float | None = None
    seq = 0
    while not stop:
        try:
            sock = socket.create_connection((addr, port), timeout=2.0)
        except OSError as exc:
            errors.append(f"connect: {exc}")
            stop = stop or (stop_at is not None and time.monotonic() > stop_at)
            time.sleep(0.2)
            continue
        sessions += 1
        sock.settimeout(0.05)  # short, so SIGTERM is seen; the reply is still awaited
        buf = b""
        try:
            while not stop:
                seq += 1
                sock.sendall(f"{seq}\n".encode())
                while not buf.endswith(b"\n"):
                    if stop_at is not None and time.monotonic() > stop_at:
                        stop = True
                        break
                    try:
                        chunk = sock.recv(4096)
                    except TimeoutError:
                        continue
                    if not chunk:
                        raise ConnectionError("closed by the VM")
                    buf += chunk
                if stop:
                    break
                if buf.strip() != str(seq).encode():
                    raise ConnectionError(f"bad reply {buf!r} to {seq}")
                buf = b""
                now = time.monotonic()
                if last is not None:
                    max_gap = max(max_gap, now - last)
                else:
                    print("connected", file=sys.stderr, flush=True)
                last = now
                replies += 1
                stop = stop_at is not None
                time.sleep(interval)
        except OSError as exc:
            errors.append(f"session {sessions}: {exc}")
        finally:
            sock.close()
    return {"replies": replies, "max_gap_ms": round(max_gap * 1000, 1), "sessions": sessions,
            "session_survived": sessions == 1 and not errors, "errors": errors[:5]}


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="vmcluster.lab.probe")
    p.add_argument("--addr", required=True)
    p.add_argument("--port", type=int, default=7777)
    p.add_argument("--interval", type=float, default=0.01)
    args = p.parse_args(argv)
    print(json.dumps(_run(args.addr, args.port, args.interval)), flush=True)


if __name__ == "__main__":
    main()
