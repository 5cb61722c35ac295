"""Power drivers: the exact commands and packets they send, and a spec's power table."""

from __future__ import annotations

import socket
import subprocess
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from tests import helpers
from vmcluster.cli import node as node_cli
from vmcluster.cli.main import main as cli_main
from vmcluster.errors import SpecError, SubstrateError, UsageError
from vmcluster.lab.powerswitch import node_for
from vmcluster.model import PowerSpec
from vmcluster.model.spec import load_spec, parse_spec
from vmcluster.substrate.power import (
    SEND_TIMES,
    ipmi_argv,
    lab_mac,
    magic_packet,
    power_on,
    send_broadcast,
)

ROOT = Path(__file__).resolve().parents[2]
LAB = ROOT / "examples/lab.toml"


def _with_power(table: str, node: str = "node2") -> str:
    """examples/lab.toml with ``node``'s power table replaced by ``table``."""
    text = LAB.read_text()
    lines = text.splitlines()
    at = next(i for i, line in enumerate(lines) if line == f'name = "{node}"')
    j = next(i for i in range(at, len(lines)) if lines[i].startswith("power = "))
    lines[j] = table
    return "\n".join(lines) + "\n"


def test_magic_packet_is_six_ff_then_the_mac_sixteen_times() -> None:
    p = magic_packet("52:54:00:ab:CD:ef")
    assert len(p) == 102 and p[:6] == b"\xff" * 6
    assert p[6:] == bytes([0x52, 0x54, 0x00, 0xAB, 0xCD, 0xEF]) * 16
    with pytest.raises(UsageError):
        magic_packet("52:54:00")


def test_wol_sends_its_packet_over_udp() -> None:
    """The bytes that leave the socket, received on loopback (not a broadcast here)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as rx:
        rx.bind(("127.0.0.1", 0))
        rx.settimeout(5)
        port = rx.getsockname()[1]
        send_broadcast(magic_packet("02:00:00:00:00:01"), "127.0.0.1", port)
        got = [rx.recv(2048) for _ in range(SEND_TIMES)]
    assert got == [magic_packet("02:00:00:00:00:01")] * SEND_TIMES


def test_the_lab_switch_knows_its_hosts_by_their_lab_mac() -> None:
    mac = lab_mac("lab", "node3")
    assert mac.startswith("02:") and mac == lab_mac("lab", "node3") != lab_mac("lab", "node2")
    macs = {bytes.fromhex(lab_mac("lab", n).replace(":", "")): n for n in ("node2", "node3")}
    assert node_for(magic_packet(mac), macs) == "node3"
    assert node_for(magic_packet("02:00:00:00:00:09"), macs) is None  # not a lab host
    assert node_for(b"\xff" * 6 + b"\x01" * 96, macs) is None
    broken = bytearray(magic_packet(mac))
    broken[50] ^= 1
    assert node_for(bytes(broken), macs) is None


def test_ipmi_runs_exactly_this() -> None:
    spec = parse_spec(_with_power('power = { driver = "ipmi", address = "10.1.2.3", '
                                  'user = "admin", password_file = "/etc/vmcluster/bmc" }'))
    power = spec.node("node2").power
    assert power is not None and power.boot_s == 180
    assert ipmi_argv(power, "on") == ["ipmitool", "-I", "lanplus", "-H", "10.1.2.3", "-U",
                                      "admin", "-f", "/etc/vmcluster/bmc", "chassis", "power",
                                      "on"]
    ran: list[list[str]] = []

    def ok(argv: list[str], **_: Any) -> subprocess.CompletedProcess[str]:
        ran.append(argv)
        return subprocess.CompletedProcess(argv, 0, "Chassis Power Control: Up/On\n", "")

    assert "BMC 10.1.2.3" in power_on(spec, "node2", run=ok)
    assert ran == [ipmi_argv(power, "on")]

    def refused(argv: list[str], **_: Any) -> subprocess.CompletedProcess[str]:
        return subprocess.CompletedProcess(argv, 1, "", "Error: Unable to establish IPMI v2 "
                                           "/ RMCP+ session\n")

    with pytest.raises(SubstrateError, match="Unable to establish IPMI v2"):
        power_on(spec, "node2", run=refused)

    def missing(argv: list[str], **_: Any) -> subprocess.CompletedProcess[str]:
        raise FileNotFoundError(argv[0])

    with pytest.raises(SubstrateError, match=r"apt install ipmitool"):
        power_on(spec, "node2", run=missing)


def test_wol_and_lab_drivers_send_to_where_they_should() -> None:
    sent: list[tuple[bytes, str, int]] = []
    spec = parse_spec(_with_power('power = { driver = "wol", mac = "52:54:00:12:34:56", '
                                  'broadcast = "198.18.1.255" }'))
    power_on(spec, "node2", send=lambda p, a, port: sent.append((p, a, port)))
    assert sent == [(magic_packet("52:54:00:12:34:56"), "198.18.1.255", 9)]
    lab = load_spec(LAB)
    sent.clear()
    assert "the lab's power switch" in power_on(lab, "node3",
                                                send=lambda p, a, port: sent.append((p, a, port)))
    assert sent == [(magic_packet(lab_mac("lab", "node3")), "198.18.1.255", 9)]


def test_a_node_without_a_driver_cannot_be_powered_on() -> None:
    spec = load_spec(LAB)
    bare = replace(spec, nodes=tuple(replace(n, power=None) for n in spec.nodes))
    with pytest.raises(UsageError, match="node1 has no power driver"):
        power_on(bare, "node1")


@pytest.mark.parametrize(("table", "what"), [
    ('power = { driver = "bmc" }', "power.driver must be ipmi, wol or lab"),
    ('power = { driver = "ipmi", address = "10.1.2.3" }', "needs user, password_file"),
    ('power = { driver = "wol", mac = "52:54:00" }', "is not a MAC address"),
    ('power = { driver = "wol", mac = "52:54:00:12:34:56", port = 0 }', "power.port"),
    ('power = { driver = "lab", boot_s = 0 }', "power.boot_s"),
    ('power = { driver = "lab", colour = "red" }', "unknown key(s) 'colour'"),
])
def test_a_bad_power_table_is_one_line(table: str, what: str) -> None:
    with pytest.raises(SpecError, match=None) as err:
        parse_spec(_with_power(table))
    assert what in str(err.value) and "\n" not in str(err.value)


def test_power_spec_defaults() -> None:
    assert PowerSpec("lab").port == 9 and PowerSpec("lab").boot_s == 180.0


def test_power_on_without_a_cluster_to_ask_is_one_line() -> None:
    """Nothing listens on loopback's discard port: the command says so in one line."""
    got = helpers.vmc("node", "power-on", "node1", "--cluster", "https://127.0.0.1:9")
    assert got.returncode != 0 and got.stderr.count("\n") == 1


def test_power_on_of_a_node_without_a_driver_is_refused_before_asking(
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    """The command reads the node from the API; a node with no driver is one line, exit
    2, and nothing is handed to the manager."""
    asked: list[tuple[str, str]] = []

    def api(_access: object, method: str, path: str, *_: object, **__: object) -> object:
        asked.append((method, path))
        return {"name": "node1", "state": "off", "power_driver": None}

    monkeypatch.setattr(node_cli, "api_request", api)
    monkeypatch.setattr(node_cli, "resolve_access", lambda *_: object())
    with pytest.raises(SystemExit) as done:
        cli_main(["node", "power-on", "node1", "--cluster", "https://127.0.0.1:9"])
    assert done.value.code == 2
    err = capsys.readouterr().err
    assert "node1 has no power driver" in err and err.count("\n") == 1
    assert asked == [("GET", "/api/v1/nodes/node1")]
