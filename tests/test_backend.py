"""Backend selection: auto/numpy/cupy, GPUSAXS_BACKEND, errors, backend_info."""

import json
import types

import pytest

import gpusaxs.integrator
from gpusaxs import backend, gpu_fallbacks
from gpusaxs.errors import BackendError, GpusaxsError

_REAL_PROBE = backend._probe_cupy


def _cupy_usable():
    return backend._probe_cupy().ok


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch):
    monkeypatch.delenv(backend.ENV_VAR, raising=False)
    yield
    _REAL_PROBE.cache_clear()


@pytest.fixture
def fake_gpu(monkeypatch):
    """Pretend CuPy works with one device (select_backend only looks at the probe)."""
    fake = types.SimpleNamespace(__version__="99.0-fake")
    probe = backend._Probe(True, "CuPy 99.0-fake with 1 CUDA device(s)", fake, 1)
    monkeypatch.setattr(backend, "_probe_cupy", lambda: probe)
    return fake


@pytest.fixture
def no_gpu(monkeypatch):
    probe = backend._Probe(
        False,
        "CuPy is not installed or cannot be imported (ImportError: x); "
        f"install it with {backend.INSTALL_HINT}",
    )
    monkeypatch.setattr(backend, "_probe_cupy", lambda: probe)


@pytest.mark.skipif(_cupy_usable(), reason="a CUDA device is usable here")
def test_auto_is_numpy_without_device_and_says_why():
    name, reason = backend.select_backend("auto")
    assert name == "numpy"
    assert "auto" in reason and ("CuPy" in reason)


def test_auto_default_argument_and_none_mean_auto(no_gpu):
    assert backend.select_backend()[0] == "numpy"
    assert backend.select_backend(None)[0] == "numpy"


def test_auto_picks_cupy_when_probe_succeeds(fake_gpu):
    name, reason = backend.select_backend("auto")
    assert name == "cupy" and "1 CUDA device" in reason


def test_numpy_request_never_probes(monkeypatch):
    def boom():
        raise AssertionError("probe must not run for an explicit numpy request")

    monkeypatch.setattr(backend, "_probe_cupy", boom)
    assert backend.select_backend("numpy")[0] == "numpy"
    assert backend.select_backend(" NumPy ")[0] == "numpy"


def test_env_numpy_overrides_auto(fake_gpu, monkeypatch):
    monkeypatch.setenv(backend.ENV_VAR, "numpy")
    name, reason = backend.select_backend("auto")
    assert name == "numpy" and "GPUSAXS_BACKEND=numpy" in reason


def test_env_cupy_overrides_auto(fake_gpu, monkeypatch):
    monkeypatch.setenv(backend.ENV_VAR, "cupy")
    name, reason = backend.select_backend("auto")
    assert name == "cupy" and "GPUSAXS_BACKEND=cupy" in reason


def test_env_does_not_override_explicit_request(fake_gpu, monkeypatch):
    monkeypatch.setenv(backend.ENV_VAR, "numpy")
    assert backend.select_backend("cupy")[0] == "cupy"
    monkeypatch.setenv(backend.ENV_VAR, "cupy")
    assert backend.select_backend("numpy")[0] == "numpy"


def test_env_cupy_without_device_raises(no_gpu, monkeypatch):
    monkeypatch.setenv(backend.ENV_VAR, "cupy")
    with pytest.raises(BackendError, match="GPUSAXS_BACKEND=cupy"):
        backend.select_backend("auto")


def test_env_auto_and_empty_mean_auto(no_gpu, monkeypatch):
    for value in ("auto", "", "  "):
        monkeypatch.setenv(backend.ENV_VAR, value)
        assert backend.select_backend("auto")[0] == "numpy"


def test_env_unknown_value_raises(monkeypatch):
    monkeypatch.setenv(backend.ENV_VAR, "opencl")
    with pytest.raises(BackendError) as info:
        backend.select_backend("auto")
    msg = str(info.value)
    assert "opencl" in msg and "GPUSAXS_BACKEND" in msg and "numpy" in msg and "cupy" in msg


def test_cupy_without_cupy_installed_explains_install(no_gpu):
    with pytest.raises(BackendError) as info:
        backend.select_backend("cupy")
    assert 'pip install ".[gpu]"' in str(info.value)
    assert isinstance(info.value, GpusaxsError)


def test_cupy_without_device_explains(monkeypatch):
    probe = backend._Probe(
        False,
        "CuPy 13.0 is installed but no CUDA device is usable (CUDARuntimeError: cudaErrorNoDevice)",
    )
    monkeypatch.setattr(backend, "_probe_cupy", lambda: probe)
    with pytest.raises(BackendError, match="no CUDA device"):
        backend.select_backend("cupy")


@pytest.mark.skipif(_cupy_usable(), reason="a CUDA device is usable here")
def test_cupy_raises_here_with_real_probe():
    with pytest.raises(BackendError) as info:
        backend.select_backend("cupy")
    msg = str(info.value)
    assert ('pip install ".[gpu]"' in msg) or ("no CUDA device" in msg)


def test_probe_is_cached():
    backend._probe_cupy.cache_clear()
    first = backend._probe_cupy()
    assert backend._probe_cupy() is first


def test_probe_never_raises_when_import_fails(monkeypatch):
    import builtins

    real_import = builtins.__import__

    def fake_import(name, *args, **kwargs):
        if name == "cupy" or name.startswith("cupy."):
            raise RuntimeError("broken CUDA install")
        return real_import(name, *args, **kwargs)

    backend._probe_cupy.cache_clear()
    monkeypatch.setattr(builtins, "__import__", fake_import)
    probe = backend._probe_cupy()
    assert not probe.ok and "broken CUDA install" in probe.reason
    assert 'pip install ".[gpu]"' in probe.reason


def test_probe_reports_device_count_failure(monkeypatch):
    import sys

    def no_device():
        raise RuntimeError("cudaErrorNoDevice: no CUDA-capable device is detected")

    fake = types.SimpleNamespace(
        __version__="13.9",
        cuda=types.SimpleNamespace(runtime=types.SimpleNamespace(getDeviceCount=no_device)),
    )
    backend._probe_cupy.cache_clear()
    monkeypatch.setitem(sys.modules, "cupy", fake)
    probe = backend._probe_cupy()
    assert not probe.ok and "no CUDA device" in probe.reason and "13.9" in probe.reason

    fake.cuda.runtime.getDeviceCount = lambda: 0
    backend._probe_cupy.cache_clear()
    probe = backend._probe_cupy()
    assert not probe.ok and "no CUDA device" in probe.reason


@pytest.mark.parametrize("name", ["cuda", "gpu", "torch", ""])
def test_unknown_name_lists_valid_names(name):
    with pytest.raises(BackendError) as info:
        backend.select_backend(name)
    for valid in ("auto", "numpy", "cupy"):
        assert valid in str(info.value)


def test_non_string_request_is_rejected():
    with pytest.raises(BackendError):
        backend.select_backend(3)


def test_array_module():
    import numpy

    assert backend.array_module("numpy") is numpy
    with pytest.raises(BackendError):
        backend.array_module("fortran")


def test_backend_info_is_json_serialisable():
    info = backend.backend_info()
    text = json.dumps(info)
    back = json.loads(text)
    assert back["backend"] in ("numpy", "cupy")
    assert back["reason"]
    for key in (
        "cupy_version",
        "device_name",
        "compute_capability",
        "total_memory_bytes",
        "devices",
        "device_count",
        "numpy_version",
    ):
        assert key in back
    if not _cupy_usable():
        assert back["backend"] == "numpy" and back["devices"] == []
        assert back["device_name"] is None


def test_backend_info_with_env_error_does_not_raise(no_gpu, monkeypatch):
    monkeypatch.setenv(backend.ENV_VAR, "cupy")
    info = backend.backend_info()
    json.dumps(info)
    assert info["backend"] is None and "not available" in info["reason"]
    assert info["env"] == "cupy"


def test_backend_info_reports_devices_from_cupy(monkeypatch):
    props = {
        "name": b"NVIDIA H100 80GB HBM3",
        "major": 9,
        "minor": 0,
        "totalGlobalMem": 85 * 2**30,
        "multiProcessorCount": 132,
    }

    class _Dev:
        def __init__(self, i):
            pass

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

    runtime = types.SimpleNamespace(
        getDeviceProperties=lambda i: props,
        memGetInfo=lambda: (80 * 2**30, 85 * 2**30),
        runtimeGetVersion=lambda: 12040,
        driverGetVersion=lambda: 12050,
    )
    fake = types.SimpleNamespace(
        __version__="13.3.0", cuda=types.SimpleNamespace(runtime=runtime, Device=_Dev)
    )
    probe = backend._Probe(True, "CuPy 13.3.0 with 1 CUDA device(s)", fake, 1)
    monkeypatch.setattr(backend, "_probe_cupy", lambda: probe)
    info = json.loads(json.dumps(backend.backend_info()))
    assert info["backend"] == "cupy"
    assert info["device_name"] == "NVIDIA H100 80GB HBM3"
    assert info["compute_capability"] == "9.0"
    assert info["total_memory_bytes"] == 85 * 2**30
    assert info["devices"][0]["free_memory_bytes"] == 80 * 2**30
    assert info["cupy_version"] == "13.3.0" and info["cuda_runtime_version"] == 12040


# ---------------------------------------------------------------------------- Integrator wiring
def _tiny_matrix():
    import numpy as np

    from gpusaxs.matrix import IntegrationMatrix

    n = 12
    return IntegrationMatrix(
        shape=(3, 4),
        q_edges=np.linspace(0, 1, 3),
        pixel_ptr=np.arange(n + 1, dtype=np.int64),
        bins=(np.arange(n) % 2).astype(np.int32),
        weights=np.ones(n, np.float32),
        pixel_scale=np.ones(n, np.float32),
        norm=np.full(2, 6.0),
    )


def _tiny_get_matrix(*args, info=None, **kwargs):
    """get_matrix stand-in: the tiny matrix, reported as built (the Integrator reads its key)."""
    if info is not None:
        info.update(key="0" * 64, source="built", seconds=0.0, path=None)
    return _tiny_matrix()


def _blank_calibration():
    """A Calibration instance (get_matrix is patched, so its fields are never read)."""
    from gpusaxs.calibration_model import Calibration

    return object.__new__(Calibration)


@pytest.mark.parametrize("env", [None, "numpy", "auto"])
def test_explicit_cupy_request_runs_on_cupy_even_with_env_numpy(fake_gpu, monkeypatch, env):
    """Integrator(backend="cupy") hands the CuPy module to the engine; $GPUSAXS_BACKEND=numpy
    must not turn it into a silent CPU run."""
    import gpusaxs.gpu_engine as ge
    import gpusaxs.matrix_cache as mc
    from gpusaxs.integrator import Integrator

    if env:
        monkeypatch.setenv(backend.ENV_VAR, env)
    seen = {}

    class RecordingEngine:
        name = "cupy"

        def __init__(self, matrix, xp=None, **kw):
            seen["xp"] = xp

    monkeypatch.setattr(ge, "DeviceEngine", RecordingEngine)
    monkeypatch.setattr(mc, "get_matrix", _tiny_get_matrix)
    monkeypatch.setattr(gpusaxs.integrator, "get_matrix", _tiny_get_matrix)
    integ = Integrator(_blank_calibration(), backend="cupy")
    assert integ.backend_name == "cupy"
    _ = integ.engine  # built on first use
    assert seen["xp"] is fake_gpu


def test_explicit_cupy_request_without_gpu_raises(no_gpu, monkeypatch):
    import gpusaxs.matrix_cache as mc
    from gpusaxs.integrator import Integrator

    monkeypatch.setenv(backend.ENV_VAR, "numpy")
    monkeypatch.setattr(mc, "get_matrix", _tiny_get_matrix)
    monkeypatch.setattr(gpusaxs.integrator, "get_matrix", _tiny_get_matrix)
    with pytest.raises(BackendError, match="not available"):
        Integrator(_blank_calibration(), backend="cupy")


def test_backend_info_lists_engine_fallbacks(monkeypatch):

    monkeypatch.setattr(
        gpu_fallbacks, "_FALLBACKS", [{"from": "kernel", "to": "spmm", "reason": "x"}]
    )
    info = json.loads(json.dumps(backend.backend_info()))
    assert info["engine_fallbacks"] == [{"from": "kernel", "to": "spmm", "reason": "x"}]


def test_engine_fallbacks_are_visible_in_saxsdog_and_the_server_stat(monkeypatch, tmp_path):
    """Issue 25: a fallback is recorded and shown: saxsdog's summary and the server's stat
    (schema-valid), nothing extra when there was none."""
    import types

    from gpusaxs.clients.saxsdog import Saxsdog
    from gpusaxs.server import protocol as P
    from gpusaxs.server.saxsdogserver import SaxsdogService

    svc = SaxsdogService(tmp_path, "s3cret-for-tests")
    dog = types.SimpleNamespace(
        failed_early=0,
        skipped=0,
        redone=0,
        abandoned=0,
        setup_seconds=0.5,
        matrix_info={},
        setup_parts={},  # saxsdog's set-up report by part (matrix, engine, kernels)
    )
    stats = {"processed": 3, "failed": 0, "dropped": 0}
    monkeypatch.setattr(gpu_fallbacks, "_FALLBACKS", [])
    assert "engine fallbacks" not in svc.stat()
    assert "fallback" not in Saxsdog.summary(dog, stats, False, 1.0)
    entry = {"from": "kernel", "to": "spmm", "reason": "out of memory: OutOfMemoryError: x"}
    monkeypatch.setattr(gpu_fallbacks, "_FALLBACKS", [entry])
    line = "kernel -> spmm: out of memory: OutOfMemoryError: x"
    assert svc.stat()["engine fallbacks"] == [line]
    P.validate_response(svc.cmd_stat(None, []))
    assert (
        Saxsdog.summary(dog, stats, False, 1.0).splitlines()[-1].endswith(f"engine fallback {line}")
    )
