"""The import graph between fair-edge's folders: no cycles between modules, none between export/ and
calibration/, and model families that import no export, calibration or runtime code."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FOLDERS = {"fair_edge": ROOT / "fair_edge", "fair_edge.export": ROOT / "export",
           "fair_edge.calibration": ROOT / "calibration", "fair_edge.cameras": ROOT / "cameras"}


def _modules() -> dict[str, Path]:
    found = {}
    for package, folder in FOLDERS.items():
        for path in folder.rglob("*.py"):
            parts = path.relative_to(folder).with_suffix("").parts
            name = ".".join((package, *parts))
            found[name.removesuffix(".__init__")] = path
    return found


def _imports(path: Path, modules: dict[str, Path]) -> set[str]:
    """fair-edge modules ``path`` imports anywhere (top level or inside functions)."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names |= {node.module} | {f"{node.module}.{a.name}" for a in node.names}
    return {n for n in names if n in modules}


@pytest.fixture(scope="module")
def graph() -> dict[str, set[str]]:
    modules = _modules()
    return {name: _imports(path, modules) - {name} for name, path in modules.items()}


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}

    def visit(node: str, trail: list[str]) -> list[str] | None:
        state[node] = 1
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return trail + [node, nxt]
            if nxt not in state and (found := visit(nxt, trail + [node])):
                return found
        state[node] = 2
        return None

    for start in sorted(graph):
        if start not in state and (found := visit(start, [])):
            return found
    return None


def test_no_module_import_cycle(graph):
    # a package's __init__ re-exporting its modules is not a dependency between parts
    inits = {name for name, path in _modules().items() if path.name == "__init__.py"}
    edges = {m: deps - inits for m, deps in graph.items()}
    assert _cycle(edges) is None, f"import cycle: {' -> '.join(_cycle(edges))}"


def test_cycle_finder_finds_a_cycle():
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]


def _crossing(graph, src: str, dst: str) -> list[str]:
    return sorted(f"{m} -> {d}" for m, deps in graph.items() if m.startswith(src) for d in deps if d.startswith(dst))


def test_calibration_does_not_import_export(graph):
    assert _crossing(graph, "fair_edge.calibration", "fair_edge.export") == []
    assert _crossing(graph, "fair_edge.export", "fair_edge.calibration")  # the build does use calibration


def test_model_families_import_no_export_calibration_or_runtime(graph):
    for layer in ("fair_edge.export", "fair_edge.calibration", "fair_edge.runtime", "fair_edge.cameras"):
        assert _crossing(graph, "fair_edge.models", layer) == []
