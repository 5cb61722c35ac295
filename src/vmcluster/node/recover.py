"""Recover a cluster whose majority is gone for good: ``vmcluster cluster recover``.

When most of the hosts that run etcd members are lost and will not come back (two of
three), the survivor's etcd member cannot elect a leader: the store answers nothing, and
the survivor has stopped its VMs (it reaches too few hosts for a quorum, which is what
keeps a VM from running twice). Waiting does not help. etcd's own disaster recovery is
to start one surviving member with ``--force-new-cluster``: it keeps its data (every
placement, VM definition, token, the spec, the CA record) and becomes a cluster of one.

:func:`recover` does that on this host, with its ``vmclusterd`` stopped, and with that
store it **forgets** the hosts given up (:func:`forget`):

* the spec loses them (``[[nodes]]``, the witness if it was one); each VM definition
  loses them from ``preferred_owners`` and ``allowed_nodes``, and a VM they owned gets a
  surviving owner (its first surviving preferred owner, else allowed node, else the
  first host left). A VM that may run only on forgotten hosts stops the recovery before
  anything is written: one line names it;
* their placements are released (the VM stays defined, desired state unchanged: once
  ``vmclusterd`` starts, the manager starts every VM whose desired state is running on
  the hosts left, as after a cold start), their migrations aborted;
* their certificates are revoked and their member records dropped, as ``cluster
  leave`` does.

The member's data as it was is copied aside first (``<dir>.before-recover-<time>``):
``--force-new-cluster`` rewrites the member list at once, so a recovery refused or failed
before it forgot anything puts that copy back.

Every other host must be forgotten too: the store is this host's alone afterwards.
Hosts that survive (or come back repaired) join again with ``cluster join`` after their
etcd data is wiped; a forgotten host must never be booted with its old data (its
certificate is revoked, so the cluster refuses it, and it reaches no quorum, so it stops
its VMs; but wipe it).
"""

from __future__ import annotations

import contextlib
import shutil
import subprocess
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import tomlkit
from tomlkit.exceptions import TOMLKitError

from vmcluster.errors import InputError, StoreError, VmclusterError
from vmcluster.model.spec import parse_spec
from vmcluster.node.bootstrap import drop_host_records
from vmcluster.node.config import NodeConfig
from vmcluster.node.daemon import etcd_argv
from vmcluster.pki import NodeCredentials
from vmcluster.store import vms
from vmcluster.store.etcd import EtcdClient
from vmcluster.store.state import ClusterState
from vmcluster.substrate.procs import pid_in_file

__all__ = ["forget", "forget_definition", "forget_spec_text", "recover", "report_lines"]

Say = Callable[[str], None]


def forget_definition(definition: Mapping[str, Any], forgotten: Iterable[str],
                      left: Sequence[str]) -> dict[str, Any]:
    """A VM's definition without the hosts ``forgotten`` (``left``: the VM hosts that stay,
    in the spec's order). InputError when the VM may run on none of them."""
    gone = set(forgotten)
    out = dict(definition)
    name = out.get("name")
    allowed = out.get("allowed_nodes")
    if isinstance(allowed, list):
        kept = [n for n in allowed if n not in gone]
        if not kept:
            raise InputError(f"VM {name} may run only on {', '.join(map(str, allowed))}, all "
                             "forgotten: it could run nowhere; keep one of them, or recover "
                             "from a backup instead")
        out["allowed_nodes"] = kept
    preferred = out.get("preferred_owners")
    if isinstance(preferred, list):
        kept = [n for n in preferred if n not in gone]
        if kept:
            out["preferred_owners"] = kept
        else:
            del out["preferred_owners"]
    if out.get("owner") in gone:
        choices = out.get("preferred_owners") or out.get("allowed_nodes") or list(left)
        out["owner"] = choices[0]
    return out


def forget_spec_text(text: str, forgotten: Sequence[str], where: str = "<the spec>") -> str:
    """The spec text without the hosts ``forgotten`` (see the module docstring); its
    comments and layout kept. InputError for a host it does not name, or when no host that
    runs VMs would be left."""
    try:
        doc = tomlkit.parse(text)
    except TOMLKitError as exc:
        raise InputError(f"{where}: not TOML: {exc}") from exc
    spec = parse_spec(text, where)
    names = [n.name for n in spec.hosts]
    unknown = [n for n in forgotten if n not in names]
    if unknown:
        raise InputError(f"no host {unknown[0]!r} in the cluster; its hosts: {', '.join(names)}")
    left = [n.name for n in spec.nodes if n.name not in forgotten]
    if not left:
        raise InputError("no host that runs VMs would be left; forget fewer hosts")
    nodes = doc["nodes"]
    assert isinstance(nodes, list)
    for i in reversed(range(len(nodes))):
        if nodes[i].get("name") in forgotten:
            del nodes[i]
    cluster = doc.get("cluster")
    if isinstance(cluster, dict) and cluster.get("witness") in forgotten:
        del cluster["witness"]
    own_vms = doc.get("vms")
    if isinstance(own_vms, list):
        for i, table in enumerate(own_vms):
            fixed = forget_definition(table, forgotten, left)
            for key in list(table):
                if key not in fixed:
                    del table[key]
            for key, value in fixed.items():
                if table.get(key) != value:
                    own_vms[i][key] = value
    out = tomlkit.dumps(doc)
    parse_spec(out, where)  # what is stored must load
    return out


def forget(state: ClusterState, forgotten: Sequence[str], say: Say = lambda _m: None
           ) -> dict[str, Any]:
    """Forget the hosts ``forgotten`` in the store (see the module docstring): checked
    whole before anything is written. Returns what was done."""
    text = state.spec_text()
    if text is None:
        raise StoreError(f"the store holds no spec for {state.cluster}; nothing to recover")
    where = f"<the spec of {state.cluster} in etcd>"
    new_text = forget_spec_text(text, forgotten, where)
    left = [n.name for n in parse_spec(new_text, where).nodes]
    records = vms.records(state)
    redefined = {name: forget_definition(r.definition, forgotten, left)
                 for name, r in records.items()}
    state.spec(new_text, list(redefined.values()))  # the whole result must load
    for name, rec in records.items():
        if redefined[name] != rec.definition:
            vms.redefine(state, rec, redefined[name])
            say(f"{name}: now owned by {redefined[name].get('owner')} in its definition")
    state.put_spec(new_text)
    aborted = []
    for vm, mig in state.migrations().items():
        if mig.source in forgotten or mig.target in forgotten:
            with contextlib.suppress(VmclusterError):
                state.abort_migration(mig)
                aborted.append(vm)
    released = []
    for vm, p in state.placements().items():
        if p.node in forgotten:
            state.place(vm, None, expect=p.revision, token=None, state="stopped")
            released.append(vm)
            say(f"{vm}: released from {p.node}; the manager starts it on the hosts left "
                "if its desired state is running")
    revoked = {node: drop_host_records(state, node) for node in forgotten}
    state.append_event({"kind": "hosts_forgotten", "at": time.time(), "nodes": list(forgotten),
                        "released": released, "aborted_migrations": aborted})
    return {"forgotten": list(forgotten), "left": left, "released": released,
            "aborted_migrations": aborted, "revoked_serials": revoked,
            "redefined": sorted(n for n in records if redefined[n] != records[n].definition)}


def recover(cfg: NodeConfig, forgotten: Sequence[str], say: Say = lambda _m: None,
            timeout_s: float = 60.0) -> dict[str, Any]:
    """This host's etcd member alone, from its own data (``--force-new-cluster``), and the
    hosts ``forgotten`` forgotten in it; with this host's ``vmclusterd`` stopped. Every
    other host of the cluster must be among ``forgotten``."""
    if cfg.member is None:
        raise InputError(f"{cfg.node} runs no etcd member: recover on a host that does")
    if cfg.node in forgotten:
        raise InputError(f"{cfg.node} is this host: forget the others, not the one that "
                         "recovers")
    if not forgotten:
        raise InputError("name the hosts given up: --forget NODE (each of them)")
    if pid_in_file(cfg.pidfile, str(cfg.path)) is not None:
        raise InputError(f"{cfg.node}'s vmclusterd runs: stop it first (systemctl stop "
                         "vmclusterd)")
    if not (cfg.etcd_dir / "member").exists():
        raise InputError(f"{cfg.node} has no etcd data in {cfg.etcd_dir}: nothing to recover "
                         "from (restore a backup instead: cluster restore)")
    cfg.log_dir.mkdir(parents=True, exist_ok=True)
    log = cfg.log_dir / "etcd-recover.log"
    # --force-new-cluster rewrites the member list at once: a copy of the data as it was
    # goes back in place if the recovery stops before it has forgotten anything.
    before = cfg.etcd_dir.with_name(f"{cfg.etcd_dir.name}.before-recover-{int(time.time())}")
    shutil.copytree(cfg.etcd_dir, before, symlinks=True)
    argv = [*etcd_argv(cfg), "--force-new-cluster"]
    say(f"starting {cfg.node}'s etcd member alone from its own data (--force-new-cluster)")
    with log.open("ab") as out:
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=out)
    done: dict[str, Any] | None = None
    try:
        state = ClusterState(EtcdClient(list(cfg.member.client_urls),
                                        tls=NodeCredentials(cfg.tls_dir)), cfg.cluster)
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                text = state.spec_text()
                break
            except VmclusterError as exc:
                if proc.poll() is not None:
                    raise StoreError(f"{cfg.node}'s etcd member ended (exit {proc.returncode})"
                                     f"; see {log}") from exc
                if time.monotonic() > deadline:
                    raise StoreError(f"{cfg.node}'s etcd member did not answer within "
                                     f"{timeout_s:.0f} s: {exc}; see {log}") from exc
                time.sleep(0.3)
        if text is None:
            raise StoreError(f"the store of {cfg.cluster} on {cfg.node} holds no spec")
        hosts = [n.name for n in parse_spec(text).hosts]
        others = [n for n in hosts if n != cfg.node and n not in forgotten]
        if others:
            raise InputError(
                f"the store is {cfg.node}'s alone after a recovery: forget every other "
                f"host too ({', '.join(others)}); those that survive join again afterwards "
                "(wipe their etcd data, then `vmcluster cluster join`)")
        done = forget(state, forgotten, say)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        if done is None:  # refused or failed before forgetting: the member as it was
            shutil.rmtree(cfg.etcd_dir, ignore_errors=True)
            before.rename(cfg.etcd_dir)
    say(f"{cfg.node} is the cluster's only member now; start its vmclusterd (its etcd data "
        f"from before is in {before})")
    return {"node": cfg.node, "old_data": str(before), **done}


def report_lines(doc: Mapping[str, Any], started: bool = False) -> list[str]:
    """What :func:`recover` did, as lines for a terminal (``started``: its vmclusterd was
    started again for the user, as the lab does)."""
    return [f"{doc['node']}: recovered alone from its own etcd data; forgot "
            f"{', '.join(doc['forgotten'])}",
            f"  VMs released (started on {', '.join(doc['left'])} if meant to run): "
            f"{', '.join(doc['released']) or 'none'}",
            f"  definitions that named them, rewritten: {', '.join(doc['redefined']) or 'none'}",
            f"  its etcd data from before the recovery: {doc.get('old_data')}",
            ("  its vmclusterd runs again" if started else
             "  next: start vmclusterd here (systemctl start vmclusterd)")
            + "; never boot a forgotten host with its old data (wipe it, then `cluster join`)"]
