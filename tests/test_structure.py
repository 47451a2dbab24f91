"""The house's bars (issue 24): no import cycle among the project's modules, no source module
over 600 lines, imports at the top except the heavy packages of ``gpusaxs._optional``."""

import pytest

from gpusaxs._optional import HEAVY_MODULES, HEAVY_PACKAGES
from tests import import_graph

MAX_LINES = 600
FOLDERS = sorted(import_graph.FOLDERS)


def test_no_import_cycle():
    edges = import_graph.graph()
    found = import_graph.cycles(edges)
    described = []
    for component in found:
        links = [
            f"{a} -> {b} (line {edges[a][b].line})"
            for a in component
            for b in edges[a]
            if b in component
        ]
        described.append("; ".join(links))
    assert not found, "import cycles: " + " | ".join(described)


@pytest.mark.parametrize("folder", FOLDERS)
def test_no_module_over_600_lines(folder):
    long = {
        str(path.relative_to(import_graph.ROOT)): n
        for name, path in import_graph.modules().items()
        if path.relative_to(import_graph.ROOT).parts[0] == folder
        and (n := len(path.read_text().splitlines())) > MAX_LINES
    }
    assert not long, f"modules over {MAX_LINES} lines: {long}"


@pytest.mark.parametrize("folder", FOLDERS)
def test_imports_at_the_top(folder):
    """Inside functions only the heavy packages and modules of gpusaxs._optional are imported."""
    inside = []
    known = import_graph.modules()
    for name, path in import_graph.modules().items():
        if path.relative_to(import_graph.ROOT).parts[0] != folder:
            continue
        for imp in import_graph.imports(name, path):
            heavy = imp.target.split(".")[0] in HEAVY_PACKAGES
            heavy = heavy or import_graph.resolve(imp.target, known) in HEAVY_MODULES
            if imp.in_function and not heavy:
                inside.append(f"{path.relative_to(import_graph.ROOT)}:{imp.line} {imp.target}")
    assert not inside, f"{len(inside)} imports inside functions: {inside}"


def test_the_graph_sees_function_level_imports(tmp_path, monkeypatch):
    """The checker itself: a cycle closed by a function-level import is found."""
    for name, body in (("a", "def f():\n    from gpusaxs import b\n"), ("b", "from . import a\n")):
        (tmp_path / "gpusaxs").mkdir(exist_ok=True)
        (tmp_path / "gpusaxs" / f"{name}.py").write_text(body)
    monkeypatch.setattr(import_graph, "ROOT", tmp_path)
    monkeypatch.setattr(import_graph, "FOLDERS", {"gpusaxs": "gpusaxs"})
    assert import_graph.cycles(import_graph.graph()) == [["gpusaxs.a", "gpusaxs.b"]]


def _folder(module):
    for sub in ("server", "clients", "cpu_fallback"):
        if module == f"gpusaxs.{sub}" or module.startswith(f"gpusaxs.{sub}."):
            return sub
    return "gpusaxs"


#: the folders each folder may import (docs/ARCHITECTURE.md, "Layers")
ALLOWED = {
    "clients": {"clients", "server", "gpusaxs"},
    "server": {"server", "gpusaxs"},
    "gpusaxs": {"gpusaxs", "cpu_fallback"},
    "cpu_fallback": {"cpu_fallback", "gpusaxs"},
}
#: the gpusaxs modules the host engines stand on (leaves), and the one that chooses engines
ENGINE_LEAVES = {
    "gpusaxs.engine_contract",
    "gpusaxs.cache_dir",
    "gpusaxs.errors",
    "gpusaxs._typing",
}
ENGINE_ENTRANCE = {"gpusaxs.engines"}


def test_folders_are_layered():
    """clients -> server -> gpusaxs; only gpusaxs.engines imports cpu_fallback, which stands on
    the contract's leaves alone: no folder-level loop."""
    wrong = []
    for a, targets in import_graph.graph().items():
        for b in targets:
            fa, fb = _folder(a), _folder(b)
            if fb not in ALLOWED[fa]:
                wrong.append(f"{a} -> {b}")
            elif fa == "cpu_fallback" and fb == "gpusaxs" and b not in ENGINE_LEAVES:
                wrong.append(f"{a} -> {b} (not a leaf of the engine contract)")
            elif fa == "gpusaxs" and fb == "cpu_fallback" and a not in ENGINE_ENTRANCE:
                wrong.append(f"{a} -> {b} (engines are made in gpusaxs.engines)")
    assert not wrong, wrong
