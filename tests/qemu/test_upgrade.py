"""A cluster being upgraded host by host: QEMU 7.2 on one host, QEMU 10 on the other.

QEMU 7.2 comes from Debian 12 main's packages, extracted into the cache
(:mod:`vmcluster.lab.qemu_cache`); the VM is pinned to the newest machine type
both hosts know (pc-q35-7.2). 7.2 -> 10 must succeed with the memory check
intact; 10 -> 7.2 is refused with one line before anything starts.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from tests.helpers import vmc

from vmcluster.errors import MigrationRefused
from vmcluster.lab.observe import migrate_observed
from vmcluster.lab.substrate import LabSubstrate

if TYPE_CHECKING:
    from conftest import LabStarter

pytestmark = [
    pytest.mark.lab,
    pytest.mark.skipif(os.geteuid() != 0, reason="the lab needs root"),
]

SPEC = """
[cluster]
name = "upgrade"
[[networks]]
name = "Public"
subnet = "198.18.1.0/24"
gateway = "198.18.1.1"
[[networks]]
name = "Heartbeat"
subnet = "198.18.2.0/24"
[[networks]]
name = "Migration"
subnet = "198.18.3.0/24"
bandwidth_mbps = 1000
[[nodes]]
name = "new"
cores = 2
memory_mib = 2048
interfaces = { Public = "198.18.1.11", Heartbeat = "198.18.2.11", Migration = "198.18.3.11" }
[[nodes]]
name = "old"
cores = 2
memory_mib = 2048
interfaces = { Public = "198.18.1.12", Heartbeat = "198.18.2.12", Migration = "198.18.3.12" }
[[vms]]
name = "vm"
owner = "old"
memory_mib = 256
wws_mib = 32
dirty_mibps = 8
"""


@pytest.fixture(scope="module")
def lab(start_lab: LabStarter, tmp_path_factory: pytest.TempPathFactory) -> LabSubstrate:
    spec = tmp_path_factory.mktemp("upgrade") / "upgrade.toml"
    spec.write_text(SPEC)
    return start_lab(spec, "u", qemu={"old": "debian-7.2"})


def test_each_host_reports_its_own_qemu_and_the_vm_is_pinned(lab: LabSubstrate) -> None:
    assert lab.facts("old").version.startswith("7.2.")
    assert lab.facts("new").version_tuple[:2] >= (8, 0)
    assert lab.machine("vm") == "pc-q35-7.2"
    out = vmc("lab", "status", "--json", "--lab", lab.layout.name)
    assert out.returncode == 0, out.stderr
    st = json.loads(out.stdout)
    versions = {n["name"]: n["qemu_version"] for n in st["nodes"]}
    assert versions["old"].startswith("7.2.") and versions["new"] == lab.facts("new").version
    assert st["vms"][0]["machine"] == "pc-q35-7.2"


def test_a_vm_moves_from_qemu_7_2_to_qemu_10_and_never_back(lab: LabSubstrate) -> None:
    assert lab.owner("vm") == "old"
    r = migrate_observed(lab, "vm", "new")
    assert r.ok, r.error
    assert r.extra["memory_ok"] is True and r.extra["tcp_session_survived"] is True
    assert r.extra["blackout_ms"] is not None and r.extra["ab_failed"] == 0
    assert lab.owner("vm") == "new" and lab.status().vm("vm").state == "running"
    # Back to the older QEMU: refused before anything starts, the VM untouched.
    with pytest.raises(MigrationRefused, match="never back"):
        migrate_observed(lab, "vm", "old")
    cli = vmc("vm", "migrate", "vm", "--to", "old", "--lab", lab.layout.name)
    assert cli.returncode != 0 and "never back" in cli.stderr
    assert len(cli.stderr.strip().splitlines()) == 1
    assert lab.owner("vm") == "new" and lab.status().vm("vm").state == "running"


def test_the_cached_qemu_7_2_is_debian_12_mains(lab: LabSubstrate) -> None:
    install = json.loads(Path(lab.layout.state_file).read_text())["qemu"]["old"]
    assert install["label"] == "debian-7.2"
    assert Path(install["binary"]).is_file() and Path(install["moduledir"]).is_dir()
