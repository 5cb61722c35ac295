"""Powering a host on again, by the driver its spec names (``power`` in ``[[nodes]]``).

A host powers itself off (its agent, when a consolidation empties it); coming back needs
something outside it:

* ``ipmi``: its BMC, by Debian's ``ipmitool`` (``chassis power on``) over the
  ``interface`` (``lanplus``: IPMI 2.0), with the password read from ``password_file``
  on the asking host (``-f``: never on a command line);
* ``wol``: a Wake-on-LAN magic packet (six 0xFF bytes, then the MAC sixteen times) as a
  UDP broadcast to ``broadcast``:``port``, three times, 0.1 s apart;
* ``lab``: the lab's power switch, which listens on the lab's public network for magic
  packets and starts the host whose lab MAC (:func:`lab_mac`) one names
  (:mod:`vmcluster.lab.powerswitch`): the same packets a WoL card would answer.

What comes after (the host back in the cluster within ``boot_s``, else reported) is the
substrate's. Each driver's one action is :func:`power_on`; :func:`ipmi_argv` and
:func:`magic_packet` are what it would run and send.
"""

from __future__ import annotations

import hashlib
import socket
import subprocess
import time
from collections.abc import Callable

from vmcluster.errors import SubstrateError, UsageError
from vmcluster.model import ClusterSpec, PowerSpec

__all__ = ["SEND_TIMES", "ipmi_argv", "lab_broadcast", "lab_mac", "magic_packet",
           "no_driver", "power_on", "send_broadcast"]

SEND_TIMES = 3  # a magic packet is sent this often (UDP: one may be lost)

Runner = Callable[..., subprocess.CompletedProcess[str]]
Sender = Callable[[bytes, str, int], None]


def no_driver(node: str) -> str:
    """Why ``node`` cannot be powered on when its spec names no driver (one line)."""
    return (f"{node} has no power driver: vmcluster cannot power it on (give its [[nodes]] "
            "table power = { driver = \"ipmi\" | \"wol\" | \"lab\", ... })")


def magic_packet(mac: str) -> bytes:
    """The Wake-on-LAN magic packet for ``mac`` (``aa:bb:cc:dd:ee:ff``): 102 bytes."""
    raw = bytes.fromhex(mac.replace(":", "").replace("-", ""))
    if len(raw) != 6:
        raise UsageError(f"{mac!r} is not a MAC address")
    return b"\xff" * 6 + raw * 16


def lab_mac(cluster: str, node: str) -> str:
    """The MAC the lab's power switch knows ``node`` of ``cluster`` by: locally
    administered (02:...), the rest from a hash of the two names."""
    digest = hashlib.sha256(f"{cluster}/{node}".encode()).digest()
    return ":".join(f"{b:02x}" for b in (0x02, *digest[:5]))


def lab_broadcast(spec: ClusterSpec) -> str:
    """Where a lab host's magic packet goes: the broadcast address of the lab's public
    network (the one with a gateway, where the lab's switch listens)."""
    for net in spec.networks:
        if net.public:
            return str(net.subnet.broadcast_address)
    raise UsageError("power driver lab: the spec has no public network (one with a "
                     "gateway) for the lab's power switch to listen on")


def ipmi_argv(power: PowerSpec, action: str) -> list[str]:
    """The ``ipmitool`` command for ``action`` (on, off, status) on ``power``'s BMC."""
    if action not in ("on", "off", "status"):
        raise UsageError(f"ipmi: unknown action {action!r}")
    assert power.address and power.user and power.password_file  # checked with the spec
    return ["ipmitool", "-I", power.interface, "-H", power.address, "-U", power.user,
            "-f", power.password_file, "chassis", "power", action]


def send_broadcast(packet: bytes, address: str, port: int) -> None:
    """``packet`` as a UDP broadcast to ``address``:``port``, :data:`SEND_TIMES` times."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST, 1)
        for i in range(SEND_TIMES):
            if i:
                time.sleep(0.1)
            s.sendto(packet, (address, port))


def power_on(spec: ClusterSpec, node: str, run: Runner = subprocess.run,
             send: Sender = send_broadcast) -> str:
    """Ask ``node``'s power driver to power it on; what was done, in one line. A node
    with no driver is a UsageError; a driver that fails, a SubstrateError."""
    power = spec.node(node).power
    if power is None:
        raise UsageError(no_driver(node))
    if power.driver == "ipmi":
        argv = ipmi_argv(power, "on")
        try:
            got = run(argv, capture_output=True, text=True, timeout=30, check=False)
        except FileNotFoundError:
            raise SubstrateError(f"{node}: ipmitool is not installed on this host "
                                 "(apt install ipmitool)") from None
        except subprocess.TimeoutExpired:
            raise SubstrateError(f"{node}: its BMC {power.address} did not answer within "
                                 "30 s") from None
        if got.returncode != 0:
            last = (got.stderr.strip().splitlines() or ["no output"])[-1]
            raise SubstrateError(f"{node}: ipmitool at {power.address} failed: {last}")
        return f"asked its BMC {power.address} (IPMI, {power.interface}) to power it on"
    if power.driver == "wol":
        assert power.mac is not None  # checked with the spec
        mac, where = power.mac, power.broadcast
    else:
        mac, where = lab_mac(spec.cluster.name, node), lab_broadcast(spec)
    try:
        send(magic_packet(mac), where, power.port)
    except OSError as exc:
        raise SubstrateError(f"{node}: cannot send its Wake-on-LAN packet to {where}:"
                             f"{power.port}: {exc}") from None
    return (f"sent Wake-on-LAN for {mac} to {where}:{power.port}"
            + (" (the lab's power switch)" if power.driver == "lab" else ""))
