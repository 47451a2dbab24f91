"""DeviceEngine: NumPy-module tests (CI) against an independent float64 reference, the CUDA
kernel source compiled and run on the CPU through an emulation shim (needs g++), and GPU tests
(marked ``gpu``, skipped without CuPy and a CUDA device)."""

import collections
import functools
import platform

import cuda_shim
import numpy as np
import pytest

from gpusaxs import gpu_fallbacks
from gpusaxs.engine_contract import SUM_FIELDS, Sums, valid_mask
from gpusaxs.engines import make_engine
from gpusaxs.gpu_engine import DeviceEngine
from gpusaxs.gpu_kernels import (
    CTYPES,
    KERNEL_DTYPES,
    kernel_name,
    kernel_names,
    kernel_source,
    make_segments,
    transpose_name,
)
from gpusaxs.gpu_ops import SyncStream
from gpusaxs.matrix import IntegrationMatrix

H, W = 1043, 981  # PILATUS 1M
ALL_DTYPES = [
    np.int8,
    np.uint8,
    np.int16,
    np.uint16,
    np.int32,
    np.uint32,
    np.int64,
    np.uint64,
    np.float32,
    np.float64,
]


# ---------------------------------------------------------------------------- fixtures
def random_matrix(
    shape, rng, entries_per_pixel=(0.3, 0.4, 0.3), mask_fraction=0.05, center=(400.3, 800.7), dr=1.0
):
    """Ring-like random IntegrationMatrix: 1-3 entries per pixel (about 2), random weights,
    random pixel scale, ~5% randomly masked pixels, a masked gap band and empty bins."""
    h, w = shape
    n_pixels = h * w
    yy, xx = np.mgrid[0:h, 0:w]
    r = np.hypot(yy - center[0], xx - center[1]).ravel()
    n_bins = int(r.max() / dr) + 2
    b0 = np.minimum((r / dr).astype(np.int64), n_bins - 1)
    counts = rng.choice([1, 2, 3], size=n_pixels, p=entries_per_pixel)
    masked = rng.random(n_pixels) < mask_fraction
    masked |= (yy.ravel() >= h // 5) & (yy.ravel() < h // 5 + 17)  # detector gap band
    masked |= (b0 >= 100) & (b0 <= 102)  # bins 100..103 only get neighbours' shares
    masked |= (b0 >= 300) & (b0 <= 305)
    counts[masked] = 0
    pixel_ptr = np.zeros(n_pixels + 1, np.int64)
    np.cumsum(counts, out=pixel_ptr[1:])
    pix = np.repeat(np.arange(n_pixels), counts)
    k = np.arange(pixel_ptr[-1]) - np.repeat(pixel_ptr[:-1], counts)
    offsets = np.array([0, 1, -1])[k]
    bins = np.clip(b0[pix] + offsets, 0, n_bins - 1).astype(np.int32)
    weights = rng.uniform(0.05, 0.6, size=pix.size).astype(np.float32)
    scale = rng.uniform(0.7, 1.4, size=n_pixels).astype(np.float32)
    norm = np.bincount(bins, weights=weights.astype(np.float64), minlength=n_bins)
    q_edges = np.linspace(0.0, 0.01 * n_bins, n_bins + 1)
    return IntegrationMatrix(
        shape=(h, w),
        q_edges=q_edges,
        pixel_ptr=pixel_ptr,
        bins=bins,
        weights=weights,
        pixel_scale=scale,
        norm=norm,
    )


def reference_sums(m, stack, errors=True):
    """Independent float64 reference from the pixel-major arrays (bincount per frame)."""
    stack = np.asarray(stack).reshape(-1, m.n_pixels)
    counts = np.diff(m.pixel_ptr)
    pix = np.repeat(np.arange(m.n_pixels), counts)
    w = m.weights.astype(np.float64)
    s = m.pixel_scale.astype(np.float64)[pix]
    out = np.zeros((4, stack.shape[0], m.n_bins))
    offset = getattr(m, "pixel_offset", None)
    o = 0.0 if offset is None else offset.astype(np.float64)[pix]
    for i, frame in enumerate(stack):
        x = frame[pix]
        if x.dtype.kind == "u":
            valid = x != np.iinfo(x.dtype).max
        else:
            with np.errstate(invalid="ignore"):
                valid = (x >= 0) & (x < np.inf)
        xv = np.where(valid, x, 0).astype(np.float64)
        v = np.where(valid, xv - o, 0.0)  # docs/ARCHITECTURE.md: v = x - offset, validity on raw x
        out[0, i] = np.bincount(m.bins, w * s * v, minlength=m.n_bins)
        out[1, i] = np.bincount(m.bins, w * valid, minlength=m.n_bins)
        out[2, i] = np.bincount(m.bins, w * s * s * np.maximum(xv, 0), minlength=m.n_bins)
        out[3, i] = np.bincount(m.bins, w * (s * v) ** 2, minlength=m.n_bins)
    return Sums(*out) if errors else Sums(out[0], out[1])


def with_offset(m, rng):
    """The matrix with a per-pixel dark offset (counts, 0..50)."""
    import dataclasses

    offset = rng.uniform(0.0, 50.0, m.n_pixels).astype(np.float32)
    return dataclasses.replace(m, pixel_offset=offset)


def make_frames(dtype, n, shape, rng):
    """Frames with the invalid values of each dtype: PILATUS -1/-2, EIGER max-of-type, NaN/inf."""
    dtype = np.dtype(dtype)
    size = (n,) + tuple(shape)
    gap = (slice(None), slice(shape[0] // 2, shape[0] // 2 + 7), slice(None))
    if dtype.kind == "f":
        x = (rng.random(size) * 1e4).astype(dtype)
        u = rng.random(size)
        x[u < 0.01] = np.nan
        x[(u >= 0.01) & (u < 0.015)] = np.inf
        x[(u >= 0.015) & (u < 0.02)] = -np.inf
        x[(u >= 0.02) & (u < 0.03)] = -1.0
        x[gap] = -1.0
        return x
    info = np.iinfo(dtype)
    hi = min(int(info.max) - 1, 10**6)
    x = rng.integers(0, hi, size=size, dtype=np.int64).astype(dtype)
    u = rng.random(size)
    if dtype.kind == "i":
        x[u < 0.02] = -1
        x[(u >= 0.02) & (u < 0.03)] = -2
        x[gap] = -1
    else:
        if dtype.itemsize >= 4:  # genuine counts above 2**31 must stay valid
            x[(u >= 0.03) & (u < 0.05)] = np.array(3_000_000_000, dtype=dtype)
        x[u < 0.02] = info.max
        x[gap] = info.max
    return x


def assert_sums_close(got, ref, rtol, errors=True):
    names = SUM_FIELDS if errors else SUM_FIELDS[:2]
    for name in names:
        a, b = np.asarray(getattr(got, name)), np.asarray(getattr(ref, name))
        assert a.shape == b.shape, name
        assert a.dtype == np.float64, name
        scale = np.maximum(np.abs(b), 1e-300)
        rel = np.where((a == 0) & (b == 0), 0.0, np.abs(a - b) / scale)
        assert np.all(np.isfinite(a)), name
        assert rel.max(initial=0.0) <= rtol, f"{name}: max rel diff {rel.max()} > {rtol}"
    if not errors:
        assert got.variance is None and got.squares is None


@pytest.fixture(scope="module")
def matrix():
    return random_matrix((H, W), np.random.default_rng(12345))


@pytest.fixture(scope="module")
def frames_by_dtype():
    rng = np.random.default_rng(7)
    return {np.dtype(d): make_frames(d, 5, (H, W), rng) for d in ALL_DTYPES}


@pytest.fixture(scope="module")
def references(matrix, frames_by_dtype):
    return {d: reference_sums(matrix, x) for d, x in frames_by_dtype.items()}


def test_random_matrix_is_realistic(matrix):
    assert matrix.shape == (H, W)
    ratio = matrix.nnz / matrix.n_pixels
    assert 1.6 < ratio < 2.1
    assert np.sum(matrix.norm == 0) >= 2  # empty bins exist


# ---------------------------------------------------------------------------- helpers
@pytest.mark.parametrize(
    "dtype,values,expected",
    [
        (np.int32, [-2, -1, 0, 5, 2**31 - 1], [0, 0, 1, 1, 1]),
        (np.uint32, [0, 2**31, 3_000_000_000, 2**32 - 2, 2**32 - 1], [1, 1, 1, 1, 0]),
        (np.uint16, [0, 65534, 65535], [1, 1, 0]),
        (np.uint8, [0, 254, 255], [1, 1, 0]),
        (np.int16, [-1, 0, 32767], [0, 1, 1]),
        (np.float32, [0.0, -0.0, 1.5, -1.0, np.nan, np.inf, -np.inf], [1, 1, 1, 0, 0, 0, 0]),
        (np.float64, [3e38, 1e300, np.nan, -1e-300], [1, 1, 0, 0]),
    ],
)
def test_valid_mask(dtype, values, expected):
    got = valid_mask(np.array(values, dtype=dtype))
    assert got.tolist() == [bool(v) for v in expected]


def test_valid_mask_rejects_non_numeric():
    with pytest.raises(TypeError):
        valid_mask(np.array([1 + 2j]))


def test_make_segments_covers_each_entry_once():
    rng = np.random.default_rng(3)
    counts = rng.integers(0, 50, 200)
    counts[::17] = 0
    counts[5] = 10_000
    row_ptr = np.zeros(201, np.int64)
    np.cumsum(counts, out=row_ptr[1:])
    for length in (1, 7, 64, 4096):
        sb, s0, s1 = make_segments(row_ptr, length)
        assert sb.dtype == np.int32 and s0.dtype == np.int64
        assert np.all(s1 > s0) and np.all(s1 - s0 <= length)
        cover = np.zeros(row_ptr[-1], int)
        for b, a, e in zip(sb, s0, s1, strict=True):
            assert row_ptr[b] <= a and e <= row_ptr[b + 1]
            cover[a:e] += 1
        assert np.all(cover == 1)
        assert np.all(np.diff(sb) >= 0)
        assert not np.any(np.isin(np.flatnonzero(counts == 0), sb))


def test_kernel_names_cover_all_int_and_float_dtypes():
    names = kernel_names()
    assert len(names) == len(set(names))
    for d in KERNEL_DTYPES:
        for errors in (False, "poisson", True):
            for off in (False, True):
                assert kernel_name(d, errors, off, "pixel") in names
        assert transpose_name(d) in names
        assert CTYPES[d] in kernel_name(d)
    assert (
        kernel_name(np.uint32, False, False, "frame") == "gs_integrate<unsigned int, 8, 0, false>"
    )
    assert kernel_name(np.int32, "poisson", True) == "gs_integrate_pm<int, 8, 1, true>"
    assert kernel_name(np.int32, True, False, "frame") in names
    with pytest.raises(ValueError):
        kernel_name(np.int32, "full")


def test_kernel_source_is_the_packaged_cu_file():
    import pathlib

    import gpusaxs

    path = pathlib.Path(gpusaxs.__file__).parent / "kernels" / "integrate.cu"
    assert kernel_source() == path.read_text()
    for name in ("gs_integrate_pm", "gs_integrate", "gs_to_pixel_major"):
        assert "void __launch_bounds__" in kernel_source() and name in kernel_source()


# ---------------------------------------------------------------------------- NumPy engine
@pytest.mark.parametrize("dtype", ALL_DTYPES, ids=lambda d: np.dtype(d).name)
def test_every_dtype_matches_reference(matrix, frames_by_dtype, references, dtype):
    x = frames_by_dtype[np.dtype(dtype)]
    eng = DeviceEngine(matrix, xp=np, batch_size=2)
    assert eng.name == "numpy"
    got = eng.sums(x, errors=True)
    assert_sums_close(got, references[np.dtype(dtype)], 1e-10)
    got2 = eng.sums(x, errors=False)
    assert_sums_close(got2, references[np.dtype(dtype)], 1e-10, errors=False)


def test_uint32_large_counts_are_not_negative(matrix):
    x = np.full((1, H, W), 3_000_000_000, dtype=np.uint32)
    got = DeviceEngine(matrix, xp=np).sums(x)
    np.testing.assert_allclose(got.norm[0], matrix.norm, rtol=1e-12)
    assert np.all(got.signal[0] >= 0)
    ref = reference_sums(matrix, x)
    assert_sums_close(got, ref, 1e-10, errors=False)


@pytest.mark.parametrize("n,batch", [(0, 4), (1, 4), (4, 4), (5, 2), (5, 3), (5, 32)])
def test_batching_gives_identical_sums(matrix, frames_by_dtype, references, n, batch):
    x = frames_by_dtype[np.dtype(np.int32)][:n]
    one_shot = DeviceEngine(matrix, xp=np, batch_size=64).sums(x, errors=True)
    got = DeviceEngine(matrix, xp=np, batch_size=batch, n_streams=2).sums(x, errors=True)
    for name in SUM_FIELDS:
        a, b = getattr(got, name), getattr(one_shot, name)
        assert a.shape == (n, matrix.n_bins)
        assert np.array_equal(a, b), name
    if n:
        ref = Sums(*(getattr(references[np.dtype(np.int32)], f)[:n] for f in SUM_FIELDS))
        assert_sums_close(got, ref, 1e-10)


def test_input_shapes(matrix, frames_by_dtype):
    x = frames_by_dtype[np.dtype(np.uint16)]
    eng = DeviceEngine(matrix, xp=np, batch_size=3)
    full = eng.sums(x)
    single = eng.sums(x[2])  # (H, W)
    assert single.signal.shape == (1, matrix.n_bins)
    assert np.array_equal(single.signal[0], full.signal[2])
    flat = eng.sums(x.reshape(x.shape[0], -1))
    assert np.array_equal(flat.signal, full.signal)
    noncontig = eng.sums(np.asfortranarray(x))
    assert np.array_equal(noncontig.signal, full.signal)
    swapped = eng.sums(x.astype(x.dtype.newbyteorder(">")))
    assert np.array_equal(swapped.signal, full.signal)


def test_bad_inputs_raise(matrix):
    eng = DeviceEngine(matrix, xp=np)
    with pytest.raises(ValueError, match="shape"):
        eng.sums(np.zeros((2, H, W + 1), np.int32))
    with pytest.raises(TypeError):
        eng.sums(np.zeros((1, H, W), np.complex64))
    with pytest.raises(TypeError):
        eng.sums(np.zeros((1, H, W), bool))
    with pytest.raises(ValueError):
        DeviceEngine(matrix, xp=np, method="dense")
    with pytest.raises(ValueError):
        DeviceEngine(matrix, xp=np, batch_size=0)


def test_sums_device_numpy_matches_sums(matrix, frames_by_dtype):
    x = frames_by_dtype[np.dtype(np.float32)]
    eng = DeviceEngine(matrix, xp=np, batch_size=2)
    a = eng.sums(x, errors=True)
    b = eng.sums_device(x, errors=True)
    for name in SUM_FIELDS:
        assert np.array_equal(getattr(a, name), getattr(b, name))
    empty = eng.sums_device(x[:0])
    assert empty.signal.shape == (0, matrix.n_bins) and empty.variance is None


def test_float16_input(matrix):
    rng = np.random.default_rng(1)
    x = (rng.random((2, H, W)) * 100).astype(np.float16)
    x[0, :3] = np.nan
    x[1, 5] = -3
    got = DeviceEngine(matrix, xp=np).sums(x, errors=True)
    assert_sums_close(got, reference_sums(matrix, x), 1e-10)


@pytest.mark.parametrize("layout", ["pixel", "frame"])
def test_poisson_skips_squares(matrix, frames_by_dtype, references, layout):
    x = frames_by_dtype[np.dtype(np.int32)]
    eng = DeviceEngine(matrix, xp=np, batch_size=2, layout=layout)
    got = eng.sums(x, errors="poisson")
    assert got.squares is None and got.variance is not None
    ref = references[np.dtype(np.int32)]
    for name in ("signal", "norm", "variance"):
        np.testing.assert_allclose(getattr(got, name), getattr(ref, name), rtol=1e-10)
    dev = eng.sums_device(x, errors="poisson")
    assert dev.squares is None
    np.testing.assert_array_equal(dev.variance, got.variance)
    with pytest.raises(ValueError):
        eng.sums(x, errors="std")


@pytest.mark.parametrize("layout", ["pixel", "frame"])
@pytest.mark.parametrize(
    "dtype", [np.int32, np.uint32, np.float32, np.uint16], ids=lambda d: np.dtype(d).name
)
def test_dark_offset_numpy_path(matrix, frames_by_dtype, dtype, layout):
    """docs/ARCHITECTURE.md: v = x - offset, validity on raw x, variance of the raw counts."""
    m = with_offset(matrix, np.random.default_rng(4))
    x = frames_by_dtype[np.dtype(dtype)]
    eng = DeviceEngine(m, xp=np, batch_size=3, layout=layout)
    ref = reference_sums(m, x)
    assert_sums_close(eng.sums(x, errors=True), ref, 1e-9)
    plain = reference_sums(matrix, x)
    assert not np.allclose(ref.signal, plain.signal)  # the offset matters
    np.testing.assert_array_equal(ref.norm, plain.norm)
    np.testing.assert_allclose(ref.variance, plain.variance, rtol=1e-12)


def test_dark_offset_field_defaults_to_none(matrix):
    assert matrix.pixel_offset is None
    assert DeviceEngine(matrix, xp=np).kernel_arrays()["o"] is None


def test_pixel_major_device_input_numpy(matrix, frames_by_dtype, references):
    x = frames_by_dtype[np.dtype(np.uint16)]
    eng = DeviceEngine(matrix, xp=np, batch_size=2)
    pm = np.ascontiguousarray(x.reshape(x.shape[0], -1).T)  # (n_pixels, B)
    got = eng.sums_device(pm, errors=True, pixel_major=True)
    assert_sums_close(got, references[np.dtype(np.uint16)], 1e-10)
    with pytest.raises(ValueError, match="pixel-major"):
        eng.sums_device(pm.T, pixel_major=True)


def test_transpose_pads_to_frames_per_block(matrix):
    eng = DeviceEngine(matrix, xp=np)
    assert [eng._leading_dim(b) for b in (1, 8, 9, 32)] == [8, 8, 16, 32]
    src = np.arange(3 * matrix.n_pixels, dtype=np.int32).reshape(3, -1)
    dst = np.full((matrix.n_pixels, 8), -7, np.int32)
    eng._transpose(src, 3, dst)
    np.testing.assert_array_equal(dst[:, :3], src.T)
    assert np.all(dst[:, 3:] == -7)


def test_fallback_chain_is_logged_once_and_reported(
    matrix, frames_by_dtype, references, monkeypatch, caplog
):
    """A failing path is dropped with its reason (once) and the batch redone on the next."""
    import gpusaxs.gpu_engine as ge

    monkeypatch.setattr(gpu_fallbacks, "_FALLBACKS", [])
    x = frames_by_dtype[np.dtype(np.int32)]
    eng = DeviceEngine(  # the CPU step as make_engine gives it on CuPy
        matrix, xp=np, batch_size=2, host_engine=functools.partial(make_engine, backend="numpy")
    )
    assert eng._chain == ["kernel", "spmm", "cpu"]
    calls = []

    def broken_launch(*args):
        calls.append("kernel")
        raise CUDADriverError("CUDA_ERROR_NO_BINARY_FOR_GPU: no kernel image (simulated)")

    monkeypatch.setattr(eng, "_launch", broken_launch)
    monkeypatch.setattr(eng, "_kernel_ok", lambda dtype: eng.path == "kernel")
    with caplog.at_level("WARNING", logger="gpusaxs.gpu_engine"):
        got = eng.sums(x, errors=True)
    assert_sums_close(got, references[np.dtype(np.int32)], 1e-10)
    assert calls == ["kernel"] and eng.path == "spmm"
    assert [r.getMessage() for r in caplog.records].count(
        caplog.records[0].getMessage()
    ) == 1 and "falling back to spmm" in caplog.text
    assert ge.engine_fallbacks()[0]["reason"].startswith(
        "no kernel code for this device: CUDADriverError: CUDA_ERROR_NO_BINARY"
    )

    def broken_spmm(*args, **kw):
        raise MemoryError("cusparse workspace (simulated)")

    monkeypatch.setattr(eng, "_spmm_into", broken_spmm)
    got = eng.sums(x[:2], errors="poisson")  # the CPU engine, last step
    assert eng.path == "cpu" and got.squares is None
    np.testing.assert_allclose(
        got.signal, references[np.dtype(np.int32)].signal[:2], rtol=1e-6
    )  # the CPU engine's float32 w*s
    assert [f["to"] for f in ge.engine_fallbacks()] == ["spmm", "cpu"]
    assert [f["to"] for f in eng.fallbacks] == ["spmm", "cpu"]


def test_submit_collect_overlaps_batches_in_order(matrix, frames_by_dtype, references):
    """The service API: batches are queued on round-robin streams and collected in order;
    with deferred streams nothing runs until a result is waited for."""
    x = frames_by_dtype[np.dtype(np.int32)]
    DeferredStream.log = []
    eng = DeviceEngine(matrix, xp=np, batch_size=2, n_streams=2, stream_factory=DeferredStream)
    assert eng.submit([x[0], x[1]], errors="poisson") == 1
    assert eng.submit(x[2:4], errors="poisson") == 2
    assert all(s.stream.queue for s in eng._slots)  # both batches in flight, none run yet
    assert eng.submit([x[4]], errors="poisson") == 3  # waits for batch 1 (its slot)
    parts = [eng.collect() for _ in range(3)]
    assert eng.pending() == 0
    got = np.concatenate([p.signal for p in parts])
    np.testing.assert_allclose(got, references[np.dtype(np.int32)].signal, rtol=1e-10)
    assert all(p.squares is None for p in parts)
    with pytest.raises(RuntimeError):
        eng.collect()
    with pytest.raises(ValueError):
        eng.submit([x[0], x[1].astype(np.float32)])


class CUDADriverError(RuntimeError):
    """Stands in for cupy_backends.cuda.api.driver.CUDADriverError (same class name)."""


@pytest.mark.parametrize(
    "exc",
    [
        TypeError("a plain bug"),
        AttributeError("module 'cupy.cuda.runtime' has no attribute 'hostGetDevicePointer'"),
        CUDADriverError("CUDA_ERROR_ILLEGAL_ADDRESS: an illegal memory access"),
    ],
    ids=["TypeError", "AttributeError", "illegal-address"],
)
def test_a_bug_in_the_kernel_path_raises_and_does_not_fall_back(
    matrix, frames_by_dtype, monkeypatch, exc
):
    """Issue 25: any exception used to drop the engine to the spmm path, silently and for
    good.  Only expected reasons (out of memory, no device, no code for it) may fall back."""
    import gpusaxs.gpu_engine as ge

    monkeypatch.setattr(gpu_fallbacks, "_FALLBACKS", [])
    eng = DeviceEngine(matrix, xp=np, batch_size=2)
    assert eng.path == "kernel"

    def broken(*args):
        raise exc

    monkeypatch.setattr(eng, "_launch", broken)
    with pytest.raises(type(exc)):
        eng.sums(frames_by_dtype[np.dtype(np.int32)][:3])
    assert eng.path == "kernel" and eng.fallbacks == [] and ge.engine_fallbacks() == []


def test_out_of_memory_falls_back_and_is_recorded(matrix, frames_by_dtype, references, monkeypatch):
    import gpusaxs.gpu_engine as ge

    monkeypatch.setattr(gpu_fallbacks, "_FALLBACKS", [])
    eng = DeviceEngine(matrix, xp=np, batch_size=2)

    class OutOfMemoryError(MemoryError):
        pass

    def oom(*args):
        raise OutOfMemoryError("out of memory allocating 1,073,741,824 bytes (simulated)")

    monkeypatch.setattr(eng, "_launch", oom)
    got = eng.sums(frames_by_dtype[np.dtype(np.int32)], errors=True)
    assert_sums_close(got, references[np.dtype(np.int32)], 1e-10)
    assert eng.path == "spmm"
    assert eng.fallbacks[0]["reason"].startswith("out of memory: OutOfMemoryError")
    assert ge.engine_fallbacks() == eng.fallbacks


def test_unsupported_dtype_is_recorded_once(matrix, frames_by_dtype, references, monkeypatch):
    import gpusaxs.gpu_engine as ge

    monkeypatch.setattr(gpu_fallbacks, "_FALLBACKS", [])
    eng = DeviceEngine(matrix, xp=np, batch_size=2)
    x = frames_by_dtype[np.dtype(np.int64)]
    assert_sums_close(eng.sums(x, errors=True), references[np.dtype(np.int64)], 1e-10)
    assert eng.path == "kernel"  # the engine stays on the kernel for the other dtypes
    assert eng.fallbacks == [
        {
            "from": "kernel",
            "to": "spmm",
            "reason": "unsupported dtype: no kernel for int64 frames",
            "dtype": "int64",
        }
    ]
    assert ge.engine_fallbacks() == eng.fallbacks


def test_sums_of_an_iterator(matrix, frames_by_dtype, references):
    """Issue 25: sums(iterator) raised "frames must be integer or float, not object"."""
    x = frames_by_dtype[np.dtype(np.int32)]
    eng = DeviceEngine(matrix, xp=np, batch_size=2)
    for source in (iter(x), (f for f in x), list(x), iter([x[:3], x[3:]])):
        assert_sums_close(eng.sums(source, errors=True), references[np.dtype(np.int32)], 1e-10)
    empty = eng.sums(iter(()), errors=True)
    assert empty.signal.shape == (0, matrix.n_bins)


@pytest.mark.parametrize("layout", ["pixel", "frame"])
@pytest.mark.parametrize("upload", ["copy", "mapped"])
def test_mapped_upload_runs_the_same_path_on_numpy(
    matrix, frames_by_dtype, references, monkeypatch, layout, upload
):
    """upload="mapped" hands the pinned staging buffer to the transposition (ops.mapped) on
    NumPy too, so a broken mapped path fails in CI, not first on a device."""
    x = frames_by_dtype[np.dtype(np.uint32)]
    eng = DeviceEngine(matrix, xp=np, batch_size=3, layout=layout, upload=upload)
    seen = []
    real = eng._ops.mapped
    monkeypatch.setattr(eng._ops, "mapped", lambda arr: seen.append(arr.shape) or real(arr))
    assert_sums_close(eng.sums(x, errors=True), references[np.dtype(np.uint32)], 1e-10)
    expected = [(3, matrix.n_pixels), (2, matrix.n_pixels)]
    assert seen == (expected if (upload, layout) == ("mapped", "pixel") else [])
    assert eng.fallbacks == []


def test_staging_is_allocated_when_the_engine_is_built(matrix, frames_by_dtype, references):
    """Issue 25: pinned staging was allocated on the first batch (0.15-0.7 s on a device)."""
    eng = DeviceEngine(matrix, xp=np, batch_size=4, n_streams=2)
    before = [s.allocations for s in eng._slots]
    assert all(n > 0 for n in before)
    for s in eng._slots:
        assert s._bufs["stage"].nbytes >= 4 * matrix.n_pixels * 4
    x = frames_by_dtype[np.dtype(np.int32)]
    assert_sums_close(eng.sums(x, errors=True), references[np.dtype(np.int32)], 1e-10)
    eng.sums(frames_by_dtype[np.dtype(np.uint16)])
    assert [s.allocations for s in eng._slots] == before


@pytest.mark.parametrize("b", [1, 3, 7])
def test_pixel_major_padding_is_zero_not_garbage(matrix, frames_by_dtype, monkeypatch, b):
    """Issue 25: at small B the padding columns of the pixel-major stack were read
    uninitialised.  Device memory comes back as garbage here; the padding must be zeros."""
    import gpusaxs.gpu_ops as go

    def garbage(self, nbytes):
        return np.full(nbytes, 0xA5, np.uint8)

    monkeypatch.setattr(go.NumpyOps, "empty_device", garbage)
    eng = DeviceEngine(matrix, xp=np, batch_size=8)
    x = frames_by_dtype[np.dtype(np.int32)]
    eng.sums(x[:b])
    for slot in eng._slots:
        pm = slot._bufs["pixel_major"].view(np.int32).reshape(matrix.n_pixels, -1)
        assert pm.shape[1] == 8
        assert not np.any(pm[:, b:]), "padding columns not zero"


def test_kernel_follows_strides_of_the_last_partial_batch(matrix, frames_by_dtype, references):
    """Issue 25: kernels ignored strides; the last partial batch of sums_device is a strided
    view of the batch buffer (row stride ld(batch_size), not ld(k)).  The NumPy "kernel"
    reads memory from the base pointer as the CUDA kernel does."""
    x = frames_by_dtype[np.dtype(np.int32)]  # 5 frames: a batch of 8 would hide it
    eng = DeviceEngine(matrix, xp=np, batch_size=16)
    big = np.concatenate([x] * 4)[:19]  # 16 + a partial batch of 3 (ld 8 in a ld-16 buffer)
    one = references[np.dtype(np.int32)]
    ref = Sums(*(np.concatenate([getattr(one, f)] * 4)[:19] for f in SUM_FIELDS))
    assert_sums_close(eng.sums_device(big, errors=True), ref, 1e-10)
    strided = np.zeros((big.shape[0], matrix.n_pixels * 2), np.int32)[:, ::2]
    strided[...] = big.reshape(big.shape[0], -1)
    with pytest.raises(ValueError, match="columns not contiguous"):
        eng._launch(strided, "frame", 3, np.zeros((2, 3, matrix.n_bins)), False)
    rows = np.zeros((big.shape[0] * 2, matrix.n_pixels), np.int32)[::2]
    rows[...] = big.reshape(big.shape[0], -1)
    frame_eng = DeviceEngine(matrix, xp=np, batch_size=16, layout="frame")
    assert_sums_close(frame_eng.sums_device(rows, errors=True), ref, 1e-10)


@pytest.mark.parametrize("n,batch", [(19, 8), (37, 16), (40, 13)])
def test_full_frame_groups_and_odd_batches(matrix, n, batch):
    """Full frame groups of 8, odd batch sizes and a ragged tail, on Poisson counts whose
    sums are not exact in float64, against the independent reference."""
    rng = np.random.default_rng(n)
    x = rng.poisson(37.3, size=(n, H, W)).astype(np.int32)
    x[:, 100:110] = -1
    ref = reference_sums(matrix, x)
    for layout in ("pixel", "frame"):
        for upload in ("copy", "mapped"):
            eng = DeviceEngine(matrix, xp=np, batch_size=batch, layout=layout, upload=upload)
            assert_sums_close(eng.sums(x, errors=True), ref, 1e-10)
        assert_sums_close(eng.sums_device(x, errors=True), ref, 1e-10)
    pm = np.ascontiguousarray(x.reshape(n, -1).T)
    assert_sums_close(eng.sums_device(pm, errors=True, pixel_major=True), ref, 1e-10)


@pytest.mark.parametrize("offset", [False, True])
def test_spmm_path_hands_sparse_products_column_major_operands(
    matrix, frames_by_dtype, monkeypatch, offset
):
    """Item 4 of issue 25: cupyx copies a dense operand that is not F-contiguous before each
    cuSPARSE SpMM; the spmm path must hand it (n_pixels, b) column-major operands."""
    m = with_offset(matrix, np.random.default_rng(4)) if offset else matrix
    eng = DeviceEngine(m, xp=np, batch_size=3, method="spmm")
    real = eng._sparse_matrices()
    seen = []

    class Recording:
        def __init__(self, mat):
            self.mat = mat

        def __matmul__(self, other):
            seen.append(other.flags.f_contiguous)
            return self.mat @ other

    monkeypatch.setattr(
        eng, "_sparse_matrices", lambda dt=None: {k: Recording(v) for k, v in real.items()}
    )
    x = frames_by_dtype[np.dtype(np.int32)]
    assert_sums_close(eng.sums(x, errors=True), reference_sums(m, x), 1e-9)
    assert len(seen) == 4 * 2 and all(seen)


def test_streams_do_not_block_on_the_legacy_default_stream():
    """Issue 25: the engine's CUDA streams were created blocking (non_blocking=False)."""
    from gpusaxs.gpu_ops import CupyStream

    made = []

    class FakeCuda:
        class Stream:
            def __init__(self, **kw):
                made.append(kw)

    class FakeCupy:
        cuda = FakeCuda

    CupyStream(FakeCupy)
    assert made == [{"non_blocking": True}]


def test_only_expected_device_errors_fall_back():
    from gpusaxs.gpu_ops import expected_failure

    class CUDARuntimeError(RuntimeError):
        pass

    class CompileException(Exception):
        pass

    assert expected_failure(MemoryError()) == "out of memory"
    assert expected_failure(CUDARuntimeError("cudaErrorNoDevice: no CUDA-capable device"))
    assert expected_failure(CUDADriverError("CUDA_ERROR_UNSUPPORTED_PTX_VERSION: ..."))
    assert expected_failure(CUDARuntimeError("cudaErrorMemoryAllocation: out of memory"))
    assert expected_failure(CUDADriverError("CUDA_ERROR_ILLEGAL_ADDRESS")) is None
    assert expected_failure(CompileException("error: identifier undefined")) is None
    assert expected_failure(RuntimeError("CUDA_ERROR_NO_BINARY_FOR_GPU")) is None
    assert expected_failure(ValueError("x")) is None


# ---------------------------------------------------------------------------- scheduler
class DeferredStream:
    """A stream that runs nothing until synchronised: exposes missing waits and buffer reuse."""

    log = []

    def __init__(self):
        self.queue = collections.deque()
        self.done = 0
        self.submitted = 0
        self.id = len(DeferredStream.log)
        DeferredStream.log.append([])

    def run(self, fn, *args):
        self.queue.append((fn, args))
        self.submitted += 1

    def _drain(self, upto):
        while self.done < upto:
            fn, args = self.queue.popleft()
            fn(*args)
            self.done += 1

    def record(self):
        stream, mark = self, self.submitted

        class _Event:
            def synchronize(self_inner):
                DeferredStream.log[stream.id].append(mark)
                stream._drain(mark)

        return _Event()

    def synchronize(self):
        self._drain(self.submitted)


@pytest.mark.parametrize("n_streams", [1, 2, 3])
def test_deferred_streams_give_same_results_in_order(
    matrix, frames_by_dtype, references, n_streams
):
    x = frames_by_dtype[np.dtype(np.uint32)]
    DeferredStream.log = []
    eng = DeviceEngine(
        matrix, xp=np, batch_size=2, n_streams=n_streams, stream_factory=DeferredStream
    )
    parts = list(eng.integrate_stream(x, errors=True))
    assert [p.signal.shape[0] for p in parts] == [2, 2, 1]
    got = Sums(*(np.concatenate([getattr(p, f) for p in parts]) for f in SUM_FIELDS))
    assert_sums_close(got, references[np.dtype(np.uint32)], 1e-10)
    assert len(DeferredStream.log) == n_streams
    for marks in DeferredStream.log:  # each stream's events are waited for in order
        assert marks == sorted(marks)


def test_iterable_with_reused_producer_buffer(matrix, frames_by_dtype, references):
    """A producer that refills one buffer: each frame must be copied when received."""
    x = frames_by_dtype[np.dtype(np.int32)]

    def producer():
        buf = np.empty((H, W), np.int32)
        for frame in x:
            buf[...] = frame
            yield buf
        buf[...] = -1  # scribble after the last frame

    eng = DeviceEngine(matrix, xp=np, batch_size=2, n_streams=2, stream_factory=DeferredStream)
    parts = list(eng.integrate_stream(producer(), errors=True))
    got = Sums(*(np.concatenate([getattr(p, f) for p in parts]) for f in SUM_FIELDS))
    assert_sums_close(got, references[np.dtype(np.int32)], 1e-10)


def test_iterable_mixed_blocks_and_dtypes(matrix, frames_by_dtype, references):
    i32 = frames_by_dtype[np.dtype(np.int32)]
    f32 = frames_by_dtype[np.dtype(np.float32)]
    items = [i32[0], i32[1:4], f32[0:2], i32[4], f32[2]]
    eng = DeviceEngine(matrix, xp=np, batch_size=3, n_streams=2, stream_factory=DeferredStream)
    parts = list(eng.integrate_stream(items, errors=False))
    # int32 x4 -> [3, 1] (dtype change ends the batch), float32 x2, int32 x1, float32 x1
    assert [p.signal.shape[0] for p in parts] == [3, 1, 2, 1, 1]
    got = np.concatenate([p.signal for p in parts])
    ri, rf = references[np.dtype(np.int32)].signal, references[np.dtype(np.float32)].signal
    ref = np.concatenate([ri[0:4], rf[0:2], ri[4:5], rf[2:3]])
    np.testing.assert_allclose(got, ref, rtol=1e-10)


def test_abandoned_stream_leaves_engine_usable(matrix, frames_by_dtype, references):
    x = frames_by_dtype[np.dtype(np.int16)]
    eng = DeviceEngine(matrix, xp=np, batch_size=1, n_streams=2, stream_factory=DeferredStream)
    gen = eng.integrate_stream(x)
    first = next(gen)
    with pytest.raises(RuntimeError, match="still running"):
        next(eng.integrate_stream(x))
    gen.close()
    assert not any(s.busy for s in eng._slots)
    got = eng.sums(x)
    np.testing.assert_allclose(
        first.signal[0], references[np.dtype(np.int16)].signal[0], rtol=1e-10
    )
    assert_sums_close(got, references[np.dtype(np.int16)], 1e-10, errors=False)


def test_pinned_stack_is_uploaded_without_staging(matrix, frames_by_dtype, references, monkeypatch):
    x = frames_by_dtype[np.dtype(np.uint16)]
    eng = DeviceEngine(matrix, xp=np, batch_size=2, stream_factory=DeferredStream)
    monkeypatch.setattr(eng._ops, "is_pinned", lambda arr: True)
    staged = []
    monkeypatch.setattr(eng, "_stage", lambda *a: staged.append(a))
    got = eng.sums(x, errors=True)
    assert_sums_close(got, references[np.dtype(np.uint16)], 1e-10)
    assert staged == []


def test_threaded_staging_copy(matrix, frames_by_dtype, references):
    x = frames_by_dtype[np.dtype(np.float64)]  # 3 frames x 8 MB per batch: threaded copy
    eng = DeviceEngine(matrix, xp=np, batch_size=3, staging_threads=4)
    got = eng.sums(x, errors=True)
    assert eng._pool is not None
    eng.close()
    assert_sums_close(got, references[np.dtype(np.float64)], 1e-10)


def test_sync_stream_runs_immediately():
    s = SyncStream()
    box = []
    s.run(box.append, 1)
    assert box == [1]
    s.record().synchronize()
    s.synchronize()


# ---------------------------------------------------------------------------- CUDA source on CPU
KERNEL_DTYPE_NAMES = [d.name for d in KERNEL_DTYPES]
EMU_COMBOS = (
    [(n, 2, False, True) for n in KERNEL_DTYPE_NAMES]
    + [(n, 2, False, False) for n in KERNEL_DTYPE_NAMES]
    + [(n, m, True, pix) for n in ("int32", "float32") for m in (0, 1, 2) for pix in (False, True)]
    + [("int32", m, False, True) for m in (0, 1)]
)


def _emu_matrix(rng, offset=False):
    m = random_matrix((23, 37), rng, center=(5.5, 30.2), dr=4.0)
    if offset:
        m = with_offset(m, rng)
    return m


@pytest.fixture(scope="module")
def emulator(tmp_path_factory):
    """integrate.cu compiled with g++ against the CPU shim (concurrent blocks, random order)."""
    exe, why = cuda_shim.build(
        kernel_source(), EMU_COMBOS, tmp_path_factory.mktemp("kernel_emulator")
    )
    if exe is None:
        pytest.skip(why)
    return exe


def _emu_case(rng, dtype, offset=False):
    m = _emu_matrix(rng, offset)
    eng = DeviceEngine(m, xp=np, segment_length=50)
    assert np.any(np.bincount(eng.kernel_arrays()["seg_bin"]) > 1)  # bins span blocks
    x = make_frames(dtype, 11, m.shape, rng)  # frame groups of 8 and a ragged 3
    return m, eng, x


@pytest.mark.parametrize("layout", ["pixel", "frame"])
@pytest.mark.parametrize("dtype", [d.type for d in KERNEL_DTYPES], ids=KERNEL_DTYPE_NAMES)
def test_cuda_kernel_source_on_cpu_emulator(emulator, tmp_path, dtype, layout):
    """Runs integrate.cu itself (segments split across blocks run concurrently in random
    order, a ragged frame group, the transposition for the pixel-major layout) against the
    independent reference."""
    rng = np.random.default_rng(99)
    m, eng, x = _emu_case(rng, dtype)
    out = cuda_shim.run(emulator, tmp_path, eng, x, layout, True, seed=3)
    assert_sums_close(Sums(*out), reference_sums(m, x), 1e-12)


@pytest.mark.parametrize("errors", [False, "poisson", True], ids=str)
@pytest.mark.parametrize("layout", ["pixel", "frame"])
@pytest.mark.parametrize("dtype", [np.int32, np.float32], ids=["int32", "float32"])
def test_cuda_kernel_dark_offset_on_cpu_emulator(emulator, tmp_path, dtype, layout, errors):
    rng = np.random.default_rng(5)
    m, eng, x = _emu_case(rng, dtype, offset=True)
    out = cuda_shim.run(emulator, tmp_path, eng, x, layout, errors, seed=4)
    ref = reference_sums(m, x)
    assert out.shape[0] == {False: 2, "poisson": 3, True: 4}[errors]
    for q in range(out.shape[0]):
        np.testing.assert_allclose(out[q], ref[q], rtol=1e-12, atol=1e-9)


@pytest.mark.parametrize("n", [8, 16, 19])
@pytest.mark.parametrize("layout", ["pixel", "frame"])
def test_cuda_kernels_follow_strides_on_full_and_ragged_groups_on_emulator(
    emulator, tmp_path, layout, n
):
    """integrate.cu on strided operands (rows longer than the batch needs, garbage in the
    gaps: the engine's last partial batch), full frame groups and a ragged one, Poisson
    counts."""
    rng = np.random.default_rng(n)
    m, eng, _ = _emu_case(rng, np.int32)
    x = rng.poisson(40.0, size=(n,) + m.shape).astype(np.int32)
    x[:, 3] = -1
    out = cuda_shim.run(emulator, tmp_path, eng, x, layout, True, seed=n, pad=1)
    assert_sums_close(Sums(*out), reference_sums(m, x), 1e-12)


def test_cuda_kernel_modes_without_offset_on_emulator(emulator, tmp_path):
    rng = np.random.default_rng(8)
    m, eng, x = _emu_case(rng, np.int32)
    ref = reference_sums(m, x)
    out0 = cuda_shim.run(emulator, tmp_path, eng, x, "pixel", False, seed=5)
    assert out0.shape[0] == 2
    assert_sums_close(Sums(*out0), ref, 1e-12, errors=False)
    out1 = cuda_shim.run(emulator, tmp_path, eng, x, "pixel", "poisson", seed=6)
    assert out1.shape[0] == 3
    np.testing.assert_allclose(out1[2], ref.variance, rtol=1e-12)


def _race_case(rng):
    """All pixels in two bins, 8-entry segments: hundreds of blocks add into one address."""
    h, w = 24, 40
    n = h * w
    pixel_ptr = np.arange(n + 1, dtype=np.int64)
    bins = (np.arange(n) % 2).astype(np.int32)
    weights = rng.uniform(0.5, 1.0, n).astype(np.float32)
    m = IntegrationMatrix(
        shape=(h, w),
        q_edges=np.linspace(0, 1, 3),
        pixel_ptr=pixel_ptr,
        bins=bins,
        weights=weights,
        pixel_scale=np.ones(n, np.float32),
        norm=np.bincount(bins, weights, minlength=2),
    )
    x = rng.integers(0, 1000, (8, h, w)).astype(np.int32)
    return m, DeviceEngine(m, xp=np, segment_length=8), x


def test_shim_catches_a_plain_add_where_atomicadd_belongs(tmp_path):
    """Negative control: the kernel with its atomicAdd replaced by a plain += loses updates
    on the shim (blocks run concurrently); the real kernel does not."""
    rng = np.random.default_rng(1)
    m, eng, x = _race_case(rng)
    ref = reference_sums(m, x)
    combos = [("int32", 0, False, True)]
    broken, why = cuda_shim.build(
        kernel_source(),
        combos,
        _mkdir(tmp_path / "broken"),
        defines=["-DGS_ATOMIC_ADD(p,v)=(*(p)+=(v))"],
    )
    if broken is None:
        pytest.skip(why)
    good, _ = cuda_shim.build(kernel_source(), combos, _mkdir(tmp_path / "good"))
    out = cuda_shim.run(good, tmp_path, eng, x, "pixel", False, runners=8)
    assert_sums_close(Sums(*out), ref, 1e-12, errors=False)
    out = cuda_shim.run(broken, tmp_path, eng, x, "pixel", False, runners=8)
    rel = np.abs(out[1] - ref.norm) / ref.norm
    assert rel.max() > 1e-3, "the shim did not expose the missing atomicAdd"


def _mkdir(path):
    path.mkdir(parents=True, exist_ok=True)
    return path


SUBNORMALS = np.array([-1e-40, -1.4e-45, 1e-40, 1.4e-45, -0.0, 0.0, 5.0, -1.0], np.float32)


@pytest.mark.skipif(platform.machine() not in ("x86_64", "AMD64"), reason="x86 DAZ flags")
def test_subnormal_validity_same_with_ftz_on_emulator(tmp_path):
    """-ftz=true (emulated by DAZ/FTZ) must not turn a negative subnormal into a valid 0.
    The old float rule (x >= 0) fails this; the bit test of integrate.cu passes."""
    rng = np.random.default_rng(2)
    m = _emu_matrix(rng)
    eng = DeviceEngine(m, xp=np, segment_length=50)
    x = rng.choice(SUBNORMALS, size=(8,) + m.shape).astype(np.float32)
    ref = reference_sums(m, x)
    combos = [("float32", 0, False, True)]
    exe, why = cuda_shim.build(
        kernel_source(), combos, _mkdir(tmp_path / "new"), defines=["-DGS_SHIM_FTZ"]
    )
    if exe is None:
        pytest.skip(why)
    out = cuda_shim.run(exe, tmp_path, eng, x, "pixel", False)
    np.testing.assert_array_equal(out[1] > 0, ref.norm > 0)
    np.testing.assert_allclose(out[1], ref.norm, rtol=1e-12)
    np.testing.assert_allclose(out[0], ref.signal, rtol=1e-6, atol=1e-30)
    old_rule = kernel_source().replace(
        "return b < 0x7F800000u || b == 0x80000000u;", "return x >= 0.0f && x <= 3.402823466e+38f;"
    )
    assert old_rule != kernel_source()
    old, _ = cuda_shim.build(old_rule, combos, _mkdir(tmp_path / "old"), defines=["-DGS_SHIM_FTZ"])
    out_old = cuda_shim.run(old, tmp_path, eng, x, "pixel", False)
    assert np.abs(out_old[1] - ref.norm).max() > 1e-3  # negative subnormals counted


# ---------------------------------------------------------------------------- GPU
@pytest.fixture(scope="module")
def cp():
    cupy = pytest.importorskip("cupy")
    try:
        count = cupy.cuda.runtime.getDeviceCount()
    except Exception as exc:  # no driver / no device
        pytest.skip(f"no CUDA device: {exc}")
    if count < 1:
        pytest.skip("no CUDA device")
    return cupy


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", ALL_DTYPES + [np.float16], ids=lambda d: np.dtype(d).name)
def test_gpu_kernel_spmm_numpy_agree(cp, matrix, frames_by_dtype, references, dtype):
    dt = np.dtype(dtype)
    x = (
        frames_by_dtype[dt]
        if dt in frames_by_dtype
        else frames_by_dtype[np.dtype(np.float32)].astype(np.float16)
    )
    ref = references[dt] if dt in references else reference_sums(matrix, x)
    kern = DeviceEngine(matrix, xp=cp, batch_size=2, method="kernel")
    assert kern.name == "cupy"
    got = kern.sums(x, errors=True)
    assert_sums_close(got, ref, 1e-6)
    assert_sums_close(kern.sums(x, errors=False), ref, 1e-6, errors=False)
    spmm64 = DeviceEngine(matrix, xp=cp, batch_size=3, method="spmm", spmm_dtype="float64")
    assert_sums_close(spmm64.sums(x, errors=True), ref, 1e-6)
    spmm32 = DeviceEngine(matrix, xp=cp, batch_size=3, method="spmm", spmm_dtype="float32")
    if dt.kind != "u" or dt.itemsize < 8:  # float32 cannot hold uint64 counts exactly
        assert_sums_close(spmm32.sums(x, errors=True), ref, 1e-5)
    numpy_eng = DeviceEngine(matrix, xp=np, batch_size=2)
    assert_sums_close(got, numpy_eng.sums(x, errors=True), 1e-6)


@pytest.mark.gpu
def test_gpu_device_array_input(cp, matrix, frames_by_dtype, references):
    x = frames_by_dtype[np.dtype(np.int32)]
    eng = DeviceEngine(matrix, xp=cp, batch_size=2)
    xd = cp.asarray(x)
    res = eng.sums_device(xd, errors=True)
    assert all(isinstance(getattr(res, f), cp.ndarray) for f in SUM_FIELDS)
    host = Sums(*(cp.asnumpy(getattr(res, f)) for f in SUM_FIELDS))
    assert_sums_close(host, references[np.dtype(np.int32)], 1e-6)
    assert_sums_close(eng.sums(xd, errors=True), references[np.dtype(np.int32)], 1e-6)
    spmm = DeviceEngine(matrix, xp=cp, method="spmm", spmm_dtype="float64")
    assert_sums_close(Sums(*(cp.asnumpy(a) for a in spmm.sums_device(xd, errors=True))), host, 1e-6)


def poisson_stack(n, dtype, rng, shape=(H, W)):
    """n Poisson frames (rates 0.5..2000: sums that are not exact in float64) with the
    invalid values of dtype (-1 gaps / max-of-type flags)."""
    rate = rng.uniform(0.5, 2000.0, size=shape)
    x = rng.poisson(rate, size=(n,) + shape).astype(dtype)
    flag = -1 if np.dtype(dtype).kind == "i" else np.iinfo(dtype).max
    x[:, shape[0] // 3 : shape[0] // 3 + 9] = flag
    x[rng.random(x.shape) < 1e-3] = flag
    return x


@pytest.fixture(scope="module")
def poisson64(matrix):
    """{dtype: (64 Poisson frames, their reference Sums)}, int32 and uint32."""
    out = {}
    for d in (np.int32, np.uint32):
        x = poisson_stack(64, d, np.random.default_rng(64))
        out[np.dtype(d)] = (x, reference_sums(matrix, x))
    return out


def _first(pair, n):
    x, ref = pair
    return x[:n], Sums(*(a[:n] for a in ref))


@pytest.mark.gpu
@pytest.mark.parametrize(
    "layout,upload,seg,streams,batch,n",
    [
        ("pixel", "copy", 4096, 1, 32, 64),
        ("pixel", "mapped", 64, 2, 13, 37),
        ("pixel", "mapped", 4096, 3, 64, 64),
        ("pixel", "copy", 4096, 2, 8, 19),
        ("frame", "copy", 100000, 3, 32, 64),
        ("frame", "copy", 4096, 2, 13, 37),
    ],
)
@pytest.mark.parametrize("dtype", [np.int32, np.uint32], ids=["int32", "uint32"])
def test_gpu_kernel_parameters(
    cp, matrix, poisson64, layout, upload, seg, streams, batch, n, dtype
):
    """Full frame groups (B = 32, 64), odd batches with a ragged tail, Poisson data that does
    not sum exactly, errors on and off, on the kernel path with no fallback."""
    x, ref = _first(poisson64[np.dtype(dtype)], n)
    eng = DeviceEngine(
        matrix,
        xp=cp,
        batch_size=batch,
        n_streams=streams,
        layout=layout,
        upload=upload,
        segment_length=seg,
    )
    assert_sums_close(eng.sums(x, errors=True), ref, 1e-9)
    assert_sums_close(eng.sums(x, errors=False), ref, 1e-9, errors=False)
    assert_sums_close(eng.sums(iter(x), errors=True), ref, 1e-9)
    dev = eng.sums_device(cp.asarray(x), errors=True)
    assert_sums_close(Sums(*(cp.asnumpy(a) for a in dev)), ref, 1e-9)
    assert eng.path == "kernel" and not eng.fallbacks


@pytest.mark.gpu
@pytest.mark.parametrize("b", [1, 3, 8, 32, 64])
def test_gpu_pixel_major_input_full_groups(cp, matrix, poisson64, b):
    x, ref = _first(poisson64[np.dtype(np.int32)], b)
    eng = DeviceEngine(matrix, xp=cp, batch_size=32)
    pm = cp.asarray(np.ascontiguousarray(x.reshape(b, -1).T))
    got = eng.sums_device(pm, errors=True, pixel_major=True)
    assert_sums_close(Sums(*(cp.asnumpy(a) for a in got)), ref, 1e-9)
    assert eng.path == "kernel" and not eng.fallbacks


@pytest.mark.gpu
def test_gpu_mapped_view_is_the_pinned_buffer(cp):
    import cupyx

    from gpusaxs.gpu_ops import CupyOps

    ops = CupyOps(cp)
    host = cupyx.empty_pinned((1000,), np.int32)
    host[...] = np.arange(1000)
    dev = ops.mapped(host)
    assert int(dev.sum()) == int(np.arange(1000).sum())
    with pytest.raises(ValueError, match="page-locked"):
        ops.mapped(np.arange(1000, dtype=np.int32))


@pytest.mark.gpu
@pytest.mark.parametrize("layout", ["pixel", "frame"])
def test_gpu_poisson_offset_and_pixel_major_input(cp, matrix, frames_by_dtype, layout):
    m = with_offset(matrix, np.random.default_rng(4))
    x = frames_by_dtype[np.dtype(np.int32)]
    ref = reference_sums(m, x)
    eng = DeviceEngine(m, xp=cp, batch_size=3, layout=layout)
    assert_sums_close(eng.sums(x, errors=True), ref, 1e-6)
    pois = eng.sums(x, errors="poisson")
    assert pois.squares is None
    np.testing.assert_allclose(pois.variance, ref.variance, rtol=1e-6)
    pm = cp.asarray(np.ascontiguousarray(x.reshape(len(x), -1).T))
    got = eng.sums_device(pm, errors=True, pixel_major=True)
    assert_sums_close(Sums(*(cp.asnumpy(a) for a in got)), ref, 1e-6)
    assert eng.path == "kernel" and not eng.fallbacks


@pytest.mark.gpu
def test_gpu_subnormal_validity_matches_cpu(cp, matrix):
    rng = np.random.default_rng(2)
    x = rng.choice(SUBNORMALS, size=(3,) + matrix.shape).astype(np.float32)
    got = DeviceEngine(matrix, xp=cp).sums(x)
    np.testing.assert_allclose(got.norm, reference_sums(matrix, x).norm, rtol=1e-12)


@pytest.mark.gpu
def test_gpu_pinned_and_stream_inputs(cp, matrix, frames_by_dtype, references):
    import cupyx

    x = frames_by_dtype[np.dtype(np.uint16)]
    pinned = cupyx.empty_pinned(x.shape, x.dtype)
    pinned[...] = x
    eng = DeviceEngine(matrix, xp=cp, batch_size=2, n_streams=2)
    assert eng._ops.is_pinned(pinned) and not eng._ops.is_pinned(x)
    assert_sums_close(eng.sums(pinned, errors=True), references[np.dtype(np.uint16)], 1e-6)
    parts = list(eng.integrate_stream(iter(x), errors=True))
    got = Sums(*(np.concatenate([getattr(p, f) for p in parts]) for f in SUM_FIELDS))
    assert_sums_close(got, references[np.dtype(np.uint16)], 1e-6)


def test_sums_device_pads_partial_frame_groups_with_zeros(matrix, frames_by_dtype, monkeypatch):
    """The transposed batch buffer of sums_device is not zeroed as a whole (a memset of the
    stack per call); its padding columns are, for each partial frame group."""
    eng = DeviceEngine(matrix, xp=np, batch_size=16)
    x = frames_by_dtype[np.dtype(np.int32)][:3]
    real_empty = np.empty
    bufs = []

    def garbage(shape, dtype=float, **kw):
        arr = real_empty(shape, dtype, **kw)
        arr.view(np.uint8)[...] = 0xA5
        bufs.append(arr)
        return arr

    class GarbageNumpy:  # numpy whose empty() returns garbage, as device memory may
        empty = staticmethod(garbage)

        def __getattr__(self, name):
            return getattr(np, name)

    monkeypatch.setattr(eng, "xp", GarbageNumpy())
    seen = []
    monkeypatch.setattr(eng, "_integrate_into", lambda arr, *a: seen.append(arr.copy()))
    eng.sums_device(x)
    (pm,) = seen
    assert any(b.shape == pm.shape for b in bufs)  # the buffer came from empty()
    assert pm.shape == (matrix.n_pixels, 8)
    np.testing.assert_array_equal(pm[:, :3], x.reshape(3, -1).T)
    assert not np.any(pm[:, 3:])
