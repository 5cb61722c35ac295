"""One contract suite, every substrate: a factory in ``FACTORIES`` and a param below.

``sim`` builds a fresh :class:`SimSubstrate` per test. ``qemu`` brings up one lab
(``examples/lab.toml``, named ``k<pid>``) per test module, stops its control plane
(etcd, heartbeats, manager candidates: a manager would restart the VMs the tests
stop or crash, and the contract is the substrate's, not the manager's), and puts
the lab back to "every node up, every link up, no VM running" before and after
each test instead of rebuilding it. At the end of the module the lab is taken
down and the module fails if any namespace, state file or process is left.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path

import pytest

from vmcluster.errors import SubstrateError
from vmcluster.lab import netns
from vmcluster.lab.lab import lab_down, lab_up
from vmcluster.lab.substrate import LabSubstrate
from vmcluster.model import ClusterSpec
from vmcluster.model.spec import load_spec
from vmcluster.substrate.host import netns as host_netns
from vmcluster.substrate.host.layout import LabLayout
from vmcluster.substrate.protocol import FaultInjector, Substrate
from vmcluster.substrate.sim import SimSubstrate

LAB = Path(__file__).resolve().parents[2] / "examples" / "lab.toml"

Factory = Callable[[pytest.FixtureRequest, ClusterSpec], AbstractContextManager[Substrate]]


@contextmanager
def sim_substrate(request: pytest.FixtureRequest, spec: ClusterSpec) -> Iterator[Substrate]:
    yield SimSubstrate(spec)


@pytest.fixture(scope="module")
def qemu_lab() -> Iterator[LabLayout]:
    """One lab for the module, without its control plane; checked clean at the end."""
    layout = LabLayout(f"k{os.getpid()}"[:12])
    try:
        # Hosts that run their agent only: no store, heartbeats, manager or watchdog acts
        # beside the contract's own calls.
        lab_up(LAB, layout.name, say=lambda _m: None, control_plane=False)
        yield layout
    finally:
        lab_down(layout)
        ps = subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True).stdout
        assert not netns.lab_namespaces(layout)
        assert not layout.state_dir.exists()
        assert str(layout.state_dir) + "/" not in ps
        assert f"--lab {layout.name} " not in ps


def reset_lab(sub: Substrate, spec: ClusterSpec) -> None:
    """Every node up, every link and storage path up, no VM (nor migration target) left."""

    assert isinstance(sub, LabSubstrate)
    for node in sub.status().nodes:
        if node.state != "up":
            sub.set_node(node.name, True)
    for nd in spec.nodes:
        for net in nd.interfaces:
            if not host_netns.link_is_up(sub.layout, net, nd.name):
                sub.set_link(net, nd.name, True)
    for node in sub.status().nodes:
        if not node.storage_path:
            sub.set_storage_path(node.name, True)
    for vm in spec.vms:
        sub.stop_vm(vm.name)
        for nd in spec.nodes:  # an incoming QEMU a test left behind on a target
            sub.agent(nd.name).call("stop", timeout_s=30, vm=vm.name)
    for nd in spec.nodes:
        if sub.agent(nd.name).call("list", timeout_s=10)["vms"]:
            raise SubstrateError(f"reset: {nd.name} still runs QEMUs")


@contextmanager
def qemu_substrate(request: pytest.FixtureRequest, spec: ClusterSpec) -> Iterator[Substrate]:

    layout: LabLayout = request.getfixturevalue("qemu_lab")
    sub = LabSubstrate(layout, spec)
    reset_lab(sub, spec)
    try:
        yield sub
    finally:
        reset_lab(LabSubstrate(layout, spec), spec)


FACTORIES: dict[str, Factory] = {
    "sim": sim_substrate,
    "qemu": qemu_substrate,
}


@pytest.fixture
def spec() -> ClusterSpec:
    return load_spec(LAB)


@pytest.fixture(params=[pytest.param("sim"), pytest.param("qemu", marks=pytest.mark.lab)])
def substrate(request: pytest.FixtureRequest, spec: ClusterSpec) -> Iterator[Substrate]:
    with FACTORIES[request.param](request, spec) as sub:
        yield sub


@pytest.fixture
def faults(substrate: Substrate) -> FaultInjector:
    """The same world's fault injector: the simulator's and the lab's substrates are their
    own (a host's manager holds a plain QemuSubstrate, which has none)."""
    assert isinstance(substrate, (SimSubstrate, LabSubstrate))
    return substrate
