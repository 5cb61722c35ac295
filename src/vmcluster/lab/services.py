"""The lab's control plane: the store each host's daemon serves, and who leads.

Each host's ``vmclusterd`` (:mod:`vmcluster.lab.hosts`) starts its etcd member,
heartbeats and manager candidate itself; this module waits for them, seeds
the store (spec, node states, the placements the lab booted with) and finds
the leader. ``services.json`` in the lab's state dir says where the store is
for the lab's own tools (every member's client URLs, the cluster's name); no
host reads it. The lab reaches the store from its client namespace (on the
public network) through :class:`~vmcluster.substrate.host.nsenter.NetnsThread`: see
:func:`lab_store`.
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vmcluster.control.ledger import StoreLedger
from vmcluster.csv.coordinator import CsvBook, FileBook, LabView, StoreBook
from vmcluster.errors import LabError, StoreError, VmclusterError
from vmcluster.lab.credentials import etcd_tls, lab_ca
from vmcluster.lab.hosts import daemon_pids, etcd_cluster, start_daemon
from vmcluster.model import ClusterSpec
from vmcluster.model.spec import load_spec
from vmcluster.node.access import ClusterAccess
from vmcluster.node.bootstrap import revoke_certificate
from vmcluster.node.nodewatch import HEARTBEAT_PORT
from vmcluster.pki import ADMIN, NodeCredentials, write_file
from vmcluster.store.election import Leadership, current_leader
from vmcluster.store.etcd import EtcdClient
from vmcluster.store.state import ClusterState
from vmcluster.substrate.host.layout import LabLayout
from vmcluster.substrate.host.nsenter import NetnsThread
from vmcluster.substrate.host.state import read_state

__all__ = [
    "LabStore",
    "admin_credentials",
    "etcd_cluster",
    "has_control_plane",
    "lab_access",
    "lab_csv_book",
    "lab_hosts",
    "lab_ledger",
    "lab_store",
    "leader",
    "leader_summary",
    "read_services",
    "revoke",
    "seed_store",
    "service_log",
    "service_pids",
    "start_member",
    "start_node_services",
    "start_services",
]

Say = Callable[[str], None]
_PART_LOG = {"managerd": "manager", "nodewatch": "heartbeats"}


def services_file(layout: LabLayout) -> Path:
    return layout.state_dir / "services.json"


def service_log(layout: LabLayout, what: str, node: str) -> Path:
    """The log of one of ``node``'s daemon parts (``managerd``, ``nodewatch``, ``etcd``,
    ``agent``, ``watchdog``)."""
    return layout.host_state_dir(node) / "log" / f"{_PART_LOG.get(what, what)}.log"


def read_services(layout: LabLayout) -> dict[str, Any]:
    try:
        return dict(json.loads(services_file(layout).read_text()))
    except (OSError, ValueError) as exc:
        raise LabError(f"lab {layout.name!r} runs no control plane ({services_file(layout)} "
                       "missing); it starts with `vmcluster lab up`") from exc


@dataclass
class LabStore:
    """A ClusterState whose connections are made from the lab's client namespace."""

    state: ClusterState
    thread: NetnsThread

    def call(self, fn: Callable[..., Any], *args: object, timeout: float = 60) -> Any:
        return self.thread.call(fn, *args, timeout=timeout)


@contextlib.contextmanager
def lab_store(layout: LabLayout, ns: str | None = None) -> Iterator[LabStore]:
    """The lab's store, used through a thread inside ``ns`` (default: the client ns)."""
    svc = read_services(layout)
    client = EtcdClient(svc["endpoints"], timeout=1.0, retry_s=10.0, tls=etcd_tls(layout))
    with NetnsThread(ns or layout.client_ns) as thread:
        yield LabStore(ClusterState(client, svc["cluster"]), thread)


@contextlib.contextmanager
def lab_ledger(layout: LabLayout) -> Iterator[StoreLedger | None]:
    """The migration ledger of the lab's operator (no fencing token: the CLI's own
    migrations), its store calls made from the admin namespace; None without a
    control plane."""
    if not services_file(layout).exists():
        yield None
        return
    with lab_store(layout) as ls:
        yield StoreLedger(ls.state, None, ls.call)


def has_control_plane(layout: LabLayout) -> bool:
    return services_file(layout).exists()


class _ClientNsBook:
    """The store's CSV records, read and written from the lab's client namespace."""

    def __init__(self, ls: LabStore) -> None:
        self.ls, self.book = ls, StoreBook(ls.state)

    def view(self, spec: ClusterSpec) -> LabView:
        got: LabView = self.ls.call(self.book.view, spec)
        return got

    def recorded(self, volume: str) -> str | None:
        got: str | None = self.ls.call(self.book.recorded, volume)
        return got

    def replace(self, volume: str, able: frozenset[str], new: str | None) -> str | None:
        got: str | None = self.ls.call(self.book.replace, volume, able, new)
        return got


@contextlib.contextmanager
def lab_csv_book(layout: LabLayout) -> Iterator[CsvBook]:
    """Where the lab's coordinators are recorded: the store (its hosts publish their links
    there), or the lab's state file when its hosts run their agent only."""
    if not has_control_plane(layout):
        yield FileBook(layout)
        return
    with lab_store(layout) as ls:
        yield _ClientNsBook(ls)


def leader(layout: LabLayout) -> Leadership | None:
    with lab_store(layout) as store:
        got: Leadership | None = store.call(current_leader, store.state.client,
                                            store.state.cluster)
        return got


def leader_summary(layout: LabLayout) -> dict[str, Any] | None:
    """``{"manager": node, "token": N}`` for ``lab status``; None when there is no control
    plane, no leader, or the store does not answer within a few seconds (never raises)."""
    if not services_file(layout).exists():
        return None
    try:
        held = _glance(layout, lambda st: current_leader(st.client, st.cluster))
    except (VmclusterError, OSError, TimeoutError, KeyError):  # status shows the rest anyway
        return None
    return None if held is None else {"manager": held.name, "token": held.token}


def _glance(layout: LabLayout, read: Callable[[ClusterState], Any]) -> Any:
    """``read(state)`` on the lab's store from its client namespace, giving up within
    seconds (a short retry): for status lines that must not hang on a dead store."""
    svc = read_services(layout)
    client = EtcdClient(svc["endpoints"], timeout=1.0, retry_s=2.0, tls=etcd_tls(layout))
    with NetnsThread(layout.client_ns) as thread:
        return thread.call(read, ClusterState(client, svc["cluster"]), timeout=15)


def lab_hosts(layout: LabLayout) -> list[str]:
    """The lab's hosts (its namespaces), as its spec file made them: what a power cut or
    a restore acts on, whatever the store's spec says now (a recovery may have forgotten
    some)."""
    return [h.name for h in load_spec(read_state(layout)["spec"]).hosts]


def lab_spec(layout: LabLayout) -> ClusterSpec:
    """The lab's cluster spec as its store holds it (with the VMs defined through the API
    since ``lab up``); the spec file when the lab runs no control plane, or when its store
    does not answer within a few seconds (never raises for that)."""
    spec_file = read_state(layout)["spec"]
    if not services_file(layout).exists():
        return load_spec(spec_file)
    try:
        got: ClusterSpec = _glance(layout, lambda st: st.spec())
        return got
    except (StoreError, OSError, TimeoutError, KeyError):
        return load_spec(spec_file)


def admin_credentials(layout: LabLayout) -> Path:
    """The lab operator's API credentials (what ``cluster init`` writes to
    ``~/.config/vmcluster/`` on a real admin's workstation)."""
    return layout.host_config_dir(ADMIN) / "credentials.json"


def lab_access(layout: LabLayout) -> ClusterAccess:
    """The lab's cluster as the CLI reaches it: every host's API URL, the admin token,
    the lab's CA, from the lab's admin namespace."""
    path = admin_credentials(layout)
    try:
        got = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise LabError(f"lab {layout.name!r} has no API credentials ({path}); it runs no "
                       "control plane, or was brought up by an older vmcluster") from exc
    return ClusterAccess(tuple(got["urls"]), got["token"], Path(got["ca"]), layout.client_ns)


def _seed_placements(store: ClusterState, layout: LabLayout) -> None:
    """The placements the lab booted its VMs with (only where none is set)."""
    vms = read_state(layout)["vms"]
    existing = store.placements()
    for vm, rec in sorted(vms.items()):
        if vm not in existing and rec.get("node"):
            store.place(vm, rec["node"], expect=0, token=None)


def seed_store(layout: LabLayout, spec: ClusterSpec, init: dict[str, Any], say: Say = print,
               timeout_s: float = 90.0) -> None:
    """After ``cluster init``/``join`` (which put the spec, the CA and the admin token into
    etcd): where the store is for the lab's own tools (``services.json``), the admin
    side's API credentials, and every member healthy."""
    t0 = time.monotonic()
    cluster = etcd_cluster(layout, spec)
    services_file(layout).write_text(json.dumps({
        "cluster": layout.name, "endpoints": cluster.endpoints(),
        "members": {m.name: list(m.client_urls) for m in cluster.members},
        "heartbeat_port": HEARTBEAT_PORT,
    }, indent=1))
    written = json.loads(Path(init["credentials"]).read_text())["clusters"]
    token = next(iter(written.values()))["token"]
    write_file(admin_credentials(layout), json.dumps({
        "urls": list(written), "token": token,
        "ca": str(NodeCredentials(layout.tls_dir(ADMIN)).ca)}).encode())
    with NetnsThread(layout.client_ns) as thread:
        try:
            thread.call(cluster.wait_healthy, None, timeout_s)
        except StoreError as exc:
            raise LabError(f"the lab's etcd did not come up: {exc}; see "
                           f"{service_log(layout, 'etcd', spec.nodes[0].name)}") from exc
    say(f"etcd: {len(cluster.members)} members healthy ({time.monotonic() - t0:.1f} s)")


def start_services(layout: LabLayout, spec: ClusterSpec | None = None, say: Say = print,
                   timeout_s: float = 90.0) -> None:
    """Once the VMs run: their placements into the store; wait for an elected manager."""
    spec = spec or load_spec(read_state(layout)["spec"])
    with lab_store(layout) as ls:
        ls.call(_seed_placements, ls.state, layout)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            held = ls.call(current_leader, ls.state.client, ls.state.cluster)
            if held is not None:
                say(f"manager: {held.name} leads (token {held.token}); a candidate and "
                    "heartbeats on every node")
                return
            time.sleep(0.2)
    raise LabError(f"no manager was elected in {timeout_s:.0f} s; see "
                   f"{service_log(layout, 'managerd', spec.nodes[0].name)}")


def wait_placed(layout: LabLayout, names: list[str], timeout_s: float = 120.0,
                poll_s: float = 0.2) -> dict[str, str]:
    """Wait until the manager has placed each of ``names`` (and its start has been asked
    of the node); ``{vm: node}``."""
    deadline = time.monotonic() + timeout_s
    with lab_store(layout) as ls:
        while True:
            placed = ls.call(ls.state.placements)
            homes = {vm: placed[vm].node for vm in names if vm in placed and placed[vm].node}
            if len(homes) == len(names):
                return {vm: str(node) for vm, node in homes.items()}
            if time.monotonic() >= deadline:
                missing = ", ".join(sorted(set(names) - set(homes)))
                held = ls.call(current_leader, ls.state.client, ls.state.cluster)
                where = (f"see {service_log(layout, 'managerd', held.name)}" if held
                         else "no manager is elected")
                raise LabError(f"the manager did not start {missing} within {timeout_s:.0f} s; "
                               + where)
            time.sleep(poll_s)


def start_member(layout: LabLayout, node: str, timeout_s: float = 30.0) -> None:
    """``node``'s etcd member is started again by its daemon; wait until it runs."""
    start_node_services(layout, node)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if service_pids(layout, node)["etcd"]:
            return
        time.sleep(0.1)
    raise LabError(f"{node}'s daemon did not start its etcd member again in {timeout_s:.0f} s; "
                   f"see {layout.daemon_log(node)}")


def start_node_services(layout: LabLayout, node: str) -> None:
    """After a crash or power-on: the host's ``vmclusterd`` (it starts its parts)."""
    start_daemon(layout, node)


def service_pids(layout: LabLayout, node: str | None = None) -> dict[str, list[int]]:
    """The lab's host processes (or one node's), by role (see
    :func:`~vmcluster.lab.hosts.daemon_pids`)."""
    return daemon_pids(layout, node)


def revoke(layout: LabLayout, spec: ClusterSpec, cert_pem: bytes) -> bytes:
    """Revoke a certificate of the lab's CA; returns the new revocation list. With a
    control plane the cluster's CA record in etcd is what revokes (as ``cluster leave``
    does, :func:`vmcluster.node.bootstrap.revoke_certificate`): the list travels through
    the store and each host's API part writes it into its own ``tls/crl.pem``. A lab
    without a control plane gets it in its hosts' files from here instead."""

    if services_file(layout).exists():
        with lab_store(layout) as store:
            got: bytes = store.call(revoke_certificate, store.state, cert_pem)
            return got
    ca = lab_ca(layout).revoke(cert_pem)
    (layout.ca_dir / "revoked.json").write_text(json.dumps(list(ca.revoked)))
    crl = ca.crl_pem()
    for node in spec.nodes:
        path = NodeCredentials(layout.tls_dir(node.name)).crl
        tmp = path.with_suffix(".tmp")
        tmp.write_bytes(crl)
        tmp.replace(path)
    return crl
