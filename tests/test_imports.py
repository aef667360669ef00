"""edgekit's own imports: no cycle between its modules and no `_private` name taken from another module.

Every import counts, those inside functions and under TYPE_CHECKING included. The test fails when a cycle or a
private import appears, and when a KNOWN one disappears without being struck from the list.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "edgekit"

# Nothing is known any more: the backends split (issue 13) removed the last cycles and private imports. Keep the
# sets: a cycle that cannot be avoided goes here with the reason, and the test fails once it is gone.
KNOWN_CYCLES: set[frozenset[str]] = set()
KNOWN_PRIVATE: set[tuple[str, str, str]] = set()


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports() -> dict[str, list[tuple[str, str | None]]]:
    """module -> [(imported edgekit module, name taken from it or None)]."""
    found: dict[str, list[tuple[str, str | None]]] = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        name = _module_name(path)
        edges = found.setdefault(name, [])
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                edges += [(a.name, None) for a in node.names if a.name.startswith("edgekit")]
            elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("edgekit") and node.level == 0:
                edges += [(node.module, a.name) for a in node.names]
    return found


def _cycles(graph: dict[str, set[str]]) -> set[frozenset[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    out: set[frozenset[str]] = set()

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = set()
            while True:
                w = stack.pop()
                comp.add(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.add(frozenset(comp))

    for v in list(graph):
        if v not in index:
            visit(v)
    return out


def test_no_import_cycle_inside_edgekit():
    imports = _imports()
    modules = set(imports)
    graph = {}
    for mod, edges in imports.items():
        targets = set()
        for target, name in edges:
            if f"{target}.{name}" in modules:  # `from edgekit.validate import gates` imports the module gates
                target = f"{target}.{name}"
            # a package's __init__ importing its own submodules is not a cycle of interest
            if target in modules and target != mod and not target.startswith(mod + "."):
                targets.add(target)
        graph[mod] = targets
    assert _cycles(graph) == KNOWN_CYCLES


def test_no_private_name_imported_from_another_module():
    private = {
        (mod, target, name)
        for mod, edges in _imports().items()
        for target, name in edges
        if name and name.startswith("_") and not name.startswith("__") and target != mod
    }
    assert private == KNOWN_PRIVATE


def test_the_shared_layers_import_no_backend():
    """backends/onnx (sessions, graphs, the QDQ core) and backends/calibration serve every backend, so they import
    none: a backend folder can be added or removed without touching them."""
    backend_folders = tuple(f"edgekit.backends.{name}" for name in ("ort", "tensorrt", "torch_ao"))
    shared = {mod: edges for mod, edges in _imports().items()
              if mod.startswith("edgekit.backends.onnx") or mod in ("edgekit.backends.calibration", "edgekit.backends.base")}
    assert "edgekit.backends.onnx.qdq" in shared
    wrong = {(mod, target) for mod, edges in shared.items() for target, _ in edges if target.startswith(backend_folders)}
    assert wrong == set()
