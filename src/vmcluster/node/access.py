"""How a client reaches a cluster's API: its URLs, a token, the cluster's CA (and, in the
lab, the namespace to connect from). Used by the CLI and by the lab, which hands its
operator one of these (:func:`vmcluster.lab.services.lab_access`)."""

from __future__ import annotations

import ssl
from dataclasses import dataclass
from pathlib import Path

__all__ = ["ClusterAccess"]


@dataclass(frozen=True)
class ClusterAccess:
    """``urls``: the cluster's API on one or more hosts; a request goes to the first that
    can be reached (any host answers for the whole cluster)."""

    urls: tuple[str, ...]
    token: str
    ca: Path
    netns: str | None = None  # make the connections from this network namespace

    @property
    def url(self) -> str:
        return self.urls[0]

    def context(self) -> ssl.SSLContext:
        ctx = ssl.create_default_context(cafile=str(self.ca))
        ctx.check_hostname = True
        return ctx
