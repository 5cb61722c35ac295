"""Talking to a node agent: one JSON request per unix-socket connection."""

from __future__ import annotations

import json
import socket
from typing import Any

from vmcluster.errors import LabError, SubstrateError
from vmcluster.lab.layout import LabLayout
from vmcluster.lab.state import read_state

__all__ = ["AgentClient", "AgentDown"]


class AgentDown(LabError):
    """The node's agent does not answer (the node is down or crashed)."""


class AgentClient:
    def __init__(self, layout: LabLayout, node: str) -> None:
        self.layout, self.node = layout, node

    def call(self, op: str, timeout_s: float = 30.0, **args: Any) -> dict[str, Any]:
        path = str(self.layout.agent_socket(self.node))
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
                s.settimeout(timeout_s)
                s.connect(path)
                s.sendall(json.dumps({"op": op, **args}).encode() + b"\n")
                buf = b""
                while not buf.endswith(b"\n"):
                    chunk = s.recv(65536)
                    if not chunk:
                        break
                    buf += chunk
        except (FileNotFoundError, ConnectionRefusedError) as exc:
            raise AgentDown(f"the agent of {self.node} is not running ({path})") from exc
        except OSError as exc:  # includes socket.timeout
            raise AgentDown(f"the agent of {self.node} did not answer {op}: {exc}") from exc
        try:
            reply = json.loads(buf)
        except ValueError as exc:
            raise AgentDown(f"the agent of {self.node} sent a bad reply to {op}") from exc
        if not reply.get("ok"):
            raise SubstrateError(f"{self.node}: {reply.get('error', 'unknown error')}")
        return dict(reply)

    def alive(self) -> bool:
        try:
            self.call("ping", timeout_s=3)
        except LabError:
            return False
        return True


def start_agent(layout: LabLayout, node: str, timeout_s: float = 20.0) -> None:
    """Start ``node``'s agent inside its namespace, detached (``setsid -f``), and wait for it."""
    import os
    import subprocess
    import sys
    import time
    from pathlib import Path

    import vmcluster

    client = AgentClient(layout, node)
    if client.alive():
        return
    log = layout.agent_log(node)
    log.parent.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ)
    src = str(Path(vmcluster.__file__).resolve().parent.parent)
    env["PYTHONPATH"] = src + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    argv = ["setsid", "-f", "ip", "netns", "exec", layout.node_ns(node), sys.executable, "-m",
            "vmcluster.lab.agent", "--lab", layout.name, "--node", node,
            "--root", str(layout.root)]
    install = read_state(layout).get("qemu", {}).get(node)  # the host's own QEMU, if not default
    if install:
        argv += ["--qemu", json.dumps(install)]
    with log.open("ab") as out:
        rc = subprocess.run(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=out, env=env,
                            timeout=10, check=False).returncode
    if rc != 0:
        raise LabError(f"cannot start the agent of {node}; see {log}")
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if client.alive():
            return
        time.sleep(0.05)
    raise LabError(f"the agent of {node} did not come up in {timeout_s:.0f} s; see {log}")
