"""The names of the consolidation policies, and the one place that turns a name into a
policy's ``decide`` function (the simulator, the lab's `consolidate`, the manager and
the sweeps all ask here).

Names: ``<detector>-<selection>[-<param>]`` for the paper's policies (detector thr,
iqr, mad, lr, lrr; selection mmt, rs, mc; parameter defaults: THR 0.8, IQR 1.5, MAD
2.5, LR/LRR 1.2), ``ours``, and the baselines ``npa`` (no power awareness: every host
at full power all day) and ``dvfs`` (power follows load, no migrations).
"""

from __future__ import annotations

from vmcluster.errors import UsageError
from vmcluster.policy.power.detection import DETECTORS, Detector
from vmcluster.policy.power.ours import OursPolicy
from vmcluster.policy.power.placement import PaperPolicy
from vmcluster.policy.power.plan import Policy
from vmcluster.policy.power.selection import SELECTIONS

__all__ = ["BASELINES", "make_policy", "parse_policies"]

BASELINES = ("npa", "dvfs")


def make_policy(name: str) -> Policy | None:
    """The decide function for a policy name (None for the no-migration baselines)."""
    key = name.strip().lower()
    if key in BASELINES:
        return None
    if key == "ours":
        return OursPolicy().decide
    parts = key.split("-")
    if len(parts) not in (2, 3) or parts[0] not in DETECTORS or parts[1] not in SELECTIONS:
        raise UsageError(
            f"unknown policy {name!r}: use <detector>-<selection>[-<param>] with detector in "
            f"{'/'.join(DETECTORS)} and selection in {'/'.join(SELECTIONS)}, or ours, npa, dvfs"
        )
    param = DETECTORS[parts[0]]
    if len(parts) == 3:
        try:
            param = float(parts[2])
        except ValueError as exc:
            raise UsageError(f"policy {name!r}: parameter {parts[2]!r} is not a number") from exc
    return PaperPolicy(Detector(parts[0], param), parts[1]).decide


def parse_policies(text: str) -> list[str]:
    names = [n.strip().lower() for n in text.split(",") if n.strip()]
    if not names:
        raise UsageError("--policies is empty: name at least one policy")
    for n in names:
        make_policy(n)  # validates
    return names
