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
