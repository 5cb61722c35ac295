"""The lab's power switch: what a lab host's Wake-on-LAN card and its power supply are.

It runs in the lab's client namespace, on the lab's public network, and listens for
Wake-on-LAN magic packets (UDP, :data:`PORT`); one that names a host of the lab by its
lab MAC (:func:`vmcluster.substrate.power.lab_mac`) starts that host's ``vmclusterd``
in its namespaces, as pressing its power button would, unless it runs. A host's
processes are the lab's hosts; a packet for any other MAC is ignored. The cluster's
``lab`` power driver sends these packets (any host may, over the public network); the
lab starts the switch with the hosts and ``lab down`` ends it.

    python -m vmcluster.lab.powerswitch --lab NAME [--root DIR]
"""

from __future__ import annotations

import argparse
import socket
import sys
import threading
import time
from pathlib import Path

from vmcluster.lab.hosts import daemon_pids, start_daemon
from vmcluster.model.spec import load_spec
from vmcluster.substrate.host.layout import RUN_ROOT, LabLayout
from vmcluster.substrate.host.state import read_state
from vmcluster.substrate.power import lab_mac

__all__ = ["PORT", "main", "node_for"]

PORT = 9  # the discard port, where Wake-on-LAN packets usually go
COOLDOWN_S = 5.0  # one power-on per host per this long (a sender repeats its packet)
SHUTDOWN_S = 15.0  # a host powering off is waited for this long before a power-on


def node_for(packet: bytes, macs: dict[bytes, str]) -> str | None:
    """The host a magic packet names (six 0xFF, then one MAC sixteen times), or None."""
    if len(packet) < 102 or packet[:6] != b"\xff" * 6:
        return None
    mac = packet[6:12]
    if packet[6:102] != mac * 16:
        return None
    return macs.get(mac)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="vmcluster.lab.powerswitch")
    ap.add_argument("--lab", required=True)
    ap.add_argument("--root", type=Path, default=RUN_ROOT)
    args = ap.parse_args(argv)
    layout = LabLayout(args.lab, args.root)
    spec = load_spec(read_state(layout)["spec"])
    macs = {bytes.fromhex(lab_mac(spec.cluster.name, n.name).replace(":", "")): n.name
            for n in spec.hosts}
    last: dict[str, float] = {}
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("", PORT))
        print(f"power switch of lab {layout.name}: listening on UDP {PORT} for "
              f"{len(macs)} hosts", flush=True)
        while True:
            packet, (addr, _) = s.recvfrom(2048)
            node = node_for(packet, macs)
            now = time.monotonic()
            if node is None or now - last.get(node, -COOLDOWN_S) < COOLDOWN_S:
                continue
            last[node] = now
            threading.Thread(target=_press, args=(layout, node, addr), daemon=True).start()


def _press(layout: LabLayout, node: str, sender: str) -> None:
    """Power ``node`` on: once a host that was just powered off has ended its last
    processes (a shutdown takes a moment; it ignores the button till then), start it."""
    deadline = time.monotonic() + SHUTDOWN_S
    while daemon_pids(layout, node)["vmclusterd"] and time.monotonic() < deadline:
        time.sleep(0.2)
    if daemon_pids(layout, node)["vmclusterd"]:
        print(f"{node}: on already (magic packet from {sender})", flush=True)
        return
    print(f"{node}: powering on (magic packet from {sender})", flush=True)
    try:
        start_daemon(layout, node, wait=False)
    except Exception as exc:
        print(f"{node}: could not start: {exc}", flush=True)


if __name__ == "__main__":
    sys.exit(main())
