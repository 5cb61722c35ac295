"""cluster backup / restore against a real etcd: what was there at the backup comes back,
what came later does not; a damaged or foreign file is one clear error."""

from __future__ import annotations

import io
import json
import shutil
import tarfile
from pathlib import Path

import pytest

from vmcluster.errors import InputError
from vmcluster.store import EtcdClient, embedded
from vmcluster.store.backup import read_backup, restore_member, save_backup

pytestmark = pytest.mark.skipif(shutil.which("etcd") is None or shutil.which("etcdctl") is None,
                                reason="etcd-server and etcd-client not installed")


def test_a_member_restored_from_a_backup_has_what_was_there_then(workdir: Path) -> None:
    cluster = embedded(workdir / "etcd", host="127.0.0.46", timeout=60)
    try:
        client = EtcdClient(cluster.endpoints())
        client.put("/vmc/t/vms/web", b'{"memory_mib": 257}')
        info = save_backup(workdir / "b.tar.gz", "t", cluster.endpoints(), client.member_list(),
                           None)
        client.put("/vmc/t/vms/late", b"{}")  # after the backup: not restored
        assert [n for n, _ in info.members] == ["solo"]
        member = cluster.member("solo")
    finally:
        cluster.close(remove=False)
    with pytest.raises(InputError, match="vmclusterd runs: stop it first"):
        restore_member(workdir / "b.tar.gz", "solo", member.data_dir, running=True)
    with pytest.raises(InputError, match="no member 'node9'"):
        restore_member(workdir / "b.tar.gz", "node9", member.data_dir, running=False)
    got, aside = restore_member(workdir / "b.tar.gz", "solo", member.data_dir,
                                running=False)
    assert got.sha256 == info.sha256 and aside is not None and aside.exists()
    cluster.start(state="existing")
    try:
        cluster.wait_healthy(timeout=60)
        client = EtcdClient(cluster.endpoints())
        web = client.get("/vmc/t/vms/web")
        assert web is not None and json.loads(web.value) == {"memory_mib": 257}
        assert client.get("/vmc/t/vms/late") is None
    finally:
        cluster.close()


def test_a_file_that_is_not_a_sound_backup_is_one_error(workdir: Path) -> None:
    junk = workdir / "junk"
    junk.write_bytes(b"not a tarball")
    with pytest.raises(InputError, match="cannot read the backup"):
        read_backup(junk)
    other = workdir / "other.tar.gz"
    with tarfile.open(other, "w:gz") as tar:
        data = b"hello"
        entry = tarfile.TarInfo("readme.txt")
        entry.size = len(data)
        tar.addfile(entry, io.BytesIO(data))
    with pytest.raises(InputError, match="not a vmcluster backup"):
        read_backup(other)
    bad = workdir / "bad.tar.gz"
    with tarfile.open(bad, "w:gz") as tar:
        for name, data in (("snapshot.db", b"snap"), ("backup.json", json.dumps(
                {"format": 1, "cluster": "t", "sha256": "00", "taken_at": 0, "endpoint": "e",
                 "members": [{"name": "a", "peer_urls": ["http://x:1"]}]}).encode())):
            entry = tarfile.TarInfo(name)
            entry.size = len(data)
            tar.addfile(entry, io.BytesIO(data))
    with pytest.raises(InputError, match="checksum does not match"):
        read_backup(bad)
