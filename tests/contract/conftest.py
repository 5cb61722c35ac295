"""One contract suite, every substrate: add a factory to ``FACTORIES`` and a param below.

The qemu substrate joins with ``pytest.param("qemu", marks=pytest.mark.lab)`` and a
factory that builds the lab for the spec and tears it down after the test.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path

import pytest

from vmcluster.model import ClusterSpec
from vmcluster.model.spec import load_spec
from vmcluster.substrate.protocol import Substrate
from vmcluster.substrate.sim import SimSubstrate

LAB = Path(__file__).resolve().parents[2] / "examples" / "lab.toml"


@contextmanager
def sim_substrate(spec: ClusterSpec) -> Iterator[Substrate]:
    yield SimSubstrate(spec)


FACTORIES: dict[str, Callable[[ClusterSpec], AbstractContextManager[Substrate]]] = {
    "sim": sim_substrate,
}


@pytest.fixture
def spec() -> ClusterSpec:
    return load_spec(LAB)


@pytest.fixture(params=[pytest.param("sim")])
def substrate(request: pytest.FixtureRequest, spec: ClusterSpec) -> Iterator[Substrate]:
    with FACTORIES[request.param](spec) as sub:
        yield sub
