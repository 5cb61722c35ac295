"""Loading and validating a cluster spec (TOML) into a :class:`ClusterSpec`.

Every problem is one :class:`~vmcluster.errors.SpecError` naming file:line,
the table, what is wrong and what to do.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from ipaddress import IPv4Address, IPv4Network, ip_address, ip_network
from pathlib import Path
from typing import Any, TypeVar

from vmcluster.errors import InputError
from vmcluster.model.cluster import ClusterSettings, ClusterSpec, Node, PowerSpec, Vm, Volume
from vmcluster.model.network import Network, Role
from vmcluster.model.tomlsource import TableReader, TableRef, TomlSource, load_toml

__all__ = ["VM_KEYS", "load_spec", "parse_spec", "spec_from_source", "spec_with_vms",
           "vm_table"]

_TOP = {"cluster", "networks", "nodes", "vms", "volumes"}
_CLUSTER = {
    "name",
    "same_subnet_delay_ms",
    "same_subnet_threshold",
    "max_concurrent_migrations",
    "witness",
    "vcpus_per_core",
    "migration_tls",
    "fence_window_s",
    "etcd_voters",
    "migration_channels",
}
_NETWORK = {"name", "subnet", "gateway", "role", "metric", "bandwidth_mbps", "mtu"}
_NODE = {"name", "cores", "memory_mib", "interfaces", "accel", "power_model", "power"}
_POWER = {"driver", "address", "user", "password_file", "interface", "mac", "broadcast",
          "port", "boot_s"}
_MAC = re.compile(r"[0-9a-fA-F]{2}(:[0-9a-fA-F]{2}){5}")
_VOLUME = {"name", "size_gib", "network"}
# A VM's name names its QEMU, its disk (a file, or a region of a volume) and its records:
# no '/', no space, nothing a path or a command line would read differently.
_VM_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,62}")
VM_KEYS = _VM = {
    "name",
    "owner",
    "memory_mib",
    "vcpus",
    "preferred_owners",
    "live_migration_networks",
    "max_downtime_ms",
    "on_no_convergence",
    "allow_postcopy",
    "migration_deltas",
    "dirty_mibps",
    "wws_mib",
    "address",
    "volume",
    "disk_mib",
    "priority",
    "anti_affinity",
    "machine",
    "shutdown_timeout_s",
    "affinity",
    "allowed_nodes",
    "max_restart",
    "max_relocate",
    "boot",
}
BOOT_MODES = ("kernel", "bios", "uefi")
T = TypeVar("T")


def load_spec(path: Path | str) -> ClusterSpec:
    """Load and validate the spec file at ``path``."""
    return spec_from_source(load_toml(path), Path(path))


def parse_spec(text: str, filename: str = "<spec>") -> ClusterSpec:
    """Validate spec text (for tests and tools that build specs in memory)."""
    return spec_from_source(TomlSource(text, filename), None)


def spec_with_vms(text: str, filename: str, vms: Sequence[Mapping[str, Any]]) -> ClusterSpec:
    """The spec ``text`` with ``vms`` (``[[vms]]`` tables, e.g. the VM definitions kept in
    the store) in place of its own ``[[vms]]``; a bad definition's error names its VM."""
    src = TomlSource(text, filename)
    labels = [f"vm {v.get('name')!r}" if isinstance(v.get("name"), str) else f"vm #{i + 1}"
              for i, v in enumerate(vms)]
    src.replace_tables("vms", [dict(v) for v in vms], labels)
    return spec_from_source(src, None)


def vm_table(path: Path | str) -> dict[str, Any]:
    """The one VM definition in a TOML file: its single ``[[vms]]`` table, or the file's
    top-level keys (those of a ``[[vms]]`` table); more than one is an InputError."""
    src = load_toml(path)
    tables = src.data.get("vms")
    if isinstance(tables, list):
        if len(tables) != 1 or not isinstance(tables[0], dict):
            raise InputError(f"{path}: holds {len(tables)} [[vms]] tables; give one")
        return dict(tables[0])
    return dict(src.data)


def _tables(src: TomlSource, key: str, allowed: set[str], required: set[str]) -> list[TableReader]:
    raw = src.data.get(key, [])
    if not isinstance(raw, list) or not all(isinstance(t, dict) for t in raw):
        raise src.error(None, None, f"{key} must be an array of tables ([[{key}]])")
    readers = []
    for i, data in enumerate(raw):
        table = TableRef(key, i)
        src.check_keys(table, data, allowed, required)
        readers.append(TableReader(src, table, data))
    return readers


def _unique(readers: list[TableReader], kind: str) -> list[str]:
    seen: set[str] = set()
    names = []
    for r in readers:
        name = r.name()
        if name in seen:
            raise r.fail("name", f"duplicate {kind} name {name!r}", "names must be unique")
        seen.add(name)
        names.append(name)
    return names


def _parse(r: TableReader, key: str, text: str, conv: Callable[[str], T], what: str) -> T:
    try:
        return conv(text)
    except ValueError as exc:
        raise r.fail(key, f"{key} {text!r} is not {what}: {exc}") from exc


def _network(r: TableReader) -> Network:
    subnet = _parse(r, "subnet", r.get("subnet", str), ip_network, "an IPv4 subnet")
    if not isinstance(subnet, IPv4Network):
        raise r.fail("subnet", "only IPv4 subnets are supported")
    gateway: IPv4Address | None = None
    if "gateway" in r.data:
        gw = _parse(r, "gateway", r.get("gateway", str), ip_address, "an IPv4 address")
        if not isinstance(gw, IPv4Address) or gw not in subnet:
            raise r.fail("gateway", f"gateway {gw} is not in subnet {subnet}")
        gateway = gw
    role = r.get("role", int)
    if role is not None and role not in (0, 1, 3):
        raise r.fail(
            "role", f"role must be 0, 1 or 3, got {role}", "0 none, 1 cluster, 3 cluster+client"
        )
    metric = r.get("metric", int)
    if metric is not None and not 0 < metric < 2**31:
        raise r.fail("metric", f"metric must be a positive integer, got {metric}")
    mtu = r.get("mtu", int)
    if mtu is not None and not 1280 <= mtu <= 9000:
        raise r.fail("mtu", f"mtu must be 1280 to 9000, got {mtu}", "1500, or 9000 for jumbo "
                     "frames")
    return Network(
        name=r.name(),
        subnet=subnet,
        gateway=gateway,
        role=None if role is None else Role(role),
        metric=metric,
        bandwidth_mbps=r.positive("bandwidth_mbps", float),
        mtu=mtu,
    )


def _node(r: TableReader, networks: dict[str, Network], witness: bool = False) -> Node:
    if r.name() in ("admin", "san"):
        raise r.fail("name", f"node name {r.name()!r} is reserved (the operator's and the "
                     "storage host's certificates)", "pick another name")
    raw = r.get("interfaces", dict, {})
    interfaces: dict[str, IPv4Address] = {}
    for net_name, addr_text in raw.items():
        if net_name not in networks:
            raise r.fail(
                "interfaces",
                f"interface on undeclared network {net_name!r}",
                "declare it under [[networks]] or fix the name",
            )
        if not isinstance(addr_text, str):
            raise r.fail("interfaces", f"address on {net_name!r} must be a string")
        addr = _parse(r, "interfaces", addr_text, ip_address, "an IPv4 address")
        subnet = networks[net_name].subnet
        if not isinstance(addr, IPv4Address) or addr not in subnet:
            raise r.fail(
                "interfaces",
                f"address {addr_text} on {net_name!r} is outside its subnet {subnet}",
                "use an address inside the network's subnet",
            )
        if addr in (subnet.network_address, subnet.broadcast_address):
            raise r.fail("interfaces", f"address {addr_text} is not a host address of {subnet}")
        interfaces[net_name] = addr
    accel = r.get("accel", str, "tcg")
    if accel not in ("tcg", "kvm"):
        raise r.fail("accel", f"accel must be 'tcg' or 'kvm', got {accel!r}")
    if witness and not any(networks[n].role != Role.NONE for n in interfaces):
        raise r.fail("interfaces", f"witness {r.name()!r} has no address on a cluster network",
                     "give it an address on a network of role 1 or 3 (or automatic): its "
                     "heartbeats and its etcd member speak there")
    for key in () if witness else ("cores", "memory_mib"):
        if key not in r.data:
            raise r.fail(key, f"node {r.name()!r} needs {key}", f"add {key} = ...")
    return Node(
        name=r.name(),
        cores=r.positive("cores", int, 1),
        memory_mib=r.positive("memory_mib", int, 256),
        interfaces=interfaces,
        accel=accel,
        power_model=r.get("power_model", str),
        power=_power(r) if "power" in r.data else None,
    )


def _power(r: TableReader) -> PowerSpec:
    """A node's ``power`` table: its driver and what that driver needs, checked."""
    raw = r.get("power", dict)
    unknown = sorted(set(raw) - _POWER)
    if unknown:
        raise r.fail("power", f"unknown key(s) {', '.join(map(repr, unknown))} in power",
                     f"known: {', '.join(sorted(_POWER))}")
    driver = raw.get("driver")
    if driver not in ("ipmi", "wol", "lab"):
        raise r.fail("power", f"power.driver must be ipmi, wol or lab, got {driver!r}")
    texts = {k: v for k, v in raw.items() if k not in ("port", "boot_s")}
    for k, v in texts.items():
        if not isinstance(v, str) or not v or any(c.isspace() for c in v):
            raise r.fail("power", f"power.{k} must be a string without spaces, got {v!r}")
    need = {"ipmi": ("address", "user", "password_file"), "wol": ("mac",), "lab": ()}[driver]
    missing = [k for k in need if k not in raw]
    if missing:
        raise r.fail("power", f"power driver {driver} needs {', '.join(missing)}")
    if "mac" in raw and not _MAC.fullmatch(raw["mac"]):
        raise r.fail("power", f"power.mac {raw['mac']!r} is not a MAC address",
                     'write it as "52:54:00:12:34:56"')
    if "broadcast" in raw:
        _parse(r, "power", raw["broadcast"], ip_address, "an IPv4 address")
    port, boot_s = raw.get("port", PowerSpec.port), raw.get("boot_s", PowerSpec.boot_s)
    if isinstance(port, bool) or not isinstance(port, int) or not 1 <= port <= 65535:
        raise r.fail("power", f"power.port must be 1..65535, got {port!r}")
    if isinstance(boot_s, bool) or not isinstance(boot_s, (int, float)) or not \
            1 <= boot_s <= 3600:
        raise r.fail("power", f"power.boot_s must be 1..3600 seconds, got {boot_s!r}")
    return PowerSpec(driver=driver, port=port, boot_s=float(boot_s),
                     **{k: texts[k] for k in texts if k != "driver"})


def _volume(r: TableReader, networks: dict[str, Network]) -> Volume:
    net = r.get("network", str)
    if net is not None and net not in networks:
        raise r.fail("network", f"network {net!r} is not declared", "declare it in [[networks]]")
    if net is None:  # the storage (iSCSI) network: role 0, "not used by the cluster"
        net = next((n.name for n in networks.values() if n.role == Role.NONE), None)
    size = r.positive("size_gib", float)
    return Volume(r.name(), size, net)


def _vm(r: TableReader, spec_nodes: set[str], networks: dict[str, Network], vols: set[str],
        witness: str | None = None) -> Vm:
    for key in ("owner", "preferred_owners", "allowed_nodes"):
        named = r.data.get(key)
        if witness is not None and (named == witness
                                    or (isinstance(named, list) and witness in named)):
            raise r.fail(key, f"{witness!r} is the cluster's witness: it runs no VM",
                         "name a node that runs VMs")
    if not _VM_NAME.fullmatch(r.name()):
        raise r.fail("name", f"VM name {r.name()!r} is not 1-63 letters, digits, '.', '_' or "
                     "'-' (starting with a letter or digit)", "rename it, e.g. \"web-1\"")
    owner = r.get("owner", str)
    if owner not in spec_nodes:
        raise r.fail("owner", f"owner {owner!r} is not a declared node", "declare it in [[nodes]]")
    preferred = r.names("preferred_owners") or ()
    for node in preferred:
        if node not in spec_nodes:
            raise r.fail("preferred_owners", f"preferred owner {node!r} is not a declared node")
    allowed = r.names("allowed_nodes")
    if allowed is not None:
        for node in allowed:
            if node not in spec_nodes:
                raise r.fail("allowed_nodes", f"allowed node {node!r} is not a declared node")
        if not allowed:
            raise r.fail("allowed_nodes", "allowed_nodes is empty: the VM could run nowhere",
                         "leave it out to allow every node")
        if owner not in allowed:
            raise r.fail("allowed_nodes", f"its owner {owner!r} is not in allowed_nodes")
        for node in preferred:
            if node not in allowed:
                raise r.fail("preferred_owners", f"preferred owner {node!r} is not in "
                             "allowed_nodes")
    lm = r.names("live_migration_networks")
    for net in lm or ():
        if net not in networks:
            raise r.fail("live_migration_networks", f"{net!r} is not a declared network")
    volume = r.get("volume", str)
    if volume is not None and volume not in vols:
        raise r.fail("volume", f"volume {volume!r} is not declared", "declare it in [[volumes]]")
    address = None
    if "address" in r.data:
        address = _parse(r, "address", r.get("address", str), ip_address, "an IPv4 address")
        if not any(address in n.subnet for n in networks.values() if n.public):
            raise r.fail("address", f"address {address} is not in a public network's subnet")
    memory = r.positive("memory_mib", int)
    wws = r.positive("wws_mib", float)
    if wws is not None and wws > memory:
        raise r.fail("wws_mib", f"wws_mib {wws} exceeds memory_mib {memory}")
    dirty = r.get("dirty_mibps", (float, int), 0.0)
    if dirty < 0:
        raise r.fail("dirty_mibps", "dirty_mibps must be >= 0")
    machine = r.get("machine", str)
    if machine is not None and not re.fullmatch(r"pc-q35-\d+\.\d+", machine):
        raise r.fail("machine", f"machine {machine!r} is not a versioned q35 machine type",
                     "use e.g. \"pc-q35-7.2\" (the bare \"q35\" alias changes with each QEMU)")
    return Vm(
        name=r.name(),
        owner=owner,
        memory_mib=memory,
        vcpus=r.positive("vcpus", int, 1),
        preferred_owners=preferred,
        live_migration_networks=lm,
        max_downtime_ms=r.positive("max_downtime_ms", float, 100.0),
        on_no_convergence=_no_convergence(r),
        allow_postcopy=bool(r.get("allow_postcopy", bool, False)),
        migration_deltas=bool(r.get("migration_deltas", bool, True)),
        dirty_mibps=float(dirty),
        wws_mib=wws,
        address=address,  # type: ignore[arg-type]
        volume=volume,
        disk_mib=r.positive("disk_mib", int, 64),
        priority=r.get("priority", int, 2000),
        anti_affinity=r.get("anti_affinity", str),
        affinity=r.get("affinity", str),
        allowed_nodes=tuple(allowed) if allowed is not None else None,
        machine=machine,
        shutdown_timeout_s=_shutdown_timeout(r),
        max_restart=_attempts(r, "max_restart"),
        max_relocate=_attempts(r, "max_relocate"),
        boot=_boot(r),
    )


NO_CONVERGENCE = ("throttle", "abort", "force")


def _no_convergence(r: TableReader) -> str:
    value = str(r.get("on_no_convergence", str, "throttle"))
    if value not in NO_CONVERGENCE:
        raise r.fail("on_no_convergence", f"on_no_convergence must be one of "
                     f"{', '.join(NO_CONVERGENCE)}, got {value!r}",
                     "force pauses the VM past its downtime budget: only if you mean it")
    return value


def _boot(r: TableReader) -> str:
    value = str(r.get("boot", str, "kernel"))
    if value not in BOOT_MODES:
        raise r.fail("boot", f"boot must be one of {', '.join(BOOT_MODES)}, got {value!r}",
                     "kernel: the host's guest kernel; bios or uefi: the VM's own disk boots")
    return value


def _attempts(r: TableReader, key: str) -> int:
    value = r.get(key, int, 1)
    if not 0 <= value <= 100:
        raise r.fail(key, f"{key} must be 0 to 100, got {value}",
                     "how often a start that failed is tried again (default 1)")
    return int(value)


def _shutdown_timeout(r: TableReader) -> float:
    value = float(r.get("shutdown_timeout_s", (float, int), 30.0))
    if not 0 <= value <= 600:
        raise r.fail("shutdown_timeout_s", f"shutdown_timeout_s must be 0 to 600 s, got {value:g}",
                     "0 powers the VM off at once, as `vm stop --force` does")
    return value


def _voters(c: TableReader) -> int:
    value = c.positive("etcd_voters", int, 3)
    if value not in (1, 3, 5):
        raise c.fail("etcd_voters", f"etcd_voters must be 1, 3 or 5, got {value}",
                     "an odd number keeps a majority; more than 5 voters slows every write")
    return int(value)


def spec_from_source(src: TomlSource, path: Path | None) -> ClusterSpec:
    """Validate a parsed TOML document as a cluster spec."""
    for key in src.data:
        if key not in _TOP:
            raise src.error(
                None, None, f"unknown top-level key {key!r}", f"allowed: {sorted(_TOP)}"
            )
    cluster_data = src.data.get("cluster")
    if not isinstance(cluster_data, dict):
        raise src.error(None, None, "missing [cluster] table", 'add [cluster] with name = "..."')
    ctable = TableRef("cluster")
    src.check_keys(ctable, cluster_data, _CLUSTER, {"name"})
    c = TableReader(src, ctable, cluster_data)
    settings = ClusterSettings(
        name=c.name(),
        same_subnet_delay_ms=c.positive("same_subnet_delay_ms", int, 250),
        same_subnet_threshold=c.positive("same_subnet_threshold", int, 8),
        max_concurrent_migrations=c.positive("max_concurrent_migrations", int, 2),
        witness=_witness_name(c),
        vcpus_per_core=c.positive("vcpus_per_core", float, 4.0),
        migration_tls=c.get("migration_tls", bool, True),
        fence_window_s=c.positive("fence_window_s", float, 2.5),
        etcd_voters=_voters(c),
        migration_channels=c.positive("migration_channels", int, 1),
    )

    net_readers = _tables(src, "networks", _NETWORK, {"name", "subnet"})
    _unique(net_readers, "network")
    networks = {n.name: n for n in (_network(r) for r in net_readers)}
    node_readers = _tables(src, "nodes", _NODE, {"name", "interfaces"})
    node_names = set(_unique(node_readers, "node"))
    if settings.witness is not None and settings.witness not in node_names:
        raise c.fail("witness", f"witness {settings.witness!r} names no [[nodes]] entry",
                     "add a [[nodes]] table with its name and its interfaces on the "
                     "cluster networks")
    hosts = [_node(r, networks, r.name() == settings.witness) for r in node_readers]
    _check_addresses(src, hosts, node_readers)
    nodes = [n for n in hosts if n.name != settings.witness]
    if not nodes or not networks:
        missing = "[[nodes]] (a host that runs VMs)" if not nodes else "[[networks]]"
        raise src.error(None, None, f"the spec has no {missing}: a cluster needs at least "
                        "one")
    witness = next((n for n in hosts if n.name == settings.witness), None)
    node_names -= {settings.witness}
    vol_readers = _tables(src, "volumes", _VOLUME, {"name", "size_gib"})
    vol_names = set(_unique(vol_readers, "volume"))
    volumes = [_volume(r, networks) for r in vol_readers]
    vm_readers = _tables(src, "vms", _VM, {"name", "owner", "memory_mib"})
    _unique(vm_readers, "VM")
    vms = _assign_addresses(
        [_vm(r, node_names, networks, vol_names, settings.witness) for r in vm_readers],
        networks, hosts)
    nets = tuple(networks.values())
    return ClusterSpec(settings, nets, tuple(nodes), tuple(vms), tuple(volumes), path,
                       witness=witness)


def _witness_name(c: TableReader) -> str | None:
    """``[cluster] witness``: the name of the host whose vote breaks a tie (a [[nodes]]
    entry that runs no VM), or None."""
    value = c.data.get("witness")
    if value is None or value is False:
        return None
    if value is True:
        raise c.fail("witness", "witness = true names no host",
                     'name the witness host: witness = "NAME", and a [[nodes]] entry '
                     "for it with its interfaces on the cluster networks")
    if isinstance(value, list):
        raise c.fail("witness", f"one witness only, got {len(value)}",
                     "a second witness would be a second tie-breaker; name one host")
    if not isinstance(value, str) or not value.strip():
        raise c.fail("witness", f"witness must be a host's name, got {value!r}")
    return value


def _assign_addresses(vms: list[Vm], networks: dict[str, Network], nodes: list[Node]) -> list[Vm]:
    """Give each VM without an ``address`` one on the first public network (from .101 up)."""
    public = next((n for n in networks.values() if n.public), None)
    if public is None:
        return vms
    used = {a for node in nodes for a in node.interfaces.values()} | {
        vm.address for vm in vms if vm.address is not None
    }
    used.add(public.gateway)  # type: ignore[arg-type]
    free = (h for h in public.subnet.hosts() if int(h) - int(public.subnet.network_address) > 100)
    out = []
    for vm in vms:
        if vm.address is None:
            addr = next((h for h in free if h not in used), None)
            vm = replace(vm, address=addr)
        out.append(vm)
    return out


def _check_addresses(src: TomlSource, nodes: list[Node], readers: list[TableReader]) -> None:
    seen: dict[IPv4Address, str] = {}
    for node, r in zip(nodes, readers, strict=True):
        for addr in node.interfaces.values():
            if addr in seen:
                raise r.fail("interfaces", f"address {addr} is already used by node {seen[addr]!r}")
            seen[addr] = node.name
