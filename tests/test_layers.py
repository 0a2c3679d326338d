"""Layers point one way: the package's import graph, read with ``ast`` (imports inside functions
count: a function-level import that closes a loop is a cycle all the same)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "citrus_v"

# layer -> the packages it must never import
FORBIDDEN = {
    "citrus_v.data": ("citrus_v.model", "citrus_v.infer", "citrus_v.train", "citrus_v.eval", "citrus_v.serve", "citrus_v.volume"),
    "citrus_v.model": ("citrus_v.infer", "citrus_v.train", "citrus_v.eval", "citrus_v.serve", "citrus_v.volume"),
    "citrus_v.infer": ("citrus_v.eval", "citrus_v.volume", "citrus_v.data.phantoms", "citrus_v.train"),
}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_modules(path: Path, name: str, known: set[str]) -> set[str]:
    """The package modules ``path`` imports anywhere in its body; ``from pkg import sub`` names the
    submodule when ``sub`` is one, else the package (or the module defining the name)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                source = ".".join(base + ([node.module] if node.module else []))
            else:
                source = node.module or ""
            targets = [f"{source}.{a.name}" if f"{source}.{a.name}" in known else source for a in node.names]
        else:
            continue
        for target in targets:
            while target and target not in known:  # a name inside a module -> that module
                target = target.rpartition(".")[0]
            if target.startswith("citrus_v") and target != name:
                found.add(target)
    return found


def import_graph() -> dict[str, set[str]]:
    paths = {module_name(p): p for p in PACKAGE.rglob("*.py")}
    known = set(paths)
    return {name: imported_modules(path, name, known) for name, path in paths.items()}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    for root in sorted(graph):
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph[child]))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    found.append(sorted(component))
    return found


def inside(module: str, package: str) -> bool:
    return module == package or module.startswith(package + ".")


def test_the_graph_sees_imports_inside_functions_and_relative_ones():
    graph = import_graph()
    assert "citrus_v.model.checkpoint" in graph["citrus_v.model.citrus_v"]  # top-level absolute
    assert "citrus_v.data.phantoms.suite" in graph["citrus_v.data.phantoms"]  # relative, from __init__
    # function-level: the predict command imports the image predictor inside its handler
    assert "citrus_v.infer.predictor" in graph["citrus_v.infer.commands"]


def test_cycle_finder_on_a_hand_made_graph():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}, "e": set()}
    assert cycles(graph) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_cycles():
    assert cycles(import_graph()) == []


@pytest.mark.parametrize("layer", sorted(FORBIDDEN))
def test_layers_point_one_way(layer):
    graph = import_graph()
    wrong = sorted(
        (src, dst)
        for src, deps in graph.items()
        if inside(src, layer)
        for dst in deps
        if any(inside(dst, banned) for banned in FORBIDDEN[layer])
    )
    assert wrong == []

