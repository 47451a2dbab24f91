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
