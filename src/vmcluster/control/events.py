"""The cluster's events: what ``vmcluster events`` shows and the store's event log holds.

Each event is a frozen dataclass with ``at`` (seconds, the writer's clock:
wall time in the lab, virtual time in the sim) and ``node`` (who saw or did
it). JSON: the dataclass fields plus ``"kind"``, the class name in
snake_case (``route_down``). ``event_from_json`` is the inverse and raises
``ValueError`` for an unknown kind or missing field, so a reader can skip a
record written by a newer version.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields
from typing import Any, ClassVar

__all__ = [
    "ApiWrite",
    "Event",
    "LeaderElected",
    "MigrationDone",
    "NetworkStateChanged",
    "NodeDown",
    "NodeIsolated",
    "NodeQuarantined",
    "NodeUp",
    "RouteDown",
    "RouteUp",
    "VmCannotPlace",
    "VmError",
    "VmRestarted",
    "VmStarted",
    "VmStopped",
    "event_from_json",
]


@dataclass(frozen=True)
class Event:
    at: float
    node: str

    kinds: ClassVar[dict[str, type[Event]]] = {}

    def __init_subclass__(cls) -> None:
        super().__init_subclass__()
        Event.kinds[_snake(cls.__name__)] = cls

    @property
    def kind(self) -> str:
        return _snake(type(self).__name__)

    def to_json(self) -> dict[str, Any]:
        return {"kind": self.kind, **asdict(self)}

    def describe(self) -> str:
        """One line for people."""
        extra = ", ".join(f"{k}={v}" for k, v in asdict(self).items() if k not in ("at", "node"))
        return f"{self.kind} on {self.node}" + (f": {extra}" if extra else "")


def _snake(name: str) -> str:
    return re.sub(r"(?<!^)(?=[A-Z])", "_", name).lower()


@dataclass(frozen=True)
class RouteDown(Event):
    """``node`` stopped hearing ``peer`` on ``network`` (threshold heartbeats missed)."""

    peer: str
    network: str


@dataclass(frozen=True)
class RouteUp(Event):
    peer: str
    network: str


@dataclass(frozen=True)
class NetworkStateChanged(Event):
    network: str
    state: str  # up | partitioned | down
    cluster_network: str | None = None  # what now carries heartbeats and CSV


@dataclass(frozen=True)
class NodeDown(Event):
    """``peer`` has no route left, as ``node`` (the manager) sees it."""

    peer: str
    last_heard: float


@dataclass(frozen=True)
class NodeUp(Event):
    peer: str


@dataclass(frozen=True)
class NodeIsolated(Event):
    """``node`` lost every cluster network (or quorum) and stops its VMs."""

    vms_stopped: tuple[str, ...] = ()


@dataclass(frozen=True)
class WitnessLost(Event):
    """The witness's report went stale: a tie can no longer be broken (a warning; nothing
    stops while the nodes hear each other)."""

    witness: str


@dataclass(frozen=True)
class WitnessBack(Event):
    witness: str


@dataclass(frozen=True)
class NodeQuarantined(Event):
    peer: str
    failures: int


@dataclass(frozen=True)
class VmRestarted(Event):
    vm: str
    from_node: str
    token: int


@dataclass(frozen=True)
class VmStarted(Event):
    vm: str
    token: int


@dataclass(frozen=True)
class VmCannotPlace(Event):
    vm: str
    reason: str


@dataclass(frozen=True)
class VmError(Event):
    """A VM whose starts failed max_restart times on a node and max_relocate times
    elsewhere: nothing starts it again until someone does (``vm start``)."""

    vm: str
    reason: str


@dataclass(frozen=True)
class VmStopped(Event):
    vm: str
    reason: str


@dataclass(frozen=True)
class MigrationDone(Event):
    vm: str
    source: str
    target: str
    network: str
    ok: bool
    downtime_ms: float | None = None


@dataclass(frozen=True)
class LeaderElected(Event):
    token: int


@dataclass(frozen=True)
class ApiWrite(Event):
    """The audit trail: a write asked of ``node``'s API, by the token named ``token``
    (with its ``role``), and how it was answered (``status``: the HTTP status)."""

    method: str
    path: str
    status: int
    token: str
    role: str

    def describe(self) -> str:
        return (f"api on {self.node}: {self.method} {self.path} -> {self.status} "
                f"by {self.token} ({self.role})")


def event_from_json(data: Mapping[str, Any]) -> Event:
    """The event a ``to_json`` dict describes (tuples come back from JSON lists)."""
    cls = Event.kinds.get(str(data.get("kind")))
    if cls is None:
        raise ValueError(f"unknown event kind {data.get('kind')!r}")
    args: dict[str, Any] = {}
    for f in fields(cls):
        if f.name in data:
            value = data[f.name]
            args[f.name] = tuple(value) if isinstance(value, list) else value
    try:
        return cls(**args)
    except TypeError as exc:
        raise ValueError(f"bad {data.get('kind')} event: {exc}") from exc
