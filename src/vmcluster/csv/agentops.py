"""The CSV side of a node agent: coordinator ops, re-exports, and live path switching.

Mixed into :class:`vmcluster.node.agent.Agent` (its ``op_*`` methods are agent ops):

* coordinator role: ``csv_table``, ``csv_create``, ``csv_delete``, ``csv_resize``,
  ``csv_set_owner`` read-modify-write the allocation table on
  the LUN over this node's own NBD path, one op at a time per volume; a node
  that is not the recorded coordinator refuses.
* helper role: ``csv_export`` starts (once) a ``qemu-storage-daemon`` that
  re-exports the SAN's export on this node's address on a CSV network.
* path switching: ``csv_reconcile`` puts every VM disk of this node on the
  path :func:`~vmcluster.csv.paths.access_modes` gives it (direct, or via a
  helper), live: ``blockdev-add`` the new NBD node, add it to the disk's
  one-child quorum (``x-blockdev-change``), kill the old path's TCP connections
  if that path is dead (so in-flight requests fail and pause the VM instead of
  hanging the drain), remove the old child and ``blockdev-del`` it, ``cont`` a
  VM that paused on an I/O error. (``blockdev-reopen`` of the raw node cannot
  do this: it flushes the old child first, and a dead path fails the flush.)
  :meth:`csv_monitor` runs it when this node's storage link changes
  and every few seconds (a dead coordinator or helper is noticed there too).
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
import ssl
import sys
import threading
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from vmcluster.csv import volume as vt
from vmcluster.csv.attach import node_target
from vmcluster.csv.coordinator import (
    CsvBook,
    FileBook,
    LabView,
    LinkPublisher,
    StoreBook,
    coordinator,
    coordinator_call,
    local_links,
)
from vmcluster.csv.nbd import NbdClient
from vmcluster.csv.paths import access_modes
from vmcluster.csv.savestate import (
    CHUNK,
    region_name,
    region_size,
    restore_stream,
    save_stream,
    seal,
)
from vmcluster.csv.storage import (
    NbdTarget,
    authz_rules,
    pid_from,
    redirect_argv,
    redirect_target,
    san_target,
)
from vmcluster.errors import SubstrateError
from vmcluster.model import ClusterSpec, Vm
from vmcluster.model.spec import load_spec
from vmcluster.pki import NodeCredentials
from vmcluster.store.state import ClusterState
from vmcluster.substrate.host.client import AgentClient, AgentDown
from vmcluster.substrate.host.layout import LabLayout
from vmcluster.substrate.host.state import read_state
from vmcluster.substrate.qemu.process import QemuProcess
from vmcluster.substrate.qemu.qmp import Qmp
from vmcluster.substrate.qemu.vm import LUN_NODE_PREFIX, NBD_TLS, PATH_NODE

__all__ = ["CsvOps"]

Reply = dict[str, Any]
MONITOR_TICK_S = 0.25
FULL_CHECK_S = 5.0
# While a disk goes through another host, how often the monitor looks whether that host
# (or its link, or the coordinator) changed: a crashed host's path must move at once,
# not at the next full check.
REDIRECT_LOOK_S = 0.5
RETRY_S = 0.5  # after a failed round


def _log(msg: str) -> None:
    print(f"{time.strftime('%H:%M:%S')} csv: {msg}", file=sys.stderr, flush=True)


async def _pipe_with(qp: QemuProcess, fdname: str, qemu_writes: bool) -> int:
    """A pipe whose one end QEMU holds as ``fdname`` (the write end when
    ``qemu_writes``); returns the other end, ours to close."""
    r, w = os.pipe()
    # A pipe as big as a copy's chunk: QEMU fills (or drains) one while the agent moves
    # the previous one over NBD, instead of waiting on a 64 KiB pipe.
    with contextlib.suppress(OSError):
        fcntl.fcntl(w, fcntl.F_SETPIPE_SZ, CHUNK)
    theirs, ours = (w, r) if qemu_writes else (r, w)
    try:
        await qp.qmp.pass_fd(fdname, theirs)
    except BaseException:
        os.close(ours)
        raise
    finally:
        os.close(theirs)
    return ours


class CsvOps:
    """Agent mixin; needs ``layout``, ``node``, ``creds``, ``vms`` and ``get`` from the
    agent."""

    layout: LabLayout
    node: str
    creds: NodeCredentials  # this host's certificate (its config's tls dir)
    vms: dict[str, QemuProcess]
    _csv_spec: ClusterSpec | None = None
    _csv_locks: dict[str, asyncio.Lock] | None = None
    _csv_log: list[tuple[float, Reply]] | None = None
    _csv_book: StoreBook | None = None
    _csv_links: LinkPublisher | None = None
    _csv_authz: dict[str, tuple[str, ...]] | None = None
    _csv_redirected = False  # some disk of this host goes through another host

    def _spec(self) -> ClusterSpec:
        if self._csv_spec is None:
            self._csv_spec = load_spec(read_state(self.layout)["spec"])
        return self._csv_spec

    def _store(self) -> ClusterState | None:
        return None

    def _my_links(self) -> dict[str, bool]:
        return local_links(self._spec(), self.node)

    def book(self) -> CsvBook:
        """Where the coordinators are recorded: the store (the lab's file when the lab's
        hosts run their agent only)."""
        state = self._store()
        if state is None:
            return FileBook(self.layout, skip_ping=self.node)
        if self._csv_book is None:
            self._csv_book = StoreBook(state, self.node, self._my_links)
        return self._csv_book

    def _nbd_tls(self) -> ssl.SSLContext:
        """TLS as this host, for our own NBD client (the coordinator's table reads)."""
        return self.creds.client_context()

    def _vlock(self, key: str) -> asyncio.Lock:
        if self._csv_locks is None:
            self._csv_locks = {}
        return self._csv_locks.setdefault(key, asyncio.Lock())

    # -- coordinator role --------------------------------------------------------------
    async def _table_op(self, req: Reply, change: Any) -> Reply:
        volume = str(req["volume"])
        spec = self._spec()
        recorded = await asyncio.to_thread(self.book().recorded, volume)
        if recorded != self.node:
            raise SubstrateError(f"{self.node} is not the coordinator of {volume} "
                                 f"({recorded or 'nobody'} is)")
        target = san_target(spec, volume)

        def work() -> vt.Table:
            with NbdClient(target.host, target.port, target.export,
                           tls=self._nbd_tls(), tls_hostname=target.name) as lun:
                table = vt.read_table(lun)
                new: vt.Table = change(table)
                if new is not table:
                    new = vt.write_table(lun, new, base=table)
                return new

        async with self._vlock("table:" + volume):
            table = await asyncio.to_thread(work)
        return {"table": table.to_json(), "coordinator": self.node}

    async def op_csv_table(self, req: Reply) -> Reply:
        return await self._table_op(req, lambda t: t)

    async def op_csv_create(self, req: Reply) -> Reply:
        """Create disk ``disk`` of ``size`` bytes (idempotent) and record ``owner``."""
        name, size, owner = str(req["disk"]), int(req["size"]), req.get("owner")

        def change(t: vt.Table) -> vt.Table:
            ext = t.get(name)
            if ext is None:
                t = t.create(name, size, owner)
            elif ext.size < size:
                raise SubstrateError(f"disk {name} exists with {ext.size >> 20} MiB < "
                                     f"{size >> 20} MiB; resize it")
            return t.set_owner(name, owner) if owner is not None else t

        return await self._table_op(req, change)

    async def op_csv_delete(self, req: Reply) -> Reply:
        return await self._table_op(req, lambda t: t.delete(str(req["disk"])))

    async def op_csv_resize(self, req: Reply) -> Reply:
        return await self._table_op(req, lambda t: t.resize(str(req["disk"]), int(req["size"])))

    async def op_csv_set_owner(self, req: Reply) -> Reply:
        return await self._table_op(
            req, lambda t: t.set_owner(str(req["disk"]), req.get("owner")))

    # -- helper role ---------------------------------------------------------------------
    async def op_csv_export(self, req: Reply) -> Reply:
        """Re-export ``volume`` on this node's address on ``network`` (started once)."""
        volume, network = str(req["volume"]), str(req["network"])
        spec = self._spec()
        target = redirect_target(spec, volume, self.node, network)
        pidfile = self.layout.redirect_pidfile(self.node, volume, network)
        monitor = self.layout.redirect_monitor(self.node, volume, network)
        async with self._vlock(f"export:{volume}:{network}"):
            if pid_from(pidfile) is None:
                self._authz_set().pop(str(monitor), None)  # a new daemon lets in nobody yet
                pidfile.parent.mkdir(parents=True, exist_ok=True)
                argv = redirect_argv(self.layout, spec, volume, self.node, network, self.creds)
                proc = await asyncio.create_subprocess_exec(
                    *argv, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
                    stderr=asyncio.subprocess.STDOUT, start_new_session=True)
                out, _ = await asyncio.wait_for(proc.communicate(), timeout=30)
                if proc.returncode != 0:
                    raise SubstrateError(f"{self.node}: cannot re-export {volume} on "
                                         f"{network}: {out.decode(errors='replace').strip()}")
                _log(f"re-exporting {volume} at {target.uri} for redirected I/O")
            await self._let_in(monitor, await asyncio.to_thread(self._member_hosts))
        return {"target": target.to_json()}

    # -- regions of a volume, through its coordinator (in a thread) -------------------------
    def _region(self, volume: str, name: str, op: str = "csv_table",
                **args: Any) -> dict[str, Any] | None:
        """Region ``name`` of ``volume``'s allocation table once ``op`` is done (None: it
        has none)."""
        reply = coordinator_call(self.layout, self.book(), self._spec(), volume, op, **args)
        return next((d for d in reply["table"]["disks"] if d["name"] == name), None)

    def drop_region(self, volume: str, name: str) -> str | None:
        """Remove region ``name`` from ``volume``; ``volume/name``, or None if it had none."""
        if self._region(volume, name) is None:
            return None
        self._region(volume, name, "csv_delete", disk=name)
        return f"{volume}/{name}"

    # -- a quick migration's saved state, on the VM's own volume ----------------------------
    def _state_region(self, vm: Vm, create: bool) -> tuple[NbdTarget, int, int, str]:
        """(this host's path to the volume, offset, size, name in errors) of ``vm``'s saved
        state region; ``create``: made (again, if too small) for a save (in a thread)."""

        assert vm.volume is not None
        volume, name = vm.volume, region_name(vm.name)
        ext = self._region(volume, name)
        if create:
            size = region_size(vm.memory_mib)
            if ext is not None and int(ext["size"]) < size:  # its VM has more memory now
                self._region(volume, name, "csv_delete", disk=name)
            ext = self._region(volume, name, "csv_create", disk=name, size=size, owner=self.node)
        if ext is None:
            raise SubstrateError(f"{vm.name} has no saved state on {volume}")
        target = node_target(self.layout, self.book(), self._spec(), volume, self.node)
        return target, int(ext["offset"]), int(ext["size"]), f"{volume}:{name}"

    def _lun(self, target: NbdTarget) -> NbdClient:
        return NbdClient(target.host, target.port, target.export, timeout_s=30.0,
                         tls=self._nbd_tls(), tls_hostname=target.name)

    async def save_state_to_volume(self, qp: QemuProcess, vm: Vm, fdname: str,
                                   migrate: Callable[[], Awaitable[Reply]]) -> Reply:
        """Run ``migrate()`` (an ``fd:fdname`` migration) with ``fdname`` a pipe that this
        agent copies into ``vm``'s state region; sealed only when QEMU says the stream is
        complete. ``migrate`` returns QEMU's final ``query-migrate``."""
        target, offset, size, where = await asyncio.to_thread(self._state_region, vm, True)
        r = await _pipe_with(qp, fdname, qemu_writes=True)

        def copy() -> tuple[int, int]:
            try:
                with self._lun(target) as lun:
                    return save_stream(lun, offset, size, r, where)
            finally:
                os.close(r)  # a copy that fails makes QEMU's writes fail, not block

        copying = asyncio.ensure_future(asyncio.to_thread(copy))
        try:
            info: Reply = await migrate()
        except BaseException:
            with contextlib.suppress(Exception):
                await qp.qmp.close_fd(fdname)  # no migration took it: end the copy
            with contextlib.suppress(Exception):
                await copying
            raise
        length, crc = await copying
        if info.get("status") == "completed":
            def sealed() -> None:
                with self._lun(target) as lun:
                    seal(lun, offset, length, crc)

            await asyncio.to_thread(sealed)
            _log(f"{vm.name}: saved {length >> 20} MiB of state to {where}")
        return info

    async def restore_state_from_volume(self, qp: QemuProcess, vm: Vm, fdname: str) -> None:
        """Hand QEMU ``fdname``, a pipe this agent fills from ``vm``'s sealed state region
        (in the background: QEMU reads as it restores)."""
        target, offset, size, where = await asyncio.to_thread(self._state_region, vm, False)
        w = await _pipe_with(qp, fdname, qemu_writes=False)

        def feed() -> None:
            try:
                with self._lun(target) as lun:
                    n = restore_stream(lun, offset, size, w, where)
                _log(f"{vm.name}: restored {n >> 20} MiB of state from {where}")
            except (OSError, SubstrateError) as exc:  # QEMU sees the stream end early
                _log(f"{vm.name}: restoring from {where} stopped: {exc}")
            finally:
                os.close(w)

        threading.Thread(target=feed, name=f"restore {vm.name}", daemon=True).start()

    def _member_hosts(self) -> tuple[str, ...]:
        """Who may use this host's re-exports: the cluster's member hosts (the spec's nodes
        in a lab without a store). In a thread: it may ask the store."""
        state = self._store()
        if state is None:
            return tuple(sorted(n.name for n in self._spec().nodes))
        kvs, _ = state.client.get_prefix(state.key("members", ""))
        return tuple(sorted(kv.key.rsplit("/", 1)[1] for kv in kvs))

    def _authz_set(self) -> dict[str, tuple[str, ...]]:
        """The hosts each re-export (by its QMP socket) was last told to let in."""
        if self._csv_authz is None:
            self._csv_authz = {}
        return self._csv_authz

    async def _let_in(self, monitor: Path, hosts: tuple[str, ...]) -> None:
        """Tell the re-export whose QMP socket is ``monitor`` to serve exactly ``hosts``
        (their certificates' names), unless it was told so already."""
        if self._authz_set().get(str(monitor)) == hosts:
            return
        qmp = Qmp(f"re-export {monitor.stem}")
        await qmp.connect(str(monitor), timeout_s=10.0)
        try:
            await qmp.set_authz_rules("authz0", authz_rules(hosts))
        finally:
            await qmp.close()
        self._authz_set()[str(monitor)] = hosts
        _log(f"re-export {monitor.stem} serves the member hosts {', '.join(hosts)}")

    async def _refresh_authz(self) -> None:
        """Every live re-export of this host serves the member hosts of now: a host that
        left the cluster (its certificate revoked) is refused from then on."""
        live = [p for p in sorted((self.layout.host_run_dir(self.node) / "redirect").glob("*.pid"))
                if pid_from(p) is not None]
        if not live:
            return  # no re-export runs here: nothing to ask the store for
        hosts = await asyncio.to_thread(self._member_hosts)
        for pidfile in live:
            await self._let_in(pidfile.with_suffix(".qmp"), hosts)

    # -- path switching ------------------------------------------------------------------
    async def _paths(self, qp: QemuProcess) -> list[tuple[str, str, str]]:
        """The VM disk's paths now: (quorum child, NBD node name, nbd:// URI), oldest first."""
        uris = {str(n.get("node-name")): str(n.get("file", ""))
                for n in await qp.qmp.named_block_nodes()}
        kids = [(c, n, uris.get(n, "")) for c, n in await qp.qmp.block_children(PATH_NODE)]
        if not kids:
            raise SubstrateError(f"{qp.record.vm}: its disk has no path ({PATH_NODE} is empty)")
        return sorted(kids, key=lambda k: int(k[1].removeprefix(LUN_NODE_PREFIX) or 0))

    async def _current_lun(self, qp: QemuProcess) -> tuple[str, str]:
        """The path the VM's disk uses now: (NBD node name, nbd:// URI)."""
        _, node, uri = (await self._paths(qp))[-1]
        return node, uri

    async def _switch(self, qp: QemuProcess, want: NbdTarget, kill_old: bool) -> Reply:
        olds = await self._paths(qp)
        n = max(int(node.removeprefix(LUN_NODE_PREFIX) or 0) for _, node, _ in olds) + 1
        new = f"{LUN_NODE_PREFIX}{n}"
        t0, started = time.monotonic(), time.time()
        await qp.qmp.blockdev_add_nbd(new, want.host, want.port, want.export, NBD_TLS, want.name)
        if kill_old:
            for _, _, uri in olds:
                hostport = uri.removeprefix("nbd://").split("/", 1)[0]
                host, _, port = hostport.rpartition(":")
                # A dead path's connection would hang its in-flight requests (and the drain
                # below) until TCP gives up; aborting it fails them now, which pauses the VM
                # (werror=stop); `cont` retries them on the new path.
                proc = await asyncio.create_subprocess_exec(
                    "ss", "-K", "-tn", "dst", host, "dport", "=", f":{port}",
                    stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL)
                await asyncio.wait_for(proc.wait(), timeout=10)
        # Adding and removing quorum children drains the quorum: in-flight requests must
        # finish first (on a dead path they only do once its connection is aborted).
        await qp.qmp.quorum_add_child(PATH_NODE, new)  # new writes now reach the new path
        for child, node, _ in olds:
            await qp.qmp.quorum_del_child(PATH_NODE, child)
            await qp.qmp.blockdev_del(node)
        resumed = 0
        for _ in range(10):  # an io-error stop may be requested just after the drain
            if await qp.qmp.query_status() == "io-error":
                await qp.qmp.cont()
                resumed += 1
            await asyncio.sleep(0.05)
        took = time.monotonic() - t0
        old_uri = olds[-1][2]
        self._csv_switches().append((started, {
            "vm": qp.record.vm, "from": old_uri, "to": want.uri, "ms": took * 1000,
            "resumed": resumed}))
        _log(f"{qp.record.vm}: disk {old_uri} -> {want.uri} in {took * 1000:.0f} ms"
             f"{' (resumed after I/O error)' if resumed else ''}")
        return {"vm": qp.record.vm, "from": old_uri, "to": want.uri, "ms": took * 1000,
                "resumed": resumed}

    async def _reconcile(self) -> list[Reply]:
        spec = self._spec()
        if not spec.volumes:
            return []
        async with self._vlock("reconcile"):
            book = self.book()
            if self._csv_links is not None:  # the others decide on what this host sees now
                await asyncio.to_thread(self._csv_links.publish, self._my_links())
            view = await asyncio.to_thread(book.view, spec)
            done: list[Reply] = []
            by_addr = {str(a): n.name for n in spec.nodes for a in n.interfaces.values()}
            net_of = {str(a): net for n in spec.nodes for net, a in n.interfaces.items()}
            redirected = False
            for vol in spec.volumes:
                vms = [qp for qp in list(self.vms.values())
                       if qp.alive() and qp.record.role == "run"
                       and (qp.record.config.get("csv") or {}).get("volume") == vol.name]
                if not vms:
                    continue
                got = await self._want(spec, book, view, vol.name, vol.network)
                if got is None:
                    continue
                want, gone = got
                san = san_target(spec, vol.name)
                redirected = redirected or want.uri != san.uri
                healthy = (view.up - gone) & view.has_path(vol.network)
                has_path = view.has_path(vol.network) - gone
                for qp in vms:
                    async with self._vlock("vm:" + qp.record.vm):
                        _, cur = await self._current_lun(qp)
                        if cur == want.uri:
                            continue
                        host = cur.removeprefix("nbd://").split(":", 1)[0]
                        # A redirected path is sound only while its host is and the
                        # network it runs over is up at both ends (a CSV network lost
                        # after the storage path: its connection must be aborted, else
                        # the switch's drain waits on it until TCP gives up).
                        peer, net = by_addr.get(host), net_of.get(host)
                        old_ok = (self.node in has_path if cur.startswith(san.uri)
                                  else peer in healthy and net is not None
                                  and view.health.up(spec, net, self.node)
                                  and view.health.up(spec, net, peer))
                        done.append(await self._switch(qp, want, kill_old=not old_ok))
            self._csv_redirected = redirected
            return done

    async def _want(self, spec: ClusterSpec, book: CsvBook, view: LabView, volume: str,
                    network: str | None) -> tuple[NbdTarget, frozenset[str]] | None:
        """Where this host's disks on ``volume`` should go now (None: nowhere), and the
        hosts found not answering on the way. A host whose agent refuses the export is
        passed over at once (a crashed host refuses before the cluster declares it
        down, and its lease lapses even later), the coordinator too if it was that one."""
        gone: frozenset[str] = frozenset()
        for _ in range(len(spec.nodes)):
            coord = await asyncio.to_thread(coordinator, book, spec, volume, view, _log, gone)
            has_path = view.has_path(network) - gone
            mine = access_modes(spec, view.health, view.up - gone, has_path, coord,
                                network)[self.node]
            if mine.mode == "none":
                return None
            if mine.mode == "direct":
                return san_target(spec, volume), gone
            assert mine.via is not None and mine.network is not None
            try:
                reply = await asyncio.to_thread(
                    AgentClient(self.layout, mine.via).call, "csv_export", 30.0,
                    volume=volume, network=mine.network)
            except AgentDown as exc:
                _log(f"{volume}: {mine.via} does not answer ({exc}); passing it over")
                gone = gone | {mine.via}
                continue
            return NbdTarget.from_json(reply["target"]), gone
        return None

    def _csv_switches(self) -> list[tuple[float, Reply]]:
        if self._csv_log is None:
            self._csv_log = []
        del self._csv_log[:-100]
        return self._csv_log

    async def op_csv_reconcile(self, req: Reply) -> Reply:
        """Switch this node's VM disks to their paths now; ``switched``: every switch since
        ``since`` (wall time; the monitor may have made one already)."""
        done = await self._reconcile()
        since = req.get("since")
        if since is None:
            return {"switched": done}
        return {"switched": [sw for t, sw in self._csv_switches() if t >= float(since)]}

    async def op_csv_paths(self, req: Reply) -> Reply:
        """The NBD URI each of this node's VM disks uses right now."""
        out = {}
        for name, qp in list(self.vms.items()):
            if qp.alive() and qp.record.config.get("csv"):
                with contextlib.suppress(SubstrateError):
                    out[name] = (await self._current_lun(qp))[1]
        return {"paths": out}

    def _redirect_view(self, spec: ClusterSpec, book: CsvBook) -> tuple[object, ...]:
        """What a redirected disk's path depends on: the hosts up, their links, the
        coordinators recorded."""
        view = book.view(spec)
        return (view.up, view.links_up, tuple(book.recorded(v.name) for v in spec.volumes))

    async def csv_monitor(self) -> None:
        """Publish this host's links (with a store); reconcile the VM disks when one of
        this host's links changes, when what a redirected disk goes through changes, and
        every few seconds."""
        try:
            spec = self._spec()
        except SubstrateError:
            return
        book = self.book()
        if isinstance(book, StoreBook):  # the other hosts learn this host's links from here
            self._csv_links = LinkPublisher(book, self.node, _log)
        elif not spec.volumes:
            return
        last: dict[str, bool] = {}
        seen: tuple[object, ...] | None = None
        next_full = time.monotonic() + FULL_CHECK_S
        next_look = 0.0
        while True:
            links = self._my_links()
            if self._csv_links is not None:
                await asyncio.to_thread(self._csv_links.publish, links)
            if not spec.volumes:
                await asyncio.sleep(MONITOR_TICK_S)
                continue
            # Not at once on start: the other hosts' agents may still be starting, and a
            # round now would take the coordinator's role from one that is not up yet.
            changed = [net for net in links if last and links[net] != last.get(net)]
            due = bool(changed) or time.monotonic() >= next_full
            if not due and self._csv_redirected and time.monotonic() >= next_look:
                next_look = time.monotonic() + REDIRECT_LOOK_S
                try:
                    now = await asyncio.to_thread(self._redirect_view, spec, book)
                    due, seen = seen is not None and now != seen, now
                except Exception as exc:  # the store away: the full check retries
                    _log(f"cannot read the cluster's view: {type(exc).__name__}: {exc}")
            if due:
                try:  # a host that left the cluster is refused by the re-exports at once
                    await self._refresh_authz()
                except Exception as exc:
                    _log(f"cannot update the re-exports' member list: {exc}")
                if changed:
                    _log("; ".join(f"link {net} {'up' if links[net] else 'down'}"
                                   for net in changed) + "; reconciling")
                next_full = time.monotonic() + FULL_CHECK_S
                try:
                    await self._reconcile()
                except Exception as exc:  # keep watching whatever one round hit
                    _log(f"reconcile failed: {type(exc).__name__}: {exc}")
                    next_full = time.monotonic() + RETRY_S
            last = links
            await asyncio.sleep(MONITOR_TICK_S)
