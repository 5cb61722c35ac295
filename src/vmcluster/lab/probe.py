"""What a client sees: probes from the client namespace, and the guest's memory check.

Three clients watch a VM during a migration, each a process in the lab's client
namespace (:class:`ClientProbe` starts and stops one from the host):

* ``--mode tcp``: sends ``<seq>\\n`` and waits for the same line back, one at a
  time, every ``interval`` seconds: the longest silence between two replies
  (``max_gap_ms``) and whether the first TCP session lasted throughout. TCP's
  200 ms minimum retransmission timeout bounds this gap from below.
* ``--mode udp``: a datagram every 5 ms, echoed by the guest: ``blackout_ms`` is
  the longest run of unanswered probes, in wall time from the last answered
  probe before it to the first answered after it (``gap_from`` / ``gap_to``),
  less one interval, so that it can be laid beside QEMU's own events.
* ApacheBench (``ab``, Debian's apache2-utils: a client we did not write) against
  busybox ``httpd`` in the guest: failed requests and the longest request.

Each prints one JSON object when sent SIGTERM (ab: SIGINT). :func:`memory_ok`
reads a guest's serial log.
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import vmcluster
from vmcluster.errors import LabError
from vmcluster.substrate.host.layout import LabLayout

__all__ = ["ClientProbe", "memory_ok", "parse_ab", "serial_sizes"]

HTTP_PORT = 80


class ClientProbe:
    """One client process in the lab's client namespace against one VM.

    ``mode`` is ``tcp`` or ``udp`` (this module's own loops) or ``ab`` (ApacheBench).
    """

    def __init__(self, layout: LabLayout, addr: str, mode: str = "tcp", port: int = 7777,
                 interval_s: float | None = None) -> None:
        self.mode = mode
        ns = ["ip", "netns", "exec", layout.client_ns]
        if mode == "ab":
            # -c 1: one request at a time, so a stall shows as one long request; -r: go on
            # after a failed one; -s: a request stuck longer than 30 s counts as failed.
            self.argv = [*ns, "ab", "-q", "-r", "-c", "1", "-n", "10000000", "-t", "900",
                         "-s", "30", f"http://{addr}:{HTTP_PORT}/"]
        else:
            every = interval_s if interval_s is not None else (0.005 if mode == "udp" else 0.01)
            self.argv = [*ns, sys.executable, "-m", "vmcluster.lab.probe", "--mode", mode,
                         "--addr", addr, "--port", str(port), "--interval", str(every)]
        self.proc: subprocess.Popen[str] | None = None

    def start(self, ready_timeout_s: float = 20.0) -> None:


        env = dict(os.environ)
        src = str(Path(vmcluster.__file__).resolve().parent.parent)
        env["PYTHONPATH"] = src + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH")
                                   else "")
        try:
            self.proc = subprocess.Popen(self.argv, stdout=subprocess.PIPE,
                                         stderr=subprocess.PIPE, stdin=subprocess.DEVNULL,
                                         text=True, env=env)
        except OSError as exc:
            raise LabError(f"cannot start the {self.mode} client: {exc}") from exc
        if self.mode == "ab":
            time.sleep(0.3)  # ab says nothing until it ends; give it its first requests
            if self.proc.poll() is not None:
                err = self.proc.communicate()[1].strip().splitlines()
                self.proc = None
                raise LabError(f"ab cannot reach the VM's httpd: {err[-1] if err else '?'}")
            return
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
        raise LabError(f"the {self.mode} client cannot reach the VM "
                       f"({' '.join(self.argv[-6:])})")

    def interrupt(self) -> None:
        """Tell the client the migration is over (it finishes and reports on its own)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT if self.mode == "ab" else signal.SIGTERM)

    def stop(self) -> dict[str, Any]:
        """Interrupt the client (if not yet) and return what it reports."""
        if self.proc is None:
            return {}
        self.interrupt()
        try:
            out, _ = self.proc.communicate(timeout=40)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            out, _ = self.proc.communicate()
        self.proc = None
        if self.mode == "ab":
            return parse_ab(out)
        try:
            return dict(json.loads(out.strip().splitlines()[-1]))
        except (ValueError, IndexError):
            return {"error": "the probe printed no result"}


def parse_ab(text: str) -> dict[str, Any]:
    """ApacheBench's report: completed and failed requests, the longest request (ms)."""
    out: dict[str, Any] = {"requests": None, "failed": None, "max_ms": None}
    for line in text.splitlines():
        key, _, rest = line.partition(":")
        words = rest.split()
        if key == "Complete requests" and words:
            out["requests"] = int(words[0])
        elif key == "Failed requests" and words:
            out["failed"] = int(words[0])
        elif key == "Total" and len(words) >= 5:  # min mean [+/-sd] median max
            out["max_ms"] = int(words[-1])
    if out["requests"] is None:
        out["error"] = "ab printed no report"
    return out


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


def _udp(addr: str, port: int, interval: float) -> dict[str, Any]:
    """A datagram every ``interval`` s; the longest run of unanswered ones, as a blackout."""
    stop_at: float | None = None

    def on_term(_sig: int, _frame: object) -> None:
        nonlocal stop_at
        stop_at = time.monotonic() + 1.0  # answers still on their way count

    signal.signal(signal.SIGTERM, on_term)
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.connect((addr, port))
    sock.setblocking(False)
    sent: list[float] = []  # wall-clock send time of probe i
    answered: set[int] = set()
    next_send = time.monotonic()
    told = False
    sending = True
    while stop_at is None or time.monotonic() < stop_at:
        now = time.monotonic()
        if sending and now >= next_send:
            with contextlib.suppress(OSError):  # unreachable for a moment is a lost probe
                sock.send(b"%d" % len(sent))
            sent.append(time.time())
            next_send += interval
            if next_send < now:  # we were descheduled: do not send a burst
                next_send = now + interval
            if stop_at is not None:
                sending = False
        try:
            while True:
                data = sock.recv(64)
                with contextlib.suppress(ValueError):
                    answered.add(int(data))
                if not told:
                    print("connected", file=sys.stderr, flush=True)
                    told = True
        except (BlockingIOError, ConnectionRefusedError):
            pass
        time.sleep(max(0.0, min(next_send - time.monotonic(), 0.001)))
    sock.close()
    # The longest run of unanswered probes between two answered ones (a loss at the very
    # start or end is the probe's own, not the VM's).
    best, frm, to = 0, None, None
    last_ok: int | None = None
    for i in sorted(answered):
        if last_ok is not None and i - last_ok - 1 > best:
            best, frm, to = i - last_ok - 1, sent[last_ok], sent[i]
        last_ok = i
    lost = sum(1 for i in range(min(answered, default=0), max(answered, default=-1) + 1)
               if i not in answered)
    # In wall time, not count x interval: a probe sent late (the prober descheduled) must
    # not shorten the blackout. The resolution is one interval.
    blackout = 0.0 if frm is None or to is None else max(0.0, to - frm - interval)
    # A prober that could not send (descheduled) measures nothing meanwhile: say how long.
    stall = max((b - a for a, b in itertools.pairwise(sent)), default=0.0)
    return {"sent": len(sent), "answered": len(answered), "lost": lost, "lost_in_gap": best,
            "blackout_ms": round(blackout * 1000, 1), "interval_ms": interval * 1000,
            "gap_from": frm, "gap_to": to, "max_send_gap_ms": round(stall * 1000, 1)}


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
    p.add_argument("--mode", choices=("tcp", "udp"), default="tcp")
    p.add_argument("--addr", required=True)
    p.add_argument("--port", type=int, default=7777)
    p.add_argument("--interval", type=float, default=0.01)
    args = p.parse_args(argv)
    run = _udp if args.mode == "udp" else _run
    print(json.dumps(run(args.addr, args.port, args.interval)), flush=True)


if __name__ == "__main__":
    main()
