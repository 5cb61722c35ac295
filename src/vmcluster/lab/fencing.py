"""The agent's side of fencing: refuse a request whose manager no longer leads.

A manager sends its fencing token (``"token": N``) with every action. Before
acting, the agent asks the store whether ``N`` is still the leader key's
create revision (:meth:`~vmcluster.store.election.Fence.check`). A paused
manager that wakes after its lease ran out, or one on the wrong side of a
partition, is refused with one line starting ``fenced:``. When the agent
cannot ask (no control plane, or this node is cut off from the store's
majority) it refuses too: an action it cannot prove current is not taken.
Requests without a token (the operator's own ``vmcluster vm ...``) are not
fenced.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

from vmcluster.errors import StoreError
from vmcluster.lab.credentials import etcd_tls
from vmcluster.lab.layout import LabLayout
from vmcluster.store.election import Fence
from vmcluster.store.errors import Fenced
from vmcluster.store.etcd import EtcdClient

__all__ = ["AgentFence"]


class AgentFence:
    """``await fence.check(request)`` raises :class:`Fenced` for a stale token."""

    def __init__(self, layout: LabLayout, node: str) -> None:
        self.layout, self.node = layout, node
        self._fence: Fence | None = None

    def _load(self) -> Fence:
        if self._fence is None:
            try:
                svc = json.loads((self.layout.state_dir / "services.json").read_text())
            except (OSError, ValueError) as exc:
                raise Fenced("fenced: this lab runs no control plane, so no manager token "
                             "can be checked; send the request without a token") from exc
            mine = list(svc.get("members", {}).get(self.node, []))
            ordered = mine + [u for u in svc["endpoints"] if u not in mine]
            client = EtcdClient(ordered, timeout=1.0, retry_s=1.0,
                                tls=etcd_tls(self.layout, self.node))
            self._fence = Fence(client, svc["cluster"])
        return self._fence

    def _check(self, token: int) -> None:
        fence = self._load()
        try:
            fence.check(token)
        except Fenced:
            raise
        except StoreError as exc:
            raise Fenced(f"fenced: {self.node} cannot reach the store to check token "
                         f"{token} ({exc}); refusing") from exc

    async def check(self, request: dict[str, Any]) -> None:
        if request.get("token") is None:
            return
        token = int(request["token"])
        await asyncio.get_running_loop().run_in_executor(None, self._check, token)
