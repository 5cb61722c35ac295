"""Every name a lab makes, derived from the lab's name.

Namespaces are ``vmc-<lab>-<role>`` so ``lab down`` can find a crashed lab's
leftovers by prefix; lab names are ``[a-z0-9]`` only, so one lab's prefix is
never a prefix of another's. Interface names live inside the lab's own
namespaces but are still kept under Linux's 15-character limit by
hash-shortening.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from pathlib import Path

from vmcluster.errors import SubstrateError, UsageError

__all__ = ["RUN_ROOT", "LabLayout", "SharedLayout", "check_lab_name", "shared_layout",
           "short_name"]

RUN_ROOT = Path("/run/vmcluster")
IFNAMSIZ = 15
_LAB_NAME = re.compile(r"^[a-z0-9]{1,12}$")


def check_lab_name(name: str) -> str:
    if not _LAB_NAME.match(name):
        raise UsageError(
            f"lab name {name!r} is not 1-12 lowercase letters/digits; pick e.g. 'lab' or 't123'"
        )
    return name


def short_name(prefix: str, *parts: str, limit: int = IFNAMSIZ) -> str:
    """``prefix`` + the parts, or ``prefix`` + a hash of them when that would be too long."""
    plain = prefix + "".join(re.sub(r"[^A-Za-z0-9]", "", p) for p in parts)
    if len(plain) <= limit and plain == prefix + "".join(parts):
        return plain
    digest = hashlib.sha1("\0".join(parts).encode()).hexdigest()
    return prefix + digest[: limit - len(prefix)]


@dataclass(frozen=True)
class LabLayout:
    """Paths and names of one lab."""

    name: str
    root: Path = RUN_ROOT

    def __post_init__(self) -> None:
        check_lab_name(self.name)

    # -- files -------------------------------------------------------------------
    @property
    def state_dir(self) -> Path:
        return self.root / self.name

    @property
    def harness_dir(self) -> Path:
        """The lab's own bookkeeping (its spec file's path, the guest image, which QEMU each
        host runs); the hosts of a lab with a control plane cannot see it."""
        return self.state_dir / "harness"

    @property
    def state_file(self) -> Path:
        return self.harness_dir / "state.json"

    @property
    def lock_file(self) -> Path:
        return self.harness_dir / "state.lock"

    # -- one host's own files (what /etc/vmcluster, /var/lib/vmcluster and /run/vmcluster
    # are on a real host); nothing outside a host's vmclusterd reads them
    def host_dir(self, node: str) -> Path:
        return self.state_dir / "hosts" / short_name("", node, limit=60)

    def host_config_dir(self, node: str) -> Path:
        return self.host_dir(node) / "etc"

    def host_state_dir(self, node: str) -> Path:
        return self.host_dir(node) / "var"

    def host_run_dir(self, node: str) -> Path:
        return self.host_dir(node) / "run"

    def node_config(self, node: str) -> Path:
        """The host's ``vmclusterd.toml``."""
        return self.host_config_dir(node) / "vmclusterd.toml"

    def agent_socket(self, node: str) -> Path:
        return self.host_run_dir(node) / "agent.sock"

    def agent_log(self, node: str) -> Path:
        return self.host_state_dir(node) / "log" / "agent.log"

    def daemon_log(self, node: str) -> Path:
        """What ``vmclusterd`` and its parts print (the lab's stand-in for the journal)."""
        return self.host_state_dir(node) / "log" / "vmclusterd.log"

    def secrets_dir(self, node: str) -> Path:
        """A node's own credentials (its copy of the cluster's heartbeat key, ...)."""
        return self.host_config_dir(node)

    def heartbeat_key(self, node: str) -> Path:
        return self.secrets_dir(node) / "heartbeat.key"

    def tls_dir(self, node: str) -> Path:
        """A node's key and certificate from the cluster CA (see vmcluster.pki)."""
        return self.secrets_dir(node) / "tls"

    @property
    def ca_dir(self) -> Path:
        """The cluster CA's key and certificate (the lab plays the cluster's init)."""
        return self.state_dir / "ca"

    def qemu_dir(self, node: str) -> Path:
        """Where a node's agent keeps one record + QMP socket per QEMU it owns."""
        return self.host_state_dir(node) / "qemu"

    @property
    def file_storage(self) -> Path:
        """The cluster's file storage, a directory every host mounts (NFS on real hosts):
        the plain disks and quick-migration states of VMs without a shared volume. A lab
        gives its hosts one only when its spec has such a VM; nothing else of the lab's
        directory is theirs to see."""
        return self.state_dir / "files"

    def disk(self, vm: str) -> Path:
        return self.file_storage / "disks" / f"{vm}.img"

    def lun(self, volume: str) -> Path:
        """A cluster shared volume's LUN: a raw file the SAN serves over NBD."""
        return self.state_dir / "san" / f"{short_name('', volume, limit=40)}.lun"

    def san_pidfile(self, volume: str) -> Path:
        return self.state_dir / "san" / f"{short_name('', volume, limit=40)}.pid"

    def redirect_pidfile(self, node: str, volume: str, network: str) -> Path:
        """The pidfile of the NBD re-export ``node`` serves for redirected I/O (the host's
        own run directory)."""
        tag = short_name("", volume, network, limit=60)
        return self.host_run_dir(node) / "redirect" / f"{tag}.pid"

    def redirect_monitor(self, node: str, volume: str, network: str) -> Path:
        """The QMP socket of that re-export (its agent updates who may use it)."""
        return self.redirect_pidfile(node, volume, network).with_suffix(".qmp")

    def serial_log(self, vm: str, node: str) -> Path:
        """``vm``'s serial console on ``node`` (the host's own state directory: a VM that
        migrates writes on in the target's)."""
        return self.host_state_dir(node) / "console" / f"{vm}.log"

    def quick_state(self, vm: str) -> Path:
        return self.file_storage / "saved" / f"{vm}.state"

    def slot_lock(self, node: str, slot: int) -> Path:
        """A migration slot of a lab without a store (with one: ``slots/`` in etcd)."""
        return self.state_dir / "slots" / f"{node}.{slot}.lock"

    # -- namespaces and interfaces --------------------------------------------------
    @property
    def ns_prefix(self) -> str:
        return f"vmc-{self.name}-"

    def node_ns(self, node: str) -> str:
        return self.ns_prefix + "n-" + re.sub(r"[^A-Za-z0-9_.-]", "_", node)

    @property
    def fabric_ns(self) -> str:
        return self.ns_prefix + "fabric"

    @property
    def client_ns(self) -> str:
        return self.ns_prefix + "client"

    @property
    def san_ns(self) -> str:
        """The storage host: serves every LUN over NBD on the storage network only."""
        return self.ns_prefix + "san"

    @staticmethod
    def fabric_bridge(net_index: int) -> str:
        return f"br{net_index}"

    @staticmethod
    def fabric_port(node_index: int, net_index: int) -> str:
        """The fabric end of a node's veth (node index -1 is the client)."""
        return "pc" if node_index < 0 else f"p{node_index}n{net_index}"

    @staticmethod
    def san_port(net_index: int) -> str:
        """The fabric end of the SAN's veth on a storage network."""
        return f"ps{net_index}"

    @staticmethod
    def node_if(network: str) -> str:
        """A node's interface on ``network``, named after it when that fits."""
        return short_name("", network)

    PUBLIC_BRIDGE = "brpub"

    @staticmethod
    def tap(vm: str) -> str:
        return short_name("t-", vm)


@dataclass(frozen=True)
class SharedLayout(LabLayout):
    """What a host's daemons see of the layout: the host's own directories
    (``own_state``, ``own_run``: its serial consoles, its redirect pidfiles) and, when
    the cluster has one, its file storage (``files``: a directory every host mounts,
    e.g. NFS). Its lab name and namespace names are never used."""

    own_state: Path = Path("/var/lib/vmcluster")
    own_run: Path = Path("/run/vmcluster")
    files: Path | None = None

    def __post_init__(self) -> None:
        return None

    @property
    def file_storage(self) -> Path:
        if self.files is None:
            raise SubstrateError(
                "this cluster has no file storage ([paths] shared_dir: a directory every "
                "host mounts, e.g. NFS): a VM without a shared volume has nowhere to keep "
                "its disk; give it a volume (`volume = \"CSV1\"`)")
        return self.files

    def host_state_dir(self, node: str) -> Path:
        return self.own_state  # a host knows only its own

    def host_run_dir(self, node: str) -> Path:
        return self.own_run


def shared_layout(files: Path | None, own_state: Path, own_run: Path,
                  lab: tuple[str, Path] | None = None) -> SharedLayout:
    """A host's layout; ``lab`` (name, root): the lab whose records the host reads (a lab
    whose hosts run their agent only keeps the cluster's records in its own file)."""
    name, root = lab if lab is not None else ("host", own_state)
    return SharedLayout(name, root, own_state, own_run, files)
