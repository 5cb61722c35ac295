"""Talking to a node agent: one JSON request per connection.

Between hosts an agent is reached over the cluster networks only, with mutual
TLS: it listens on its host's address on every cluster network (role >= 1) at
:data:`AGENT_PORT`, and both sides present a certificate of the cluster CA. A
caller without one, with one from another CA, or with a revoked one is
refused in the handshake. The caller tries the host's addresses lowest metric
first (the one that last answered first), as heartbeats do. The host's own
daemons, and the lab's observers that watch a host from outside it, use the
host-local unix socket instead (``local=True``): it is a file on that host,
like ``/run/vmcluster/agent.sock`` on a real one, and keeps answering when
every network of the host is cut.

Errors cross the wire typed: ``{"ok": false, "code": ..., "error": "one
line"}``; :class:`AgentError` carries the code (``fenced``, ``invalid``,
``not_found``, ``conflict``, ``qemu`` (QEMU refused), ``unavailable`` (the VM's QEMU went
away or does not answer), ``failed``, ``internal``). A host that does not
answer, or refuses the handshake, is :class:`AgentDown`.

Who calls: a daemon speaks as its host (:func:`speak_as`); everything else
(the CLI, tests, benchmarks) as the cluster's ``admin``. A caller outside
every lab namespace (the operator's side) opens its sockets inside the lab's
client namespace, on the public network, as a workstation would.
"""

from __future__ import annotations

import json
import os
import socket
import ssl
import threading
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from vmcluster.errors import LabError, SubstrateError
from vmcluster.model import Role
from vmcluster.model.spec import load_spec
from vmcluster.pki import NodeCredentials
from vmcluster.policy.networks import node_cluster_networks
from vmcluster.substrate.host.layout import LabLayout
from vmcluster.substrate.host.nsenter import NetnsThread
from vmcluster.substrate.host.state import read_state
from vmcluster.substrate.host.wire import exchange

if TYPE_CHECKING:
    from vmcluster.model import ClusterSpec

__all__ = ["AGENT_PORT", "AgentClient", "AgentDown", "AgentError", "Conflict", "LocalAgent",
           "NotFound", "addresses_from", "client_context", "forget_namespaces", "speak_as"]

AGENT_PORT = 3345
_identity = {"name": "admin", "tls_dir": ""}
_lock = threading.Lock()
_contexts: dict[tuple[str, int, int], ssl.SSLContext] = {}
# namespace -> (its inode, a NetnsThread that makes sockets there)
_sockets_from: dict[str, tuple[tuple[int, int], Any]] = {}
_last_good: dict[tuple[str, str], str] = {}  # (lab dir, node) -> the address that answered last
_address_book: list[Callable[[], ClusterSpec]] = []


class AgentDown(LabError):
    """The node's agent does not answer (the node is down or crashed)."""


class AgentError(SubstrateError):
    """The agent answered with an error; ``code`` says what kind (see the module docstring)."""

    def __init__(self, message: str, code: str = "failed") -> None:
        super().__init__(message)
        self.code = code


class NotFound(SubstrateError):
    """(Raised by an agent.) The VM asked for has no QEMU here, or no definition in the
    cluster; on the wire: code ``not_found``."""


class Conflict(SubstrateError):
    """(Raised by an agent.) What was asked contradicts the store (e.g. a start where the
    VM is not placed); on the wire: code ``conflict``."""


def speak_as(name: str, tls_dir: Path | None = None) -> None:
    """This process calls agents with host ``name``'s certificate, from ``tls_dir`` (a
    host's daemons call this once, with their config's; else the lab's layout says)."""
    _identity["name"] = name
    _identity["tls_dir"] = str(tls_dir) if tls_dir is not None else ""


def addresses_from(spec: Callable[[], ClusterSpec]) -> None:
    """This process finds the hosts' addresses in ``spec()`` (a host's daemons: the
    cluster's spec as the store has it), not in the lab's files (the operator's side)."""
    _address_book[:] = [spec]


def client_context(layout: LabLayout, name: str) -> ssl.SSLContext:
    """TLS as ``name`` (a host or ``admin``): its certificate, the cluster CA."""
    own = _identity["tls_dir"] if name == _identity["name"] else ""
    creds = NodeCredentials(Path(own) if own else layout.tls_dir(name))
    try:
        st = creds.cert.stat()
    except OSError as exc:
        raise AgentDown(f"no certificate for {name} in {creds.directory}; is the lab up?") from exc
    # Keyed by the certificate file itself: a new lab of the same name has a new CA.
    key = (str(creds.cert), st.st_ino, st.st_mtime_ns)
    with _lock:
        ctx = _contexts.get(key)
        if ctx is None:
            ctx = _contexts[key] = creds.client_context()
        return ctx


def _in_lab_namespace(layout: LabLayout) -> bool:
    """Is the calling thread inside one of this lab's network namespaces?"""
    me = os.stat("/proc/thread-self/ns/net")
    try:
        names = [n for n in os.listdir("/run/netns") if n.startswith(layout.ns_prefix)]
    except OSError:
        return False
    for n in names:
        try:
            st = os.stat(f"/run/netns/{n}")
        except OSError:
            continue
        if (st.st_dev, st.st_ino) == (me.st_dev, me.st_ino):
            return True
    return False


def _new_socket(layout: LabLayout, inside: bool) -> socket.socket:
    """A TCP socket in the caller's namespace when it is ``inside`` the lab, else in the lab's
    client namespace: a socket stays in the namespace it was made in, whichever thread then
    uses it."""
    if inside:
        return socket.socket(socket.AF_INET, socket.SOCK_STREAM)

    ns = layout.client_ns
    try:
        st = os.stat(f"/run/netns/{ns}")
    except OSError as exc:
        raise AgentDown(f"the lab's client namespace {ns} is gone; is the lab up?") from exc
    ident = (st.st_dev, st.st_ino)
    with _lock:
        held = _sockets_from.get(ns)
        if held is not None and held[0] != ident:  # a new lab of the same name
            held[1].close()
            held = None
        if held is None:
            held = _sockets_from[ns] = (ident, NetnsThread(ns))
    sock: socket.socket = held[1].call(socket.socket, socket.AF_INET, socket.SOCK_STREAM,
                                       timeout=10)
    return sock


def forget_namespaces() -> None:
    """Let go of the threads that make sockets in lab namespaces (a lab going down calls
    this, so that no thread keeps a removed namespace alive)."""
    with _lock:
        for _ident, thread in _sockets_from.values():
            thread.close()
        _sockets_from.clear()


def _reachable(layout: LabLayout, node: str, inside: bool) -> list[str]:
    """``node``'s agent addresses, lowest metric first; from outside the lab (the client
    namespace) only those on public networks."""

    spec = _address_book[0]() if _address_book else load_spec(read_state(layout)["spec"])
    mine = spec.node(node).interfaces
    addrs = [str(mine[p.name]) for p in node_cluster_networks(spec, node)
             if inside or p.role == Role.CLUSTER_AND_CLIENT]
    last = _last_good.get((str(layout.state_dir), node))
    return ([last] if last in addrs else []) + [a for a in addrs if a != last]


def _reply(node: str, op: str, buf: bytes) -> dict[str, Any]:
    try:
        reply = json.loads(buf)
    except ValueError as exc:
        raise AgentDown(f"the agent of {node} sent a bad reply to {op}") from exc
    if not reply.get("ok"):
        raise AgentError(f"{node}: {reply.get('error', 'unknown error')}",
                         str(reply.get("code", "failed")))
    return dict(reply)


def _call_local(node: str, path: str, op: str, request: bytes, timeout_s: float) -> bytes:
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(timeout_s)
            s.connect(path)
            return exchange(s, request)
    except (FileNotFoundError, ConnectionRefusedError) as exc:
        raise AgentDown(f"the agent of {node} is not running ({path})") from exc
    except OSError as exc:  # includes socket.timeout
        raise AgentDown(f"the agent of {node} did not answer {op}: {exc}") from exc


class LocalAgent:
    """This host's own agent, over its unix socket (``<run_dir>/agent.sock``)."""

    def __init__(self, node: str, socket_path: Path) -> None:
        self.node, self.path = node, str(socket_path)

    def call(self, op: str, timeout_s: float = 30.0, **args: Any) -> dict[str, Any]:
        request = json.dumps({"op": op, **args}).encode() + b"\n"
        return _reply(self.node, op, _call_local(self.node, self.path, op, request, timeout_s))


class AgentClient:
    """``token``: the manager's fencing token, sent with every request (a host's
    state-changing request without a current one is refused)."""

    def __init__(self, layout: LabLayout, node: str, local: bool = False,
                 token: int | None = None) -> None:
        self.layout, self.node, self.local, self.token = layout, node, local, token

    def call(self, op: str, timeout_s: float = 30.0, **args: Any) -> dict[str, Any]:
        if self.token is not None:
            args.setdefault("token", self.token)
        request = json.dumps({"op": op, **args}).encode() + b"\n"
        buf = _call_local(self.node, str(self.layout.agent_socket(self.node)), op, request,
                          timeout_s) if self.local else self._remote(op, request, timeout_s)
        return _reply(self.node, op, buf)

    def _remote(self, op: str, request: bytes, timeout_s: float) -> bytes:
        ctx = client_context(self.layout, _identity["name"])
        # A host's daemon (it knows the hosts from the store) is on the cluster networks
        # itself; the operator's side may be outside every lab namespace.
        inside = bool(_address_book) or _in_lab_namespace(self.layout)
        failures = []
        for addr in _reachable(self.layout, self.node, inside):
            sock = _new_socket(self.layout, inside)
            phase = "connect"  # which step failed, for the error: a dead address or a hung agent
            try:
                sock.settimeout(min(timeout_s, 2.0))  # a dead address: try the next soon
                sock.connect((addr, AGENT_PORT))
                sock.settimeout(timeout_s)
                phase = "TLS handshake"
                with ctx.wrap_socket(sock, server_hostname=self.node) as tls:
                    phase = f"reply within {timeout_s:g} s"
                    buf = exchange(tls, request)
            except ssl.SSLError as exc:
                raise AgentDown(f"the agent of {self.node} refused TLS at {addr}: "
                                f"{exc.reason or exc}") from exc
            except OSError as exc:
                failures.append(f"{addr}: {phase}: {exc}")
                continue
            finally:
                sock.close()
            _last_good[(str(self.layout.state_dir), self.node)] = addr
            return buf
        raise AgentDown(f"the agent of {self.node} did not answer {op} "
                        f"({'; '.join(failures) or 'no address on a network this side reaches'})")

    def alive(self) -> bool:
        try:
            self.call("ping", timeout_s=3)
        except LabError:
            return False
        return True
