"""HTTP(S) connections to etcd members: client-certificate TLS, and connections kept.

etcd on real hosts serves clients and peers over TLS with client-certificate
auth (the cluster CA; every member's certificate has an IP SAN per address it
listens on): a host's :class:`~vmcluster.pki.NodeCredentials` give the ``ssl``
context that checks the member's certificate against the cluster CA and the
address in the URL and presents the host's own, and :func:`member_flags` the
member's side.
:class:`Connections` keeps one connection per endpoint and thread, so that a
client does not pay a TLS handshake per request.
"""

from __future__ import annotations

import http.client
import ssl
import threading
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from vmcluster.pki import NodeCredentials

__all__ = ["Connections", "member_flags", "open_connection"]


def member_flags(creds: NodeCredentials) -> list[str]:
    """etcd's own flags for a member with ``creds``: TLS for clients and peers, client
    certificates required (both sides use the host's one certificate)."""
    return [
        f"--cert-file={creds.cert}", f"--key-file={creds.key}",
        f"--trusted-ca-file={creds.ca}", "--client-cert-auth=true",
        f"--peer-cert-file={creds.cert}", f"--peer-key-file={creds.key}",
        f"--peer-trusted-ca-file={creds.ca}", "--peer-client-cert-auth=true",
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
