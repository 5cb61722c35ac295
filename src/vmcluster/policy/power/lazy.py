"""The compiled kernels (:mod:`.kernels`), loaded when a policy first computes: numba and
LLVM cost a process about 0.2 s and 66 MiB, which a node that never consolidates should
not pay (measured by importing vmclusterd's module: 49 MiB without, 115 MiB with)."""

from __future__ import annotations

import importlib.util
import sys
from types import ModuleType

__all__ = ["kernels"]


def _lazy(name: str) -> ModuleType:
    """The module ``name``, executed on its first attribute access."""
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.find_spec(name)
    if spec is None or spec.loader is None:
        raise ImportError(f"no module {name}")
    loader = importlib.util.LazyLoader(spec.loader)
    spec.loader = loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    loader.exec_module(module)
    return module


kernels = _lazy("vmcluster.policy.power.kernels")
