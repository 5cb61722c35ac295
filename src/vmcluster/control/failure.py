"""What a node's failure would do now, and when (``vmcluster plan fail NODE``), and
where a new VM would go (``vmcluster plan add-vm FILE``).

The restarts are the ones the cluster's own manager decides in the simulator
(:func:`~vmcluster.control.simulate.predict_crash`: the same code, in virtual time, with
the cluster's heartbeat settings), so their targets and the moment they are issued are
the cluster's; which VMs stay down and why, the rules bent and the room left come from
the failover rules directly (:func:`~vmcluster.policy.capacity.loss`). A VM is running
again a moment after its restart is issued (its QEMU starts; 0.03-0.26 s on the lab,
docs/failover.md); its guest then boots.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from vmcluster.control.simulate import predict_crash
from vmcluster.errors import InputError
from vmcluster.model import ClusterSpec
from vmcluster.model.spec import spec_with_vms
from vmcluster.policy.capacity import Admission, Loss, admit, loss

__all__ = ["FailurePlan", "plan_add_vm", "plan_failure"]


@dataclass(frozen=True)
class FailurePlan:
    node: str
    lost: tuple[str, ...]  # the VMs it ran
    restarts: tuple[tuple[str, str], ...]  # (vm, node) as the manager would restart them
    restart_issued_s: float | None  # after the failure; None: nothing restarts
    loss: Loss

    def to_json(self) -> dict[str, object]:
        return {"node": self.node, "lost": list(self.lost),
                "restarts": [{"vm": v, "node": n} for v, n in self.restarts],
                "restart_issued_s": (None if self.restart_issued_s is None
                                     else round(self.restart_issued_s, 2)),
                "quorum": self.loss.quorum,
                "left_down": [{"vm": v, "reason": r} for v, r in self.loss.left_down],
                "broke": [{"vm": v, "rule": r} for v, r in self.loss.broke],
                "room": None if self.loss.room is None else self.loss.room.to_json()}


def plan_failure(spec: ClusterSpec, placements: Mapping[str, str | None],
                 node: str) -> FailurePlan:
    """If ``node`` failed now, with the VMs where ``placements`` puts them."""
    spec.node(node)
    lost = tuple(sorted(vm for vm, n in placements.items() if n == node))
    the_loss = loss(spec, placements, (node,))
    if not lost or not the_loss.quorum:
        return FailurePlan(node, lost, (), None, the_loss)
    crash = predict_crash(spec, placements, node)
    restarts = tuple(sorted((vm, n) for vm, n in crash.restarts.items() if n is not None))
    return FailurePlan(node, lost, restarts, crash.after_s, the_loss)


def plan_add_vm(spec_text: str, filename: str, definitions: Sequence[Mapping[str, Any]],
                placements: Mapping[str, str | None], table: Mapping[str, Any]) -> Admission:
    """Where a new VM (``table``: a spec's ``[[vms]]`` keys, checked as the spec checks
    them, its ``owner`` optional) would start beside the ``definitions`` running where
    ``placements`` says, and what any one node's loss would leave then. A bad table is
    the spec's one-line error."""
    new = dict(table)
    if not isinstance(new.get("name"), str):
        raise InputError("add-vm: the VM's table needs a name")
    owner_given = "owner" in new
    if not owner_given:  # a placeholder for the check; the plan chooses
        first = spec_with_vms(spec_text, filename, list(definitions)).nodes[0].name
        new["owner"] = first
    spec = spec_with_vms(spec_text, filename, [*definitions, new])
    return admit(spec, {k: v for k, v in placements.items() if k != new["name"]},
                 str(new["name"]), owner_given)
