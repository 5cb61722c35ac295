"""Spec loading: the shipped examples load, and each kind of mistake gets one located error."""

from __future__ import annotations

from pathlib import Path

import pytest

from vmcluster.errors import SpecError
from vmcluster.model.spec import load_spec, parse_spec

ROOT = Path(__file__).resolve().parents[2]

BASE = """\
[cluster]
name = "t"

[[networks]]
name = "Public"
subnet = "198.18.1.0/24"
gateway = "198.18.1.1"

[[networks]]
name = "Private"
subnet = "198.18.2.0/24"

[[nodes]]
name = "n1"
cores = 2
memory_mib = 1024
interfaces = { Public = "198.18.1.11", Private = "198.18.2.11" }

[[nodes]]
name = "n2"
cores = 2
memory_mib = 1024
interfaces = { Public = "198.18.1.12", Private = "198.18.2.12" }

[[vms]]
name = "vm1"
owner = "n1"
memory_mib = 256
"""


def test_examples_load() -> None:
    seed = load_spec(ROOT / "examples/seed.toml")
    assert [n.name for n in seed.networks] == ["Cluster Network 1", "Cluster Network 2"]
    assert seed.networks[0].metric == 10001
    lab = load_spec(ROOT / "examples/lab.toml")
    assert len(lab.nodes) == 3 and len(lab.networks) == 4
    assert lab.network("Storage").role == 0


def test_a_vm_migrates_on_100_ms_and_never_by_force_or_postcopy_unless_it_says() -> None:
    vm = parse_spec(BASE, "t.toml").vms[0]
    assert (vm.max_downtime_ms, vm.on_no_convergence, vm.allow_postcopy) == (
        100.0, "throttle", False)
    text = BASE.replace("memory_mib = 256", "memory_mib = 256\nallow_postcopy = true\n"
                        'on_no_convergence = "force"', 1)
    vm = parse_spec(text, "t.toml").vms[0]
    assert (vm.on_no_convergence, vm.allow_postcopy) == ("force", True)


def test_a_vms_pages_may_go_as_deltas_unless_it_says_not() -> None:
    assert parse_spec(BASE, "t.toml").vms[0].migration_deltas is True
    text = BASE.replace("memory_mib = 256", "memory_mib = 256\nmigration_deltas = false", 1)
    assert parse_spec(text, "t.toml").vms[0].migration_deltas is False


def test_migrations_use_one_channel_unless_the_cluster_asks_for_more() -> None:
    assert parse_spec(BASE).cluster.migration_channels == 1
    text = BASE.replace('name = "t"', 'name = "t"\nmigration_channels = 4', 1)
    assert parse_spec(text).cluster.migration_channels == 4


def test_a_vm_may_pin_its_machine_type() -> None:
    assert parse_spec(BASE).vm("vm1").machine is None  # pinned when the VM is defined
    text = BASE.replace("memory_mib = 256", 'memory_mib = 256\nmachine = "pc-q35-7.2"')
    pinned = parse_spec(text)
    assert pinned.vm("vm1").machine == "pc-q35-7.2"


def test_vm_addresses_are_assigned_on_the_public_network() -> None:
    spec = parse_spec(BASE)
    assert str(spec.vm("vm1").address) == "198.18.1.101"


@pytest.mark.parametrize(
    ("old", "new", "at", "fragment"),
    [
        ('name = "vm1"\n', 'name = "vm1"\ncolour = "red"\n', "colour", "unknown key 'colour'"),
        ('name = "n2"', 'name = "n1"', 'name = "n1"#2', "duplicate node name 'n1'"),
        ('Private = "198.18.2.12"', 'Storage = "198.18.2.12"', "Storage =", "undeclared network"),
        ('Private = "198.18.2.12"', 'Private = "198.18.9.12"', "198.18.9.12", "outside its subnet"),
        ('subnet = "198.18.2.0/24"', 'subnet = "198.18.2.0/24"\nrole = 2', "role = 2", "0, 1 or 3"),
        ('owner = "n1"', 'owner = "n9"', "owner", "owner 'n9' is not a declared node"),
        ("cores = 2", "cores = 0", "cores = 0", "cores must be > 0"),
        ('name = "t"', 'name = "t"\nnodes = 3', "nodes = 3", "unknown key 'nodes'"),
        ("memory_mib = 256", 'memory_mib = "lots"', "lots", "memory_mib must be int"),
        ("memory_mib = 256", 'memory_mib = 256\nmachine = "q35"', "machine",
         "not a versioned q35 machine type"),
        ('name = "vm1"', 'name = "../vm1"', "../vm1", "VM name '../vm1' is not 1-63 letters"),
        ("memory_mib = 256", 'memory_mib = 256\non_no_convergence = "pray"', "pray",
         "on_no_convergence must be one of throttle, abort, force"),
        ("memory_mib = 256", 'memory_mib = 256\nallow_postcopy = "yes"', "allow_postcopy",
         "allow_postcopy must be bool"),
        ("memory_mib = 256", 'memory_mib = 256\nmigration_deltas = 1', "migration_deltas",
         "migration_deltas must be bool"),
        ('subnet = "198.18.1.0/24"', 'subnet = "198.18.1.0/24"\nmtu = 65536', "mtu",
         "mtu must be 1280 to 9000, got 65536"),
        ('name = "t"', 'name = "t"\nmigration_channels = 0', "migration_channels",
         "migration_channels must be > 0"),
    ],
)
def test_bad_specs_get_one_located_error(old: str, new: str, at: str, fragment: str) -> None:
    text = BASE.replace(old, new, 1)
    assert text != BASE
    needle, _, nth = at.partition("#")
    hits = [i for i, ln in enumerate(text.splitlines(), start=1) if needle in ln]
    line = hits[int(nth or 1) - 1]
    with pytest.raises(SpecError) as info:
        parse_spec(text, "bad.toml")
    message = str(info.value)
    assert fragment in message
    assert message.startswith(f"bad.toml:{line}:"), message
    assert "\n" not in message


WITNESS = BASE.replace('name = "t"\n', 'name = "t"\nwitness = "qd"\n', 1) + """
[[nodes]]
name = "qd"
interfaces = { Private = "198.18.2.20" }
"""


def test_a_witness_is_a_host_that_runs_no_vm() -> None:
    spec = parse_spec(WITNESS)
    assert [n.name for n in spec.nodes] == ["n1", "n2"]  # the hosts that run VMs
    assert spec.witness is not None and spec.witness.name == "qd"
    assert [h.name for h in spec.hosts] == ["n1", "n2", "qd"]
    assert spec.host("qd") is spec.witness and spec.cluster.witness == "qd"
    seed = load_spec(ROOT / "examples/seed-witness.toml")
    assert len(seed.nodes) == 2 and seed.witness is not None


@pytest.mark.parametrize(
    ("old", "new", "fragment"),
    [
        ('witness = "qd"', 'witness = "qx"', "witness 'qx' names no [[nodes]] entry"),
        ('witness = "qd"', "witness = true", "witness = true names no host"),
        ('witness = "qd"', 'witness = ["qd", "n2"]', "one witness only"),
        ('{ Private = "198.18.2.20" }', "{ }", "has no address on a cluster network"),
        ('owner = "n1"', 'owner = "qd"', "'qd' is the cluster's witness: it runs no VM"),
        ('owner = "n1"', 'owner = "n1"\npreferred_owners = ["n2", "qd"]', "cluster's witness"),
    ],
)
def test_bad_witnesses_get_one_line(old: str, new: str, fragment: str) -> None:
    text = WITNESS.replace(old, new, 1)
    assert text != WITNESS
    with pytest.raises(SpecError) as info:
        parse_spec(text, "w.toml")
    assert fragment in str(info.value) and "\n" not in str(info.value)
    assert str(info.value).startswith("w.toml:")


def test_invalid_toml_names_the_line() -> None:
    with pytest.raises(SpecError, match=r"^bad.toml:3: invalid TOML"):
        parse_spec('[cluster]\nname = "x"\nthis is not toml\n', "bad.toml")


def test_missing_file() -> None:
    with pytest.raises(SpecError, match="no such file"):
        load_spec("/nonexistent/spec.toml")


def test_vm_definitions_from_elsewhere_replace_the_texts_and_errors_name_them() -> None:
    """The cluster's VMs live in the store: the spec text's [[vms]] give way to them, and a
    bad definition's error names the VM and the key, not a line of the text."""
    from vmcluster.model.spec import spec_with_vms

    spec = spec_with_vms(BASE, "<store>", [
        {"name": "a", "owner": "n2", "memory_mib": 128},
        {"name": "b", "owner": "n1", "memory_mib": 64, "address": "198.18.1.150"}])
    assert [v.name for v in spec.vms] == ["a", "b"]  # vm1 of the text is not one of them
    assert str(spec.vm("a").address) == "198.18.1.101"
    assert not spec_with_vms(BASE, "<store>", []).vms
    with pytest.raises(SpecError) as bad:
        spec_with_vms(BASE, "<store>", [{"name": "a", "owner": "n9", "memory_mib": 128}])
    assert bad.value.field == "owner" and bad.value.where == "<store>"
    assert bad.value.what.startswith("vm 'a' owner 'n9' is not a declared node")
    with pytest.raises(SpecError) as unknown:
        spec_with_vms(BASE, "<store>", [{"name": "a", "owner": "n1", "memory_mib": 1, "x": 1}])
    assert unknown.value.field == "x"


def test_a_network_may_say_its_mtu() -> None:
    assert parse_spec(BASE, "t.toml").networks[0].mtu is None
    text = BASE.replace('subnet = "198.18.1.0/24"', 'subnet = "198.18.1.0/24"\nmtu = 9000', 1)
    assert parse_spec(text, "t.toml").networks[0].mtu == 9000
