"""Authenticated heartbeats: an HMAC with the cluster's key, and no replays.

A heartbeat datagram is JSON ``{"c", "n", "net", "e", "s", "h", "m"}``: cluster,
sender, network, the sender's epoch (its start time in ns, so that a restarted
sender's sequence may begin again), its sequence number, ``h``, the peers the sender
hears on that network (what makes a route two-way, see
:mod:`vmcluster.heartbeat.detector`; a datagram without it, from an older sender,
says nothing about them), and ``m``, the HMAC-SHA256 (hex) of the other fields in
canonical form under the cluster's heartbeat key. A receiver drops and counts a
datagram whose tag is wrong (``forged``, including every datagram of another
cluster's key) and one whose ``(epoch, seq)`` is not newer than the last it accepted
from that sender on that network (``replayed``): a captured heartbeat sent again can
never keep a dead node alive.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import secrets
import time
from collections.abc import Collection
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, NamedTuple

from vmcluster.errors import InputError
from vmcluster.pki import write_file

__all__ = ["KEY_BYTES", "Checked", "HeartbeatAuth", "Verdict", "load_key", "new_key_file"]

KEY_BYTES = 32
Verdict = Literal["ok", "forged", "replayed", "malformed"]


class Checked(NamedTuple):
    """A datagram's verdict, its sender, the sender's epoch, and whom it hears (None: it
    did not say)."""

    verdict: Verdict
    sender: str
    epoch: int = 0
    hears: frozenset[str] | None = None


def new_key_file(path: Path) -> None:
    """Write a new random heartbeat key to ``path`` (hex, mode 0600)."""
    write_file(path, (secrets.token_hex(KEY_BYTES) + "\n").encode())


def load_key(path: Path) -> bytes:
    """The heartbeat key in ``path``; one clear line if it is missing or malformed."""
    try:
        text = path.read_text().strip()
    except OSError as exc:
        raise InputError(f"heartbeat key {path}: {exc.strerror}; create it with the "
                         "cluster (lab up writes one per node)") from exc
    try:
        key = bytes.fromhex(text)
    except ValueError as exc:
        raise InputError(f"heartbeat key {path} is not hex") from exc
    if len(key) < 16:
        raise InputError(f"heartbeat key {path} has {len(key)} bytes; it needs at least 16")
    return key


def _canonical(fields: dict[str, Any]) -> bytes:
    return json.dumps(fields, sort_keys=True, separators=(",", ":")).encode()


@dataclass
class HeartbeatAuth:
    """Seals this node's heartbeats and checks its peers' (see the module docstring)."""

    key: bytes
    # Newer than any earlier life of this sender: its start time, in ns.
    epoch: int = field(default_factory=time.time_ns)
    _last: dict[tuple[str, str], tuple[int, int]] = field(default_factory=dict)

    def seal(self, cluster: str, node: str, network: str, seq: int,
             hears: Collection[str] | None = None) -> bytes:
        fields: dict[str, Any] = {"c": cluster, "n": node, "net": network, "e": self.epoch,
                                  "s": seq}
        if hears is not None:
            fields["h"] = sorted(hears)
        tag = hmac.new(self.key, _canonical(fields), hashlib.sha256).hexdigest()
        return _canonical({**fields, "m": tag})

    def check(self, data: bytes, cluster: str, network: str) -> Checked:
        """The verdict on one datagram that arrived on ``network``, its sender, and (when
        it is ``ok``) the sender's epoch and whom it hears."""
        try:
            msg = json.loads(data)
            tag = str(msg.pop("m"))
            sender, epoch, seq = str(msg["n"]), int(msg["e"]), int(msg["s"])
            same = msg["c"] == cluster and msg["net"] == network
            listed = msg.get("h")
            if listed is not None and not isinstance(listed, list):
                raise TypeError("h is not a list")
            hears = None if listed is None else frozenset(str(p) for p in listed)
        except (ValueError, KeyError, TypeError, AttributeError):
            return Checked("malformed", "")
        want = hmac.new(self.key, _canonical(msg), hashlib.sha256).hexdigest()
        if not hmac.compare_digest(tag, want):
            return Checked("forged", sender)
        if not same:
            return Checked("malformed", sender)
        key = (sender, network)
        if key in self._last and (epoch, seq) <= self._last[key]:
            return Checked("replayed", sender)
        self._last[key] = (epoch, seq)
        return Checked("ok", sender, epoch, hears)
