"""The import graph of the project's modules, read from the sources with ``ast`` (issue 24).

Modules are named as installed (``server/processing_queue.py`` is
``gpusaxs.server.processing_queue``). Every ``import`` counts, at module level and inside
functions alike; an import of a module's own ancestor packages is not an edge (Python runs those
first anyway).
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
#: top folder -> installed package name (pyproject's package-dir)
FOLDERS = {
    "gpusaxs": "gpusaxs",
    "server": "gpusaxs.server",
    "clients": "gpusaxs.clients",
    "cpu_fallback": "gpusaxs.cpu_fallback",
}


@dataclass(frozen=True)
class Import:
    source: str  # importing module
    target: str  # imported name, absolute (a module, or a package attribute)
    line: int
    in_function: bool
    type_checking: bool


def modules() -> dict[str, Path]:
    """Installed module name -> source file, for every project module."""
    found = {}
    for folder, package in FOLDERS.items():
        for path in sorted((ROOT / folder).rglob("*.py")):
            if "__pycache__" in path.parts:
                continue
            parts = list(path.relative_to(ROOT / folder).with_suffix("").parts)
            if folder == "gpusaxs" and parts and parts[0] in FOLDERS:
                continue
            if parts[-1] == "__init__":
                parts = parts[:-1]
            found[".".join([package, *parts])] = path
    return found


def _installed(name: str) -> str:
    head, _, rest = name.partition(".")
    if head in FOLDERS and head != "gpusaxs":
        return FOLDERS[head] + ("." + rest if rest else "")
    return name


def imports(name: str, path: Path) -> list[Import]:
    """Every import statement of one module, resolved to absolute names."""
    tree = ast.parse(path.read_text())
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: list[Import] = []

    def visit(node: ast.AST, in_function: bool, guarded: bool) -> None:
        for child in ast.iter_child_nodes(node):
            inner = in_function or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef))
            guard = guarded or (
                isinstance(child, ast.If) and "TYPE_CHECKING" in ast.unparse(child.test)
            )
            if isinstance(child, ast.Import):
                for alias in child.names:
                    found.append(Import(name, _installed(alias.name), child.lineno, inner, guard))
            elif isinstance(child, ast.ImportFrom):
                if child.level:
                    base = package.split(".")
                    base = base[: len(base) - (child.level - 1)]
                    module = ".".join(base + ([child.module] if child.module else []))
                else:
                    module = _installed(child.module or "")
                for alias in child.names:
                    found.append(Import(name, f"{module}.{alias.name}", child.lineno, inner, guard))
            visit(child, inner, guard)

    visit(tree, False, False)
    return found


def resolve(target: str, known: dict[str, Path]) -> str | None:
    """The project module an imported name loads (``a.b.func`` -> ``a.b``), or None."""
    while target:
        if target in known:
            return target
        target = target.rpartition(".")[0]
    return None


def graph(include_type_checking: bool = False) -> dict[str, dict[str, Import]]:
    """module -> {imported project module: the first import statement that loads it}."""
    known = modules()
    edges: dict[str, dict[str, Import]] = {m: {} for m in known}
    for name, path in known.items():
        for imp in imports(name, path):
            if imp.type_checking and not include_type_checking:
                continue
            target = resolve(imp.target, known)
            if target is None or target == name or name.startswith(target + "."):
                continue
            edges[name].setdefault(target, imp)
    return edges


def cycles(edges: dict[str, dict[str, Import]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    counter = [0]

    def strong(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in edges.get(v, {}):
            if w not in index:
                strong(w)
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
                found.append(sorted(component))

    for v in sorted(edges):
        if v not in index:
            strong(v)
    return found


if __name__ == "__main__":  # python tests/import_graph.py: the cycles, with their edges
    edges = graph()
    for component in cycles(edges):
        print("cycle:", ", ".join(component))
        for a in component:
            for b, imp in edges[a].items():
                if b in component:
                    where = "function" if imp.in_function else "module"
                    print(f"    {a} -> {b}  (line {imp.line}, {where} level)")
