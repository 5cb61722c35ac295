"""The agent's wire format, one JSON request per connection: the one place it is read."""

from __future__ import annotations

import socket

__all__ = ["exchange"]


def exchange(sock: socket.socket, request: bytes) -> bytes:
    """Send one request line, read one reply line (until the peer closes or sends it)."""
    sock.sendall(request)
    buf = b""
    while not buf.endswith(b"\n"):
        chunk = sock.recv(65536)
        if not chunk:
            break
        buf += chunk
    return buf
