"""Every CuPy name the code uses exists in the CuPy that ``pip install ".[gpu]"`` installs
(issue 25: ``cupy.cuda.runtime.hostGetDevicePointer`` does not exist in CuPy 14, and the mapped
upload crashed on the first device that ran it).  Checked without a GPU against the names
listed from the CuPy wheel (tests/data/cupy_api.txt, tests/cupy_api.py), and against the
installed CuPy when one imports."""

import re
from pathlib import Path

import cupy_api
import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def manifest():
    return cupy_api.read_manifest()


def test_code_uses_only_names_the_gpu_extra_cupy_has(manifest):
    names, version = manifest
    used = cupy_api.used_names()
    assert "cupy.cuda.runtime.pointerGetAttributes" in used  # the walker sees gpu_ops.py
    assert "cupyx.scipy.sparse.csr_matrix" in used  # and import aliases (csp)
    assert len(used) > 25
    missing = cupy_api.missing(used, names)
    assert not missing, f"not in CuPy {version}: {missing}"


def test_the_check_catches_issue_25s_crash(manifest, tmp_path):
    names, _ = manifest
    (tmp_path / "old.py").write_text(
        "import cupyx.scipy.sparse as csp\n"
        "def mapped(self, arr):\n"
        "    cp = self.xp\n"
        "    ptr = cp.cuda.runtime.hostGetDevicePointer(arr.ctypes.data, 0)\n"
        "    rt = cp.cuda.runtime\n"
        "    rt.noSuchCall()\n"
        "    csp.csr_matrix, csp.no_such_format\n"
        "    return cp.cuda.UnownedMemory(ptr, arr.nbytes, arr)\n"
    )
    missing = cupy_api.missing(cupy_api.used_names(["old.py"], tmp_path), names)
    assert set(missing) == {
        "cupy.cuda.runtime.hostGetDevicePointer",
        "cupy.cuda.runtime.noSuchCall",
        "cupyx.scipy.sparse.no_such_format",
    }


def test_manifest_is_of_the_cupy_the_gpu_extra_installs(manifest):
    _, version = manifest
    text = (ROOT / "pyproject.toml").read_text()
    low = re.search(r'^gpu = \["cupy-cuda12x\[ctk\]>=(\d+)', text, re.M)
    assert low is not None
    assert int(version.split(".")[0]) >= int(low.group(1))


def test_installed_cupy_has_every_name():
    """Where CuPy imports (a device machine; it imports without a GPU too), the same check
    against the live module."""
    cupy = pytest.importorskip("cupy")
    pytest.importorskip("cupyx")
    import importlib

    bad = {}
    for name, where in cupy_api.used_names().items():
        head, *rest = name.split(".")
        obj = importlib.import_module(head)
        for part in rest:
            if not hasattr(obj, part):
                bad[name] = where
                break
            obj = getattr(obj, part)
            if callable(obj) and not isinstance(obj, type) and part != rest[-1]:
                break
    assert not bad, f"missing in the installed CuPy {cupy.__version__}: {bad}"


def test_installed_cupy_takes_every_keyword():
    """Keywords the code passes (``Stream(non_blocking=True)``, ...) are parameters of the
    installed CuPy's callables, where they have a signature."""
    import importlib
    import inspect

    pytest.importorskip("cupy")
    kws = cupy_api.used_keywords()
    assert "non_blocking" in kws.get("cupy.cuda.Stream", set())
    bad = {}
    for name, keywords in kws.items():
        head, *rest = name.split(".")
        obj = importlib.import_module(head)
        for part in rest:
            obj = getattr(obj, part)
        try:
            params = inspect.signature(obj).parameters
        except (TypeError, ValueError):
            continue
        if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
            continue
        missing = sorted(set(keywords) - set(params))
        if missing:
            bad[name] = missing
    assert not bad, bad
