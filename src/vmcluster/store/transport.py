"""HTTP(S) connections to etcd members: client-certificate TLS, and connections kept.

etcd on real hosts serves clients and peers over TLS with client-certificate
auth (the cluster CA; every member's certificate has an IP SAN per address it
listens on). :class:`EtcdTls` names a host's CA, certificate and key files and
builds the ``ssl`` context that checks the member's certificate against the
cluster CA and the address in the URL, and presents this host's certificate.
:class:`Connections` keeps one connection per endpoint and thread, so that a
client does not pay a TLS handshake per request.
"""

from __future__ import annotations

import http.client
import ssl
import threading
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

__all__ = ["Connections", "EtcdTls", "open_connection"]


@dataclass(frozen=True)
class EtcdTls:
    """A host's TLS files for etcd: the cluster CA, its certificate and key (PEM)."""

    ca: Path
    cert: Path
    key: Path

    def context(self) -> ssl.SSLContext:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        ctx.load_verify_locations(self.ca)
        ctx.load_cert_chain(self.cert, self.key)
        return ctx

    def member_flags(self) -> list[str]:
        """etcd's own flags: TLS for clients and peers, client certificates required."""
        return [
            f"--cert-file={self.cert}", f"--key-file={self.key}",
            f"--trusted-ca-file={self.ca}", "--client-cert-auth=true",
            f"--peer-cert-file={self.cert}", f"--peer-key-file={self.key}",
            f"--peer-trusted-ca-file={self.ca}", "--peer-client-cert-auth=true",
        ]


def open_connection(url: str, timeout: float, tls: ssl.SSLContext | None
                    ) -> http.client.HTTPConnection:
    """A new connection to ``url`` (``https://`` needs ``tls``)."""
    parts = urlsplit(url)
    host, port = parts.hostname or "", parts.port
    if parts.scheme == "https":
        if tls is None:
            raise http.client.HTTPException(f"{url} needs TLS credentials (the cluster CA and "
                                            "a certificate)")
        return http.client.HTTPSConnection(host, port, timeout=timeout, context=tls)
    return http.client.HTTPConnection(host, port, timeout=timeout)


@dataclass
class Connections:
    """One kept connection per endpoint and thread; :meth:`drop` after any error."""

    timeout: float
    tls: ssl.SSLContext | None = None
    _local: threading.local = field(default_factory=threading.local, repr=False)

    def has(self, url: str) -> bool:
        return url in self._local.__dict__.get("pool", {})

    def get(self, url: str) -> http.client.HTTPConnection:
        pool: dict[str, http.client.HTTPConnection] = self._local.__dict__.setdefault("pool", {})
        conn = pool.get(url)
        if conn is None:
            conn = pool[url] = open_connection(url, self.timeout, self.tls)
        return conn

    def drop(self, url: str) -> None:
        pool: dict[str, http.client.HTTPConnection] = self._local.__dict__.get("pool", {})
        conn = pool.pop(url, None)
        if conn is not None:
            conn.close()

    def close(self) -> None:
        for url in list(self._local.__dict__.get("pool", {})):
            self.drop(url)
