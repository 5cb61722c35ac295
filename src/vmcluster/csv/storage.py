"""Where a volume is served and how: the SAN's address, ports, export names, daemons.

The SAN is a namespace with one interface per storage network (address .250
of its subnet, or the highest free host address when that is taken); it runs
one ``qemu-storage-daemon`` per volume exporting the LUN file over NBD on that
address only. A node that lends its path for redirected I/O runs a second
``qemu-storage-daemon`` in its own namespace that re-exports the SAN's export
on its address on the CSV network.

Every NBD connection is TLS with the cluster's certificates (the SAN has one of
its own, ``san``): each daemon serves with ``tls-creds-x509`` and
``verify-peer=on``, so only holders of a cluster certificate can attach, and
each client checks the server's name (:attr:`NbdTarget.name`). A re-export also
serves only the cluster's member hosts (``tls-authz``: an ``authz-list`` of their
certificates' names that the agent sets through the daemon's QMP socket, again
whenever membership changes), so a host that left the cluster, whose certificate is
revoked, is refused at once: QEMU reads the revocation list only at start. (The
self-refreshing ``authz-list-file`` cannot be created in QEMU 10.0: its QAPI and
QOM type names differ.)
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from ipaddress import IPv4Address
from pathlib import Path

from vmcluster.errors import LabError
from vmcluster.model import ClusterSpec, Volume
from vmcluster.pki import NodeCredentials
from vmcluster.substrate.host.layout import LabLayout
from vmcluster.substrate.procs import pid_in_file
from vmcluster.substrate.qemu.vm import tls_object

__all__ = [
    "REDIRECT_PORT_BASE",
    "SAN_PORT_BASE",
    "NbdTarget",
    "authz_rules",
    "redirect_argv",
    "redirect_target",
    "san_address",
    "san_argv",
    "san_target",
    "storage_networks",
]

SAN_PORT_BASE = 10809
SAN_NAME = "san"  # the SAN's certificate
REDIRECT_PORT_BASE = 10900
QSD = "qemu-storage-daemon"


@dataclass(frozen=True)
class NbdTarget:
    """One NBD export: where QEMU (or our client) connects."""

    host: str
    port: int
    export: str
    name: str = SAN_NAME  # the server's certificate name (TLS hostname)

    @property
    def uri(self) -> str:
        return f"nbd://{self.host}:{self.port}/{self.export}"

    def to_json(self) -> dict[str, object]:
        return {"host": self.host, "port": self.port, "export": self.export, "name": self.name}

    @classmethod
    def from_json(cls, data: dict[str, object]) -> NbdTarget:
        return cls(str(data["host"]), int(str(data["port"])), str(data["export"]),
                   str(data.get("name", SAN_NAME)))


def _volume(spec: ClusterSpec, name: str) -> tuple[int, Volume]:
    for i, vol in enumerate(spec.volumes):
        if vol.name == name:
            return i, vol
    raise LabError(f"unknown volume {name!r}; known: {[v.name for v in spec.volumes]}")


def storage_networks(spec: ClusterSpec) -> list[str]:
    """The networks the SAN needs an interface on (one per distinct volume network)."""
    out: list[str] = []
    for vol in spec.volumes:
        if vol.network is None:
            raise LabError(f"volume {vol.name} has no storage network: add `network = ...` "
                           "to its [[volumes]] table or declare a role = 0 network")
        if vol.network not in out:
            out.append(vol.network)
    return out


def san_address(spec: ClusterSpec, network: str) -> IPv4Address:
    """.250 of the storage subnet, or the highest host address no node uses."""
    net = spec.network(network)
    used = {n.interfaces.get(network) for n in spec.nodes} | {net.gateway}
    preferred = net.subnet.network_address + 250
    if preferred in net.subnet and preferred != net.subnet.broadcast_address \
            and preferred not in used:
        return preferred
    for host in reversed(list(net.subnet.hosts())):
        if host not in used:
            return host
    raise LabError(f"no free address for the SAN on {network} ({net.subnet})")


def export_name(volume: str) -> str:
    return f"csv-{volume}"


def san_target(spec: ClusterSpec, volume: str) -> NbdTarget:
    i, vol = _volume(spec, volume)
    assert vol.network is not None, storage_networks(spec)
    return NbdTarget(str(san_address(spec, vol.network)), SAN_PORT_BASE + i, export_name(volume))


def redirect_target(spec: ClusterSpec, volume: str, node: str, network: str) -> NbdTarget:
    """Where ``node`` re-exports ``volume`` on its address on ``network``."""
    i, _ = _volume(spec, volume)
    addr = spec.node(node).interfaces.get(network)
    if addr is None:
        raise LabError(f"{node} has no address on {network} to re-export {volume} on")
    net_i = [n.name for n in spec.networks].index(network)
    return NbdTarget(str(addr), REDIRECT_PORT_BASE + 10 * i + net_i, export_name(volume), node)


def san_argv(layout: LabLayout, spec: ClusterSpec, volume: str) -> list[str]:
    """The SAN's daemon for one volume: the LUN file, exported read-write over NBD."""
    t = san_target(spec, volume)
    creds = NodeCredentials(layout.tls_dir(SAN_NAME))
    return [
        QSD,
        "--object", tls_object("tls0", "server", creds.qemu_dir),
        "--blockdev", f"driver=file,node-name=lun,filename={layout.lun(volume)},"
                      "cache.direct=off,locking=off",
        "--nbd-server", f"addr.type=inet,addr.host={t.host},addr.port={t.port},tls-creds=tls0",
        "--export", f"type=nbd,id=e0,node-name=lun,name={t.export},writable=on",
        "--pidfile", str(layout.san_pidfile(volume)),
        "--daemonize",
    ]


def authz_rules(hosts: Iterable[str]) -> list[dict[str, str]]:
    """An ``authz-list``'s rules that let in exactly the certificates of ``hosts``."""
    return [{"match": f"CN={h}", "policy": "allow", "format": "exact"} for h in sorted(hosts)]


def redirect_argv(layout: LabLayout, spec: ClusterSpec, volume: str, node: str,
                  network: str, creds: NodeCredentials) -> list[str]:
    """``node``'s re-export of the SAN's export of ``volume`` on its ``network`` address,
    with ``node``'s own certificate (``creds``), for the hosts its ``authz0`` lets in."""
    up = san_target(spec, volume)
    t = redirect_target(spec, volume, node, network)
    mine = creds.qemu_dir
    return [
        QSD,
        "--object", tls_object("tlsc", "client", mine),
        "--object", tls_object("tlss", "server", mine),
        "--object", "authz-list,id=authz0,policy=deny",  # nobody, until the agent says
        "--chardev", f"socket,id=m0,path={layout.redirect_monitor(node, volume, network)},"
                     "server=on,wait=off",
        "--monitor", "chardev=m0",
        "--blockdev", f"driver=nbd,node-name=up,server.type=inet,server.host={up.host},"
                      f"server.port={up.port},export={up.export},tls-creds=tlsc,"
                      f"tls-hostname={up.name}",
        "--nbd-server", f"addr.type=inet,addr.host={t.host},addr.port={t.port},tls-creds=tlss,"
                        "tls-authz=authz0",
        "--export", f"type=nbd,id=e0,node-name=up,name={t.export},writable=on",
        "--pidfile", str(layout.redirect_pidfile(node, volume, network)),
        "--daemonize",
    ]


def pid_from(pidfile: Path) -> int | None:
    """The live process named by ``pidfile`` (its command line must name the pidfile)."""
    return pid_in_file(pidfile, str(pidfile))
