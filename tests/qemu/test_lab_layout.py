"""Fast tests of the lab's naming and QEMU command line (no root, no QEMU)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from vmcluster.errors import UsageError
from vmcluster.substrate.host.layout import LabLayout, check_lab_name, short_name
from vmcluster.substrate.qemu.vm import VmConfig, mac_for, qemu_argv


@given(st.text(min_size=1, max_size=40))
def test_interface_names_fit_linux_limit(name: str) -> None:
    assert len(LabLayout.node_if(name)) <= 15
    assert len(LabLayout.tap(name)) <= 15


def test_short_names_keep_readable_names_and_hash_long_ones() -> None:
    assert short_name("", "Migration") == "Migration"
    long1, long2 = short_name("", "AVeryLongNetworkName1"), short_name("", "AVeryLongNetworkName2")
    assert long1 != long2 and len(long1) == 15


def test_lab_prefixes_never_overlap() -> None:
    a, b = LabLayout("t1"), LabLayout("t12")
    assert not b.node_ns("node1").startswith(a.ns_prefix)
    assert a.state_dir != b.state_dir


@pytest.mark.parametrize("bad", ["", "Lab", "a-b", "x" * 13, "t 1"])
def test_bad_lab_names_are_refused(bad: str) -> None:
    with pytest.raises(UsageError):
        check_lab_name(bad)


def _cfg(accel: str = "tcg") -> VmConfig:
    return VmConfig("web", 256, 1, mac_for("web"), "t-web", "brpub", "/k", "/i", "console=ttyS0",
                    "/d.img", accel)


def test_qemu_uses_single_threaded_tcg_and_incoming_defer() -> None:
    argv = qemu_argv(_cfg(), "/q.sock", "/s.log", "/p.pid", incoming=True)
    assert argv[argv.index("-accel") + 1] == "tcg,thread=single"
    assert argv[-2:] == ["-incoming", "defer"]
    assert any("mac=52:54:00:" in a for a in argv)
    kvm = qemu_argv(_cfg("kvm"), "/q.sock", "/s.log", "/p.pid")
    assert kvm[kvm.index("-accel") + 1] == "kvm" and "-incoming" not in kvm


def test_mac_is_stable_and_distinct() -> None:
    assert mac_for("web") == mac_for("web") != mac_for("db")
