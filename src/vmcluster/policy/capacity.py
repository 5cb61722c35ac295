"""Can the cluster lose a node, or two, and restart everything? With what room left?

For every set of ``depth`` or fewer VM-running nodes lost at once, the failover policy
the manager runs (:func:`~vmcluster.policy.failover.failover_plan`, the same rules:
room, anti-affinity, priorities, preferred owners) restarts the lost nodes' VMs on the
others, and what it cannot place is left down, with why. The survivors must also keep
quorum (:func:`~vmcluster.policy.failover.has_quorum`, the witness counted as up): a
minority stops every VM, and the report says so. After each loss, the room left per
resource is the least free memory and vCPUs on any survivor, and their sums. Pure: no
I/O.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from vmcluster.errors import UsageError
from vmcluster.model import ClusterSpec
from vmcluster.policy.failover import (
    CLUSTER_FAILOVER,
    CannotPlace,
    FailoverParams,
    Restart,
    failover_plan,
    free_room,
    has_quorum,
    start_plan,
)

__all__ = ["Admission", "Capacity", "Loss", "Room", "admit", "capacity", "loss"]

MAX_DEPTH = 3  # losses of more nodes at once are not enumerated (combinations grow fast)


@dataclass(frozen=True)
class Room:
    """Free memory (MiB) and vCPUs: the least on any of the nodes, and the sum."""

    memory_mib_min: int
    memory_mib_total: int
    vcpus_min: float
    vcpus_total: float

    def to_json(self) -> dict[str, float]:
        return {"memory_mib_min": self.memory_mib_min, "memory_mib_total": self.memory_mib_total,
                "vcpus_min": round(self.vcpus_min, 3), "vcpus_total": round(self.vcpus_total, 3)}


@dataclass(frozen=True)
class Loss:
    """``down`` lost at once: where their VMs restart, which stay down and why, the
    rules a restart had to break, and the room left on the survivors."""

    down: tuple[str, ...]
    quorum: bool
    restarted: tuple[tuple[str, str], ...]  # (vm, node)
    left_down: tuple[tuple[str, str], ...]  # (vm, why)
    broke: tuple[tuple[str, str], ...]  # (vm, the non-strict rule it broke)
    room: Room | None  # None: no survivor

    @property
    def ok(self) -> bool:
        return self.quorum and not self.left_down

    def to_json(self) -> dict[str, object]:
        return {"down": list(self.down), "ok": self.ok, "quorum": self.quorum,
                "restarted": [{"vm": v, "node": n} for v, n in self.restarted],
                "left_down": [{"vm": v, "reason": r} for v, r in self.left_down],
                "broke": [{"vm": v, "rule": r} for v, r in self.broke],
                "room": None if self.room is None else self.room.to_json()}


@dataclass(frozen=True)
class Capacity:
    """Every loss of 1..``depth`` nodes, and the room the cluster has now."""

    depth: int
    room_now: Room
    losses: tuple[Loss, ...]

    def survives(self, k: int) -> bool:
        """Whether every loss of ``k`` nodes leaves every VM running."""
        return all(loss.ok for loss in self.losses if len(loss.down) == k)

    def worst(self, k: int) -> Loss | None:
        """The loss of ``k`` nodes that leaves the most VMs down (then the least room)."""
        of_k = [loss for loss in self.losses if len(loss.down) == k]
        if not of_k:
            return None
        return max(of_k, key=lambda x: (not x.quorum, len(x.left_down),
                                        -(x.room.memory_mib_min if x.room else 0)))

    def to_json(self) -> dict[str, object]:
        return {"depth": self.depth, "room_now": self.room_now.to_json(),
                "survives": {str(k): self.survives(k) for k in range(1, self.depth + 1)},
                "losses": [loss.to_json() for loss in self.losses]}


def _room(spec: ClusterSpec, placements: Mapping[str, str | None], nodes: Iterable[str],
          params: FailoverParams) -> Room | None:
    free = free_room(spec, placements, nodes, params)
    if not free:
        return None
    mem = [m for m, _ in free.values()]
    cpu = [c for _, c in free.values()]
    return Room(min(mem), sum(mem), min(cpu), sum(cpu))


def loss(spec: ClusterSpec, placements: Mapping[str, str | None], down: Iterable[str],
         params: FailoverParams = CLUSTER_FAILOVER) -> Loss:
    """What losing the nodes ``down`` at once leaves, by the manager's failover rules:
    where the lost VMs restart, which stay down and why, the rules bent, the room left."""
    down = tuple(down)
    nodes = [n.name for n in spec.nodes]
    for n in down:
        spec.node(n)
    witness = spec.cluster.witness is not None
    voters = len(nodes) + (1 if witness else 0)
    survivors = [n for n in nodes if n not in down]
    quorum = has_quorum(len(nodes), len(survivors), witness, True)
    plan = failover_plan(spec, placements, down, params)
    restarted = tuple((a.vm, a.node) for a in plan.actions if isinstance(a, Restart))
    left = tuple((a.vm, a.reason) for a in plan.actions if isinstance(a, CannotPlace))
    if not quorum:  # a minority stops every VM it runs, and restarts none
        left = tuple((vm.name, f"the {len(survivors)} surviving node(s) lose quorum "
                      f"({voters - len(down)} of {voters} voters)")
                     for vm in spec.vms if placements.get(vm.name) is not None)
        restarted = ()
    broke = tuple((a.vm, rule) for a in plan.actions if isinstance(a, Restart)
                  for rule in a.broke) if quorum else ()
    # after it: the restarts made (a minority runs nothing: it stopped its VMs)
    after: dict[str, str | None] = dict(placements) if quorum else {}
    after.update(dict(restarted))
    return Loss(down, quorum, restarted, left, broke, _room(spec, after, survivors, params))


def capacity(spec: ClusterSpec, placements: Mapping[str, str | None], depth: int = 2,
             params: FailoverParams = CLUSTER_FAILOVER) -> Capacity:
    """Every loss of 1..``depth`` of the spec's VM-running nodes, from ``placements``
    (VM -> node; None or absent: not running, so nothing to restart)."""
    if not 1 <= depth <= MAX_DEPTH:
        raise UsageError(f"capacity: depth must be 1..{MAX_DEPTH}, got {depth}")
    nodes = [n.name for n in spec.nodes]
    for vm, node in placements.items():
        spec.vm(vm)
        if node is not None:
            spec.node(node)
    losses = [loss(spec, placements, down, params)
              for k in range(1, min(depth, len(nodes)) + 1)
              for down in itertools.combinations(nodes, k)]
    now = _room(spec, placements, nodes, params)
    assert now is not None  # a spec has at least one node
    return Capacity(depth, now, tuple(losses))


@dataclass(frozen=True)
class Admission:
    """Where a new VM would go (None: nowhere, ``reason`` says why), the rules that
    choice bends, and whether every loss of one node would still restart everything."""

    vm: str
    node: str | None
    reason: str
    broke: tuple[str, ...]
    after: Capacity | None  # with it placed there

    def to_json(self) -> dict[str, object]:
        return {"vm": self.vm, "node": self.node, "reason": self.reason,
                "broke": list(self.broke),
                "survives_one_loss": None if self.after is None else self.after.survives(1),
                "capacity_after": None if self.after is None else self.after.to_json()}


def admit(spec: ClusterSpec, placements: Mapping[str, str | None], vm: str,
          owner_given: bool = True, params: FailoverParams = CLUSTER_FAILOVER) -> Admission:
    """Where ``vm`` (defined in ``spec``, not running) would start among ``placements``,
    by the rules a start follows (room, allowed nodes, anti-affinity, its owner then its
    preferred owners; ``owner_given`` False: the owner is a placeholder, only the rest
    rank), and what any one node's loss would leave then."""
    [action] = start_plan(spec, placements, [vm], params=params, homed=owner_given).actions
    if isinstance(action, CannotPlace):
        return Admission(vm, None, action.reason, (), None)
    assert isinstance(action, Restart)
    after = {**placements, vm: action.node}
    return Admission(vm, action.node, f"{action.node} keeps every strict rule"
                     + ("" if action.broke else " and the others"), action.broke,
                     capacity(spec, after, 1, params))
