"""One manager candidate per node: ``python -m vmcluster.lab.managerd --lab L --node N``.

Wires :class:`~vmcluster.control.manager.Manager` to the lab: the store
endpoints from ``services.json`` (this node's own member first) and
:class:`LabActuator`, which starts a VM through the node's agent with the
manager's fencing token (the agent checks it against the store and refuses a
stale one) and records the new owner in the lab's state file.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import threading
import time
from pathlib import Path
from types import FrameType

from vmcluster.control.manager import Manager, ManagerParams
from vmcluster.control.migration import MigrationRequest, known_health, migrate
from vmcluster.errors import SubstrateError
from vmcluster.lab.client import AgentClient, AgentDown, speak_as
from vmcluster.lab.credentials import etcd_tls
from vmcluster.lab.layout import LabLayout
from vmcluster.lab.nodewatch import node_endpoints
from vmcluster.lab.state import read_state, update_state
from vmcluster.model import ClusterSpec
from vmcluster.model.spec import load_spec
from vmcluster.store.election import Fence
from vmcluster.store.errors import Fenced
from vmcluster.store.etcd import EtcdClient
from vmcluster.store.state import ClusterState
from vmcluster.substrate.clock import MonotonicClock
from vmcluster.substrate.qemu.migration import MIB
from vmcluster.substrate.qemu.substrate import QemuSubstrate

__all__ = ["LabActuator", "main"]


class LabActuator:
    """The manager's hands in the lab: node agents over their unix sockets."""

    def __init__(self, layout: LabLayout, spec: ClusterSpec, fence: Fence | None = None) -> None:
        self.layout, self.spec, self.fence = layout, spec, fence

    def start_vm(self, vm: str, node: str, token: int) -> None:
        if self.fence is not None:
            self.fence.check(token)  # before anything changes, e.g. a CSV disk's owner
        sub = QemuSubstrate(self.layout, self.spec)
        disk = self.layout.disk(vm)
        if self.spec.vm(vm).volume is None and not disk.exists():
            # A plain disk file survives its node; a CSV disk lives on its volume's LUN.
            disk.parent.mkdir(parents=True, exist_ok=True)
            with disk.open("wb") as f:
                f.truncate(self.spec.vm(vm).disk_mib * MIB)
        cfg = sub.vm_config(vm, node, owner=node)
        try:
            AgentClient(self.layout, node).call("start", timeout_s=90, config=cfg.to_json(),
                                                token=token)
        except AgentDown as exc:
            raise SubstrateError(f"cannot start {vm}: node {node} is down") from exc
        except SubstrateError as exc:
            if "fenced" in str(exc):
                raise Fenced(str(exc)) from exc
            raise
        with update_state(self.layout) as st:
            st["vms"][vm] = {"node": node}

    def migrate_vm(self, vm: str, target: str, token: int) -> bool:
        sub = QemuSubstrate(self.layout, self.spec)
        result = migrate(sub, self.spec, known_health(self.spec, sub.status()),
                         MigrationRequest(vm, target))
        return result.ok


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m vmcluster.lab.managerd")
    ap.add_argument("--lab", required=True)
    ap.add_argument("--node", required=True)
    ap.add_argument("--root", default=str(LabLayout("x").root))
    args = ap.parse_args(argv)
    speak_as(args.node)  # this host's certificate, for the agents it calls
    layout = LabLayout(args.lab, Path(args.root))
    spec = load_spec(read_state(layout)["spec"])
    svc = json.loads((layout.state_dir / "services.json").read_text())
    addrs = [str(a) for a in spec.node(args.node).interfaces.values()]
    mine = [u for u in svc["endpoints"] if any(f"//{a}:" in u for a in addrs)]
    client = EtcdClient(node_endpoints(svc["endpoints"], mine), timeout=1.0, retry_s=2.0,
                        tls=etcd_tls(layout, args.node))
    state = ClusterState(client, svc["cluster"])
    params = ManagerParams(**svc.get("manager", {}))
    done = threading.Event()

    def on_signal(_sig: int, _frame: FrameType | None) -> None:
        done.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)

    def say(msg: str) -> None:
        print(json.dumps({"at": time.time(), "node": args.node, "msg": msg}), flush=True)

    actuator = LabActuator(layout, spec, state.fence)
    manager = Manager(state, spec, args.node, actuator, MonotonicClock(),
                      time.time, params, say)
    say("candidate")
    manager.run(done.is_set)
    say("stopped")
    return 0


if __name__ == "__main__":
    sys.exit(main())
