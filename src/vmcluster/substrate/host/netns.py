"""A host's network namespace as its tools see it: run ``ip``, read and toggle one of
its links, list its processes. The lab builds the namespaces (:mod:`vmcluster.lab.netns`);
this is what the product and the lab's fault injection both need of them."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Sequence

from vmcluster.errors import LabError
from vmcluster.model import ClusterSpec
from vmcluster.substrate.host.layout import LabLayout

__all__ = ["link_is_up", "node_link_dev", "ns_pids", "run", "set_link"]


def run(cmd: Sequence[str], timeout_s: float = 20.0, check: bool = True) -> str:
    """Run a short command; a failure is a LabError naming the command and its stderr."""
    try:
        proc = subprocess.run(
            list(cmd), capture_output=True, text=True, timeout=timeout_s, check=False
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise LabError(f"{' '.join(cmd)}: {exc}") from exc
    if check and proc.returncode != 0:
        raise LabError(f"{' '.join(cmd)} failed: {proc.stderr.strip() or proc.returncode}")
    return proc.stdout


def node_link_dev(layout: LabLayout, network: str) -> str:
    return layout.node_if(network)


def set_link(layout: LabLayout, spec: ClusterSpec, network: str, node: str, up: bool) -> None:
    """Take ``node``'s interface on ``network`` down or up (the veth in its namespace)."""
    run(["ip", "-n", layout.node_ns(node), "link", "set", layout.node_if(network),
         "up" if up else "down"])


def link_is_up(layout: LabLayout, network: str, node: str) -> bool:
    """Is ``node``'s interface on ``network`` administratively up?"""
    out = run(["ip", "-n", layout.node_ns(node), "-j", "link", "show", layout.node_if(network)],
              check=False)
    try:
        info = json.loads(out)
    except json.JSONDecodeError:
        return False
    return bool(info) and "UP" in info[0].get("flags", [])


def ns_pids(ns: str) -> list[int]:
    out = run(["ip", "netns", "pids", ns], check=False)
    return [int(p) for p in out.split() if p.isdigit()]
