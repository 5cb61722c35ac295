"""How the CLI reaches a cluster: its API URL, the admin token and the cluster's CA.

A cluster is addressed by ``--cluster URL`` or ``$VMCLUSTER_URL``; the
credentials for it are in ``~/.config/vmcluster/credentials.json``
(``{"clusters": {URL: {"token": ..., "ca": PATH}}}``, written by ``cluster init``
and mode 0600), or in ``$VMCLUSTER_TOKEN`` and ``$VMCLUSTER_CA``. ``--lab NAME`` is
a convenience for the lab's own clusters: it resolves to that lab's URL and
admin credentials and makes the connections from the lab's admin namespace
(its operator's workstation on the public network).

Requests are bounded (``timeout_s``) and never retried in a loop; failures are
one :class:`~vmcluster.errors.VmclusterError` line naming the URL.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import httpx

from vmcluster.errors import InputError, VmclusterError
from vmcluster.lab.lab import resolve_lab
from vmcluster.lab.services import lab_access
from vmcluster.node.access import API_URL, ClusterAccess, credentials_file, error_message
from vmcluster.substrate.host.nsenter import NetnsThread

__all__ = ["ApiError", "ClusterAccess", "api_request", "credentials_file", "resolve_access"]


class ApiError(VmclusterError):
    """The cluster's API answered with an error (or not at all)."""

    def __init__(self, message: str, status: int = 0) -> None:
        super().__init__(message)
        self.status = status
        if status in (0, 400, 401, 403, 404, 409, 422):  # 0: no answer (a wrong or dead URL)
            self.exit_code = 2


def resolve_access(url: str | None, lab: str | None = None) -> ClusterAccess:
    """The cluster to talk to: ``url``, else $VMCLUSTER_URL, else ``lab``'s."""
    if lab is not None and url is None:
        return lab_access(resolve_lab(lab))
    url = url or os.environ.get("VMCLUSTER_URL")
    if not url:
        raise InputError("no cluster given: pass --cluster https://HOST:8443 or set "
                         "VMCLUSTER_URL (or --lab NAME for a lab)")
    urls = tuple(u.strip().rstrip("/") for u in url.split(",") if u.strip())
    for u in urls:
        if not API_URL.match(u):
            raise InputError(f"cluster URL {u!r} is not https://HOST:PORT; the API speaks "
                             "HTTPS only (several: comma-separated)")
    url = urls[0]
    token, ca = os.environ.get("VMCLUSTER_TOKEN"), os.environ.get("VMCLUSTER_CA")
    if not (token and ca):
        path = credentials_file()
        try:
            known = json.loads(path.read_text()).get("clusters", {})
        except FileNotFoundError:
            known = {}
        except (OSError, ValueError) as exc:
            raise InputError(f"{path}: cannot read the credentials: {exc}") from exc
        entry = known.get(url)
        if entry is None:
            raise InputError(f"no credentials for {url} in {path}; `vmcluster cluster init` "
                             "writes them, or set VMCLUSTER_TOKEN and VMCLUSTER_CA")
        token, ca = token or entry["token"], ca or entry["ca"]
    assert token is not None and ca is not None
    if not Path(ca).is_file():
        raise InputError(f"the cluster CA {ca} for {url} is not a file")
    return ClusterAccess(urls, token, Path(ca))


def _do(access: ClusterAccess, method: str, path: str, body: Any, timeout_s: float,
        upload: Path | None = None) -> dict[str, Any]:
    headers = {"Authorization": f"Bearer {access.token}"}
    failures = []
    with httpx.Client(verify=access.context(), timeout=timeout_s) as client:
        for url in access.urls:  # each once, in order: bounded
            try:
                if upload is not None:
                    with upload.open("rb") as f:
                        reply = client.request(method, url + path, content=f, headers={
                            **headers, "Content-Type": "application/octet-stream"})
                else:
                    reply = client.request(method, url + path, json=body, headers=headers)
                break
            except httpx.TransportError as exc:
                failures.append(f"{url}: {exc or type(exc).__name__}")
        else:
            raise ApiError(f"cannot reach the cluster ({'; '.join(failures)}); check "
                           "--cluster / VMCLUSTER_URL and that vmclusterd runs there")
    url = str(reply.url).removesuffix(path)
    try:
        data = reply.json()
    except ValueError:
        data = {"detail": reply.text[:200]}
    if reply.status_code >= 400:
        raise ApiError(f"{url}{path}: {reply.status_code} {error_message(data)}",
                       reply.status_code)
    if not isinstance(data, dict):
        raise ApiError(f"{url}{path}: expected a JSON object, got {type(data).__name__}")
    return data


def api_request(access: ClusterAccess, method: str, path: str, body: Any = None,
                timeout_s: float = 15.0, upload: Path | None = None) -> dict[str, Any]:
    """One request to the cluster's API (from ``access.netns`` when set); ``upload``: a
    file sent as the body, as it is read."""
    if access.netns is None:
        return _do(access, method, path, body, timeout_s, upload)

    with NetnsThread(access.netns) as thread:
        got: dict[str, Any] = thread.call(_do, access, method, path, body, timeout_s, upload,
                                          timeout=timeout_s + 5)
        return got
