"""The package layout keeps the layers of docs/architecture.md: imports only point down,
the product never imports the harness, policies are pure, and no import hides inside a
function to dodge a cycle. Read from the source's own import statements (ast), so a
change that breaks a layer fails here, in the fast tests."""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

SRC = Path(__file__).resolve().parent.parent / "src" / "vmcluster"

# What each product package may import, besides itself, errors.py and model/ (the nouns).
ALLOWED = {
    "model": set(),
    "policy": set(),
    "pki": set(),
    "substrate": {"policy", "pki"},
    "store": {"substrate", "policy", "pki"},  # substrate: the Clock protocol only
    "heartbeat": {"substrate", "policy", "pki"},
    "csv": {"substrate", "store", "policy", "pki"},
    "control": {"substrate", "store", "heartbeat", "policy"},
    "node": {"substrate", "store", "heartbeat", "csv", "control", "policy", "pki"},
    "experiments": {"policy"},  # beside the product: runs its policies
}
BASE = {"errors", "model"}
# Function-local imports of our own modules that are there for a reason other than a cycle.
LAZY = {("cli/simulate.py", "vmcluster.cli.simplot")}  # matplotlib only when a plot is asked


def _package(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def _imports() -> list[tuple[str, str, str, bool]]:
    """(file, importing package, imported module, inside a function) for every import
    of a vmcluster module in src/vmcluster."""
    found = []
    for path in sorted(SRC.rglob("*.py")):
        rel = path.relative_to(SRC).as_posix()
        pkg = rel.split("/")[0].removesuffix(".py")
        tree = ast.parse(path.read_text(), rel)
        local = {id(n) for f in ast.walk(tree)
                 if isinstance(f, (ast.FunctionDef, ast.AsyncFunctionDef))
                 for n in ast.walk(f)}
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names = [node.module]
            elif isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            else:
                continue
            for name in names:
                if name.startswith("vmcluster."):
                    found.append((rel, pkg, name, id(node) in local))
    return found


def _graph() -> dict[str, set[str]]:
    graph: dict[str, set[str]] = defaultdict(set)
    for _rel, pkg, module, _local in _imports():
        target = _package(module)
        if target != pkg:
            graph[pkg].add(target)
    return graph


def test_there_are_imports_to_check() -> None:
    graph = _graph()
    assert {"control", "node", "lab", "policy", "substrate"} <= set(graph)
    assert "policy" in graph["control"] and "node" in graph["lab"]


def test_no_package_imports_a_package_above_it() -> None:
    wrong = sorted(f"{pkg} -> {target}" for pkg, targets in _graph().items()
                   if pkg in ALLOWED for target in targets - ALLOWED[pkg] - BASE)
    assert wrong == []


def test_no_package_cycle() -> None:
    graph = _graph()

    def reaches(start: str, goal: str) -> bool:
        seen, todo = set(), [start]
        while todo:
            for nxt in graph.get(todo.pop(), ()):
                if nxt == goal:
                    return True
                if nxt not in seen:
                    seen.add(nxt)
                    todo.append(nxt)
        return False

    cycles = sorted(f"{a} <-> {b}" for a in graph for b in graph[a] if reaches(b, a))
    assert cycles == []


def test_no_import_hides_in_a_function() -> None:
    hidden = sorted(f"{rel}: {module}" for rel, _pkg, module, local in _imports()
                    if local and (rel, module) not in LAZY)
    assert hidden == []
