"""docs/ARCHITECTURE.md's module tree is the code's: every module is listed, every listed file
exists (issue 24: the tree drawn from the code and kept true by a test)."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TOP = ("gpusaxs", "cpu_fallback", "server", "clients")


def listed_files():
    """Paths named in the first fenced block of ARCHITECTURE.md: a line starting at column 0
    with ``folder/`` opens a top folder; an indented first word ending in ``.py``, ``.cu`` or
    ``.json`` is a file below it."""
    text = (ROOT / "docs" / "ARCHITECTURE.md").read_text()
    block = re.search(r"^```\n(.*?)^```", text, re.M | re.S).group(1)
    files, top = set(), None
    for line in block.splitlines():
        if not line.strip():
            continue
        word = line.split()[0]
        if not line.startswith(" "):
            top = word.rstrip("/") if word.endswith("/") else None
        elif top is not None and re.search(r"\.(py|cu|json)$", word):
            files.add(f"{top}/{word}")
    return files


def code_files():
    found = set()
    for top in TOP:
        for path in (ROOT / top).rglob("*"):
            if path.suffix in (".py", ".cu", ".json") and "__pycache__" not in path.parts:
                if path.name != "__init__.py":
                    found.add(path.relative_to(ROOT).as_posix())
    return found


def test_every_module_is_in_the_tree():
    missing = sorted(code_files() - listed_files())
    assert not missing, f"docs/ARCHITECTURE.md does not list: {missing}"


def test_every_file_in_the_tree_exists():
    stale = sorted(listed_files() - code_files())
    assert not stale, f"docs/ARCHITECTURE.md lists files that do not exist: {stale}"


def test_only_the_card_folders_import_under_gpusaxs():
    """The source checkout maps server/, clients/ and cpu_fallback/ under ``gpusaxs``, and no
    other top-level folder (tests, docs, benchmarks)."""
    import importlib

    import pytest

    for name in ("server", "clients", "cpu_fallback"):
        module = importlib.import_module(f"gpusaxs.{name}")
        assert Path(module.__file__).parent.name == name
    for name in ("tests", "docs", "benchmarks"):
        with pytest.raises(ImportError):
            importlib.import_module(f"gpusaxs.{name}")


#: documents of other projects named as references (DECTRIS' stream documentation)
EXTERNAL_DOCS = {"stream_v2/README.md", "cbor/dectris-compression-tag.md"}


def test_every_named_document_exists():
    """A ``*.md`` file named in the sources, docs or pyproject exists (relative to the root,
    docs/ or the naming file's folder), or is one of the external references above."""
    missing = {}
    for path in ROOT.rglob("*"):
        skip = (".git", "build", "results", "__pycache__", ".hypothesis")
        if any(part in skip or part.endswith(".egg-info") for part in path.parts):
            continue
        if path.suffix not in (".py", ".md", ".toml", ".cu") or not path.is_file():
            continue
        for m in re.finditer(r"(?<![\w/.-])([\w./-]+\.md)\b", path.read_text(errors="replace")):
            name = m.group(1)
            places = (ROOT / name, ROOT / "docs" / name, path.parent / name)
            if name not in EXTERNAL_DOCS and not any(p.exists() for p in places):
                missing.setdefault(name, []).append(path.relative_to(ROOT).as_posix())
    assert not missing, f"documents named but absent: {missing}"


#: where names of modules and files are looked for (tests are not: they name what must not exist)
NAMING = ("gpusaxs", "server", "clients", "cpu_fallback", "docs", "benchmarks", ".ci")
NAMING_FILES = ("README.md", "CONTRIBUTING.md", "pyproject.toml")
#: names the sources mention as what does NOT import (gpusaxs/__init__.py's finder)
NOT_MODULES = {"gpusaxs.tests", "gpusaxs.docs"}


def naming_texts():
    for top in NAMING:
        for path in (ROOT / top).rglob("*"):
            if path.is_file() and path.suffix in (".py", ".md", ".cu", ".sh", ".toml", ""):
                if "__pycache__" not in path.parts and "results" not in path.parts:
                    yield path, path.read_text(errors="replace")
    for name in NAMING_FILES:
        if (ROOT / name).exists():
            yield ROOT / name, (ROOT / name).read_text()


def test_every_named_module_exists():
    """A dotted ``gpusaxs.x.y`` named in the sources, docs, benchmarks or pyproject imports
    (a module, or an attribute of one); logger names are not modules."""
    import importlib

    names = {}
    for path, text in naming_texts():
        text = re.sub(r"getLogger\([^)]*\)", "", text)
        for m in re.finditer(r"\bgpusaxs(?:\.[A-Za-z_]\w*)+", text):
            names.setdefault(m.group(0).rstrip("."), path.relative_to(ROOT).as_posix())
    missing = {}
    for name, where in sorted(names.items()):
        if name in NOT_MODULES:
            continue
        parts = name.split(".")
        for i in range(len(parts), 0, -1):
            try:
                obj = importlib.import_module(".".join(parts[:i]))
            except ImportError:
                continue
            for attr in parts[i:]:
                if not hasattr(obj, attr):
                    missing[name] = where
                    break
                obj = getattr(obj, attr)
            break
    assert not missing, f"named but not importable: {missing}"


def test_every_named_source_file_exists():
    """A path like ``gpusaxs/matrix.py`` or ``benchmarks/bench_cpu.py`` named anywhere in the
    sources, docs, benchmarks, tests or pyproject exists."""
    pattern = re.compile(
        r"(?<![\w/.-])((?:gpusaxs|server|clients|cpu_fallback|benchmarks|tests)/[\w/.-]+"
        r"\.(?:py|cu|json|sh))\b"
    )
    missing = {}
    texts = list(naming_texts())
    texts += [(p, p.read_text()) for p in (ROOT / "tests").glob("*.py")]
    for path, text in texts:
        for m in pattern.finditer(text):
            if not (ROOT / m.group(1)).exists():
                missing.setdefault(m.group(1), path.relative_to(ROOT).as_posix())
    assert not missing, f"named but missing: {missing}"
