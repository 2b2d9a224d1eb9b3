"""The import graph between fair-edge's rooms: no cycles between modules or rooms, no room importing a room
above it, none between export/ and calibration/ the wrong way, and model families that import no export,
calibration or runtime code.

Relative imports count like absolute ones (``from ..records import Frame`` in ``fair_edge.line.scheduler`` is
an edge to ``fair_edge.records``): ``line/`` and most of ``cameras/`` import only that way. A package's
``__init__`` is a module like any other: ``from . import open_handshake`` is an edge to the package's
``__init__`` (which may import the importer back), while ``from pkg import mod`` is an edge to ``pkg.mod`` only.
The checker runs on a folder mapping, so the last tests plant a bad import in a copy of the tree and show that
it is reported.
"""

from __future__ import annotations

import ast
import shutil
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FOLDERS = {"fair_edge": ROOT / "fair_edge", "fair_edge.export": ROOT / "export",
           "fair_edge.calibration": ROOT / "calibration", "fair_edge.cameras": ROOT / "cameras"}

# Rooms from the bottom up: a module may import its own room and the rooms listed before it.
# "core" is the shared modules directly in fair_edge/ (errors, preprocess, tiling, records, plots, ...).
LAYERS = ("core", "models", "calibration", "export", "runtime", "line", "cameras", "console", "station",
          "training", "bench", "demo", "cli")

# Upward imports the design keeps, each with its reason: none. Where an upper room's code is needed below, it is
# handed in as a callable (station/run.py hands the console its loaders: console.actions.StationLinks). The test
# fails on any upward import, and on an entry here that the code no longer has (delete it then).
KNOWN_UPWARD: dict[tuple[str, str], str] = {}


def room_of(module: str) -> str:
    """The room of a module: the folder under fair_edge (``fair_edge.line.sinks.modbus`` -> ``line``), ``core``
    for the modules directly in fair_edge/. A family's trainer (``fair_edge.models.<family>.train*``) sits with
    the training loop it drives, above the families."""
    parts = module.split(".")
    if len(parts) >= 4 and parts[1] == "models" and parts[3].startswith("train"):
        return "training"
    if len(parts) >= 2 and parts[1] in LAYERS:
        return parts[1]
    return "core"


def find_modules(folders: dict[str, Path]) -> dict[str, Path]:
    """Dotted module name -> file, for every .py under the folders (packages named by their __init__)."""
    found = {}
    for package, folder in folders.items():
        for path in folder.rglob("*.py"):
            parts = path.relative_to(folder).with_suffix("").parts
            found[".".join((package, *parts)).removesuffix(".__init__")] = path
    return found


def imported_modules(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """fair-edge modules that module ``name`` (file ``path``) imports anywhere (top level or inside functions),
    absolute or relative; ``from pkg import mod`` counts as an edge to ``pkg.mod`` when that is a module."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # from . import x, from ..records import Frame: relative to this module's package
                base = package.split(".")[:len(package.split(".")) - (node.level - 1)]
                source = ".".join(base + ([node.module] if node.module else []))
            else:
                source = node.module or ""
            # from pkg import mod: an edge to pkg.mod; from pkg import name: an edge to pkg (its __init__)
            names |= {f"{source}.{a.name}" if f"{source}.{a.name}" in modules else source for a in node.names}
    return {n for n in names if n in modules} - {name}


def import_graph(folders: dict[str, Path]) -> dict[str, set[str]]:
    modules = find_modules(folders)
    return {name: imported_modules(name, path, modules) for name, path in modules.items()}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle as a path that ends where it starts, or None."""
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


def module_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle between modules, package ``__init__``s included: ``from . import open_handshake`` in a
    package's module is an edge to the package's ``__init__``, which may import that module back."""
    return find_cycle(graph)


def upward_imports(graph: dict[str, set[str]]) -> set[tuple[str, str]]:
    """(importer, imported) pairs where the imported module's room is above the importer's."""
    return {(m, d) for m, deps in graph.items() for d in deps
            if LAYERS.index(room_of(d)) > LAYERS.index(room_of(m))}


def room_cycle(graph: dict[str, set[str]], allowed: set[tuple[str, str]]) -> list[str] | None:
    rooms: dict[str, set[str]] = {}
    for m, deps in graph.items():
        for d in deps:
            if (m, d) not in allowed and room_of(m) != room_of(d):
                rooms.setdefault(room_of(m), set()).add(room_of(d))
    return find_cycle(rooms)


@pytest.fixture(scope="module")
def graph() -> dict[str, set[str]]:
    return import_graph(FOLDERS)


def test_relative_imports_are_read(graph):
    assert "fair_edge.records" in graph["fair_edge.line.scheduler"]  # from ..records import Frame, Verdict
    assert "fair_edge.fields" in graph["fair_edge.line.settings"]  # from .. import fields as f
    assert "fair_edge.line.sinks.modbus" in graph["fair_edge.line.sinks"]  # from .modbus import ...
    assert "fair_edge.cameras.base" in graph["fair_edge.cameras.capture"]  # from .base import ...


def test_no_module_import_cycle(graph):
    cycle = module_cycle(graph)
    assert cycle is None, f"import cycle: {' -> '.join(cycle)}"


def test_no_room_imports_a_room_above_it(graph):
    found = upward_imports(graph)
    new = sorted(f"{m} ({room_of(m)}) -> {d} ({room_of(d)})" for m, d in found - KNOWN_UPWARD.keys())
    assert new == [], f"upward imports (rooms from the bottom: {', '.join(LAYERS)}): {new}"
    assert sorted(KNOWN_UPWARD.keys() - found) == [], "no longer imported: delete from KNOWN_UPWARD"


def test_no_room_cycle(graph):
    cycle = room_cycle(graph, set(KNOWN_UPWARD))
    assert cycle is None, f"rooms import each other: {' -> '.join(cycle)}"


def test_every_module_is_in_a_room_that_exists(graph):
    rooms = {room_of(m) for m in graph}
    assert rooms == set(LAYERS), rooms ^ set(LAYERS)
    core = sorted(m for m in graph if room_of(m) == "core")
    assert all(m.count(".") == 1 or m == "fair_edge" for m in core), core  # no sub-package falls into core


def test_cycle_finder_finds_a_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": set()}) is None


def _crossing(graph, src: str, dst: str) -> list[str]:
    return sorted(f"{m} -> {d}" for m, deps in graph.items() if m.startswith(src) for d in deps if d.startswith(dst))


def test_calibration_does_not_import_export(graph):
    assert _crossing(graph, "fair_edge.calibration", "fair_edge.export") == []
    assert _crossing(graph, "fair_edge.export", "fair_edge.calibration")  # the build does use calibration


def test_model_families_import_no_export_calibration_or_runtime(graph):
    for layer in ("fair_edge.export", "fair_edge.calibration", "fair_edge.runtime", "fair_edge.cameras"):
        assert _crossing(graph, "fair_edge.models", layer) == []


# ---------------------------------------------------------------------------------------------- planted faults
@pytest.fixture()
def tree_copy(tmp_path) -> dict[str, Path]:
    """A copy of the source folders (Python files only) that a test may break."""
    copies = {}
    for package, folder in FOLDERS.items():
        copies[package] = tmp_path / folder.name
        shutil.copytree(folder, copies[package], ignore=lambda d, names: [
            n for n in names if not n.endswith(".py") and not (Path(d) / n).is_dir()])
    return copies


def _plant(path: Path, line: str) -> None:
    path.write_text(path.read_text() + f"\n\ndef _planted():\n    {line}\n")


def test_the_copy_is_clean(tree_copy):
    planted = import_graph(tree_copy)
    assert planted == import_graph(FOLDERS)
    assert upward_imports(planted) == KNOWN_UPWARD.keys() and module_cycle(planted) is None


def test_a_planted_relative_upward_import_is_reported(tree_copy):
    _plant(tree_copy["fair_edge"] / "line" / "scheduler.py", "from ..station.run import run_station")
    planted = import_graph(tree_copy)
    assert upward_imports(planted) - KNOWN_UPWARD.keys() == {("fair_edge.line.scheduler", "fair_edge.station.run")}
    assert room_cycle(planted, set(KNOWN_UPWARD)) is not None  # station imports line already


def test_a_planted_relative_cycle_is_reported(tree_copy):
    _plant(tree_copy["fair_edge"] / "line" / "jsonl.py", "from .recorder import Recorder")  # recorder imports jsonl
    cycle = module_cycle(import_graph(tree_copy))
    assert cycle is not None and {"fair_edge.line.jsonl", "fair_edge.line.recorder"} <= set(cycle), cycle


def test_a_planted_cycle_between_rooms_is_reported(tree_copy):
    _plant(tree_copy["fair_edge.cameras"] / "opencv.py", "from fair_edge.station.inspector import Inspector")
    planted = import_graph(tree_copy)
    assert ("fair_edge.cameras.opencv", "fair_edge.station.inspector") in upward_imports(planted)
    cycle = room_cycle(planted, set(KNOWN_UPWARD))
    assert cycle is not None and {"cameras", "station"} <= set(cycle), cycle


def test_a_planted_cycle_through_a_package_init_is_reported(tree_copy):
    # line/__init__ imports recorder, which imports jsonl: jsonl taking Recorder from the package closes a cycle
    _plant(tree_copy["fair_edge"] / "line" / "jsonl.py", "from . import Recorder")
    planted = import_graph(tree_copy)
    assert "fair_edge.line" in planted["fair_edge.line.jsonl"]
    cycle = module_cycle(planted)
    assert cycle is not None and {"fair_edge.line", "fair_edge.line.jsonl"} <= set(cycle), cycle


def test_importing_a_module_from_its_package_is_no_edge_to_the_package(graph):
    # from ... import fields as f (line/handshake/settings.py): an edge to fair_edge.fields, not to fair_edge's
    # __init__; from . import fields as f would be an edge to that package's fields module the same way
    assert "fair_edge.fields" in graph["fair_edge.line.handshake.settings"]
    assert "fair_edge" not in graph["fair_edge.line.handshake.settings"]
