"""How a client reaches a cluster's API: its URLs, a token, the cluster's CA (and, in the
lab, the namespace to connect from). Used by the CLI and by the lab, which hands its
operator one of these (:func:`vmcluster.lab.services.lab_access`)."""

from __future__ import annotations

import os
import re
import ssl
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["API_URL", "ClusterAccess", "api_url", "credentials_file", "error_message"]

API_URL = re.compile(r"^https://[^/\s]+:\d+$")  # what a cluster API's URL looks like


def api_url(address: str, port: int) -> str:
    return f"https://{address}:{port}"


def credentials_file() -> Path:
    """Where ``cluster init`` writes, and the CLI reads, the admin's credentials."""
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "vmcluster" / "credentials.json"


def error_message(data: Any) -> str:
    """The message of an API error answer (``{"error": {"message"}}``; a plain
    ``{"detail"}`` from elsewhere, or whatever came)."""
    err = data.get("error") if isinstance(data, dict) else None
    if isinstance(err, dict):
        return str(err.get("message"))
    return str(data.get("detail", data) if isinstance(data, dict) else data)


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
