"""A small blocking NBD client (fixed newstyle handshake, ``NBD_OPT_STARTTLS``,
``NBD_OPT_GO``, simple replies).

With ``tls`` it upgrades the connection with ``NBD_OPT_STARTTLS`` before
anything else, as QEMU's own client does against a server with ``tls-creds``:
the export is then reached only over TLS, its certificate checked.

The coordinator reads and writes a volume's allocation table through it, over
its own storage path, exactly as QEMU reaches the LUN: no kernel nbd module,
no shared filesystem. Every socket operation has a timeout; any failure is a
:class:`NbdError` (a :class:`~vmcluster.errors.SubstrateError`).
"""

from __future__ import annotations

import contextlib
import socket
import ssl
import struct
from types import TracebackType

from vmcluster.errors import SubstrateError
from vmcluster.model import MIB

__all__ = ["NbdClient", "NbdError"]

_NBDMAGIC = b"NBDMAGIC"
_IHAVEOPT = 0x49484156454F5054
_REPLY_MAGIC = 0x3E889045565A9
_REQ_MAGIC = 0x25609513
_SIMPLE_REPLY = 0x67446698
_FLAG_FIXED_NEWSTYLE = 1
_FLAG_NO_ZEROES = 2
_OPT_GO = 7
_OPT_STARTTLS = 5
_REP_ACK = 1
_REP_INFO = 3
_INFO_EXPORT = 0
_CMD_READ, _CMD_WRITE, _CMD_DISC, _CMD_FLUSH = 0, 1, 2, 3
_FLAG_READ_ONLY = 1 << 1
_MAX_IO = MIB  # split larger requests (servers may refuse > 32 MiB)


class NbdError(SubstrateError):
    """The NBD server could not be reached, refused the export, or failed a request."""


class NbdClient:
    """One connection to one export: ``with NbdClient(host, port, name) as lun: ...``."""

    def __init__(self, host: str, port: int, export: str, timeout_s: float = 5.0,
                 tls: ssl.SSLContext | None = None, tls_hostname: str = "") -> None:
        self.where = f"nbd://{host}:{port}/{export}"
        self._tls, self._tls_hostname = tls, tls_hostname or host
        self.size = 0
        self.read_only = False
        self._handle = 0
        try:
            self._sock = socket.create_connection((host, port), timeout=timeout_s)
        except OSError as exc:
            raise NbdError(f"cannot connect to {self.where}: {exc}") from exc
        try:
            self._handshake(export)
        except ssl.SSLError as exc:
            self._sock.close()
            raise NbdError(f"TLS with {self.where} failed: {exc.reason or exc}") from exc
        except (OSError, struct.error) as exc:
            self._sock.close()
            raise NbdError(f"NBD handshake with {self.where} failed: {exc}") from exc
        except NbdError:
            self._sock.close()
            raise

    def __enter__(self) -> NbdClient:
        return self

    def __exit__(self, et: type[BaseException] | None, ev: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def _recv(self, n: int) -> bytes:
        buf = bytearray()
        while len(buf) < n:
            chunk = self._sock.recv(n - len(buf))
            if not chunk:
                raise NbdError(f"{self.where} closed the connection")
            buf += chunk
        return bytes(buf)

    def _handshake(self, export: str) -> None:
        head = self._recv(18)
        if head[:8] != _NBDMAGIC or struct.unpack(">Q", head[8:16])[0] != _IHAVEOPT:
            raise NbdError(f"{self.where} is not a newstyle NBD server")
        (flags,) = struct.unpack(">H", head[16:18])
        if not flags & _FLAG_FIXED_NEWSTYLE:
            raise NbdError(f"{self.where} does not speak fixed newstyle NBD")
        self._sock.sendall(struct.pack(">I", _FLAG_FIXED_NEWSTYLE | _FLAG_NO_ZEROES))
        if self._tls is not None:
            self._sock.sendall(struct.pack(">QII", _IHAVEOPT, _OPT_STARTTLS, 0))
            magic, _opt, rtype, length = struct.unpack(">QIII", self._recv(20))
            body = self._recv(length)
            if magic != _REPLY_MAGIC or rtype != _REP_ACK:
                raise NbdError(f"{self.where} refused STARTTLS: "
                               f"{body.decode(errors='replace') or hex(rtype)}")
            self._sock = self._tls.wrap_socket(self._sock, server_hostname=self._tls_hostname)
        name = export.encode()
        data = struct.pack(">I", len(name)) + name + struct.pack(">H", 0)
        self._sock.sendall(struct.pack(">QII", _IHAVEOPT, _OPT_GO, len(data)) + data)
        while True:
            magic, _opt, rtype, length = struct.unpack(">QIII", self._recv(20))
            if magic != _REPLY_MAGIC:
                raise NbdError(f"{self.where} sent a bad option reply")
            body = self._recv(length)
            if rtype & (1 << 31):
                msg = body.decode(errors="replace") or f"error {rtype:#x}"
                raise NbdError(f"{self.where} refused export {export!r}: {msg}")
            if rtype == _REP_INFO and len(body) >= 12:
                (info,) = struct.unpack(">H", body[:2])
                if info == _INFO_EXPORT:
                    self.size, tflags = struct.unpack(">QH", body[2:12])
                    self.read_only = bool(tflags & _FLAG_READ_ONLY)
            elif rtype == _REP_ACK:
                return

    def _request(self, cmd: int, offset: int, length: int, data: bytes = b"") -> bytes:
        self._handle += 1
        try:
            self._sock.sendall(struct.pack(">IHHQQI", _REQ_MAGIC, 0, cmd, self._handle, offset,
                                           length) + data)
            magic, error, handle = struct.unpack(">IIQ", self._recv(16))
            if magic != _SIMPLE_REPLY or handle != self._handle:
                raise NbdError(f"{self.where} sent a bad reply")
            if error:
                raise NbdError(f"{self.where}: request {cmd} at {offset} failed (errno {error})")
            return self._recv(length) if cmd == _CMD_READ else b""
        except OSError as exc:
            raise NbdError(f"{self.where}: I/O failed: {exc}") from exc

    def _pipelined(self, cmd: int, offset: int, length: int, data: bytes = b"") -> bytes:
        """``length`` bytes at ``offset`` as requests of at most 1 MiB, all sent before the
        first reply is read (the link stays busy instead of idling a round trip per MiB);
        the server may answer in any order. Returns what a read read."""
        out = bytearray(length if cmd == _CMD_READ else 0)
        pending: dict[int, tuple[int, int]] = {}
        try:
            for pos in range(0, length, _MAX_IO):
                n = min(_MAX_IO, length - pos)
                self._handle += 1
                pending[self._handle] = (pos, n)
                self._sock.sendall(struct.pack(">IHHQQI", _REQ_MAGIC, 0, cmd, self._handle,
                                               offset + pos, n)
                                   + (data[pos:pos + n] if cmd == _CMD_WRITE else b""))
            while pending:
                magic, error, handle = struct.unpack(">IIQ", self._recv(16))
                if magic != _SIMPLE_REPLY or handle not in pending:
                    raise NbdError(f"{self.where} sent a bad reply")
                pos, n = pending.pop(handle)
                if error:
                    raise NbdError(f"{self.where}: request {cmd} at {offset + pos} failed "
                                   f"(errno {error})")
                if cmd == _CMD_READ:
                    out[pos:pos + n] = self._recv(n)
        except OSError as exc:
            raise NbdError(f"{self.where}: I/O failed: {exc}") from exc
        return bytes(out)

    def read(self, offset: int, length: int) -> bytes:
        return self._pipelined(_CMD_READ, offset, length)

    def write(self, offset: int, data: bytes) -> None:
        if self.read_only:
            raise NbdError(f"{self.where} is read-only")
        self._pipelined(_CMD_WRITE, offset, len(data), data)

    def flush(self) -> None:
        self._request(_CMD_FLUSH, 0, 0)

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self._sock.sendall(struct.pack(">IHHQQI", _REQ_MAGIC, 0, _CMD_DISC, 0, 0, 0))
        self._sock.close()
