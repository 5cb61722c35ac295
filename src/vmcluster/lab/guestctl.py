"""Talk to a lab guest's own programs from the lab's client namespace, as a user would.

The test guest's workload (port 7777) takes ``RATE <MiB/s>`` (how fast it dirties
its memory), ``WWS <MiB>`` (its writable working set) and ``STATS``; its disk
writer (port 7778) takes ``RATE <writes/s>`` and ``STATS``. One line in, one out.
"""

from __future__ import annotations

import subprocess
import sys

from vmcluster.errors import LabError
from vmcluster.substrate.host.layout import LabLayout

__all__ = ["DISKWRITER_PORT", "WORKLOAD_PORT", "guest_request"]

WORKLOAD_PORT = 7777
DISKWRITER_PORT = 7778

_CODE = ("import socket,sys;s=socket.create_connection((sys.argv[1],int(sys.argv[2])),10);"
         "s.sendall(sys.argv[3].encode()+b'\\n');f=s.makefile();print(f.readline().strip())")


def guest_request(layout: LabLayout, addr: str, line: str, port: int = WORKLOAD_PORT,
                  timeout_s: float = 30.0) -> str:
    """Send ``line`` to the guest at ``addr`` (from the client namespace); its reply."""
    try:
        out = subprocess.run(["ip", "netns", "exec", layout.client_ns, sys.executable, "-c",
                              _CODE, addr, str(port), line],
                             capture_output=True, text=True, timeout=timeout_s)
    except subprocess.TimeoutExpired:
        raise LabError(f"guest {addr}:{port} did not answer {line!r} "
                       f"within {timeout_s:.0f} s") from None
    if out.returncode != 0:
        last = (out.stderr.strip().splitlines() or ["no reply"])[-1]
        raise LabError(f"guest {addr}:{port}: {line!r} failed: {last}")
    return out.stdout.strip()
