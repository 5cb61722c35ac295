"""One manager candidate per host: ``python -m vmcluster.node.managerd --config C``.

Wires :class:`~vmcluster.control.manager.Manager` to the lab: the store
endpoints from the host's ``vmclusterd.toml`` (this node's own member first) and
:class:`LabActuator`, which starts a VM through the node's agent with the
manager's fencing token (the agent checks it against the store and refuses a
stale one). Everything it remembers is in the store (:class:`StoreRecords`): a host's
manager reads nothing of the lab's own files.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import signal
import sys
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import fields
from types import FrameType
from typing import Any

from vmcluster.control.consolidate_apply import Step, apply, store_guard
from vmcluster.control.drain import drain
from vmcluster.control.ledger import StoreLedger
from vmcluster.control.manager import Manager, ManagerParams, MigrationEnds
from vmcluster.control.migration import MigrationRequest, Migrator, ProgressCallback
from vmcluster.control.plans import ClusterPlan
from vmcluster.errors import MigrationCancelled, StoreError, SubstrateError
from vmcluster.model import ClusterSpec
from vmcluster.node.config import load_config
from vmcluster.node.driver import adopt_drive, drive_at_source, start_drive
from vmcluster.node.records import StoreRecords
from vmcluster.store.election import Fence
from vmcluster.store.errors import Fenced
from vmcluster.store.state import ClusterState
from vmcluster.substrate.clock import MonotonicClock
from vmcluster.substrate.host.client import (
    AgentClient,
    AgentDown,
    AgentError,
    addresses_from,
    speak_as,
)
from vmcluster.substrate.host.layout import LabLayout, shared_layout
from vmcluster.substrate.protocol import (
    MigrationHandle,
    MigrationParams,
    MigrationProgress,
    MigrationResult,
    Substrate,
)
from vmcluster.substrate.qemu.qmp import MIGRATING
from vmcluster.substrate.qemu.substrate import QemuSubstrate

__all__ = ["LabActuator", "main"]


class LabActuator:
    """The manager's hands in the lab: node agents over their unix sockets."""

    def __init__(self, layout: LabLayout, spec: ClusterSpec, fence: Fence | None,
                 state: ClusterState) -> None:
        self.layout, self.spec, self.fence, self.state = layout, spec, fence, state

    def _sub(self, token: int, spec: ClusterSpec | None = None) -> QemuSubstrate:
        """A substrate that speaks for the manager: ``token`` goes with every request."""
        sub = QemuSubstrate(self.layout, spec or self._spec(), records=StoreRecords(self.state))
        sub.token = token
        return sub

    def _spec(self) -> ClusterSpec:
        """The cluster's spec with its VMs as the store defines them now (a VM defined
        through the API since this manager started is one of them)."""
        with contextlib.suppress(StoreError):
            self.spec = self.state.spec()
        return self.spec

    def start_vm(self, vm: str, node: str, token: int) -> None:
        if self.fence is not None:
            self.fence.check(token)  # before anything changes, e.g. a CSV disk's owner
        sub = self._sub(token)
        try:  # the agent builds the QEMU from the VM's definition in the store
            sub.agent(node).call("start", timeout_s=90, vm=vm, machine=sub.machine(vm))
        except AgentDown as exc:
            raise SubstrateError(f"cannot start {vm}: node {node} is down") from exc
        except SubstrateError as exc:
            if "fenced" in str(exc):
                raise Fenced(str(exc)) from exc
            raise

    def stop_vm(self, vm: str, node: str, token: int, shutdown_s: float = 0.0) -> str | None:
        try:
            got = AgentClient(self.layout, node, token=token).call(
                "stop", timeout_s=30 + shutdown_s, vm=vm, shutdown_s=shutdown_s)
        except AgentDown:
            return None  # a down node's VMs died with it
        how = got.get("how")
        return None if how is None else str(how)

    def migrate_vm(self, vm: str, target: str, token: int) -> None:
        source, drive = start_drive(self._sub(token), MigrationRequest(vm, target), token)
        print(json.dumps({"at": time.time(), "msg": f"{source} drives {vm} to {target} "
                          f"(drive {drive})"}), flush=True)

    def _migrator(self, token: int) -> Migrator:
        """Live migrations are driven by the VM's source host, under ``token``; the
        manager watches (see vmcluster.node.driver)."""
        def at_source(sub: Substrate, _spec: ClusterSpec, req: MigrationRequest,
                      on_progress: ProgressCallback | None,
                      _ledger: StoreLedger | None) -> MigrationResult:
            assert isinstance(sub, QemuSubstrate)
            return drive_at_source(sub, req, on_progress, token)

        return at_source

    def _ledger(self, token: int) -> StoreLedger:
        """Each migration's record in the store, under the manager's token."""
        return StoreLedger(self.state, token)

    # -- what the API asked for (intents) ----------------------------------------
    @staticmethod
    def _relay(cancelled: Callable[[], bool], progress: Callable[[Mapping[str, Any]], None]
               ) -> ProgressCallback:
        """A migration's progress, handed on to its intent; a cancel asked for (read
        from the store at most twice a second) raises MigrationCancelled."""
        asked = [0.0]

        def on_progress(h: MigrationHandle, p: MigrationProgress) -> None:
            progress({"vm": h.vm, "target": h.target, "network": h.network,
                      "status": p.status, "pass": p.pass_no, "sent_mib": round(p.sent_mib, 1),
                      "remaining_mib": round(p.remaining_mib, 1)})
            now = time.monotonic()
            if now - asked[0] >= 0.5:  # one store read per half second, not per poll
                asked[0] = now
                if cancelled():
                    raise MigrationCancelled(f"the migration of {h.vm} was cancelled")

        return on_progress

    def _pause(self, vm: str, pause: bool, token: int) -> dict[str, Any]:
        """Pause or resume a running VM's guest on its host; its placement says so."""
        if vm in self.state.migrations():
            raise SubstrateError(f"{vm} is migrating; it is neither paused nor resumed now")
        p = self.state.placement(vm)
        if p.node is None:
            raise SubstrateError(f"{vm} runs nowhere; start it first")
        AgentClient(self.layout, p.node, token=token).call("pause" if pause else "resume",
                                                          timeout_s=20, vm=vm)
        state = "paused" if pause else "running"
        self.state.place(vm, p.node, expect=p.revision, token=token, state=state)
        return {"ok": True, "vm": vm, "node": p.node, "state": state}

    def lend_token(self, vm: str, source: str, token: int) -> None:
        try:
            AgentClient(self.layout, source, token=token).call("drive_adopt", vm=vm,
                                                               timeout_s=5)
        except AgentDown:
            return  # its host is gone, and its driver with it: an orphan, settled apart
        except AgentError as exc:
            if exc.code != "not_found":
                raise

    def adopt_migration(self, args: Mapping[str, Any], token: int,
                        cancelled: Callable[[], bool],
                        progress: Callable[[Mapping[str, Any]], None]) -> dict[str, Any]:
        if self.fence is not None:
            self.fence.check(token)
        sub = self._sub(token)
        return adopt_drive(sub, MigrationRequest(str(args["vm"]), str(args["to"])),
                           self._relay(cancelled, progress), token).to_json()

    def carry_out(self, kind: str, args: Mapping[str, Any], token: int,
                  cancelled: Callable[[], bool],
                  progress: Callable[[Mapping[str, Any]], None]) -> dict[str, Any]:
        if self.fence is not None:
            self.fence.check(token)
        spec = self._spec()
        sub = self._sub(token, spec)
        on_progress = self._relay(cancelled, progress)
        if kind in ("pause", "unpause"):
            return self._pause(str(args["vm"]), kind == "pause", token)
        if kind == "migrate" and args.get("mode") == "quick":
            return drive_at_source(sub, MigrationRequest(str(args["vm"]), str(args["to"])),
                                   on_progress, token, quick=True).to_json()
        if kind == "migrate":
            vm, target = str(args["vm"]), str(args["to"])
            params = MigrationParams.asked(spec.vm(vm).max_downtime_ms,
                                           args.get("downtime_ms"),
                                           args.get("on_no_convergence"),
                                           spec.vm(vm).on_no_convergence)
            result = self._migrator(token)(sub, spec, MigrationRequest(vm, target, params),
                                           on_progress, None)
            return result.to_json()
        if kind == "drain":
            st = self.state
            got = drain(sub, spec, st, str(args["node"]), wall=time.time,
                        on_plan=lambda plan: progress({"plan": plan.to_json()}),
                        on_progress=on_progress, ledger=lambda: self._ledger(token),
                        cancelled=cancelled, migrator=self._migrator(token))
            return {**got.to_json(), "ok": not got.failed}
        if kind == "consolidate":
            power = self._sub(token, spec)
            st = self.state

            steps: list[str] = []  # every step but progress, for whoever watches

            def on_step(s: Step) -> None:
                if s.kind != "progress":
                    steps.append(f"[{s.kind}] {s.message}")
                progress({"steps": list(steps), "message": s.message})
                if s.kind == "progress" and cancelled():
                    raise MigrationCancelled(f"the consolidation was cancelled ({s.subject} "
                                             "stays where it was)")

            report = apply(power, spec, ClusterPlan.from_json(dict(args["plan"])),
                           on_step=on_step, ledger=lambda: self._ledger(token),
                           cancelled=cancelled, guard=lambda: store_guard(st),
                           migrator=self._migrator(token))
            return {**report.to_json(), "steps": steps}
        if kind == "delete":  # the VM's disk, by a host that is up (any host reaches it)
            failures = []
            for node in sorted(n.name for n in spec.nodes):
                try:
                    return AgentClient(self.layout, node, token=token).call(
                        "delete_disk", timeout_s=60, vm=str(args["vm"]))
                except AgentDown as exc:
                    failures.append(str(exc))
            raise SubstrateError(f"no host could remove the disk of {args['vm']}: "
                                 + "; ".join(failures))
        raise SubstrateError(f"unknown intent kind {kind!r}")

    # -- a migration whose driver died --------------------------------------------
    def _qemu(self, node: str, vm: str) -> tuple[str, str, str] | None:
        """(role, run status, QEMU's migration status) of ``vm``'s QEMU on ``node``."""
        agent = AgentClient(self.layout, node)
        try:
            listed = {v["vm"]: v for v in agent.call("list", timeout_s=10)["vms"]}
            if vm not in listed:
                return None
            got = agent.call("query_migrate", vm=vm, timeout_s=10)
        except AgentDown:
            return None
        return (str(listed[vm]["role"]), str(got["status"]),
                str(got["migrate"].get("status", "none")))

    def migration_ends(self, vm: str, source: str, target: str) -> MigrationEnds:
        src, tgt = self._qemu(source, vm), self._qemu(target, vm)
        if src is None or src[0] != "run":
            s_end = "gone"
        elif src[1] == "postmigrate":
            s_end = "postmigrate"
        elif src[2] in (*MIGRATING, "cancelling"):
            s_end = "migrating"
        else:
            s_end = "paused" if src[1] == "paused" else "running"
        if tgt is None or tgt[0] != "incoming":
            t_end = "gone"
        else:
            t_end = "complete" if tgt[1] == "paused" and tgt[2] == "completed" else "receiving"
        return MigrationEnds(s_end, t_end)

    def complete_migration(self, vm: str, source: str | None, target: str,
                           token: int) -> None:
        if self.fence is not None:
            self.fence.check(token)
        AgentClient(self.layout, target, token=token).call("takeover", vm=vm, timeout_s=30)
        if source is not None:
            with contextlib.suppress(AgentDown, SubstrateError):
                AgentClient(self.layout, source, token=token).call("release", vm=vm,
                                                                   timeout_s=30)

    def roll_back_migration(self, vm: str, source: str | None, target: str,
                            token: int) -> None:
        if self.fence is not None:
            self.fence.check(token)
        with contextlib.suppress(AgentDown):
            AgentClient(self.layout, target, token=token).call("discard", vm=vm, timeout_s=30)
        if source is not None:
            with contextlib.suppress(AgentDown):  # a dead source: failover restarts the VM
                AgentClient(self.layout, source, token=token).call("cancel", vm=vm,
                                                                   timeout_s=30)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m vmcluster.node.managerd")
    ap.add_argument("--config", required=True, help="the host's vmclusterd.toml")
    args = ap.parse_args(argv)
    cfg = load_config(args.config)
    node = cfg.node
    speak_as(node, cfg.tls_dir)  # this host's certificate, for the agents it calls
    # what this host shares with the others, and its own directories
    layout = shared_layout(cfg.shared, cfg.state_dir, cfg.run_dir, cfg.lab_dir)
    state = cfg.store(retry_s=2.0)
    spec = state.wait_spec(say=lambda m: print(json.dumps({"msg": m}), flush=True))
    kinds = {f.name: f.type for f in fields(ManagerParams)}
    params = ManagerParams(**{k: int(v) if kinds[k] == "int" else v  # type: ignore[arg-type]
                              for k, v in cfg.manager.items()})
    done = threading.Event()

    def on_signal(_sig: int, _frame: FrameType | None) -> None:
        done.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)

    def say(msg: str) -> None:
        print(json.dumps({"at": time.time(), "node": node, "msg": msg}), flush=True)

    actuator = LabActuator(layout, spec, state.fence, state)
    addresses_from(lambda: actuator.spec)  # the hosts' addresses: the spec it last read
    manager = Manager(state, spec, node, actuator, MonotonicClock(),
                      time.time, params, say)
    say("candidate")
    manager.run(done.is_set)
    say("stopped")
    return 0


if __name__ == "__main__":
    sys.exit(main())
