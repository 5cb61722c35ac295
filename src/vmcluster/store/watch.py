"""Watch streams over etcd's JSON gateway, resumable across endpoint failover."""

from __future__ import annotations

import contextlib
import http.client
import json
import queue
import socket
import threading
from dataclasses import dataclass
from typing import Literal

from vmcluster.errors import StoreError
from vmcluster.store.errors import StoreUnavailable
from vmcluster.store.etcd import PREFIX, EtcdClient, KeyValue, key_range
from vmcluster.store.transport import open_connection

__all__ = ["Watch", "WatchEvent"]


@dataclass(frozen=True)
class WatchEvent:
    type: Literal["PUT", "DELETE"]
    kv: KeyValue



class Watch:
    """A watch stream read by one thread; it reconnects (to the next endpoint) from the
    last revision it delivered, so no change is lost or repeated across a failover.

    ``get(timeout)`` returns the next batch of events, ``[]`` when none came in
    time, and raises the StoreError that ended the stream. ``close()`` ends it.
    """

    RECONNECT_S = 0.2
    MAX_FAILURES = 50  # consecutive failed connects (about 10 s + timeouts) end the watch

    def __init__(self, client: EtcdClient, key: str, *, prefix: bool = False,
                 start_revision: int = 0) -> None:
        """Follow changes of ``key`` (or every key under it) from ``start_revision``."""
        self._client, self._key, self._prefix = client, key, prefix
        self._next = start_revision
        self._queue: queue.Queue[list[WatchEvent] | StoreError] = queue.Queue()
        self._closed = threading.Event()
        self._lock = threading.Lock()
        self._sock: socket.socket | None = None
        self._thread = threading.Thread(target=self._run, name=f"watch {key}", daemon=True)
        self._thread.start()

    def get(self, timeout: float) -> list[WatchEvent]:
        try:
            item = self._queue.get(timeout=timeout)
        except queue.Empty:
            return []
        if isinstance(item, StoreError):
            self._queue.put(item)  # the stream stays ended for later calls
            raise item
        return item

    def close(self) -> None:
        self._closed.set()
        with self._lock:
            if self._sock is not None:
                with contextlib.suppress(OSError):
                    self._sock.shutdown(socket.SHUT_RDWR)
        self._thread.join(timeout=5)

    def __enter__(self) -> Watch:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def _run(self) -> None:
        failures = 0
        n = len(self._client.endpoints)
        idx = self._client._current
        while not self._closed.is_set():
            url = self._client.endpoints[idx % n]
            try:
                delivered = self._stream(url)
            except StoreError as exc:
                self._queue.put(exc)
                return
            except (OSError, http.client.HTTPException, ValueError):
                delivered = False
            failures = 0 if delivered else failures + 1
            if failures >= self.MAX_FAILURES:
                self._queue.put(StoreUnavailable(f"watch on {self._key} lost every endpoint"))
                return
            idx += 1
            self._closed.wait(self.RECONNECT_S)

    def _stream(self, url: str) -> bool:
        """Read one stream until it breaks; True when it was established."""
        create = key_range(self._key, self._prefix)
        if self._next:
            create["start_revision"] = str(self._next)
        conn = open_connection(url, 2.0, self._client.ssl_context)
        try:
            conn.connect()
            assert conn.sock is not None
            with self._lock:
                if self._closed.is_set():
                    return True
                self._sock = conn.sock
            conn.request("POST", PREFIX + "/watch", json.dumps({"create_request": create}))
            resp = conn.getresponse()
            if resp.status != 200:
                return False
            conn.sock.settimeout(None)  # a quiet key may stay silent for hours
            established = False
            while not self._closed.is_set():
                line = resp.readline()
                if not line:
                    return established
                msg = json.loads(line)
                if "error" in msg:
                    return established
                result = msg.get("result", {})
                if int(result.get("compact_revision", 0)):
                    raise StoreError(
                        f"watch on {self._key}: revision {self._next} was compacted away"
                    )
                established = established or bool(result.get("created"))
                events = [
                    WatchEvent(
                        "DELETE" if ev.get("type") == "DELETE" else "PUT",
                        KeyValue.from_wire(ev.get("kv", {})),
                    )
                    for ev in result.get("events") or []
                ]
                if events:
                    self._next = events[-1].kv.mod_revision + 1
                    self._queue.put(events)
            return True
        finally:
            with self._lock:
                self._sock = None
            conn.close()
