"""What happens to a cluster in a scenario, as data: faults and operator actions at a time.

Faults: a node crashes or starts again (``NodeDown``, ``NodeUp``), one node's link on a
network, or every link on it, goes down or up (``LinkDown``, ``LinkUp``), a node's path
to shared storage goes or comes back (``StorageDown``, ``StorageUp``). Actions: an
operator's live migration (``MoveVm``) and a drain (``Drain``). A scenario file's
``[[events]]`` are read into these once (:mod:`vmcluster.control.scenario`); every runner
applies the faults through a :class:`~vmcluster.substrate.protocol.FaultInjector`
(:func:`vmcluster.control.faults.inject`): the simulator's, or the lab's hosts.

``kind`` is the name a scenario file uses; ``str()`` of an event is how reports name it
(``node-down node3``, ``network-down Heartbeat@node1``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

__all__ = ["KINDS", "LINK_EVENTS", "NODE_EVENTS", "Drain", "Fault", "LinkDown", "LinkEvent",
           "LinkUp", "MoveVm", "NodeDown", "NodeEvent", "NodeUp", "ScenarioEvent", "StorageDown",
           "StorageUp"]


@dataclass(frozen=True)
class NodeEvent:
    at: float
    node: str
    where: str = ""  # file:line it was read from, for errors
    kind: ClassVar[str] = ""

    def __str__(self) -> str:
        return f"{self.kind} {self.node}"


@dataclass(frozen=True)
class NodeDown(NodeEvent):
    """The node crashes: every process on it dies at once, nothing is recorded."""

    kind: ClassVar[str] = "node-down"


@dataclass(frozen=True)
class NodeUp(NodeEvent):
    kind: ClassVar[str] = "node-up"


@dataclass(frozen=True)
class StorageDown(NodeEvent):
    kind: ClassVar[str] = "storage-down"


@dataclass(frozen=True)
class StorageUp(NodeEvent):
    kind: ClassVar[str] = "storage-up"


@dataclass(frozen=True)
class Drain(NodeEvent):
    kind: ClassVar[str] = "drain"


@dataclass(frozen=True)
class LinkEvent:
    at: float
    network: str
    node: str | None = None  # None: every node's interface on the network
    where: str = ""
    kind: ClassVar[str] = ""

    def __str__(self) -> str:
        return f"{self.kind} {self.network}" + (f"@{self.node}" if self.node else "")


@dataclass(frozen=True)
class LinkDown(LinkEvent):
    kind: ClassVar[str] = "network-down"


@dataclass(frozen=True)
class LinkUp(LinkEvent):
    kind: ClassVar[str] = "network-up"


@dataclass(frozen=True)
class MoveVm:
    """An operator's live migration of ``vm`` to ``to``."""

    at: float
    vm: str
    to: str
    where: str = ""
    kind: ClassVar[str] = "migrate"

    def __str__(self) -> str:
        return f"migrate {self.vm} to {self.to}"


Fault = NodeDown | NodeUp | LinkDown | LinkUp | StorageDown | StorageUp
ScenarioEvent = Fault | MoveVm | Drain

# A scenario file's kinds, by the keys their events take besides ``at``.
NODE_EVENTS: dict[str, type[NodeDown | NodeUp | StorageDown | StorageUp | Drain]] = {
    c.kind: c for c in (NodeDown, NodeUp, StorageDown, StorageUp, Drain)}
LINK_EVENTS: dict[str, type[LinkDown | LinkUp]] = {c.kind: c for c in (LinkDown, LinkUp)}
KINDS: dict[str, tuple[str, ...]] = {  # kind -> the keys it needs
    **{k: ("node",) for k in NODE_EVENTS}, **{k: ("network",) for k in LINK_EVENTS},
    MoveVm.kind: ("vm", "to")}
