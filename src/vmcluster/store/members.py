"""Start, stop and remove a real etcd cluster (Debian's ``/usr/bin/etcd``).

Each :class:`MemberSpec` names one member, its data dir and its peer and
client URLs. In the lab a member advertises an address on every cluster
network (role >= 1) and runs inside its node's namespace through ``prefix``
(``["ip", "netns", "exec", NS]``); in tests members listen on 127.0.0.x with
free ports, and :func:`embedded` gives a one-member store for one machine.

Processes start in their own session so that ``kill`` reaches etcd itself
(``ip netns exec`` execs it, so the pid is etcd's). ``close`` stops every
member (SIGTERM, then SIGKILL after a bound) and removes the data dirs.
"""

from __future__ import annotations

import http.client
import os
import shutil
import signal
import socket
import subprocess
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from vmcluster.errors import StoreError
from vmcluster.model import ClusterSpec
from vmcluster.pki import NodeCredentials
from vmcluster.policy.networks import cluster_networks
from vmcluster.store.transport import member_flags, open_connection
from vmcluster.substrate.clock import MonotonicClock
from vmcluster.substrate.protocol import Clock

__all__ = [
    "DEFAULT_TUNING",
    "EtcdCluster",
    "MemberSpec",
    "embedded",
    "free_port",
    "local_members",
    "spec_members",
]

ETCD = "/usr/bin/etcd"
# etcd's own raft timing (100 ms heartbeat, 1 s election), which rides out a loaded machine.
DEFAULT_TUNING = ("--heartbeat-interval=100", "--election-timeout=1000")


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that is free on ``host`` right now."""
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


@dataclass(frozen=True)
class MemberSpec:
    """One etcd member: where it keeps its data and the URLs it listens on and advertises."""

    name: str
    data_dir: Path
    peer_urls: tuple[str, ...]
    client_urls: tuple[str, ...]
    prefix: tuple[str, ...] = ()  # e.g. ("ip", "netns", "exec", "vmc-node1")
    tls: NodeCredentials | None = None  # client and peer TLS with client certificates (https URLs)

    def argv(
        self, initial_cluster: str, token: str, state: str, tuning: Sequence[str]
    ) -> list[str]:
        peers, clients = ",".join(self.peer_urls), ",".join(self.client_urls)
        return [
            *self.prefix,
            ETCD,
            f"--name={self.name}",
            f"--data-dir={self.data_dir}",
            f"--listen-peer-urls={peers}",
            f"--initial-advertise-peer-urls={peers}",
            f"--listen-client-urls={clients}",
            f"--advertise-client-urls={clients}",
            f"--initial-cluster={initial_cluster}",
            f"--initial-cluster-token={token}",
            f"--initial-cluster-state={state}",
            "--logger=zap",
            "--log-outputs=stderr",
            *(member_flags(self.tls) if self.tls is not None else ()),
            *tuning,
        ]


def spec_members(
    spec: ClusterSpec,
    data_root: Path,
    prefix: Callable[[str], tuple[str, ...]] = lambda node: (),
    peer_port: int = 2380,
    client_port: int = 2379,
    tls: Callable[[str], NodeCredentials | None] = lambda node: None,
) -> list[MemberSpec]:
    """One member per host of ``spec`` (its nodes and its witness), on the host's address on
    every role >= 1 network
    (so losing one network does not cut the store); ``prefix(node)`` runs it in the node's
    namespace, e.g. ``lambda n: ("ip", "netns", "exec", f"vmc-{n}")``; ``tls(node)`` gives
    a node's certificate files (then every URL is https and client certificates are
    required)."""
    nets = [p.name for p in cluster_networks(spec.networks)]
    out = []
    for node in spec.hosts:
        addrs = [node.interfaces[n] for n in nets if n in node.interfaces]
        creds = tls(node.name)
        scheme = "https" if creds is not None else "http"
        out.append(
            MemberSpec(
                name=node.name,
                data_dir=data_root / f"{node.name}.etcd",
                peer_urls=tuple(f"{scheme}://{a}:{peer_port}" for a in addrs),
                client_urls=tuple(f"{scheme}://{a}:{client_port}" for a in addrs),
                prefix=prefix(node.name),
                tls=creds,
            )
        )
    return out


def local_members(names: Sequence[str], base: Path, first_octet: int = 2) -> list[MemberSpec]:
    """Members on loopback: member i listens on 127.0.0.(first_octet+i) with free ports."""
    out = []
    for i, name in enumerate(names):
        host = f"127.0.0.{first_octet + i}"
        out.append(
            MemberSpec(
                name=name,
                data_dir=base / f"{name}.etcd",
                peer_urls=(f"http://{host}:{free_port(host)}",),
                client_urls=(f"http://{host}:{free_port(host)}",),
            )
        )
    return out


@dataclass
class EtcdCluster:
    """A set of etcd members started together; use as a context manager.

    ``tuning`` is passed to every member; the default keeps etcd's own raft
    timing (100 ms heartbeat, 1 s election) which rides out a loaded machine.
    """

    members: Sequence[MemberSpec]
    token: str = "vmcluster"
    tuning: Sequence[str] = DEFAULT_TUNING
    clock: Clock = field(default_factory=MonotonicClock)
    procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    _logs: dict[str, IO[bytes]] = field(default_factory=dict)

    @property
    def initial_cluster(self) -> str:
        return ",".join(f"{m.name}={u}" for m in self.members for u in m.peer_urls)

    def endpoints(self, names: Sequence[str] | None = None) -> list[str]:
        return [u for m in self.members if names is None or m.name in names for u in m.client_urls]

    def member(self, name: str) -> MemberSpec:
        for m in self.members:
            if m.name == name:
                return m
        raise StoreError(f"no etcd member {name!r}; members: {[m.name for m in self.members]}")

    def log_path(self, name: str) -> Path:
        m = self.member(name)
        return m.data_dir.with_name(m.data_dir.name + ".log")

    def start(self, names: Sequence[str] | None = None, *, state: str = "new") -> None:
        """Start the named members (all by default); ``state`` "existing" rejoins with old data."""
        for m in self.members:
            if names is not None and m.name not in names:
                continue
            if m.name in self.procs and self.procs[m.name].poll() is None:
                continue
            m.data_dir.parent.mkdir(parents=True, exist_ok=True)
            log = open(self.log_path(m.name), "ab")  # noqa: SIM115 - closed in _reap
            self._logs[m.name] = log
            argv = m.argv(self.initial_cluster, self.token, state, self.tuning)
            try:
                self.procs[m.name] = subprocess.Popen(
                    argv, stdout=log, stderr=log, stdin=subprocess.DEVNULL, start_new_session=True
                )
            except OSError as exc:
                log.close()
                raise StoreError(f"cannot start etcd member {m.name}: {exc}") from exc

    def healthy(self, name: str) -> bool:
        """Does ``name`` answer /health with true (it has a leader and applies)?"""
        member = self.member(name)
        ctx = member.tls.client_context() if member.tls is not None else None
        for url in member.client_urls:
            conn = open_connection(url, 1.0, ctx)
            try:
                conn.request("GET", "/health")
                body = conn.getresponse().read()
                if b'"health":"true"' in body:
                    return True
            except (OSError, http.client.HTTPException):
                pass
            finally:
                conn.close()
        return False

    def wait_healthy(self, names: Sequence[str] | None = None, timeout: float = 30.0) -> None:
        """Wait until every named member is healthy; StoreError naming the laggards after
        ``timeout`` (or at once when a member process has exited)."""
        want = [m.name for m in self.members if names is None or m.name in names]
        deadline = self.clock.now() + timeout
        while True:
            dead = [n for n in want if n in self.procs and self.procs[n].poll() is not None]
            if dead:
                raise StoreError(
                    f"etcd member(s) {', '.join(dead)} exited; see {self.log_path(dead[0])}"
                )
            sick = [n for n in want if not self.healthy(n)]
            if not sick:
                return
            if self.clock.now() >= deadline:
                raise StoreError(
                    f"etcd member(s) {', '.join(sick)} not healthy after {timeout:.0f} s; "
                    f"see {self.log_path(sick[0])}"
                )
            self.clock.sleep(0.1)

    def pid(self, name: str) -> int:
        return self.procs[name].pid

    def signal(self, name: str, sig: signal.Signals) -> None:
        """Send ``sig`` to a running member (SIGKILL to crash it, SIGSTOP to freeze it)."""
        proc = self.procs.get(name)
        if proc is not None and proc.poll() is None:
            os.kill(proc.pid, sig)

    def stop(self, name: str, timeout: float = 10.0) -> None:
        """Stop one member: SIGCONT + SIGTERM, SIGKILL after ``timeout``; keep its data."""
        proc = self.procs.pop(name, None)
        if proc is None:
            return
        if proc.poll() is None:
            for sig in (signal.SIGCONT, signal.SIGTERM):
                try:
                    os.kill(proc.pid, sig)
                except ProcessLookupError:
                    break
            try:
                proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=timeout)
        log = self._logs.pop(name, None)
        if log is not None:
            log.close()

    def close(self, remove: bool = True) -> None:
        """Stop every member and (by default) remove data dirs and logs."""
        for name in list(self.procs):
            self.stop(name)
        if remove:
            for m in self.members:
                shutil.rmtree(m.data_dir, ignore_errors=True)
                self.log_path(m.name).unlink(missing_ok=True)

    def __enter__(self) -> EtcdCluster:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()


def embedded(base: Path, host: str = "127.0.0.1", timeout: float = 30.0) -> EtcdCluster:
    """A started, healthy one-member store on ``host`` (for tests and one machine)."""
    member = MemberSpec(
        name="solo",
        data_dir=base / "solo.etcd",
        peer_urls=(f"http://{host}:{free_port(host)}",),
        client_urls=(f"http://{host}:{free_port(host)}",),
    )
    cluster = EtcdCluster([member])
    try:
        cluster.start()
        cluster.wait_healthy(timeout=timeout)
    except BaseException:
        cluster.close()
        raise
    return cluster
