"""QEMU's monitor (QMP) as named verbs over the ``qemu.qmp`` library's QMPClient.

Substrate code never builds QMP dicts inline: it calls ``start_migration``,
``query_migrate``... Every call has a timeout; a refusal, a bad reply or a
disconnect becomes one :class:`~vmcluster.errors.QmpError`. A migration's end
is awaited on QEMU's own ``MIGRATION`` events (:meth:`Qmp.migration_settled`).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
from collections.abc import Mapping
from typing import Any

from qemu.qmp import EventListener, ExecuteError, QMPClient, QMPError

from vmcluster.errors import QemuGone, QemuRefused, QmpError

__all__ = ["MIGRATING", "Qmp"]

# qemu.qmp logs every disconnect at WARNING; our callers report errors themselves.
logging.getLogger("qemu.qmp").setLevel(logging.CRITICAL)


# query-migrate statuses of a migration still in progress
MIGRATING = ("setup", "active", "device", "pre-switchover", "wait-unplug")
DIRTY_SAMPLE_PAGES = 4096  # per GiB of guest memory, for calc-dirty-rate's page sampling


class Qmp:
    """One QMP connection to one QEMU process."""

    def __init__(self, name: str, timeout_s: float = 10.0) -> None:
        self.name = name
        self.timeout_s = timeout_s
        self._client = QMPClient(name)
        # The last events of the kinds asked for with record_events(): (name, wall time).
        self.events: collections.deque[tuple[str, float]] = collections.deque(maxlen=64)
        self._recorder: asyncio.Task[None] | None = None

    def record_events(self, *names: str) -> None:
        """Keep every ``names`` event from now on in :attr:`events`, with QEMU's own
        timestamp (wall clock), so that a migration's pause and resume can be laid
        beside what a client saw."""
        listener = EventListener(names=list(names))
        self._client.register_listener(listener)

        async def pump() -> None:
            while True:
                ev = await listener.get()
                ts = dict(ev).get("timestamp")
                if not isinstance(ts, dict):
                    continue
                at = float(ts.get("seconds", 0)) + float(ts.get("microseconds", 0)) / 1e6
                self.events.append((str(ev.get("event")), at))

        self._recorder = asyncio.get_running_loop().create_task(pump())

    async def connect(self, socket_path: str, timeout_s: float = 10.0) -> None:
        """Connect, retrying until the socket exists and answers, or ``timeout_s`` passes."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        last: Exception | None = None
        while loop.time() < deadline:
            try:
                await asyncio.wait_for(self._client.connect(socket_path), timeout=2.0)
                return
            except (TimeoutError, QMPError, OSError) as exc:
                last = exc
                self._client = QMPClient(self.name)
                await asyncio.sleep(0.05)
        raise QmpError(f"{self.name}: cannot connect to QMP at {socket_path}: {last}") from last

    async def close(self) -> None:
        if self._recorder is not None:
            self._recorder.cancel()
        with contextlib.suppress(QMPError, OSError, EOFError, TimeoutError):  # gone is fine
            await asyncio.wait_for(self._client.disconnect(), timeout=2.0)

    async def _run(self, cmd: str, args: Mapping[str, object] | None = None) -> Any:
        try:
            return await asyncio.wait_for(
                self._client.execute(cmd, dict(args) if args else None), timeout=self.timeout_s
            )
        except TimeoutError as exc:
            raise QemuGone(f"{self.name}: {cmd} got no answer within {self.timeout_s} s "
                           "(QEMU hung or busy)") from exc
        except ExecuteError as exc:
            raise QemuRefused(f"{self.name}: QEMU refused {cmd}: {_line(exc)} "
                              f"({exc.error_class})", exc.error_class, str(exc)) from exc
        except QMPError as exc:  # the connection, not the command
            # qemu.qmp's own words ("QMPClient is disconnecting. Call disconnect() ...")
            # speak to its programmer, not to whoever reads the error: its QEMU ended.
            raise QemuGone(f"{self.name}: monitor went away during {cmd} (its QEMU ended)"
                           ) from exc
        except (OSError, EOFError) as exc:
            raise QemuGone(f"{self.name}: monitor went away during {cmd}: {_line(exc)}"
                           ) from exc

    async def migration_settled(self, timeout_s: float) -> dict[str, Any]:
        """``query-migrate``, after waiting up to ``timeout_s`` for a migration in progress
        to end. It waits on QEMU's own ``MIGRATION`` events (the ``events`` capability),
        not by asking again and again: under TCG every QMP command competes with the
        vCPUs and the migration thread for QEMU's main lock. A migration being cancelled is
        still in progress: this waits for it to be cancelled."""
        active = (*MIGRATING, "cancelling")
        listener = EventListener(names=["MIGRATION"])
        self._client.register_listener(listener)
        try:
            info = await self.query_migrate()
            loop = asyncio.get_running_loop()
            deadline = loop.time() + timeout_s
            while info.get("status") in active and (left := deadline - loop.time()) > 0:
                try:
                    ev = await asyncio.wait_for(listener.get(), timeout=left)
                except TimeoutError:
                    break
                data = dict(ev).get("data")
                if not isinstance(data, dict) or data.get("status") not in active:
                    info = await self.query_migrate()
        finally:
            self._client.remove_listener(listener)
        return info

    # -- named verbs ------------------------------------------------------------
    async def query_status(self) -> str:
        reply = await self._run("query-status")
        status = _dict(reply, f"{self.name}: query-status").get("status")
        if not isinstance(status, str):
            raise QmpError(f"{self.name}: query-status returned no status: {reply!r:.200}")
        return status

    async def query_version(self) -> dict[str, Any]:
        return _dict(await self._run("query-version"), f"{self.name}: query-version")

    async def query_commands(self) -> list[dict[str, Any]]:
        return _list(await self._run("query-commands"), f"{self.name}: query-commands")

    async def query_migrate_capabilities(self) -> list[dict[str, Any]]:
        return _list(await self._run("query-migrate-capabilities"),
                     f"{self.name}: query-migrate-capabilities")

    async def query_machines(self) -> list[dict[str, Any]]:
        return _list(await self._run("query-machines"), f"{self.name}: query-machines")

    async def vcpu_threads(self) -> set[int]:
        """The host threads that run the guest's vCPUs (``query-cpus-fast``; under TCG
        with ``thread=single`` one thread runs them all)."""
        cpus = _list(await self._run("query-cpus-fast"), f"{self.name}: query-cpus-fast")
        out = {c.get("thread-id") for c in cpus}
        if not out or not all(isinstance(t, int) and t > 0 for t in out):
            raise QmpError(f"{self.name}: query-cpus-fast names no threads: {cpus!r:.200}")
        return {int(t) for t in out if isinstance(t, int)}

    async def pmemsave(self, address: int, size: int, filename: str) -> None:
        """Write ``size`` bytes of the guest's physical memory from ``address`` to
        ``filename`` (on the QEMU's host)."""
        await self._run("pmemsave", {"val": address, "size": size, "filename": filename})

    async def query_migrate(self) -> dict[str, Any]:
        return _dict(await self._run("query-migrate"), f"{self.name}: query-migrate")

    async def dirty_rate(self, window_ms: int, timeout_s: float = 10.0,
                         mode: str = "page-sampling") -> float:
        """The guest's dirty rate (MiB/s) over ``window_ms`` (``calc-dirty-rate``; QEMUs
        before 8.1 count whole seconds only). ``page-sampling`` hashes a sample of pages
        before and after (4096 per GiB here, 8x QEMU's default, for a usable estimate
        of a small guest over a short window); it works under TCG, where the dirty
        bitmap mode counts nothing (seen on QEMU 10.0). Not while a migration runs."""
        base: dict[str, object] = {"mode": mode}
        if mode == "page-sampling":
            base["sample-pages"] = DIRTY_SAMPLE_PAGES
        try:
            await self._run("calc-dirty-rate", {**base, "calc-time": window_ms,
                                                "calc-time-unit": "millisecond"})
        except QemuRefused as exc:
            if "calc-time-unit" not in str(exc):
                raise
            await self._run("calc-dirty-rate", {**base,
                                                "calc-time": max(1, round(window_ms / 1000))})
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        while True:
            got = _dict(await self._run("query-dirty-rate"), f"{self.name}: query-dirty-rate")
            if got.get("status") == "measured" and isinstance(got.get("dirty-rate"), int):
                return float(got["dirty-rate"])
            if loop.time() > deadline:
                raise QmpError(f"{self.name}: calc-dirty-rate measured nothing within "
                               f"{timeout_s:g} s: {got!r:.200}")
            await asyncio.sleep(0.05)

    async def cont(self) -> None:
        await self._run("cont")

    async def stop(self) -> None:
        await self._run("stop")

    async def system_powerdown(self) -> None:
        """Press the guest's ACPI power button (a guest that listens shuts down)."""
        await self._run("system_powerdown")

    async def announce_self(self) -> None:
        await self._run(
            "announce-self", {"initial": 50, "max": 550, "rounds": 5, "step": 100}
        )

    async def object_names(self) -> set[str]:
        """The ids of the user-created objects (``qom-list /objects``)."""
        return {str(o["name"]) for o in _list(await self._run("qom-list", {"path": "/objects"}),
                                              "qom-list")}

    async def add_tls_creds(self, obj_id: str, endpoint: str, directory: str) -> None:
        """A ``tls-creds-x509`` object (once): ``endpoint`` server or client, the peer's
        certificate verified against the CA in ``directory``."""
        if obj_id in await self.object_names():
            return
        await self._run("object-add", {"qom-type": "tls-creds-x509", "id": obj_id,
                                       "endpoint": endpoint, "dir": directory,
                                       "verify-peer": True})

    async def migrate_set_capabilities(self, caps: Mapping[str, bool]) -> None:
        await self._run(
            "migrate-set-capabilities",
            {"capabilities": [{"capability": k, "state": v} for k, v in caps.items()]},
        )

    async def migrate_set_parameters(self, **params: object) -> None:
        args = {k.replace("_", "-"): v for k, v in params.items()}
        await self._run("migrate-set-parameters", args)

    async def pass_fd(self, name: str, fd: int) -> None:
        """Hand QEMU an open file as ``name`` (SCM_RIGHTS, then ``getfd``), for an
        ``fd:NAME`` migration URI; the caller keeps (and closes) its own copy."""
        try:
            self._client.send_fd_scm(fd)
        except (OSError, QMPError) as exc:
            raise QmpError(f"{self.name}: cannot pass a file descriptor: {exc}") from exc
        await self._run("getfd", {"fdname": name})

    async def close_fd(self, name: str) -> None:
        """Close a descriptor QEMU still holds as ``name`` (one no migration took)."""
        await self._run("closefd", {"fdname": name})

    async def set_authz_rules(self, obj_id: str, rules: list[dict[str, str]]) -> None:
        """Replace the rules of the ``authz-list`` object ``obj_id`` (a server that names
        it in ``tls-authz`` checks each new client against them)."""
        await self._run("qom-set", {"path": f"/objects/{obj_id}", "property": "rules",
                                    "value": rules})

    async def start_migration(self, uri: str) -> None:
        await self._run("migrate", {"uri": uri})

    async def migrate_incoming(self, uri: str) -> None:
        await self._run("migrate-incoming", {"uri": uri})

    async def start_postcopy(self) -> None:
        """Switch a running pre-copy migration to post-copy (``postcopy-ram`` set on both
        ends): the source pauses, sends its devices, and serves the rest on demand."""
        await self._run("migrate-start-postcopy")

    async def migrate_pause(self) -> None:
        """Break a post-copy's stream on purpose (either end): both go to
        ``postcopy-paused`` at once instead of waiting for TCP to give up."""
        await self._run("migrate-pause")

    async def migrate_recover(self, uri: str) -> None:
        """The target of a paused post-copy listens on ``uri`` for the source's resume."""
        await self._run("migrate-recover", {"uri": uri})

    async def resume_migration(self, uri: str) -> None:
        """The source of a paused post-copy reconnects to its target at ``uri``."""
        await self._run("migrate", {"uri": uri, "resume": True})

    async def migrate_cancel(self) -> None:
        await self._run("migrate_cancel")

    async def blockdev_add_nbd(self, node_name: str, host: str, port: int, export: str,
                               tls_creds: str, tls_hostname: str) -> None:
        """Open an NBD export as block node ``node_name`` (connects now, over TLS with the
        ``tls_creds`` object, checking that the server is ``tls_hostname``)."""
        await self._run("blockdev-add", {
            "driver": "nbd", "node-name": node_name, "export": export,
            "server": {"type": "inet", "host": host, "port": str(port)},
            "tls-creds": tls_creds, "tls-hostname": tls_hostname,
        })

    async def quorum_add_child(self, parent: str, node: str) -> None:
        """Add block node ``node`` as a child of quorum node ``parent``."""
        await self._run("x-blockdev-change", {"parent": parent, "node": node})

    async def quorum_del_child(self, parent: str, child: str) -> None:
        """Remove child ``child`` (e.g. ``children.0``) of quorum ``parent`` (drains it)."""
        await self._run("x-blockdev-change", {"parent": parent, "child": child})

    async def block_children(self, parent: str) -> list[tuple[str, str]]:
        """(child name, node name) of each child of block node ``parent``."""
        graph = _dict(await self._run("x-debug-query-block-graph"),
                      f"{self.name}: x-debug-query-block-graph")
        names = {n["id"]: n["name"] for n in graph.get("nodes", [])}
        pid = next((i for i, n in names.items() if n == parent), None)
        return [(str(e["name"]), str(names.get(e["child"], ""))) for e in graph.get("edges", [])
                if e.get("parent") == pid]

    async def blockdev_del(self, node_name: str) -> None:
        await self._run("blockdev-del", {"node-name": node_name})

    async def named_block_nodes(self) -> list[dict[str, Any]]:
        reply = await self._run("query-named-block-nodes", {"flat": True})
        if not isinstance(reply, list):
            raise QmpError(f"{self.name}: query-named-block-nodes returned {reply!r}")
        return [dict(n) for n in reply]

    async def quit(self) -> None:
        """Ask QEMU to exit; the monitor going away in reply is the expected outcome."""
        with contextlib.suppress(QmpError):
            await self._run("quit")
        await self.close()


def _line(exc: BaseException) -> str:
    """An error's text on one line (qemu.qmp's protocol errors quote the message over
    several lines)."""
    return " ".join(str(exc).split())[:400]


def _dict(reply: object, cmd: str) -> dict[str, Any]:
    if not isinstance(reply, dict):
        raise QmpError(f"{cmd} returned {type(reply).__name__}, expected an object")
    return reply


def _list(reply: object, cmd: str) -> list[dict[str, Any]]:
    if not isinstance(reply, list) or not all(isinstance(x, dict) for x in reply):
        raise QmpError(f"{cmd} returned {type(reply).__name__}, expected a list of objects")
    return reply
