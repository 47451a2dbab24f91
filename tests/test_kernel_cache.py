"""First run of the CPU engine (issue 22 case 8): compiled kernels kept in the user's cache
(surviving a reinstall), said while compiling, set-up parts reported; the engine's banded
layout cached beside the matrix with the matrix cache's integrity rules."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
NOTICE = "compiling the CPU kernels (first run only)"


def _saxsdog(source_root, cache, args, cwd):
    env = dict(os.environ, PYTHONPATH=str(source_root), GPUSAXS_CACHE_DIR=str(cache))
    env.pop("NUMBA_CACHE_DIR", None)
    return subprocess.run(
        [sys.executable, "-m", "gpusaxs.clients.saxsdog", *map(str, args)],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=600,
        env=env,
    )


@pytest.mark.slow
def test_kernels_compiled_once_said_and_kept_across_a_reinstall(tmp_path):
    from gpusaxs.demo import make_demo_data

    cal, frames = make_demo_data(tmp_path / "demo", n_frames=10, seed=1)
    cache = tmp_path / "cache"
    first = _saxsdog(ROOT, cache, ["-c", cal, "-o", tmp_path / "o1", frames], tmp_path)
    assert first.returncode == 0, first.stderr
    assert NOTICE in first.stderr and "kernels compiled" in first.stderr, first.stderr
    assert "matrix built" in first.stderr and "engine" in first.stderr
    assert list((cache / "numba").rglob("*.nbi")), "no kernel in the user's cache"
    # a reinstall: the same sources elsewhere, with new modification times
    copy = tmp_path / "reinstalled"
    shutil.copytree(
        ROOT, copy, ignore=shutil.ignore_patterns(".git", "__pycache__", "benchmarks", "tests")
    )
    for p in copy.rglob("*.py"):
        os.utime(p)
    again = _saxsdog(copy, cache, ["-c", cal, "-o", tmp_path / "o2", frames], tmp_path)
    assert again.returncode == 0, again.stderr
    assert NOTICE not in again.stderr and "kernels loaded" in again.stderr, again.stderr
    assert "matrix from the cache" in again.stderr
    assert list(cache.glob("matrix-*.band4096.gsm")), "the engine's layout is not cached"
    a = sorted((tmp_path / "o1").rglob("*.chi"))
    b = sorted((tmp_path / "o2").rglob("*.chi"))
    assert [p.name for p in a] == [p.name for p in b] and len(a) == 10


def _cal():
    from gpusaxs.calibration_model import Calibration

    return Calibration(
        beam_center=(60.0, 50.0),
        distance_mm=800.0,
        imagesize=(120, 100),
        pixel_size_um=(172.0, 172.0),
        wavelength_A=1.54,
        oversampling=2,
    )


def test_banded_layout_cached_beside_the_matrix(_private_matrix_cache):
    from gpusaxs.engines import make_engine
    from gpusaxs.matrix_cache import _MEMORY, get_matrix

    cal = _cal()
    frames = np.random.default_rng(0).poisson(50, size=(9, 120, 100)).astype(np.int32)
    first = make_engine(get_matrix(cal), "numpy", threads=1)
    assert first.layout_source == "built"
    (path,) = _private_matrix_cache.glob("matrix-*.band4096.gsm")
    _MEMORY.clear()
    second = make_engine(get_matrix(cal), "numpy", threads=1)
    assert second.layout_source == "disk"
    for name, arr in first.layout.items():
        np.testing.assert_array_equal(second.layout[name], arr)
    np.testing.assert_array_equal(second.sums(frames).signal, first.sums(frames).signal)
    # a flipped bit in the layout file: rebuilt, never used
    blob = bytearray(path.read_bytes())
    blob[-100] ^= 0x10
    path.write_bytes(bytes(blob))
    _MEMORY.clear()
    third = make_engine(get_matrix(cal), "numpy", threads=1)
    assert third.layout_source == "built"
    np.testing.assert_array_equal(third.sums(frames).signal, first.sums(frames).signal)


def test_layout_with_a_good_checksum_but_a_bad_index_is_rebuilt(_private_matrix_cache):
    from gpusaxs.engines import make_engine
    from gpusaxs.matrix_cache import _MEMORY, get_matrix, load_arrays, save_arrays

    cal = _cal()
    make_engine(get_matrix(cal), "numpy", threads=1)
    (path,) = _private_matrix_cache.glob("matrix-*.band4096.gsm")
    import json

    arrays, meta, _ = load_arrays(path, lambda fields: None)
    arrays = {k: np.array(v) for k, v in arrays.items()}
    arrays["seg_bin"][3] = 1 << 40  # a bin far outside the output: memory corruption
    save_arrays(path, arrays, json.loads(json.dumps(meta)))
    _MEMORY.clear()
    engine = make_engine(get_matrix(cal), "numpy", threads=1)
    assert engine.layout_source == "built" and engine.layout["seg_bin"].max() < 1 << 20


def test_numba_saves_into_the_kernel_folder_hold_its_lock(tmp_path, monkeypatch):
    """numba names a new cache entry's data file by counting its index, so two processes saving
    different kernel variants at once could write the same file (numba issue #10128): a save
    into the kernel folder holds an exclusive lock on SAVE_LOCK there, probed from inside the
    save (flock locks of two open files conflict even in one process); saves elsewhere do not."""
    fcntl = pytest.importorskip("fcntl")
    from numba.core import caching

    from gpusaxs.cpu_fallback import kernel_cache

    cls = caching.IndexDataCacheFile
    monkeypatch.setattr(cls, "save", cls.save)  # the original back after the test
    kernels, other = tmp_path / "kernels", tmp_path / "other"
    kernels.mkdir()
    other.mkdir()
    kernel_cache.lock_saves(caching, str(kernels))
    seen = []
    save_index = cls._save_index

    def probe(self, overloads):
        with open(kernels / kernel_cache.SAVE_LOCK, "a") as f:
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
                held = False
            except BlockingIOError:
                held = True
        seen.append((self._cache_path, held))
        return save_index(self, overloads)

    monkeypatch.setattr(cls, "_save_index", probe)
    for folder in (kernels, other):
        cache = cls(cache_path=str(folder), filename_base="k", source_stamp="s")
        cache.save(("int32", "cpu"), {"code": 1})
        cache.save(("uint16", "cpu"), {"code": 2})
        assert cache.load(("int32", "cpu")) == {"code": 1}
        assert cache.load(("uint16", "cpu")) == {"code": 2}
    assert seen == [(str(kernels), True)] * 2 + [(str(other), False)] * 2
