"""The CPU engines against each other and against a direct NumPy formula of the engine contract
(docs/ARCHITECTURE.md): real-size PILATUS 1M frames, the reference mask, every frame dtype with
gaps, negative, NaN, subnormal and unsigned-max values, errors on/off, dark offset on/off."""

import dataclasses

import numpy as np
import pytest

import gpusaxs
from gpusaxs.cpu_fallback.engine import CpuEngine, ScipyEngine, invalid_threshold


@pytest.fixture(scope="module")
def pilatus(reference_dir):
    """The reference calibration (mask, polarization) and its matrix, plus a dark and a scale."""
    cal = gpusaxs.Calibration.from_file(reference_dir / "buf1_00000.calibration.json")
    cal = cal.replace(polarization=(0.95, 0.0))
    matrix = gpusaxs.Integrator(cal, backend="numpy").matrix
    image = gpusaxs.read_image(reference_dir / "buf1_00000.tif")
    rng = np.random.default_rng(12)
    dark = rng.uniform(0.0, 4.0, matrix.n_pixels).astype(np.float32)
    # a flat / solid-angle-like scale folded into the polarization scale
    scale = (matrix.pixel_scale * rng.uniform(0.8, 1.25, matrix.n_pixels)).astype(np.float32)
    return cal, matrix, image, dark, scale


def contract_sums(matrix, frames, offset):
    """The contract written out with dense NumPy per entry (no SciPy, no numba)."""
    frames = np.asarray(frames).reshape(len(frames), -1)
    x = frames.astype(np.float64)
    with np.errstate(invalid="ignore"):
        valid = (x >= 0) & (x < invalid_threshold(frames.dtype))
    x = np.where(valid, x, 0.0)
    v = x if offset is None else np.where(valid, x - offset.astype(np.float64), 0.0)
    pix = np.repeat(np.arange(matrix.n_pixels), np.diff(matrix.pixel_ptr))
    w = matrix.weights.astype(np.float64)
    s = matrix.pixel_scale.astype(np.float64)[pix]
    out = {
        name: np.zeros((len(frames), matrix.n_bins))
        for name in ("signal", "norm", "variance", "squares")
    }
    for b in range(len(frames)):
        vb, xb = v[b, pix], x[b, pix]
        out["signal"][b] = np.bincount(matrix.bins, w * s * vb, matrix.n_bins)
        out["norm"][b] = np.bincount(matrix.bins, w * valid[b, pix], matrix.n_bins)
        out["variance"][b] = np.bincount(matrix.bins, w * s * s * xb, matrix.n_bins)
        out["squares"][b] = np.bincount(matrix.bins, w * (s * vb) ** 2, matrix.n_bins)
    return out


def hostile_stack(image, dtype, n_frames, seed):
    """Poisson frames of the reference image in ``dtype``, with gaps and odd values planted in
    the open (unmasked) area: negative, the unsigned max, NaN, subnormal, huge."""
    rng = np.random.default_rng(seed)
    stack = np.stack(
        [np.where(image < 0, image, rng.poisson(np.maximum(image, 0))) for _ in range(n_frames)]
    ).astype(np.float64)
    dtype = np.dtype(dtype)
    if dtype.kind == "u":
        stack = np.maximum(stack, 0)
        stack[0, 500, 400:440] = np.iinfo(dtype).max  # EIGER gap flag
        stack[-1, 300:302, :] = np.iinfo(dtype).max
    else:
        stack[0, 500, 400:440] = -2  # gaps inside the open area
        stack[-1, 300:302, :] = -1
    if dtype.kind == "f":
        stack[-1, 600, 100:130] = np.nan
        stack[0, 700, 200:210] = np.inf
        stack[0, 710, 200:210] = 1e-42  # subnormal in float32
        stack[-1, 720, 200:210] = 3.0e8  # beyond float32's exact integers
    elif dtype.itemsize >= 4:
        stack[-1, 720, 200:210] = 2**30 + 7  # beyond float32's exact integers
    return stack.astype(dtype)


def relative(a, b):
    return np.max(np.abs(a - b) / np.maximum(np.abs(b), 1e-12))


def test_unmasked_gaps_in_every_frame_meet_the_contract(pilatus):
    """Frames integrated without a mask, the module gaps flagged with the unsigned maximum in
    every frame (as an EIGER or a uint32 PILATUS stream sends them): every band then holds
    invalid values in every group of frames, the kernel's slow path everywhere (it lists the
    pixels that hold them and visits those alone)."""
    cal, _, image, _, _ = pilatus
    matrix = gpusaxs.Integrator(cal.replace(mask_file=None), backend="numpy").matrix
    rng = np.random.default_rng(5)
    gaps = image < 0
    assert 0.05 < gaps.mean() < 0.15  # PILATUS 1M: about 8 % of the pixels are gaps
    stack = rng.poisson(np.maximum(image, 0), size=(16,) + image.shape).astype(np.uint32)
    stack[:, gaps] = np.iinfo(np.uint32).max
    stack[3, 100:104, :] = np.iinfo(np.uint32).max  # and a whole band of one frame
    stack[5, -1, -3:] = np.iinfo(np.uint32).max  # the short last band's partial last block
    direct = contract_sums(matrix, stack, None)
    got = CpuEngine(matrix).sums(stack, errors="poisson")
    for name in ("signal", "norm", "variance"):
        assert relative(getattr(got, name), direct[name]) < 1e-6, name
    # the gaps' weight is lost in every frame: the norm is below the matrix's own
    assert (got.norm.sum(axis=1) < 0.95 * matrix.norm.sum()).all()


@pytest.mark.parametrize(
    "dtype,n_frames",
    # fewer than 8 frames (padded lanes) and 8 or more (whole groups of 8): each dtype on both
    [
        (np.int32, 11),
        (np.int32, 3),
        (np.uint16, 3),
        (np.uint16, 10),
        (np.uint32, 2),
        (np.uint32, 9),
        (np.float32, 9),
        (np.float32, 5),
    ],
)
@pytest.mark.parametrize("with_dark", [False, True])
def test_numba_scipy_and_direct_formula_agree(pilatus, dtype, n_frames, with_dark):
    cal, matrix, image, dark, scale = pilatus
    if with_dark:
        matrix = dataclasses.replace(matrix, pixel_offset=dark, pixel_scale=scale)
    stack = hostile_stack(image, dtype, n_frames, seed=n_frames)
    direct = contract_sums(matrix, stack, matrix.pixel_offset)
    for engine in (CpuEngine(matrix), ScipyEngine(matrix)):
        for errors in (False, "poisson", True):
            got = engine.sums(stack, errors=errors)
            names = (
                ("signal", "norm")
                + (("variance",) if errors else ())
                + (("squares",) if errors is True else ())
            )
            for name in names:
                assert relative(getattr(got, name), direct[name]) < 1e-6, (
                    engine.name,
                    errors,
                    name,
                )
            if errors == "poisson":
                assert got.squares is None
            if not errors:
                assert got.variance is None and got.squares is None


def test_dark_offset_shifts_the_mean_by_the_binned_dark(pilatus):
    """A constant dark d subtracts exactly d from every bin's mean; the Poisson variance stays
    that of the raw counts (the dark is taken as noiseless)."""
    cal, matrix, image, _, _ = pilatus
    stack = hostile_stack(image, np.int32, 5, seed=3)
    dark = np.full(matrix.n_pixels, 2.5, np.float32)
    with_dark = dataclasses.replace(matrix, pixel_offset=dark)
    for errors in (False, True):
        plain = CpuEngine(matrix).sums(stack, errors=errors)
        shifted = CpuEngine(with_dark).sums(stack, errors=errors)
        np.testing.assert_allclose(shifted.norm, plain.norm, rtol=0, atol=0)
        ok = plain.norm > 0
        mean_plain = plain.signal[ok] / plain.norm[ok]
        mean_shift = shifted.signal[ok] / shifted.norm[ok]
        # s is the polarization scale here: the mean drops by the s-weighted dark
        s_mean = (
            CpuEngine(matrix).sums(np.ones((1,) + matrix.shape, np.int32)).signal
            / CpuEngine(matrix).sums(np.ones((1,) + matrix.shape, np.int32)).norm
        )
        expect = mean_plain - 2.5 * np.broadcast_to(s_mean, plain.norm.shape)[ok]
        np.testing.assert_allclose(mean_shift, expect, rtol=1e-6, atol=1e-6)
        if errors:  # summed as w s^2 (x - d) + w s^2 d: equal up to rounding
            np.testing.assert_allclose(shifted.variance, plain.variance, rtol=1e-12, atol=0)


def test_dark_is_validated_against_the_pixel_count(pilatus):
    _, matrix, _, _, _ = pilatus
    bad = dataclasses.replace(matrix, pixel_offset=np.zeros(10, np.float32))
    with pytest.raises(ValueError, match="pixel_offset"):
        CpuEngine(bad)
    with pytest.raises(ValueError, match="pixel_offset"):
        ScipyEngine(bad)


@pytest.mark.parametrize("n_frames", [1, 2, 4, 7, 8, 17])
def test_every_batch_split_gives_each_frame_the_single_frame_result(pilatus, n_frames):
    """Groups of 8 frames, padded last groups and the thread bands do not change a frame's
    numbers."""
    _, matrix, image, dark, _ = pilatus
    matrix = dataclasses.replace(matrix, pixel_offset=dark)
    stack = hostile_stack(image, np.int32, n_frames, seed=n_frames)
    engine = CpuEngine(matrix, threads=1)
    batch = engine.sums(stack, errors=True)
    for b in (0, n_frames - 1):
        one = engine.sums(stack[b], errors=True)
        for name in ("signal", "norm", "variance", "squares"):
            np.testing.assert_allclose(
                getattr(batch, name)[b], getattr(one, name)[0], rtol=1e-12, atol=0
            )


def test_banded_groups_of_frames_give_the_same_sums(pilatus, monkeypatch):
    """A stack split into groups of 8 frames (a small output bound) sums as in one group."""
    from gpusaxs.cpu_fallback import engine as engine_module

    _, matrix, image, dark, _ = pilatus
    matrix = dataclasses.replace(matrix, pixel_offset=dark)
    stack = hostile_stack(image, np.int32, 19, seed=19)
    whole = CpuEngine(matrix).sums(stack, errors=True)
    monkeypatch.setattr(engine_module, "BANDED_OUTPUT_BYTES", 1)
    grouped = CpuEngine(matrix).sums(stack, errors=True)
    for name in ("signal", "norm", "variance", "squares"):
        np.testing.assert_allclose(getattr(grouped, name), getattr(whole, name), rtol=1e-12)


def test_banded_layout_keeps_every_entry_once(pilatus):
    """Each matrix entry appears in exactly one (band, bin) segment, with weight w * s."""
    from gpusaxs.cpu_fallback.banded import banded_layout

    _, matrix, _, _, _ = pilatus
    lay = banded_layout(matrix, band_pixels=1000)
    seg_len = np.diff(lay["seg_ptr"])
    segments_of_band = np.diff(lay["band_seg"])
    band = np.repeat(np.repeat(np.arange(len(segments_of_band)), segments_of_band), seg_len)
    got = (band * 1000 + lay["local"].astype(np.int64), np.repeat(lay["seg_bin"], seg_len))
    pixel = np.repeat(np.arange(matrix.n_pixels), np.diff(matrix.pixel_ptr))
    expect = (pixel, matrix.bins.astype(np.int64))
    got_order, expect_order = np.lexsort(got[::-1]), np.lexsort(expect[::-1])
    for a, b in zip(got, expect, strict=True):
        np.testing.assert_array_equal(a[got_order], b[expect_order])
    ws = (matrix.weights * matrix.pixel_scale[pixel]).astype(np.float32)
    np.testing.assert_array_equal(lay["ws"][got_order], ws[expect_order])
    band_of_segment = np.repeat(np.arange(len(segments_of_band)), segments_of_band)
    same_band = np.diff(band_of_segment) == 0
    assert np.all(np.diff(lay["seg_bin"])[same_band] > 0)  # one segment per bin, ascending


def _cpu_flags():
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("flags"):
                return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


@pytest.mark.skipif(
    not {"avx2", "fma"} <= _cpu_flags(), reason="needs an x86-64 CPU with AVX2 and FMA"
)
def test_segment_loop_compiles_to_vector_fmas():
    """The kernel's speed rests on the segment loop being <4 x double> FMAs on ymm registers
    (numba's own code for it was scalar or gathered along the entries): check the machine code
    of segment_add8 and of its Poisson and full forms, and their sums."""
    import re

    import numba

    from gpusaxs.cpu_fallback.simd import segment_add8, segment_add8_full, segment_add8_poisson

    @numba.njit(cache=False)
    def one(out, buf, local, ws):
        segment_add8(out, 8, buf, local, ws, 0, len(local))

    @numba.njit(cache=False)
    def errors(out, buf, local, ws, wss):
        segment_add8_poisson(out[0], out[1], 8, buf, local, ws, wss, 0.5, 0, len(local))
        segment_add8_full(out[0], out[1], out[2], 0, buf, local, ws, wss, 0.25, 0, len(local))

    rng = np.random.default_rng(0)
    buf = rng.random(8 * 50)
    lanes = buf.reshape(50, 8)
    local = rng.integers(0, 50, 37).astype(np.uint16)
    ws = rng.random(37).astype(np.float32)
    wss = rng.random(37).astype(np.float32)
    expect = (ws.astype(np.float64)[:, None] * lanes[local]).sum(axis=0)
    expect_var = (wss.astype(np.float64)[:, None] * lanes[local]).sum(axis=0)
    expect_sq = (wss.astype(np.float64)[:, None] * lanes[local] ** 2).sum(axis=0)
    out = np.zeros(16)
    one(out, buf, local, ws)
    np.testing.assert_allclose(out[8:], expect, rtol=1e-13)
    assert not out[:8].any()
    outs = np.zeros((3, 16))
    errors(outs, buf, local, ws, wss)
    np.testing.assert_allclose(outs[0, 8:], expect, rtol=1e-13)
    np.testing.assert_allclose(outs[0, :8], expect, rtol=1e-13)
    np.testing.assert_allclose(outs[1, 8:], expect_var + 0.5, rtol=1e-13)
    np.testing.assert_allclose(outs[1, :8], expect_var + 0.25, rtol=1e-13)
    np.testing.assert_allclose(outs[2, :8], expect_sq, rtol=1e-13)
    assert not outs[2, 8:].any()
    for fn in (one, errors):
        asm = "\n".join(fn.inspect_asm().values())
        vector_fmas = re.findall(r"vfmadd\d{3}pd\s+[^\n]*ymm", asm)
        scalar_fmas = re.findall(r"vfmadd\d{3}sd", asm)
        assert len(vector_fmas) >= 4, asm[:2000]
        assert not scalar_fmas


def test_parallel_reduction_of_a_map_equals_numpys(pilatus, monkeypatch):
    """A map's per-thread sums are zeroed and added by numba kernels (cpu_fallback.banded,
    above PARALLEL_REDUCE_VALUES): the same numbers as NumPy's reduction, on a 300 x 180 cake
    of PILATUS frames, with errors on and off, on a reused work array (zeroed again)."""
    from gpusaxs.cpu_fallback import banded

    cal, _, image, _, _ = pilatus
    integ = gpusaxs.Integrator(cal, backend="numpy")
    cake, _ = integ.option_engine(npt=300, azimuth_npt=180, azimuth_range=(-180, 180))
    stack = hostile_stack(image, np.int32, 11, seed=5)
    engine = CpuEngine(cake, threads=2, kernel="banded")  # a cake this size gathers by default
    results = {}
    for label, limit in (("numpy", 1 << 62), ("numba", 0)):
        monkeypatch.setattr(banded, "PARALLEL_REDUCE_VALUES", limit)
        for errors in (False, True, "poisson"):
            for _ in range(2):  # the second call reuses (and must zero) the kept work array
                results[label, errors] = engine.sums(stack, errors=errors)
    for errors in (False, True, "poisson"):
        for a, b in zip(results["numpy", errors], results["numba", errors], strict=True):
            if a is None:
                assert b is None
            else:
                np.testing.assert_array_equal(a, b)
    assert cake.n_bins == 300 * 180


@pytest.mark.parametrize(
    "dtype,n_frames", [(np.int32, 11), (np.uint16, 3), (np.uint32, 9), (np.float32, 5)]
)
@pytest.mark.parametrize("with_dark", [False, True])
def test_gather_kernel_of_a_map_meets_the_contract(pilatus, dtype, n_frames, with_dark):
    """Maps and cakes (many bins per pixel) go to the gather kernel (cpu_fallback.gather):
    on a 300 x 180 cake of PILATUS frames with every kind of invalid value it gives the
    contract's sums (the direct NumPy formula) and the banded kernel's, and its mean is
    signal / norm with NaN in the bins no valid pixel reaches."""
    cal, _, image, dark, scale = pilatus
    integ = gpusaxs.Integrator(cal, backend="numpy")
    cake, _ = integ.option_engine(npt=300, azimuth_npt=180, azimuth_range=(-180, 180))
    if with_dark:
        cake = dataclasses.replace(cake, pixel_offset=dark, pixel_scale=scale)
    stack = hostile_stack(image, dtype, n_frames, seed=n_frames + 40)
    gather = CpuEngine(cake, threads=2)
    banded = CpuEngine(cake, threads=2, kernel="banded")
    assert gather.kernel == "gather"
    direct = contract_sums(cake, stack, cake.pixel_offset)
    for errors in (False, "poisson", True):
        got, other = gather.sums(stack, errors=errors), banded.sums(stack, errors=errors)
        names = ("signal", "norm") + (("variance",) if errors else ())
        names += ("squares",) if errors is True else ()
        for name in names:
            assert relative(getattr(got, name), direct[name]) < 1e-6, (errors, name)
            assert relative(getattr(got, name), getattr(other, name)) < 1e-6, (errors, name)
        assert (got.variance is None) == (not errors)
        assert (got.squares is None) == (errors is not True)
        empty = direct["norm"] == 0
        assert empty.any() and not empty.all()
        assert np.isnan(got.mean[empty]).all()
        with np.errstate(invalid="ignore", divide="ignore"):
            expected = direct["signal"] / direct["norm"]
        assert relative(got.mean[~empty], expected[~empty]) < 1e-6


def test_curves_keep_the_banded_kernel_and_maps_gather(pilatus):
    """The engine picks its kernel by bins per pixel: a curve's thousand bins stay on the banded
    kernel, a 1000 x 1000 grazing-incidence map gathers."""
    cal, matrix, image, _, _ = pilatus
    assert CpuEngine(matrix).kernel == "banded"
    integ = gpusaxs.Integrator(cal, backend="numpy")
    integ.integrate2d_grazing_incidence(
        image, npt_ip=1000, npt_oop=1000, incident_angle=0.5, angle_unit="deg"
    )
    _, engine = next(v for k, v in integ._options._sets.items() if k.grazing is not None)
    assert engine.kernel == "gather"
    with pytest.raises(ValueError, match="kernel must be"):
        CpuEngine(matrix, kernel="fast")


def test_gather_output_block_is_reused_only_when_no_result_holds_it(pilatus):
    """The map kernel reuses its previous output block (no fresh pages) only once nothing refers
    to it: a result still held keeps its numbers while later calls compute other frames."""
    cal, _, image, _, _ = pilatus
    integ = gpusaxs.Integrator(cal, backend="numpy")
    cake, _ = integ.option_engine(npt=300, azimuth_npt=180, azimuth_range=(-180, 180))
    engine = CpuEngine(cake, threads=2)
    a_frames = hostile_stack(image, np.int32, 9, seed=1)
    b_frames = hostile_stack(image, np.int32, 9, seed=2)
    direct_a = contract_sums(cake, a_frames, None)
    expected_a = direct_a["signal"]
    held = engine.sums(a_frames)
    view = held.mean[3]  # a view alone must keep the block too
    del held
    second = engine.sums(b_frames)
    assert not np.shares_memory(second.signal, view)
    again = engine.sums(a_frames)
    assert relative(again.signal, expected_a) < 1e-6
    with np.errstate(invalid="ignore", divide="ignore"):
        np.testing.assert_allclose(view, expected_a[3] / direct_a["norm"][3], rtol=1e-6)
    address = engine._spare.__array_interface__["data"][0]  # the block ``again`` lives in
    del second, again, view  # nothing refers to the kept block any more: the next call reuses it
    third = engine.sums(b_frames)
    assert third.signal.__array_interface__["data"][0] == address
    assert relative(third.signal, contract_sums(cake, b_frames, None)["signal"]) < 1e-6
