"""Forgetting hosts given up for good (``cluster recover``): the spec and the VM
definitions without them, every VM still placeable; what cannot be is one clear error."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

from vmcluster.errors import InputError
from vmcluster.model.spec import parse_spec
from vmcluster.node.recover import forget_definition, forget_spec_text

ROOT = Path(__file__).resolve().parents[2]
LAB = (ROOT / "examples" / "lab.toml").read_text()
WITNESS = (ROOT / "examples" / "lab-witness.toml").read_text()


def test_two_of_three_hosts_forgotten_leave_one_that_owns_every_vm() -> None:
    text = forget_spec_text(LAB, ["node2", "node3"])
    spec = parse_spec(text)
    assert [n.name for n in spec.nodes] == ["node1"]
    assert {v.name: v.owner for v in spec.vms} == {"web": "node1", "db": "node1",
                                                    "batch": "node1"}
    assert spec.vm("web").preferred_owners == ("node1",)
    assert text.startswith("# Three nodes and the four networks")  # comments stay
    raw = tomllib.loads(text)
    assert "preferred_owners" not in next(v for v in raw["vms"] if v["name"] == "db")


def test_a_forgotten_witness_leaves_the_cluster_without_one() -> None:
    text = forget_spec_text(WITNESS, ["node2", "witness"])
    spec = parse_spec(text)
    assert spec.cluster.witness is None and [n.name for n in spec.hosts] == ["node1"]


def test_an_owner_moves_to_its_first_surviving_preferred_owner_then_allowed_node() -> None:
    d = {"name": "v", "owner": "n2", "preferred_owners": ["n2", "n3", "n1"],
         "allowed_nodes": ["n1", "n2", "n3"], "memory_mib": 64}
    assert forget_definition(d, ["n2"], ["n1", "n3"]) == {
        **d, "owner": "n3", "preferred_owners": ["n3", "n1"], "allowed_nodes": ["n1", "n3"]}
    only_allowed = {"name": "v", "owner": "n2", "allowed_nodes": ["n2", "n3"]}
    assert forget_definition(only_allowed, ["n2"], ["n1", "n3"])["owner"] == "n3"
    anywhere = {"name": "v", "owner": "n2"}
    assert forget_definition(anywhere, ["n2"], ["n1", "n3"])["owner"] == "n1"
    untouched = {"name": "v", "owner": "n1", "preferred_owners": ["n1"]}
    assert forget_definition(untouched, ["n2"], ["n1"]) == untouched


def test_what_cannot_be_forgotten_is_one_clear_error() -> None:
    with pytest.raises(InputError, match="VM v may run only on n2, n3, all forgotten"):
        forget_definition({"name": "v", "owner": "n2", "allowed_nodes": ["n2", "n3"]},
                          ["n2", "n3"], ["n1"])
    with pytest.raises(InputError, match="no host 'node9' in the cluster; its hosts: node1"):
        forget_spec_text(LAB, ["node9"])
    with pytest.raises(InputError, match="no host that runs VMs would be left"):
        forget_spec_text(LAB, ["node1", "node2", "node3"])
