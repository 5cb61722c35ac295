"""Capture the first bytes of every TCP connection on one interface (run inside a netns).

``python sniff.py IFACE SECONDS`` prints one JSON object: for each connection
(``src:sport>dst:dport``) the hex of its first 8 payload bytes from the side
that opened it. Used to show a migration stream is TLS (a handshake record,
0x16 0x03) and not QEMU's plain stream (magic ``QEVM``). Linux AF_PACKET only.
"""

from __future__ import annotations

import json
import signal
import socket
import struct
import sys
import time


def main() -> None:
    iface, seconds = sys.argv[1], float(sys.argv[2])
    s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(0x0800))
    s.bind((iface, 0))
    s.settimeout(0.2)
    print("ready", file=sys.stderr, flush=True)
    opened: set[str] = set()
    first: dict[str, str] = {}
    end = time.monotonic() + seconds

    def stop(_sig: int, _frame: object) -> None:
        nonlocal end
        end = 0.0

    signal.signal(signal.SIGINT, stop)
    while time.monotonic() < end and len(first) < 64:
        try:
            frame = s.recv(65535)
        except TimeoutError:
            continue
        ip = frame[14:]
        if len(ip) < 20 or ip[9] != 6:
            continue
        ihl = (ip[0] & 0x0F) * 4
        total = struct.unpack("!H", ip[2:4])[0]
        tcp = ip[ihl:total]
        sport, dport = struct.unpack("!HH", tcp[:4])
        flags = tcp[13]
        flow = f"{socket.inet_ntoa(ip[12:16])}:{sport}>{socket.inet_ntoa(ip[16:20])}:{dport}"
        if flags & 0x02 and not flags & 0x10:  # SYN without ACK: this side opened it
            opened.add(flow)
        payload = tcp[(tcp[12] >> 4) * 4:]
        if payload and flow in opened and flow not in first:
            first[flow] = payload[:8].hex()
    print(json.dumps(first), flush=True)


if __name__ == "__main__":
    main()
