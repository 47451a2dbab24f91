"""Shared fixtures: the reference data in ../shared/reference (skipped when absent)."""

import os
from pathlib import Path

import pytest
from hypothesis import settings

# CI draws the same examples every run (a landing never hangs on a new random draw);
# locally hypothesis explores afresh each time.
settings.register_profile("ci", derandomize=True, print_blob=True)
if os.environ.get("CI"):
    settings.load_profile("ci")

REFERENCE_DIR = Path(
    os.environ.get(
        "GPUSAXS_REFERENCE_DIR", Path(__file__).resolve().parents[1].parent / "shared" / "reference"
    )
)


@pytest.fixture(scope="session")
def reference_dir():
    """Folder with buf1_00000.tif, AAA_integ.msk, the fit2d curve and calibrations."""
    if not (REFERENCE_DIR / "buf1_00000.tif").is_file():
        pytest.skip(f"reference data not found at {REFERENCE_DIR} (set GPUSAXS_REFERENCE_DIR)")
    return REFERENCE_DIR


_SESSION_CACHE = None
_RUN_KERNELS = None
#: set by the first pytest process of a run (the xdist controller): the run's kernel folder
_RUN_KERNELS_ENV = "GPUSAXS_TEST_RUN_KERNELS"


def pytest_configure(config):
    """A private matrix cache for the whole run, set before any fixture or import builds a
    matrix (module-scoped fixtures run before the per-test one below): never ~/.cache.

    The compiled numba kernels get one folder per pytest process ($NUMBA_CACHE_DIR: the run's,
    or a subfolder of it per xdist worker), which every command a test starts inherits: each
    test's matrix cache is empty, and with the kernels beside it every server, saxsdog or
    stream process a test started compiled them again (10 s a pixel type on numba 0.68, 25 s
    on 0.58).  Not one folder for both workers: numba names a new cache entry's data file by
    counting the entries of its index, so two processes saving different variants of a kernel
    at the same moment can write the same file.  Tests of the kernel cache itself drop the
    variable (tests/test_kernel_cache.py)."""
    global _SESSION_CACHE, _RUN_KERNELS
    import tempfile

    _SESSION_CACHE = tempfile.mkdtemp(prefix="gpusaxs-test-cache-")
    os.environ["GPUSAXS_CACHE_DIR"] = _SESSION_CACHE
    os.environ["XDG_CACHE_HOME"] = os.path.join(_SESSION_CACHE, "xdg")
    worker = getattr(config, "workerinput", {}).get("workerid")
    if worker and os.environ.get(_RUN_KERNELS_ENV):  # an xdist worker: its own subfolder
        os.environ["NUMBA_CACHE_DIR"] = os.path.join(os.environ[_RUN_KERNELS_ENV], worker)
        return
    if not os.environ.get("NUMBA_CACHE_DIR"):  # the developer's own setting wins
        _RUN_KERNELS = tempfile.mkdtemp(prefix="gpusaxs-test-kernels-")
        os.environ["NUMBA_CACHE_DIR"] = _RUN_KERNELS
    os.environ[_RUN_KERNELS_ENV] = os.environ["NUMBA_CACHE_DIR"]


def pytest_sessionfinish(session, exitstatus):
    """ZeroMQ contexts a failed test left open are destroyed with LINGER 0 now: at the
    interpreter's garbage collection their term() could wait for queued messages for ever and
    hang the run after its last test."""
    import gc
    import sys

    zmq = sys.modules.get("zmq")
    if zmq is None:
        return
    from zmq.utils.garbage import gc as zero_copy  # pyzmq's own, for zero-copy sends: kept

    for obj in gc.get_objects():
        try:  # a weak proxy whose object is gone raises on any look
            leftover = isinstance(obj, zmq.Context) and not obj.closed
        except ReferenceError:
            continue
        if leftover and obj is not zero_copy._context:
            obj.destroy(linger=0)


def pytest_unconfigure(config):
    import shutil

    if _SESSION_CACHE:
        shutil.rmtree(_SESSION_CACHE, ignore_errors=True)
    if _RUN_KERNELS:  # the controller, after its workers
        shutil.rmtree(_RUN_KERNELS, ignore_errors=True)


@pytest.fixture
def frozen_gc():
    """The objects alive before the test left out of the garbage collector's passes while it
    runs (gc.freeze).  pyFAI calls gc.collect() at every change of a geometry
    (``Geometry.reset``); in a worker that holds ~500k objects after hundreds of tests each
    such call costs ~0.3 s, and a hypothesis test making 60 geometries spent 40 of its 43 s
    there.  With the old objects frozen the calls look at the test's own."""
    import gc

    gc.collect()
    gc.freeze()
    yield
    gc.unfreeze()


@pytest.fixture(autouse=True)
def _fresh_fallback_log():
    """The GPU engine's process-wide fallback log and bslz4 decode counts (what saxsdog's
    summary and the server's stat report) start empty in every test: a fallback or decode one
    test provokes is not another's."""
    import sys

    yield
    log = sys.modules.get("gpusaxs.gpu_fallbacks")
    if log is not None:
        log._FALLBACKS.clear()
        log._DECODES.clear()


@pytest.fixture(autouse=True)
def _private_matrix_cache(tmp_path_factory, monkeypatch):
    """Every test gets its own, empty on-disk matrix cache: never the user's ~/.cache."""
    folder = tmp_path_factory.mktemp("gpusaxs-cache")
    monkeypatch.setenv("GPUSAXS_CACHE_DIR", str(folder))
    monkeypatch.setenv("XDG_CACHE_HOME", str(folder / "xdg"))
    return folder
