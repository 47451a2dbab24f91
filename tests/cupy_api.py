"""Which CuPy names the code uses, and which the CuPy of the ``[gpu]`` extra has.

``used_names(files)`` walks the code's AST for attribute chains rooted at CuPy: ``cupy.``,
``cupyx.``, an import alias of either (``import cupyx.scipy.sparse as csp``), and the names the
code binds to the CuPy module (``cp``, ``xp``, ``self.xp``, ``self._cupy``, ``self._cupyx``:
``xp`` may be NumPy, and then CuPy must have the name too).  ``tests/data/cupy_api.txt`` lists
the names of the modules and classes of the CuPy wheel the extra installs (no GPU needed to
import it); regenerate it, after a CuPy release, with

    pip download --no-deps --only-binary=:all: "cupy-cuda12x==VERSION" cuda-pathfinder -d /tmp/w
    mkdir /tmp/cupysite && (cd /tmp/cupysite && for f in /tmp/w/*.whl; do unzip -qo $f; done)
    PYTHONPATH=/tmp/cupysite python tests/cupy_api.py --write
"""

import ast
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MANIFEST = Path(__file__).resolve().parent / "data" / "cupy_api.txt"

#: expressions bound to a CuPy module in the code (besides import aliases)
BOUND = {
    "cupy": "cupy",
    "cp": "cupy",
    "xp": "cupy",
    "cupyx": "cupyx",
    "self.xp": "cupy",
    "self._cupy": "cupy",
    "self._cupyx": "cupyx",
}

#: modules listed in the manifest (with the public names of their classes)
MODULES = (
    "cupy",
    "cupy.cuda",
    "cupy.cuda.runtime",
    "cupy.cuda.driver",
    "cupy.cuda.memory",
    "cupy.cuda.pinned_memory",
    "cupy.cuda.stream",
    "cupy.cuda.compiler",
    "cupy.cuda.graph",
    "cupy.cuda.nvrtc",
    "cupyx",
    "cupyx.scipy",
    "cupyx.scipy.sparse",
)

#: files of the project whose CuPy uses are checked: every module of the GPU engine
#: (gpusaxs/gpu_*.py), the backend choice, the engines' entrance and their callers
FILES = (
    *sorted(p.relative_to(ROOT).as_posix() for p in (ROOT / "gpusaxs").glob("gpu_*.py")),
    "gpusaxs/backend.py",
    "gpusaxs/engines.py",
    "gpusaxs/integrator.py",
    "gpusaxs/pipeline.py",
    "benchmarks/bench_gpu.py",
)


def _dotted(node):
    """'a.b.c' of a Name/Attribute chain, or None."""
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if not isinstance(node, ast.Name):
        return None
    parts.append(node.id)
    return ".".join(reversed(parts))


def used_names(files=FILES, root=ROOT):
    """{"cupy.cuda.runtime.pointerGetAttributes": ["gpusaxs/gpu_ops.py:123", ...], ...}."""
    found = {}
    for rel in files:
        path = root / rel
        tree = ast.parse(path.read_text(), str(path))
        bound = dict(BOUND)
        for node in ast.walk(tree):  # import aliases of cupy / cupyx modules
            if isinstance(node, ast.Import):
                for a in node.names:
                    if a.name.split(".")[0] in ("cupy", "cupyx"):
                        bound[a.asname or a.name.split(".")[0]] = (
                            a.asname and a.name or (a.name.split(".")[0])
                        )
            elif isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] in (
                "cupy",
                "cupyx",
            ):
                for a in node.names:
                    bound[a.asname or a.name] = f"{node.module}.{a.name}"
        for _ in range(2):  # local aliases: runtime = cp.cuda.runtime
            for node in ast.walk(tree):
                if (
                    isinstance(node, ast.Assign)
                    and len(node.targets) == 1
                    and isinstance(node.targets[0], ast.Name)
                ):
                    dotted = _dotted(node.value)
                    head, _, rest = (dotted or "").partition(".")
                    if dotted in bound:
                        bound[node.targets[0].id] = bound[dotted]
                    elif head in bound and rest:
                        bound[node.targets[0].id] = f"{bound[head]}.{rest}"
        inner = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Attribute):
                inner.add(id(node.value))
        for node in ast.walk(tree):
            if not isinstance(node, ast.Attribute) or id(node) in inner:
                continue
            dotted = _dotted(node)
            if dotted is None:
                continue
            parts = dotted.split(".")
            for k in range(len(parts) - 1, 0, -1):  # longest bound prefix
                prefix = ".".join(parts[:k])
                if prefix in bound:
                    name = ".".join([bound[prefix], *parts[k:]])
                    found.setdefault(name, []).append(f"{rel}:{node.lineno}")
                    break
    return found


def used_keywords(files=FILES, root=ROOT):
    """{cupy dotted name: {keyword, ...}} of the calls the code makes with keywords."""
    names = used_names(files, root)
    where = {w: n for n, ws in names.items() for w in ws}
    out = {}
    for rel in files:
        path = root / rel
        if not path.exists():
            continue
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
                name = where.get(f"{rel}:{node.func.lineno}")
                if name and name.endswith("." + node.func.attr):
                    out.setdefault(name, set()).update(k.arg for k in node.keywords if k.arg)
    return {k: v for k, v in out.items() if v}


def read_manifest(path=MANIFEST):
    """{dotted name: kind ("module", "class" or "other")} and the CuPy version line."""
    names, version = {}, None
    for line in path.read_text().splitlines():
        if line.startswith("# cupy "):
            version = line.split()[2]
        elif line and not line.startswith("#"):
            name, kind = line.split("\t")
            names[name] = kind
    return names, version


def missing(used, names):
    """Used names that the manifest's CuPy does not have: {name: [where, ...]}."""
    out = {}
    for name, where in used.items():
        parts = name.split(".")
        for k in range(2, len(parts) + 1):
            prefix = ".".join(parts[:k])
            kind = names.get(prefix)
            if kind is None:
                out[name] = where
                break
            if kind == "other":  # a function or constant: what follows is its own business
                break
    return out


def write_manifest(path=MANIFEST):
    """List the names of MODULES and their classes from the importable CuPy."""
    import importlib
    import inspect

    import cupy

    lines = {}
    for mod_name in MODULES:
        try:
            mod = importlib.import_module(mod_name)
        except ImportError:  # e.g. cupy.cuda.driver: an attribute bound to cupy_backends
            parent, _, leaf = mod_name.rpartition(".")
            mod = getattr(importlib.import_module(parent), leaf)
        lines[mod_name] = "module"
        for attr in dir(mod):
            value = getattr(mod, attr, None)
            full = f"{mod_name}.{attr}"
            if inspect.ismodule(value):
                lines.setdefault(full, "module" if full in MODULES else "other")
            elif inspect.isclass(value):
                lines[full] = "class"
                for member in dir(value):
                    if not member.startswith("__") or member in ("__init__", "__call__"):
                        lines[f"{full}.{member}"] = "other"
            else:
                lines.setdefault(full, "other")
    for mod_name in MODULES:  # a submodule listed as an attribute is a module
        lines[mod_name] = "module"
    text = [
        f"# cupy {cupy.__version__}: names of {', '.join(MODULES)} and their classes",
        "# generated by tests/cupy_api.py --write (see its docstring)",
    ]
    text += [f"{k}\t{v}" for k, v in sorted(lines.items())]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(text) + "\n")
    return len(lines)


if __name__ == "__main__":
    if sys.argv[1:] == ["--write"]:
        print(f"{write_manifest()} names written to {MANIFEST}")
    else:
        for name, where in sorted(used_names().items()):
            print(name, where[0])
