"""``vmclusterd.toml``: what one host's daemon needs to know, and where its files live.

A host's files are its own: configuration and certificates under
``config_dir`` (``/etc/vmcluster``), state under ``state_dir``
(``/var/lib/vmcluster``: QEMU records, the etcd member's data, logs), sockets
and pid files under ``run_dir`` (``/run/vmcluster``). Every path is
configurable so that tests and the lab can point elsewhere.

::

    [node]
    name = "node1"
    cluster = "prod"                  # the cluster's name: its keys' prefix in etcd
    parts = ["etcd", "agent", "heartbeats", "manager", "api"]   # the default: all of them
    heartbeat_port = 3343
    role = "node"                     # or "witness": etcd and heartbeats only, no VM

    [paths]
    config_dir = "/etc/vmcluster"
    state_dir = "/var/lib/vmcluster"
    run_dir = "/run/vmcluster"

    [etcd]
    endpoints = ["https://198.18.1.1:2379", ...]   # the cluster's members, this host's first

    [etcd.member]                     # this host runs a member (omit: an existing etcd)
    peer_urls = ["https://198.18.1.1:2380"]
    client_urls = ["https://198.18.1.1:2379"]
    initial_cluster = "node1=https://198.18.1.1:2380,..."
    token = "vmc-prod"

    [watchdog]
    fence_window_s = 2.5              # must equal the cluster spec's fence_window_s
    restart_grace_s = 30              # a stopped daemon's successor must pet within this

    [api]
    listen = ["198.18.1.11"]          # this host's addresses the API answers on
    port = 8443

    [guest]                           # what the agent boots the VMs it starts with
    kernel = "/var/lib/vmcluster/images/vmlinuz"
    initrd = "/var/lib/vmcluster/images/initrd.img"

A bad file gets one :class:`~vmcluster.errors.SpecError` line naming
``file:line`` and what to do.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import tomlkit

from vmcluster.control.manager import ManagerParams
from vmcluster.model.tomlsource import TableReader, TableRef, TomlSource, load_toml
from vmcluster.pki import NodeCredentials
from vmcluster.store.etcd import EtcdClient
from vmcluster.store.state import ClusterState

__all__ = ["API_PORT", "DEFAULT_CONFIG", "PARTS", "WITNESS_PARTS", "EtcdMemberConfig", "LabRef",
           "NodeConfig", "load_base_config", "load_config", "parse_config"]

DEFAULT_CONFIG = Path("/etc/vmcluster/vmclusterd.toml")
API_PORT = 8443
PARTS = ("etcd", "agent", "heartbeats", "manager", "api")
WITNESS_PARTS = ("etcd", "heartbeats")  # a witness votes and is heard; it runs no VM
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")
_TOP = {"node", "paths", "etcd", "watchdog", "api", "qemu", "manager", "lab", "guest"}


@dataclass(frozen=True)
class EtcdMemberConfig:
    """The etcd member this host's daemon starts and keeps running."""

    peer_urls: tuple[str, ...]
    client_urls: tuple[str, ...]
    initial_cluster: str
    token: str
    state: str = "new"  # "existing": a member added to a running cluster (cluster join)


@dataclass(frozen=True)
class LabRef:
    """Older lab configs: the lab whose directory the hosts share (now ``shared_dir``)."""

    name: str
    root: Path


@dataclass(frozen=True)
class NodeConfig:
    path: Path
    node: str
    cluster: str
    config_dir: Path = Path("/etc/vmcluster")
    state_dir: Path = Path("/var/lib/vmcluster")
    run_dir: Path = Path("/run/vmcluster")
    parts: tuple[str, ...] = PARTS
    role: str = "node"  # "witness": the cluster's tie-breaker, WITNESS_PARTS only
    heartbeat_port: int = 3343
    endpoints: tuple[str, ...] = ()
    member: EtcdMemberConfig | None = None
    fence_window_s: float = 2.5
    restart_grace_s: float = 30.0
    api_listen: tuple[str, ...] = ()
    api_port: int = API_PORT
    # A certificate of the admin's own (a public or company CA's) that the API shows to
    # browsers and clients asking for a name; hosts reach each other by address and keep
    # the cluster CA's. Both or neither.
    api_certificate: Path | None = None
    api_key: Path | None = None
    qemu: Mapping[str, Any] = field(default_factory=dict)  # a QemuInstall as JSON; {}: system
    manager: Mapping[str, float] = field(default_factory=dict)  # ManagerParams overrides
    lab: LabRef | None = None
    # The cluster's file storage, a directory every host mounts (NFS): the plain disks and
    # quick-migration states of VMs without a shared volume. None: the cluster has none,
    # and such a VM is refused at start.
    shared_dir: Path | None = None
    # The boot image of the VMs this host's agent starts: a host's own files, never a
    # path that came over the network.
    guest_kernel: Path | None = None
    guest_initrd: Path | None = None

    # -- where things are ------------------------------------------------------------
    @property
    def tls_dir(self) -> Path:
        return self.config_dir / "tls"

    @property
    def upload_dir(self) -> Path:
        """Where the API keeps an uploaded disk image until this host's agent has put it
        on its volume (``vm import``); files named by an id the API chose, never a path."""
        return self.state_dir / "uploads"

    @property
    def lab_dir(self) -> tuple[str, Path] | None:
        """(name, root) of the lab whose records this host reads, if any (a lab whose
        hosts run their agent only)."""
        return None if self.lab is None else (self.lab.name, self.lab.root)

    @property
    def shared(self) -> Path | None:
        if self.shared_dir is not None:
            return self.shared_dir
        if self.lab is not None:  # an older lab config: the lab's file storage
            return self.lab.root / self.lab.name / "files"
        return None

    @property
    def heartbeat_key(self) -> Path:
        return self.config_dir / "heartbeat.key"

    @property
    def qemu_dir(self) -> Path:
        return self.state_dir / "qemu"

    @property
    def etcd_dir(self) -> Path:
        return self.state_dir / "etcd"

    @property
    def log_dir(self) -> Path:
        return self.state_dir / "log"

    @property
    def pidfile(self) -> Path:
        return self.run_dir / "vmclusterd.pid"

    @property
    def agent_socket(self) -> Path:
        """The agent's host-local socket (this host's own parts and tools only)."""
        return self.run_dir / "agent.sock"

    @property
    def watchdog_socket(self) -> Path:
        return self.run_dir / "watchdog.sock"

    @property
    def watchdog_pidfile(self) -> Path:
        return self.run_dir / "watchdog.pid"

    @property
    def heartbeats_pidfile(self) -> Path:
        return self.run_dir / "heartbeats.pid"

    @property
    def heartbeats_alive(self) -> Path:
        """Touched by the heartbeat part while its heartbeats go out (see the daemon)."""
        return self.run_dir / "heartbeats.alive"

    @property
    def fence_log(self) -> Path:
        """One JSON line per time the watchdog fenced this host."""
        return self.state_dir / "log" / "fenced.jsonl"

    def store(self, timeout_s: float = 1.0, retry_s: float = 1.0) -> ClusterState:
        """The cluster's store as this host reaches it: its endpoints (its own member
        first, as the config lists them, then every voter etcd lists, read again every
        30 s), its certificate, the cluster's name."""
        client = EtcdClient(list(self.endpoints), timeout=timeout_s, retry_s=retry_s,
                            tls=NodeCredentials(self.tls_dir), sync_s=30.0)
        return ClusterState(client, self.cluster)

    def render(self) -> str:
        """This configuration as ``vmclusterd.toml`` text (``parse_config`` reads it back)."""
        doc = tomlkit.document()
        doc["node"] = {"name": self.node, "cluster": self.cluster, "parts": list(self.parts),
                       "heartbeat_port": self.heartbeat_port}
        if self.role != "node":
            doc["node"]["role"] = self.role
        doc["paths"] = {"config_dir": str(self.config_dir), "state_dir": str(self.state_dir),
                        "run_dir": str(self.run_dir)}
        if self.shared_dir is not None:
            doc["paths"]["shared_dir"] = str(self.shared_dir)
        etcd = tomlkit.table()
        if self.endpoints:
            etcd["endpoints"] = list(self.endpoints)
        if self.member is not None:
            etcd["member"] = {"peer_urls": list(self.member.peer_urls),
                              "client_urls": list(self.member.client_urls),
                              "initial_cluster": self.member.initial_cluster,
                              "token": self.member.token, "state": self.member.state}
        doc["etcd"] = etcd
        doc["watchdog"] = {"fence_window_s": self.fence_window_s,
                           "restart_grace_s": self.restart_grace_s}
        if self.api_listen:
            doc["api"] = {"listen": list(self.api_listen), "port": self.api_port,
                          **({"certificate": str(self.api_certificate),
                              "key": str(self.api_key)} if self.api_certificate else {})}
        if self.qemu:
            doc["qemu"] = {k: v for k, v in self.qemu.items() if v is not None}
        if self.manager:
            doc["manager"] = dict(self.manager)
        if self.lab is not None:
            doc["lab"] = {"name": self.lab.name, "root": str(self.lab.root)}
        if self.guest_kernel is not None and self.guest_initrd is not None:
            doc["guest"] = {"kernel": str(self.guest_kernel), "initrd": str(self.guest_initrd)}
        return tomlkit.dumps(doc)


def load_config(path: Path | str = DEFAULT_CONFIG) -> NodeConfig:
    """Load and check ``vmclusterd.toml``."""
    return _from_source(load_toml(path), Path(path))


def load_base_config(path: Path | str) -> NodeConfig:
    """What ``cluster init`` and ``cluster join`` start from: the host's ``vmclusterd.toml``
    as the operator prepared it (paths, ``[qemu]``, ``[manager]``, the API port), which
    need not name the node or the cluster yet; the defaults when there is no file."""
    path = Path(path)
    if not path.exists():
        return NodeConfig(path=path, node="", cluster="")
    return _from_source(load_toml(path), path, partial=True)


def parse_config(text: str, filename: str = "<config>") -> NodeConfig:
    return _from_source(TomlSource(text, filename), Path(filename))


def _table(src: TomlSource, name: str, allowed: set[str], required: set[str],
           data: Any = None) -> TableReader:
    data = src.data.get(name, {}) if data is None else data
    ref = TableRef(name)
    if not isinstance(data, dict):
        raise src.error(None, None, f"{name} must be a table ([{name}])")
    src.check_keys(ref, data, allowed, required)
    return TableReader(src, ref, data)


def _urls(r: TableReader, key: str, required: bool = True) -> tuple[str, ...]:
    value = r.get(key, list)
    if value is None:
        if required:
            raise r.fail(None, f"missing required key {key!r}", "add it")
        return ()
    if not value or not all(isinstance(u, str) and re.match(r"^https?://[^/]+:\d+$", u)
                            for u in value):
        raise r.fail(key, f"{key} must be a non-empty list of URLs like "
                     f"\"https://198.18.1.1:2379\", got {value!r}")
    return tuple(value)


def _path(r: TableReader, key: str, default: Path) -> Path:
    value = r.get(key, str)
    if value is None:
        return default
    if not value.startswith("/"):
        raise r.fail(key, f"{key} must be an absolute path, got {value!r}")
    return Path(value)


def _from_source(src: TomlSource, path: Path, partial: bool = False) -> NodeConfig:
    """``partial``: a file ``cluster init``/``join`` completes (see load_base_config)."""
    for key in src.data:
        if key not in _TOP:
            raise src.error(None, None, f"unknown table {key!r}", f"allowed: {sorted(_TOP)}")
    if "node" not in src.data and not partial:
        raise src.error(None, None, "missing [node] table", 'add [node] with name = "..."')
    node = _table(src, "node", {"name", "cluster", "parts", "heartbeat_port", "role"},
                  set() if partial else {"name", "cluster"})
    role = node.get("role", str, "node")
    if role not in ("node", "witness"):
        raise node.fail("role", f"role must be \"node\" or \"witness\", got {role!r}")
    name = node.get("name", str) or "" if partial else node.name()
    if (name or not partial) and not _NAME.match(name):
        raise node.fail("name", f"node name {name!r} is not letters, digits, '.', '_', '-'")
    cluster = node.get("cluster", str) or ("" if partial else None)
    if (cluster or not partial) and (not cluster or not _NAME.match(cluster)):
        raise node.fail("cluster", f"cluster name {cluster!r} is not letters, digits, "
                        "'.', '_', '-'")
    parts = node.names("parts") or (WITNESS_PARTS if role == "witness" else PARTS)
    for part in parts:
        if part not in PARTS:
            raise node.fail("parts", f"unknown part {part!r}", f"parts: {', '.join(PARTS)}")
        if role == "witness" and part not in WITNESS_PARTS:
            raise node.fail("parts", f"a witness runs no {part!r}",
                            f"a witness's parts are {', '.join(WITNESS_PARTS)}")
    port = node.positive("heartbeat_port", int, 3343)
    if port > 65535:
        raise node.fail("heartbeat_port", f"heartbeat_port must be a port number, got {port}")
    paths = _table(src, "paths", {"config_dir", "state_dir", "run_dir", "shared_dir"}, set())
    etcd_data = src.data.get("etcd", {})
    etcd = _table(src, "etcd", {"endpoints", "member"}, set(), etcd_data)
    endpoints = _urls(etcd, "endpoints", required=False)
    needs = [p for p in parts if p in ("heartbeats", "manager", "api")]
    if needs and not endpoints and not partial:
        raise etcd.fail(None, f"parts {needs} need the cluster's store, and [etcd] has no "
                        "endpoints", 'add endpoints = ["https://ADDRESS:2379", ...]')
    member = None
    if "member" in etcd_data:
        m = TableReader(src, TableRef("etcd.member"), etcd_data["member"])
        if not isinstance(etcd_data["member"], dict):
            raise etcd.fail("member", "member must be a table ([etcd.member])")
        src.check_keys(TableRef("etcd.member"), etcd_data["member"],
                       {"peer_urls", "client_urls", "initial_cluster", "token", "state"},
                       {"peer_urls", "client_urls", "initial_cluster", "token"})
        initial = m.get("initial_cluster", str)
        if f"{name}=" not in initial:
            raise m.fail("initial_cluster", f"initial_cluster does not name this node "
                         f"({name}=URL)", "list every member as NAME=PEER_URL")
        state = m.get("state", str, "new")
        if state not in ("new", "existing"):
            raise m.fail("state", f"state must be \"new\" or \"existing\", got {state!r}")
        member = EtcdMemberConfig(_urls(m, "peer_urls"), _urls(m, "client_urls"), initial,
                                  str(m.get("token", str)), str(state))
    if "etcd" in parts and member is None and not partial:
        raise etcd.fail(None, "parts has \"etcd\" but there is no [etcd.member]",
                        "add [etcd.member], or drop \"etcd\" from parts to use an "
                        "existing etcd")
    watchdog = _table(src, "watchdog", {"fence_window_s", "restart_grace_s"}, set())
    api = _table(src, "api", {"listen", "port", "certificate", "key"}, set())
    own_cert, own_key = api.get("certificate", str), api.get("key", str)
    if (own_cert is None) != (own_key is None):
        raise api.fail(None, "needs both certificate and key, or neither",
                       "certificate: the PEM chain (leaf first); key: its private key")
    listen = api.names("listen") or ()
    for addr in listen:
        try:
            ipaddress.ip_address(addr)
        except ValueError:
            raise api.fail("listen", f"listen: {addr!r} is not an IP address") from None
    if "api" in parts and not listen and not partial:
        raise node.fail("parts", "parts has \"api\" but [api] has no listen addresses",
                        'add [api] listen = ["ADDRESS", ...]')
    api_port = api.positive("port", int, 8443)
    if api_port > 65535:
        raise api.fail("port", f"port must be a port number, got {api_port}")
    qemu = src.data.get("qemu", {})
    _table(src, "qemu", {"binary", "datadir", "moduledir", "firmware", "label"}, set(), qemu)
    manager = src.data.get("manager", {})
    tunable = {f.name for f in fields(ManagerParams) if f.type in ("float", "int")}
    mgr = _table(src, "manager", tunable, set(), manager)
    for key in manager:
        mgr.positive(key, float)
    guest = _table(src, "guest", {"kernel", "initrd"}, set())
    kernel, initrd = guest.get("kernel", str), guest.get("initrd", str)
    if (kernel is None) != (initrd is None):
        raise guest.fail(None, "[guest] needs both kernel and initrd", "give both paths")
    lab = None
    if "lab" in src.data:
        lr = _table(src, "lab", {"name", "root"}, {"name", "root"})
        lab = LabRef(lr.name(), _path(lr, "root", Path("/run/vmcluster")))
    return NodeConfig(
        path=path, node=name, cluster=str(cluster), parts=tuple(parts), role=str(role),
        config_dir=_path(paths, "config_dir", Path("/etc/vmcluster")),
        state_dir=_path(paths, "state_dir", Path("/var/lib/vmcluster")),
        run_dir=_path(paths, "run_dir", Path("/run/vmcluster")),
        shared_dir=(_path(paths, "shared_dir", Path("/")) if paths.get("shared_dir", str)
                    else None),
        heartbeat_port=int(port), endpoints=endpoints, member=member,
        fence_window_s=watchdog.positive("fence_window_s", float, 2.5),
        restart_grace_s=watchdog.positive("restart_grace_s", float, 30.0),
        api_listen=tuple(listen), api_port=int(api_port),
        api_certificate=None if own_cert is None else _path(api, "certificate", Path("/")),
        api_key=None if own_key is None else _path(api, "key", Path("/")),
        qemu=dict(qemu), manager={k: float(v) for k, v in manager.items()}, lab=lab,
        guest_kernel=None if kernel is None else _path(guest, "kernel", Path("/")),
        guest_initrd=None if initrd is None else _path(guest, "initrd", Path("/")),
    )

