"""The one entrance (gpusaxs.engines.make_engine) and the contract's validity rule (issue 24)."""

import dataclasses
import types

import numpy as np
import pytest

from gpusaxs import backend, engines, gpu_engine
from gpusaxs.cpu_fallback.engine import CpuEngine, ScipyEngine
from gpusaxs.cpu_fallback.light import BincountEngine
from gpusaxs.engine_contract import invalid_threshold, valid_mask
from gpusaxs.errors import BackendError
from gpusaxs.matrix import IntegrationMatrix


@pytest.fixture
def matrix():
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


@pytest.fixture(autouse=True)
def _no_env(monkeypatch):
    monkeypatch.delenv(backend.ENV_VAR, raising=False)
    monkeypatch.delenv(engines.NO_NUMBA_VAR, raising=False)


@pytest.fixture
def no_gpu(monkeypatch):
    probe = backend._Probe(False, "CuPy is not installed (test)")
    monkeypatch.setattr(backend, "_probe_cupy", lambda: probe)


def test_auto_without_a_device_is_the_numba_engine(matrix, no_gpu):
    engine = engines.make_engine(matrix, threads=1)
    assert isinstance(engine, CpuEngine) and engine.threads == 1


def test_light_and_no_numba_choices(matrix, no_gpu, monkeypatch):
    assert isinstance(engines.make_engine(matrix, "numpy", light=True), BincountEngine)
    monkeypatch.setenv(engines.NO_NUMBA_VAR, "1")
    assert isinstance(engines.make_engine(matrix, "auto"), ScipyEngine)


def test_every_cpu_choice_gives_the_same_sums(matrix, no_gpu, monkeypatch):
    frames = np.arange(24, dtype=np.int32).reshape(2, 3, 4) - 3  # negatives are invalid
    ref = ScipyEngine(matrix).sums(frames, errors=True)
    for engine in (
        engines.make_engine(matrix, "numpy"),
        engines.make_engine(matrix, "numpy", light=True),
    ):
        got = engine.sums(frames, errors=True)
        for name in ("signal", "norm", "variance", "squares"):
            np.testing.assert_allclose(getattr(got, name), getattr(ref, name), rtol=1e-6)
        if got.mean is not None:  # an engine's own signal / norm (the map kernel's)
            with np.errstate(invalid="ignore", divide="ignore"):
                expected = np.where(ref.norm > 0, ref.signal / ref.norm, np.nan)
            np.testing.assert_allclose(got.mean, expected, rtol=1e-6)


def test_cupy_gives_the_device_engine_with_a_cpu_fallback(matrix, monkeypatch):
    fake = types.SimpleNamespace(__version__="99.0-fake")
    probe = backend._Probe(True, "CuPy 99.0-fake with 1 CUDA device(s)", fake, 1)
    monkeypatch.setattr(backend, "_probe_cupy", lambda: probe)
    seen = {}

    class Recording:
        name = "cupy"
        supports_pixel_offset = True

        def __init__(self, matrix, xp=None, host_engine=None, **options):
            seen.update(xp=xp, host=host_engine(matrix), options=options)

    monkeypatch.setattr(gpu_engine, "DeviceEngine", Recording)
    engine = engines.make_engine(matrix, "auto", batch_size=8, n_streams=3)
    assert isinstance(engine, Recording) and seen["xp"] is fake
    assert isinstance(seen["host"], (CpuEngine, ScipyEngine))
    assert seen["options"] == {"batch_size": 8, "n_streams": 3}


def test_cupy_without_a_device_raises(matrix, no_gpu):
    with pytest.raises(BackendError, match="not available"):
        engines.make_engine(matrix, "cupy")


def test_an_engine_without_the_dark_is_replaced_by_the_reference(matrix, no_gpu, monkeypatch):
    matrix = dataclasses.replace(matrix, pixel_offset=np.ones(matrix.n_pixels, np.float32))
    monkeypatch.setattr(BincountEngine, "supports_pixel_offset", False)
    assert isinstance(engines.make_engine(matrix, "numpy", light=True), ScipyEngine)


@pytest.mark.parametrize(
    "dtype", [np.int8, np.uint8, np.int16, np.uint16, np.int32, np.uint32, np.float32, np.float64]
)
def test_validity_rule_has_one_meaning(dtype):
    """valid_mask (the sparse paths) and invalid_threshold (the kernels) say the same."""
    dtype = np.dtype(dtype)
    if dtype.kind == "f":
        x = np.array([0.0, -0.0, 1.5, -1.0, np.nan, np.inf, -np.inf, -1e-40], dtype)
    else:
        info = np.iinfo(dtype)
        x = np.array([0, 1, info.max, info.max - 1, info.min], dtype)
    upper = invalid_threshold(dtype)
    with np.errstate(invalid="ignore"):
        by_threshold = (x >= 0) & (x.astype(np.float64) < upper)
    np.testing.assert_array_equal(valid_mask(x), by_threshold)


def test_bool_frames_are_refused():
    with pytest.raises(TypeError):
        valid_mask(np.zeros(3, bool))


@pytest.mark.parametrize("with_mean", [False, True])
def test_error_model_of_a_map_in_slices_equals_the_formulas(with_mean):
    """A map's 10^7 values are divided in slices on all cores (gpusaxs.host_threads): the same
    numbers as the formulas written out, empty bins NaN, an engine's own mean taken as is."""
    from gpusaxs.engine_contract import Sums, error_model, mean_intensity
    from gpusaxs.host_threads import PARALLEL_VALUES

    rng = np.random.default_rng(3)
    shape = (3, PARALLEL_VALUES + 12345)  # more than two slices, the last one partial
    norm = rng.uniform(0.0, 2.0, shape)
    norm[:, ::7] = 0.0
    signal = np.where(norm > 0, rng.uniform(0.0, 50.0, shape), 0.0)
    variance = rng.uniform(0.0, 30.0, shape)
    squares = signal * signal / np.where(norm > 0, norm, 1.0) + rng.uniform(0.0, 5.0, shape)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = np.where(norm > 0, signal / norm, np.nan)
        err = np.where(norm > 0, np.sqrt(variance) / norm, np.nan)
        std = np.where(norm > 0, np.sqrt(np.maximum(squares / norm - mean * mean, 0.0)), np.nan)
    sums = Sums(signal, norm, variance, squares, mean=mean.copy() if with_mean else None)
    np.testing.assert_allclose(mean_intensity(sums), mean, rtol=1e-12)
    got_i, got_std, got_err = error_model(sums)
    np.testing.assert_allclose(got_i, mean, rtol=1e-12)
    np.testing.assert_allclose(got_err, err, rtol=1e-12)
    np.testing.assert_allclose(got_std, std, rtol=1e-9, atol=1e-12)
    assert np.isnan(got_std[:, ::7]).all() and not np.isnan(got_std[:, 1::7]).any()
