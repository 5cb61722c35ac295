"""The agent's side of fencing: refuse a request whose manager no longer leads.

A manager sends its fencing token (``"token": N``) with every action. Before
acting, the agent asks the store whether ``N`` is still the leader key's
create revision (:meth:`~vmcluster.store.election.Fence.check`). A paused
manager that wakes after its lease ran out, or one on the wrong side of a
partition, is refused with one line starting ``fenced:``. When the agent
cannot ask (the host knows no store, or it is cut off from the store's
majority) it refuses too: an action it cannot prove current is not taken.
Requests without a token (the operator's own ``vmcluster vm ...``) are not
fenced.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

from vmcluster.errors import StoreError
from vmcluster.node.config import NodeConfig
from vmcluster.pki import NodeCredentials
from vmcluster.store.election import Fence
from vmcluster.store.errors import Fenced
from vmcluster.store.etcd import EtcdClient

__all__ = ["AgentFence"]


class AgentFence:
    """``await fence.check(request)`` raises :class:`Fenced` for a stale token."""

    def __init__(self, node: str, cluster: str, endpoints: Sequence[str],
                 tls: NodeCredentials | None) -> None:
        self.node, self.cluster, self.endpoints, self.tls = node, cluster, endpoints, tls
        self._fence: Fence | None = None

    @classmethod
    def from_config(cls, cfg: NodeConfig) -> AgentFence:
        return cls(cfg.node, cfg.cluster, cfg.endpoints, NodeCredentials(cfg.tls_dir))

    def _load(self) -> Fence:
        if self._fence is None:
            if not self.endpoints:
                raise Fenced("fenced: this host knows no store, so no manager token can be "
                             "checked; send the request without a token")
            client = EtcdClient(list(self.endpoints), timeout=1.0, retry_s=1.0, tls=self.tls)
            self._fence = Fence(client, self.cluster)
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
