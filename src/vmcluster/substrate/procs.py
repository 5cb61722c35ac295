"""Processes found again by pid: their command line, and pid files checked against it.

A pid alone can be reused; a process counts as the one a record or pid file means
only while it lives (not a zombie) and its command line names what it should.
"""

from __future__ import annotations

from pathlib import Path

__all__ = ["live_cmdline", "pid_in_file"]


def live_cmdline(pid: int) -> bytes:
    """``pid``'s command line (NUL-separated) while it lives; b"" when gone or a zombie."""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return b""
    return b"" if stat.rsplit(")", 1)[-1].split()[0] == "Z" else cmdline


def pid_in_file(pidfile: Path, *marks: str) -> int | None:
    """The live process ``pidfile`` names, if its command line contains every mark."""
    try:
        pid = int(pidfile.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None
    cmdline = live_cmdline(pid)
    if not cmdline or not all(m.encode() in cmdline for m in marks):
        return None
    return pid
