"""Reach a lab's addresses from outside its namespaces: one thread enters a namespace.

The lab's networks exist only inside the namespaces the lab creates, so a
command run from the host (``vmcluster events``, a test) cannot open a TCP
connection to an etcd member there. Linux keeps the network namespace per
thread, and a thread's children start in its namespace: :class:`NetnsThread`
is one worker thread that ``setns``-es into a lab namespace once, and every
call handed to it (and every thread such a call starts, e.g. an etcd watch)
talks from inside. Unix sockets (the node agents) are paths, not network
names, so they stay reachable from any namespace.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TypeVar

from vmcluster.errors import LabError

__all__ = ["NetnsThread", "enter_netns"]

CLONE_NEWNET = 0x40000000
T = TypeVar("T")


def enter_netns(ns: str) -> None:
    """Move the calling thread into network namespace ``ns`` (``/run/netns/NS``)."""
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    try:
        fd = os.open(f"/run/netns/{ns}", os.O_RDONLY)
    except OSError as exc:
        raise LabError(f"network namespace {ns} does not exist; is the lab up?") from exc
    try:
        if libc.setns(fd, CLONE_NEWNET) != 0:
            err = ctypes.get_errno()
            raise LabError(f"cannot enter namespace {ns}: {os.strerror(err)} (needs root)")
    finally:
        os.close(fd)


class NetnsThread:
    """A worker thread inside ``ns``; ``call(fn, *args)`` runs ``fn`` there and returns."""

    def __init__(self, ns: str) -> None:
        self.ns = ns
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"netns {ns}")
        self._pool.submit(enter_netns, ns).result(timeout=10)

    def call(self, fn: Callable[..., T], *args: object, timeout: float | None = None) -> T:
        fut: Future[T] = self._pool.submit(fn, *args)
        return fut.result(timeout=timeout)

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)

    def __enter__(self) -> NetnsThread:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()
