"""The coordinator of each volume: who it is, electing a new one, and calling it.

One node per volume owns the metadata (the allocation table on the LUN) and
serves create/delete/resize/owner changes to the others through its agent.
When the recorded coordinator is down, or has lost its own storage path, the
next one is elected deterministically (:func:`~vmcluster.csv.paths.elect_coordinator`:
the lowest-named live node with a path) by a compare-and-set on the record, so
any number of agents and commands electing at once agree.

Where the record and the view of the hosts live is a :class:`CsvBook`:

* :class:`StoreBook`, a cluster with a store: the record is ``csv/volumes/<volume>``
  in etcd, and each host's agent publishes its own links (``csv/hosts/<node>``, on a
  short lease that it keeps alive): a host whose agent is gone has no entry, so it is
  down. A host reads nothing of another host but the store.
* :class:`FileBook`, a lab whose hosts run their agent only (no store, for tests of
  the substrate alone): the record is in the lab's state file, links are read in the
  hosts' namespaces and liveness by pinging the agents. Only that harness uses it.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

import psutil

from vmcluster.csv.paths import Access, access_modes, elect_coordinator
from vmcluster.errors import StoreError, SubstrateError
from vmcluster.model import ClusterSpec
from vmcluster.policy.networks import Health
from vmcluster.store.etcd import Compare, Put
from vmcluster.store.state import ClusterState, declared_failed
from vmcluster.substrate.host import netns
from vmcluster.substrate.host.client import AgentClient, AgentDown
from vmcluster.substrate.host.layout import LabLayout
from vmcluster.substrate.host.state import read_state, update_state

__all__ = ["CsvBook", "FileBook", "LabView", "LinkPublisher", "StoreBook", "coordinator",
           "coordinator_call", "local_links", "volume_access"]

Say = Callable[[str], None]
# A host whose agent stopped renewing is down this long after. Renewed every second: long
# enough that a renewal which first tries an etcd endpoint on a network just cut (a 2 s
# timeout, then the next endpoint) never lets the lease lapse, which made every link of a
# live host look down to the migration policy for seconds.
HOST_TTL_S = 6
RENEW_S = 1.0


@dataclass(frozen=True)
class LabView:
    """What the CSV decisions need from the live cluster."""

    health: Health
    up: frozenset[str]
    links_up: frozenset[tuple[str, str]]  # (network, node)
    storage_flag: frozenset[str]  # nodes whose storage path is not cut on purpose

    def has_path(self, network: str | None) -> frozenset[str]:
        if network is None:
            return frozenset()
        return frozenset(n for (net, n) in self.links_up
                         if net == network and n in self.storage_flag)


def _view(spec: ClusterSpec, links: Mapping[str, Mapping[str, bool]], up: frozenset[str],
          flagged: frozenset[str]) -> LabView:
    """A view from each host's own links (a host with no entry: all its links down)."""
    down: set[tuple[str, str]] = set()
    ups: set[tuple[str, str]] = set()
    for node in spec.nodes:
        mine = links.get(node.name, {})
        for net in node.interfaces:
            (ups if mine.get(net, False) else down).add((net, node.name))
    return LabView(Health(frozenset(down)), up, frozenset(ups), flagged)


class CsvBook(Protocol):
    """Where the coordinator records live, and the view of the hosts they are decided on."""

    def view(self, spec: ClusterSpec) -> LabView: ...

    def recorded(self, volume: str) -> str | None: ...

    def replace(self, volume: str, able: frozenset[str], new: str | None) -> str | None:
        """Record ``new`` unless the recorded coordinator is (by now) in ``able``;
        returns the coordinator recorded afterwards. Atomic."""
        ...


def local_links(spec: ClusterSpec, node: str) -> dict[str, bool]:
    """Is this host's interface on each of its networks up? Found by the host's address
    on the network, in the calling process's own namespace (as on a real host)."""
    by_addr = {a.address: ifname for ifname, addrs in psutil.net_if_addrs().items()
               for a in addrs}
    stats = psutil.net_if_stats()
    out = {}
    for net, addr in spec.node(node).interfaces.items():
        ifname = by_addr.get(str(addr))
        st = stats.get(ifname) if ifname else None
        out[net] = bool(st is not None and st.isup)
    return out


class StoreBook:
    """Coordinator records and host links in the cluster's store. ``me``: the host
    asking, whose own links ``mine`` gives fresh (it need not read them back)."""

    def __init__(self, state: ClusterState, me: str | None = None,
                 mine: Callable[[], Mapping[str, bool]] | None = None) -> None:
        self.state, self.me, self.mine = state, me, mine

    def _host_key(self, node: str = "") -> str:
        return self.state.key("csv", "hosts", node)

    def _volume_key(self, volume: str) -> str:
        return self.state.key("csv", "volumes", volume)

    def view(self, spec: ClusterSpec) -> LabView:
        kvs, _ = self.state.client.get_prefix(self._host_key())
        links: dict[str, dict[str, bool]] = {}
        for kv in kvs:
            data = kv.json()
            links[kv.key.rsplit("/", 1)[1]] = {str(k): bool(v)
                                               for k, v in dict(data.get("links", {})).items()}
        if self.me is not None and self.mine is not None:
            links[self.me] = dict(self.mine())
        # A host the manager declared failed is down whatever its lapsing lease says: an
        # isolated coordinator's entry outlives it by up to HOST_TTL_S, and every call to
        # it would wait out a connect timeout (a crashed one at least refuses at once).
        failed = {name for name, rec in self.state.node_states().items()
                  if declared_failed(rec)}
        names = {n.name for n in spec.nodes} - failed
        up = frozenset(n for n in links if n in names)
        return _view(spec, links, up, up)

    def _record(self, volume: str) -> tuple[dict[str, Any], int]:
        kv = self.state.client.get(self._volume_key(volume))
        return (dict(kv.json()), kv.mod_revision) if kv else ({}, 0)

    def recorded(self, volume: str) -> str | None:
        got = self._record(volume)[0].get("coordinator")
        return None if got is None else str(got)

    def replace(self, volume: str, able: frozenset[str], new: str | None) -> str | None:
        key = self._volume_key(volume)
        for _ in range(20):  # bounded: every lost race means someone else just wrote it
            rec, rev = self._record(volume)
            current = rec.get("coordinator")
            if current in able:
                return str(current)
            body = {"coordinator": new, "epoch": int(rec.get("epoch", 0)) + 1}
            cmp = Compare.modified(key, rev) if rev else Compare.absent(key)
            if self.state.client.txn([cmp], [Put(key, json.dumps(body).encode())]).succeeded:
                return new
        raise StoreError(f"could not record the coordinator of {volume}: the record kept "
                         "changing under 20 tries")


class LinkPublisher:
    """A host's agent publishes its own links to ``csv/hosts/<node>`` on a lease it
    renews from a thread: the entry goes when the agent does."""

    def __init__(self, book: StoreBook, node: str, log: Say) -> None:
        self.book, self.node, self.log = book, node, log
        self._lease = 0
        self._last: dict[str, bool] | None = None  # what the store has
        self._want: dict[str, bool] | None = None  # what it should have (the newest)
        self._lock = threading.Lock()
        self._done = threading.Event()
        self._thread: threading.Thread | None = None

    def publish(self, links: Mapping[str, bool]) -> None:
        """Write ``links`` (now, if they changed or the lease was lost); never raises."""
        want = dict(links)
        with self._lock:
            self._want = want
            if want == self._last and self._lease:
                return
            client = self.book.state.client
            for attempt in (1, 2):  # a lease found gone: a new one at once, not a tick later
                try:
                    if not self._lease:
                        self._lease = client.lease_grant(HOST_TTL_S)
                    client.put(self.book._host_key(self.node),
                               json.dumps({"links": want}, sort_keys=True).encode(),
                               self._lease)
                    self._last = want
                    break
                except StoreError as exc:
                    self._lease = 0
                    if attempt == 2:
                        self.log(f"cannot publish this host's links: {exc}")
        if self._thread is None:
            self._thread = threading.Thread(target=self._keep, name="links lease", daemon=True)
            self._thread.start()

    def _keep(self) -> None:
        while not self._done.wait(RENEW_S):
            with self._lock:
                lease, last = self._lease, self._want
            if not lease:
                if last is not None:
                    self.publish(last)
                continue
            try:
                alive = self.book.state.client.lease_keepalive(lease) > 0
            except StoreError:
                alive = False
            if not alive:  # expired (TTL 0: the store was slow or away), its entry gone
                with self._lock:
                    if self._lease == lease:
                        self._lease = 0
                if last is not None:
                    self.publish(last)  # a new lease, the entry written again

    def stop(self) -> None:
        self._done.set()


class FileBook:
    """The lab harness's records, for hosts that run their agent only: its state file,
    links read in the hosts' namespaces, agents pinged. ``skip_ping``: a node known to
    be up (an agent asking about its own lab)."""

    def __init__(self, layout: LabLayout, skip_ping: str | None = None) -> None:
        self.layout, self.skip_ping = layout, skip_ping

    def view(self, spec: ClusterSpec) -> LabView:
        state = read_state(self.layout)
        links = {node.name: {net: netns.link_is_up(self.layout, net, node.name)
                             for net in node.interfaces} for node in spec.nodes}
        alive = set()
        for node in spec.nodes:
            if state.get("nodes", {}).get(node.name, {}).get("state") == "off":
                continue
            if node.name == self.skip_ping or AgentClient(self.layout, node.name).alive():
                alive.add(node.name)
        flag = frozenset(n.name for n in spec.nodes
                         if state.get("nodes", {}).get(n.name, {}).get("storage_path", True))
        return _view(spec, links, frozenset(alive), flag)

    def recorded(self, volume: str) -> str | None:
        got = read_state(self.layout).get("volumes", {}).get(volume, {}).get("coordinator")
        return None if got is None else str(got)

    def replace(self, volume: str, able: frozenset[str], new: str | None) -> str | None:
        with update_state(self.layout) as st:
            rec = st.setdefault("volumes", {}).setdefault(volume, {})
            current = rec.get("coordinator")
            if current in able:  # someone else re-elected meanwhile
                return str(current)
            rec["coordinator"] = new
            rec["epoch"] = int(rec.get("epoch", 0)) + 1
        return new


def _network(spec: ClusterSpec, volume: str) -> str | None:
    for vol in spec.volumes:
        if vol.name == volume:
            return vol.network
    raise SubstrateError(f"unknown volume {volume!r}; known: {[v.name for v in spec.volumes]}")


def coordinator(book: CsvBook, spec: ClusterSpec, volume: str, view: LabView | None = None,
                say: Say | None = None, gone: frozenset[str] = frozenset()) -> str | None:
    """The volume's coordinator, electing (and recording) a new one if the old cannot serve.
    ``gone``: nodes the caller just found not answering (whatever the view says)."""
    net = _network(spec, volume)
    view = view or book.view(spec)
    up = view.up - gone
    able = up & view.has_path(net)
    current = book.recorded(volume)
    if current in able:
        return current
    new = book.replace(volume, able, elect_coordinator([n.name for n in spec.nodes], up,
                                                       view.has_path(net)))
    if say is not None and new != current:
        why = "is down" if current not in up else "lost its storage path"
        say(f"{volume}: coordinator {current or '-'} {why}; {new or 'nobody'} takes the role")
    return new


def coordinator_call(layout: LabLayout, book: CsvBook, spec: ClusterSpec, volume: str, op: str,
                     timeout_s: float = 30.0, say: Say | None = None,
                     **args: Any) -> dict[str, Any]:
    """Send a metadata op to the volume's coordinator; re-elect if it does not answer."""
    gone: set[str] = set()
    for attempt in range(3):
        node = coordinator(book, spec, volume, say=say, gone=frozenset(gone))
        if node is None:
            raise SubstrateError(f"volume {volume} has no coordinator: no live node has a "
                                 "storage path; restore one with `vmcluster lab storage up`")
        try:
            return AgentClient(layout, node).call(op, timeout_s=timeout_s, volume=volume, **args)
        except AgentDown:
            gone.add(node)
            if attempt == 2:
                raise
    raise AssertionError("unreachable")


def volume_access(book: CsvBook, spec: ClusterSpec, volume: str,
                  view: LabView | None = None) -> tuple[str | None, dict[str, Access]]:
    """The coordinator and every node's access mode to ``volume``."""
    view = view or book.view(spec)
    coord = coordinator(book, spec, volume, view)
    net = _network(spec, volume)
    return coord, access_modes(spec, view.health, view.up, view.has_path(net), coord, net)
