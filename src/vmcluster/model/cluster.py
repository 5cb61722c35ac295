"""The nouns of a cluster spec: nodes, VMs, volumes and the cluster's own settings."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import cached_property
from ipaddress import IPv4Address
from pathlib import Path
from typing import TypeVar

from vmcluster.errors import UsageError
from vmcluster.model.network import Network

__all__ = ["ClusterSettings", "ClusterSpec", "Node", "PowerSpec", "Vm", "Volume"]


MIB = 1024 * 1024  # bytes in a MiB: sizes in specs are MiB, on the wire bytes


@dataclass(frozen=True)
class ClusterSettings:
    """Cluster-wide settings. Heartbeat defaults detect a dead node in 2 s (250 ms x 8).

    ``vcpus_per_core`` bounds how many vCPUs placement puts on a host per core
    (memory is never overcommitted); 4 is a common consolidation ratio.
    ``migration_tls``: live-migration streams use TLS with the cluster's
    certificates (mutual, the target's name checked); false sends them in the
    clear, for a dedicated migration network one trusts (Proxmox's
    ``migration: type=insecure``).
    ``fence_window_s``: a host whose ``vmclusterd`` has not petted its watchdog for this
    long has its QEMUs killed by the watchdog; the survivors wait it out before they
    restart that host's VMs (see ``policy.failover.restart_not_before``).
    ``etcd_voters``: how many hosts run a voting etcd member (1, 3 or 5); hosts that
    join after that many use the others' members as clients (``cluster join``).
    ``migration_channels``: more than 1 spreads a pre-copy migration's pages over that
    many connections (QEMU's multifd; each with its own TLS session), for hosts whose one
    migration thread cannot fill the link; a post-copy uses one (QEMU 10 refuses multifd
    with post-copy). bench/bench_migration.py --channels measures which limits a host.
    """

    name: str
    same_subnet_delay_ms: int = 250
    same_subnet_threshold: int = 8
    max_concurrent_migrations: int = 2
    witness: str | None = None  # the witness host's name (spec.witness)
    vcpus_per_core: float = 4.0
    migration_tls: bool = True
    fence_window_s: float = 2.5
    etcd_voters: int = 3
    migration_channels: int = 1


@dataclass(frozen=True)
class PowerSpec:
    """How a powered-off host is powered on again (``power`` in its ``[[nodes]]`` table):
    ``ipmi`` (its BMC, by ``ipmitool`` over ``interface``, ``address``, ``user`` and a
    ``password_file`` on the host that asks), ``wol`` (a Wake-on-LAN magic packet to
    ``mac``, broadcast to ``broadcast``:``port``) or ``lab`` (the lab's power switch:
    a magic packet for the host's lab address, on its public network). ``boot_s``: how
    long it may take to be back in the cluster before it is reported and left out."""

    driver: str
    address: str | None = None
    user: str | None = None
    password_file: str | None = None
    interface: str = "lanplus"
    mac: str | None = None
    broadcast: str = "255.255.255.255"
    port: int = 9
    boot_s: float = 180.0


@dataclass(frozen=True)
class Node:
    """A host. ``interfaces`` maps a network name to this node's address on it."""

    name: str
    cores: int
    memory_mib: int
    interfaces: Mapping[str, IPv4Address]
    accel: str = "tcg"
    power_model: str | None = None
    power: PowerSpec | None = None  # None: vmcluster cannot power it on


@dataclass(frozen=True)
class Volume:
    """A cluster shared volume (one LUN that every node sees).

    ``network`` is the storage network the LUN is served on (the spec's
    ``network``, else the first role-0 network; None when the spec has none).
    """

    name: str
    size_gib: float
    network: str | None = None


@dataclass(frozen=True)
class Vm:
    """A virtual machine and its placement preferences."""

    name: str
    owner: str
    memory_mib: int
    vcpus: int = 1
    preferred_owners: tuple[str, ...] = ()
    live_migration_networks: tuple[str, ...] | None = None
    max_downtime_ms: float = 100.0
    # A migration that will not fit the budget: "throttle" (auto-converge, else post-copy
    # where allowed, else refused), "abort" (no throttling), or "force" (pre-copy forced
    # through, paused for as long as it takes: only if the user says so).
    on_no_convergence: str = "throttle"
    # May a migration switch to post-copy (the guest runs on the target while its pages
    # follow)? A network or source failure then loses the running copy: the VM restarts
    # from its shared disk on one node.
    allow_postcopy: bool = False
    # May a pre-copy send pages it sends again as deltas (QEMU's XBZRLE), where the guest's
    # measured pages say that ends it sooner? The source holds a cache of up to twice the
    # working set (at most the VM's memory) while it migrates.
    migration_deltas: bool = True
    dirty_mibps: float = 0.0
    wws_mib: float | None = None
    address: IPv4Address | None = None
    volume: str | None = None
    disk_mib: int = 64
    priority: int = 2000
    anti_affinity: str | None = None  # keep apart from VMs of the same class (non-strict)
    affinity: str | None = None  # keep together with VMs of the same group (non-strict)
    allowed_nodes: tuple[str, ...] | None = None  # strict node affinity: only these
    # QEMU machine type to pin ("pc-q35-7.2"); None: pinned when the VM is defined, to the
    # newest versioned q35 type every host's QEMU knows.
    machine: str | None = None
    # `vm stop`: how long the guest has to shut down after its ACPI power button is
    # pressed, before its QEMU is made to quit (0: at once).
    shutdown_timeout_s: float = 30.0
    # After a start that fails: tries again on the same node at most max_restart times,
    # then moves to another node at most max_relocate times (Proxmox's HA defaults, 1 and
    # 1); then the VM is in error and nothing starts it until someone does.
    max_restart: int = 1
    max_relocate: int = 1
    # How it boots: "kernel" (the host's guest kernel and initrd, as the lab's test guests
    # do), "bios" (SeaBIOS boots its own disk) or "uefi" (OVMF boots its own disk).
    boot: str = "kernel"

    @property
    def working_set_mib(self) -> float:
        """The writable working set; defaults to all of memory."""
        return float(self.memory_mib) if self.wws_mib is None else self.wws_mib


@dataclass(frozen=True)
class ClusterSpec:
    """A whole cluster: the validated content of a spec file."""

    cluster: ClusterSettings
    networks: tuple[Network, ...]
    nodes: tuple[Node, ...]
    vms: tuple[Vm, ...] = ()
    volumes: tuple[Volume, ...] = ()
    source: Path | None = field(default=None, compare=False)
    # The host whose vote breaks a tie (``[cluster] witness``): an etcd member and a
    # heartbeat peer that runs no VM. Not in ``nodes``, which are the hosts that run VMs.
    witness: Node | None = None

    @property
    def hosts(self) -> tuple[Node, ...]:
        """Every host of the cluster: the nodes, then the witness."""
        return self.nodes + ((self.witness,) if self.witness is not None else ())

    def host(self, name: str) -> Node:
        """A node or the witness, by name."""
        if self.witness is not None and name == self.witness.name:
            return self.witness
        return self.node(name)

    # Lookups by name in O(1): a datacenter's spec has thousands of VMs, and the planners
    # look each one up (the cache is not a field: equality and replace() ignore it).
    @cached_property
    def _by_name(self) -> tuple[dict[str, Network], dict[str, Node], dict[str, Vm]]:
        return ({n.name: n for n in reversed(self.networks)},  # the first of a name wins
                {n.name: n for n in reversed(self.nodes)},
                {v.name: v for v in reversed(self.vms)})

    def network(self, name: str) -> Network:
        return _find(self._by_name[0], name, "network", self.networks)

    def node(self, name: str) -> Node:
        return _find(self._by_name[1], name, "node", self.nodes)

    def vm(self, name: str) -> Vm:
        return _find(self._by_name[2], name, "VM", self.vms)


_T = TypeVar("_T", Network, Node, Vm)


def _find(by_name: Mapping[str, _T], name: str, what: str, items: tuple[_T, ...]) -> _T:
    got = by_name.get(name)
    if got is None:
        raise UsageError(f"unknown {what} {name!r}; known: {_names(items)}")
    return got


def _names(items: tuple[Network, ...] | tuple[Node, ...] | tuple[Vm, ...]) -> str:
    return ", ".join(item.name for item in items) or "(none)"
