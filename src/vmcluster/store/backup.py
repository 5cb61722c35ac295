"""Back the cluster's store up to one file, and restore a host's etcd member from it.

A backup is a gzip'd tar of two files:

* ``snapshot.db``: an etcd snapshot (``etcdctl snapshot save`` against one member,
  over TLS with a cluster certificate): every placement, intent, definition,
  token hash, the spec and the CA record, as of one revision;
* ``backup.json``: what a restore needs besides: the cluster's name, its members
  (name and peer URLs: the restored cluster has exactly these), the snapshot's
  SHA-256, when and from which endpoint it was taken.

A restore is per host and offline, as etcd's own disaster recovery is: with the
host's ``vmclusterd`` stopped, ``restore_member`` moves its member's data
directory aside (``<dir>.before-restore-<time>``) and writes a new one with
``etcdctl snapshot restore`` under the member's own name and the backup's member
list. Restore every host that runs a member, then start them all: they form a new
etcd cluster holding the backup's state (a VM defined after the backup is not in
it). The tool is ``etcdctl`` from Debian's ``etcd-client`` (etcd 3.4).
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import subprocess
import tarfile
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vmcluster.errors import InputError, StoreError
from vmcluster.pki import NodeCredentials

__all__ = ["ETCDCTL", "Backup", "read_backup", "restore_member", "save_backup"]

ETCDCTL = "etcdctl"
FORMAT = 1


@dataclass(frozen=True)
class Backup:
    """What ``backup.json`` says (and the snapshot next to it, once extracted)."""

    cluster: str
    members: tuple[tuple[str, tuple[str, ...]], ...]  # (name, peer URLs)
    sha256: str
    taken_at: float
    endpoint: str

    def token(self) -> str:
        """The restored cluster's token: the same on every host restored from this backup
        (etcd derives the cluster's id from it and the member list), new for each backup."""
        return f"vmc-{self.cluster}-{self.sha256[:12]}"

    def initial_cluster(self) -> str:
        return ",".join(f"{name}={url}" for name, urls in self.members for url in urls)

    def member(self, name: str) -> tuple[str, ...]:
        for n, urls in self.members:
            if n == name:
                return urls
        raise InputError(f"the backup's cluster has no member {name!r} (members: "
                         f"{', '.join(n for n, _ in self.members)}); restore it on a host "
                         "that ran one")

    def to_json(self) -> dict[str, Any]:
        return {"format": FORMAT, "cluster": self.cluster, "sha256": self.sha256,
                "taken_at": self.taken_at, "endpoint": self.endpoint,
                "members": [{"name": n, "peer_urls": list(u)} for n, u in self.members]}


def _etcdctl(args: Sequence[str], prefix: Sequence[str] = (), timeout_s: float = 120.0,
             what: str = "etcdctl") -> str:
    try:
        out = subprocess.run([*prefix, ETCDCTL, *args], capture_output=True, text=True,
                             timeout=timeout_s, env={**os.environ, "ETCDCTL_API": "3"})
    except FileNotFoundError as exc:
        raise StoreError(f"{ETCDCTL} is not installed (Debian's etcd-client); "
                         "./scripts/setup installs it") from exc
    except subprocess.TimeoutExpired as exc:
        raise StoreError(f"{what} took longer than {timeout_s:.0f} s") from exc
    if out.returncode != 0:
        last = (out.stderr.strip().splitlines() or ["no message"])[-1]
        raise StoreError(f"{what} failed: {last}")
    return out.stdout


def save_backup(path: Path, cluster: str, endpoints: Sequence[str],
                members: Sequence[dict[str, Any]], tls: NodeCredentials | None,
                prefix: Sequence[str] = ()) -> Backup:
    """Snapshot the store through the first endpoint that answers and write the backup
    file at ``path`` (atomically: a half-written backup is never left under its name)."""
    named = tuple((str(m.get("name") or ""), tuple(str(u) for u in m.get("peerURLs", [])))
                  for m in members)
    if not named or any(not n or not u for n, u in named):
        raise StoreError(f"the store's member list is incomplete ({members!r:.200}); "
                         "a member that has not started yet has no name: try again")
    creds = [] if tls is None else [f"--cacert={tls.ca}", f"--cert={tls.cert}",
                                     f"--key={tls.key}"]
    work = Path(tempfile.mkdtemp(prefix="vmc-backup-"))
    try:
        snap = work / "snapshot.db"
        errors = []
        for ep in endpoints:
            try:
                _etcdctl([f"--endpoints={ep}", *creds, "--command-timeout=60s",
                          "snapshot", "save", str(snap)], prefix,
                         what=f"the snapshot from {ep}")
                break
            except StoreError as exc:
                errors.append(str(exc))
        else:
            raise StoreError("no etcd member gave a snapshot: " + "; ".join(errors))
        digest = hashlib.sha256(snap.read_bytes()).hexdigest()
        info = Backup(cluster, named, digest, time.time(), ep)
        tmp = path.with_name(f".{path.name}.tmp")
        with tarfile.open(tmp, "w:gz") as tar:
            tar.add(snap, arcname="snapshot.db")
            data = json.dumps(info.to_json(), indent=1).encode()
            entry = tarfile.TarInfo("backup.json")
            entry.size, entry.mtime = len(data), int(info.taken_at)
            tar.addfile(entry, io.BytesIO(data))
        tmp.replace(path)
        return info
    finally:
        shutil.rmtree(work, ignore_errors=True)


def read_backup(path: Path, into: Path | None = None) -> Backup:
    """Check a backup file (its JSON, its snapshot's checksum); with ``into``, extract the
    snapshot there as ``snapshot.db``. A bad file is one InputError naming it."""
    try:
        with tarfile.open(path, "r:gz") as tar:
            names = set(tar.getnames())
            if names != {"snapshot.db", "backup.json"}:
                raise InputError(f"{path}: not a vmcluster backup (it holds "
                                 f"{', '.join(sorted(names)) or 'nothing'})")
            meta = tar.extractfile("backup.json")
            snap = tar.extractfile("snapshot.db")
            assert meta is not None and snap is not None
            doc = json.loads(meta.read())
            data = snap.read()
    except (OSError, tarfile.TarError, EOFError) as exc:
        raise InputError(f"{path}: cannot read the backup: {exc}") from exc
    except ValueError as exc:
        raise InputError(f"{path}: its backup.json is not JSON: {exc}") from exc
    try:
        if doc.get("format") != FORMAT:
            raise InputError(f"{path}: backup format {doc.get('format')!r}, this vmcluster "
                             f"reads {FORMAT}")
        info = Backup(str(doc["cluster"]), tuple(
            (str(m["name"]), tuple(str(u) for u in m["peer_urls"])) for m in doc["members"]),
            str(doc["sha256"]), float(doc["taken_at"]), str(doc["endpoint"]))
    except (KeyError, TypeError, ValueError) as exc:
        raise InputError(f"{path}: its backup.json lacks {exc}") from exc
    if hashlib.sha256(data).hexdigest() != info.sha256:
        raise InputError(f"{path}: the snapshot's checksum does not match; the file is "
                         "damaged")
    if into is not None:
        (into / "snapshot.db").write_bytes(data)
    return info


def restore_member(path: Path, node: str, data_dir: Path,
                   running: bool) -> tuple[Backup, Path | None]:
    """Make ``data_dir`` this host's etcd member ``node`` of the backup's cluster (see the
    module docstring). Refused while ``running`` (this host's vmclusterd or etcd). Returns
    the backup and where the old data went (None if there was none)."""
    if running:
        raise InputError(f"{node}'s vmclusterd runs: stop it first (systemctl stop "
                         "vmclusterd); a member restores only while it is down")
    work = Path(tempfile.mkdtemp(prefix="vmc-restore-"))
    try:
        info = read_backup(path, into=work)
        peers = info.member(node)
        fresh = work / "member-data"
        _etcdctl(["snapshot", "restore", str(work / "snapshot.db"), f"--name={node}",
                  f"--data-dir={fresh}", f"--initial-cluster={info.initial_cluster()}",
                  f"--initial-cluster-token={info.token()}",
                  f"--initial-advertise-peer-urls={','.join(peers)}"],
                 what=f"restoring {node}'s member")
        aside = None
        if data_dir.exists():
            aside = data_dir.with_name(f"{data_dir.name}.before-restore-{int(time.time())}")
            data_dir.rename(aside)
        data_dir.parent.mkdir(parents=True, exist_ok=True)
        shutil.move(str(fresh), str(data_dir))
        os.chmod(data_dir, 0o700)
        return info, aside
    finally:
        shutil.rmtree(work, ignore_errors=True)
