"""The package's import structure: every module imports, no import cycles among h_model's modules, and the
lower layers (data, models, the trainer) never reach the face library.

Imports are read from the source (every ``import`` statement, including those inside functions and under
``TYPE_CHECKING``), so a lazy import that would close a cycle or cross a layer counts as much as a top-level one.
"""
from __future__ import annotations

import ast
import importlib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1] / "h_model"

#: Edges from a lower layer into h_model.faces that are allowed, each with why (none: the face detector
#: the data layer uses lives in h_model/detect.py).
ALLOWED_LAYER_EDGES: set[tuple[str, str]] = set()
LOWER_LAYERS = ("h_model.data", "h_model.models", "h_model.trainer")


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in sorted(ROOT.rglob("*.py"))}


def imports_of(name: str) -> set[str]:
    """The h_model modules ``name`` imports anywhere in its source (a ``from X import y`` names the
    module X.y when there is one, else X)."""
    path = MODULES[name]
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()

    def known(target: str) -> str | None:  # the module itself, or the nearest enclosing one
        while target and target not in MODULES:
            target = target.rpartition(".")[0]
        return target or None

    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1])
                base = f"{base}.{node.module}" if node.module else base
            else:
                base = node.module or ""
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in MODULES else base for a in node.names]
        else:
            continue
        found |= {m for t in targets if t.split(".")[0] == "h_model" and (m := known(t)) and m != name}
    return found


GRAPH = {name: imports_of(name) for name in MODULES}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                out.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def reachable(graph: dict[str, set[str]], start: str) -> dict[str, str]:
    """Every module ``start`` reaches, each with the module that imports it on the way."""
    seen: dict[str, str] = {}
    todo = [start]
    while todo:
        v = todo.pop()
        for w in sorted(graph[v]):
            if w not in seen and w != start:
                seen[w] = v
                todo.append(w)
    return seen


def in_layer(name: str, layer: str) -> bool:
    return name == layer or name.startswith(layer + ".") or (layer == "h_model.trainer" and
                                                              name.startswith("h_model.trainer"))


def test_the_analysis_sees_lazy_and_relative_imports() -> None:
    assert "h_model.checkpoint" in GRAPH["h_model.faces.pairs"]  # only imported inside write_pairs, relatively
    assert {"h_model.faces.gallery.store", "h_model.faces.gallery.ranking"} <= GRAPH["h_model.faces.gallery"]
    assert "h_model.faces.scores" in GRAPH["h_model.faces.gallery.ranking"]  # from ..scores import ...
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


@pytest.mark.parametrize("name", sorted(MODULES))
def test_every_module_imports(name: str) -> None:
    importlib.import_module(name)


def test_no_import_cycles() -> None:
    found = cycles(GRAPH)
    assert not found, "modules that import each other (directly or round a loop): " + "; ".join(
        " <-> ".join(c) for c in found)


def test_lower_layers_never_import_the_face_library() -> None:
    graph = {v: {w for w in ws if (v, w) not in ALLOWED_LAYER_EDGES} for v, ws in GRAPH.items()}
    assert all(w in GRAPH[v] for v, w in ALLOWED_LAYER_EDGES), "an allowed edge is gone: drop it from the list"
    crossings = []
    for name in sorted(MODULES):
        if not any(in_layer(name, layer) for layer in LOWER_LAYERS):
            continue
        via = reachable(graph, name)
        entries = [t for t in via if in_layer(t, "h_model.faces") and not in_layer(via[t], "h_model.faces")]
        for target in sorted(entries):
            path = [target]
            while path[-1] != name:
                path.append(via[path[-1]])
            crossings.append(" -> ".join(reversed(path)))
    assert not crossings, "lower layers reaching h_model.faces:\n" + "\n".join(crossings)
