"""Robust profiles (issue 27) against pyFAI 2026.9 on the real PILATUS frame with the fit2d
mask and zingers added to 1 % of its pixels: sigma_clip vs sigma_clip_ng (no splitting),
medfilt1d vs medfilt1d_ng (full splitting), integrate_radial vs integrate_radial."""

import json

import numpy as np
import pytest

import gpusaxs
from tests.helpers import pyfai_integrator

pytest.importorskip("pyFAI")

NPT = 500
NO_SPLIT = ("no", "csr", "cython")
FULL_SPLIT = ("full", "csr", "cython")


def agreement(ours, theirs):
    """Median of |ours - theirs| / |theirs| over the bins both fill."""
    both = np.isfinite(ours) & np.isfinite(theirs) & (np.abs(theirs) > 0)
    assert both.sum() > 100, "too few bins to compare"
    return float(np.median(np.abs(ours[both] - theirs[both]) / np.abs(theirs[both])))


def with_zingers(image, seed):
    """``image`` with 100-1000 counts added to 1 % of its valid pixels."""
    rng = np.random.default_rng(seed)
    out = image.copy()
    idx = rng.choice(out.size, out.size // 100, replace=False)
    idx = idx[out.flat[idx] >= 0]
    out.flat[idx] += rng.integers(100, 1000, idx.size).astype(out.dtype)
    return out


def set_up(reference_dir, oversampling):
    d = json.loads((reference_dir / "buf1_00000.calibration.json").read_text())
    d["Oversampling"] = oversampling
    cal = gpusaxs.Calibration.from_dict(d, base_dir=reference_dir)
    image = gpusaxs.read_image(reference_dir / "buf1_00000.tif")
    integ = gpusaxs.Integrator(cal, backend="numpy")
    mask = cal.load_mask() | (image < 0)
    edges = integ.option_engine(npt=NPT)[0].q_edges
    pyfai_kw = dict(
        unit="q_nm^-1", radial_range=(edges[0], edges[-1]), mask=mask, correctSolidAngle=False
    )
    return integ, pyfai_integrator(cal), with_zingers(image, 1), mask, pyfai_kw


@pytest.fixture(scope="module")
def whole_pixels(reference_dir):
    """Oversampling 1: a pixel in the bin of its centre, pyFAI's no splitting."""
    return set_up(reference_dir, 1)


@pytest.fixture(scope="module")
def split_pixels(reference_dir):
    """The reference calibration (Oversampling 3) against pyFAI's full splitting."""
    return set_up(reference_dir, 3)


@pytest.mark.parametrize("model", ["poisson", "azimuthal"])
def test_sigma_clip_matches_sigma_clip_ng(whole_pixels, model):
    integ, ai, image, _, kw = whole_pixels
    theirs = ai.sigma_clip_ng(
        image, NPT, method=NO_SPLIT, error_model=model, thres=5, max_iter=5, **kw
    )
    ours = integ.sigma_clip(image, NPT, thres=5, max_iter=5, error_model=model)
    np.testing.assert_allclose(ours.radial, theirs.radial, rtol=1e-6)
    assert agreement(ours.intensity, theirs.intensity) < 1e-3
    assert agreement(ours.std, theirs.std) < 0.03
    assert agreement(ours.sigma, theirs.sem) < 0.03
    assert agreement(ours.count, theirs.count) < 1e-3  # pixels kept per bin
    assert ours.robust == {
        "method": "sigma_clip",
        "thres": 5.0,
        "max_iter": 5,
        "error_model": model,
    }
    # the zingers matter: the plain mean is far from the clipped curve
    assert agreement(integ.integrate1d(image, NPT).intensity, theirs.intensity) > 0.03


def test_sigma_clip_of_a_stack_is_frame_by_frame(whole_pixels):
    integ, _, image, _, _ = whole_pixels
    raw = image.copy()
    stack = np.stack([with_zingers(raw, seed) for seed in (2, 3, 4)])
    batch = integ.sigma_clip_batch(stack, NPT, error_model="azimuthal")
    assert batch.intensity.shape == (3, NPT)
    for k in range(3):
        one = integ.sigma_clip(stack[k], NPT, error_model="azimuthal")
        np.testing.assert_array_equal(batch.intensity[k], one.intensity)
        np.testing.assert_array_equal(batch.count[k], one.count)


@pytest.mark.parametrize("percentile", [(10, 90), 50])
def test_medfilt1d_matches_medfilt1d_ng(split_pixels, percentile):
    integ, ai, image, _, kw = split_pixels
    theirs = ai.medfilt1d_ng(image, NPT, method=FULL_SPLIT, percentile=percentile, **kw)
    ours = integ.medfilt1d(image, NPT, percentile=percentile)
    assert agreement(ours.intensity, theirs.intensity) < 0.01
    assert agreement(integ.integrate1d(image, NPT).intensity, theirs.intensity) > 0.03


@pytest.mark.parametrize("unit", ["chi_deg", "chi_rad"])
def test_integrate_radial_matches_pyfai(split_pixels, unit):
    integ, ai, image, mask, _ = split_pixels
    args = dict(npt_rad=100, radial_range=(0.5, 2.0), azimuth_range=(-180, 180), unit=unit)
    theirs = ai.integrate_radial(
        image,
        360,
        radial_unit="q_nm^-1",
        mask=mask,
        correctSolidAngle=False,
        method=FULL_SPLIT,
        **args,
    )
    ours = integ.integrate_radial(image, 360, **args)
    np.testing.assert_allclose(ours.radial, theirs.radial, atol=1e-4)  # pyFAI: float32
    assert ours.unit == unit and ours.radial_label.startswith("chi")
    assert agreement(ours.intensity, theirs.intensity) < 0.01


def test_unknown_error_model_and_percentile_refused(whole_pixels):
    integ, _, image, _, _ = whole_pixels
    with pytest.raises(ValueError, match="error_model"):
        integ.sigma_clip(image, NPT, error_model="gauss")
    with pytest.raises(ValueError, match="percentile"):
        integ.medfilt1d(image, NPT, percentile=(10, 190))
    with pytest.raises(ValueError, match="azimuthal unit"):
        integ.integrate_radial(image, 90, unit="q_nm^-1")


@pytest.mark.parametrize("model", ["poisson", "azimuthal", "hybrid"])
def test_numba_kernel_and_array_module_path_agree(whole_pixels, monkeypatch, model):
    """The CPU kernel (cpu_fallback/robust_kernel.py) and the NumPy/CuPy path (robust.py)."""
    pytest.importorskip("numba")
    integ, _, image, _, _ = whole_pixels
    stack = np.stack([image, with_zingers(image, 5)])
    kernel = integ.sigma_clip_batch(stack, NPT, error_model=model)
    monkeypatch.setenv("GPUSAXS_NO_NUMBA", "1")
    array = integ.sigma_clip_batch(stack, NPT, error_model=model)
    for name in ("intensity", "std", "sigma", "count", "sum_normalization"):
        np.testing.assert_allclose(getattr(kernel, name), getattr(array, name), rtol=1e-9)


@pytest.mark.parametrize("model", ["poisson", "azimuthal", "hybrid"])
@pytest.mark.parametrize("thres", [5.0, 1.5])
def test_numba_kernel_on_a_stack_of_mixed_frames(split_pixels, monkeypatch, model, thres):
    """The CPU kernel clips the frames of a stack as vector lanes, lists the far values once and
    goes back to a full pass when the bound shrinks past the list (zingers, a low threshold):
    on 11 frames that converge differently (quiet, zingers, huge zingers, invalid values in
    the open area), with split pixels, every frame equals the NumPy path's clipping of it."""
    pytest.importorskip("numba")
    integ, _, image, _, _ = split_pixels
    rng = np.random.default_rng(7)
    frames = [np.where(image < 0, image, rng.poisson(np.maximum(image, 0))) for _ in range(11)]
    frames[1] = with_zingers(frames[1], 1)
    frames[2] = with_zingers(frames[2], 2) * 3
    frames[3][500, 400:440] = -2  # invalid values on unmasked pixels: the frame's own sums
    frames[4][:, :] = np.where(image < 0, image, 0)  # all zero
    stack = np.stack(frames).astype(np.int32)
    kernel = integ.sigma_clip_batch(stack, NPT, error_model=model, thres=thres, max_iter=7)
    monkeypatch.setenv("GPUSAXS_NO_NUMBA", "1")
    array = integ.sigma_clip_batch(stack, NPT, error_model=model, thres=thres, max_iter=7)
    for name in ("intensity", "std", "sigma", "count", "sum_normalization"):
        np.testing.assert_allclose(getattr(kernel, name), getattr(array, name), rtol=1e-9)


def test_hybrid_clips_with_poisson_and_reports_the_spread(whole_pixels):
    integ, ai, image, _, kw = whole_pixels
    hybrid = integ.sigma_clip(image, NPT, error_model="hybrid")
    poisson = integ.sigma_clip(image, NPT, error_model="poisson")
    np.testing.assert_array_equal(hybrid.intensity, poisson.intensity)
    np.testing.assert_array_equal(hybrid.count, poisson.count)
    spread = ai.sigma_clip_ng(image, NPT, method=NO_SPLIT, error_model="azimuthal", **kw)
    assert agreement(hybrid.std, spread.std) < 0.03
    assert agreement(poisson.std, spread.std) > 0.03  # the two spreads differ on this frame


def test_log_spaced_bins_match_pyfai_in_log_q(whole_pixels):
    """Bins uniform in log(q) = pyFAI's bins uniform in its unit log(q.nm) (natural log)."""
    integ, ai, image, mask, _ = whole_pixels
    lo, hi = 0.1, 2.5
    ours = integ.sigma_clip(image, 300, radial_range=(lo, hi), radial_spacing="log")
    edges = np.geomspace(lo, hi, 301)
    np.testing.assert_allclose(ours.radial, 0.5 * (edges[1:] + edges[:-1]), rtol=1e-12)
    theirs = ai.sigma_clip_ng(
        image,
        300,
        unit="log(q.nm)_None",
        radial_range=(np.log(lo), np.log(hi)),
        mask=mask,
        correctSolidAngle=False,
        method=NO_SPLIT,
        error_model="poisson",
    )
    assert agreement(ours.intensity, theirs.intensity) < 1e-3
    with pytest.raises(ValueError, match="radial_range"):
        integ.sigma_clip(image, 300, radial_spacing="log")


def test_kernel_general_path_split_pixels_dark_and_corrections(split_pixels, monkeypatch):
    """Split pixels, a dark and the solid angle: the kernel's weighted path = the NumPy path."""
    pytest.importorskip("numba")
    integ, _, image, _, _ = split_pixels
    dark = np.random.default_rng(6).uniform(0.0, 2.0, image.shape)
    kw = dict(error_model="azimuthal", dark=dark, correct_solid_angle=True)
    kernel = integ.sigma_clip_batch(image[None], NPT, **kw)
    monkeypatch.setenv("GPUSAXS_NO_NUMBA", "1")
    array = integ.sigma_clip_batch(image[None], NPT, **kw)
    for name in ("intensity", "std", "count"):
        np.testing.assert_allclose(getattr(kernel, name), getattr(array, name), rtol=1e-9)


@pytest.mark.parametrize("dtype", [np.uint16, np.uint32, np.int16, np.float32])
def test_numba_kernel_frame_types_and_runs_of_frames(whole_pixels, monkeypatch, dtype):
    """The kernel clips a copy of the frames in their own type, overwriting a clipped value with
    an invalid one (-1, or the unsigned maximum): on 18 frames in runs (the copy's size
    limit forced down), with the type's invalid values (gap flags, NaN, negatives) in the open
    area, every frame equals the NumPy path's clipping of it, and the caller's frames are
    untouched."""
    pytest.importorskip("numba")
    from gpusaxs.cpu_fallback import robust_kernel

    integ, _, image, _, _ = whole_pixels
    rng = np.random.default_rng(11)
    frames = np.stack(
        [np.where(image < 0, image, rng.poisson(np.maximum(image, 0))) for _ in range(18)]
    )
    frames[1::3] = with_zingers(frames[1], 3)
    stack = np.where(frames < 0, 0, frames).astype(dtype)  # the mask hides the gaps
    if np.dtype(dtype).kind == "u":
        stack[2, 500, 400:440] = np.iinfo(dtype).max
    elif np.dtype(dtype).kind == "f":
        stack[2, 500, 400:440] = np.nan
        stack[5, 300, 400:420] = -3.0
    else:
        stack[2, 500, 400:440] = -1
    before = stack.copy()
    monkeypatch.setattr(robust_kernel, "COPY_BYTES", 8 * image.size * stack.itemsize)
    runs = []
    copy = robust_kernel.bin_order_copy
    monkeypatch.setattr(
        robust_kernel, "bin_order_copy", lambda part, *a: runs.append(len(part)) or copy(part, *a)
    )
    kw = dict(error_model="azimuthal", thres=2.0, max_iter=6)
    kernel = integ.sigma_clip_batch(stack, NPT, **kw)
    assert len(runs) >= 2 and sum(runs) == 18
    np.testing.assert_array_equal(stack, before)
    monkeypatch.setenv("GPUSAXS_NO_NUMBA", "1")
    array = integ.sigma_clip_batch(stack, NPT, **kw)
    for name in ("intensity", "std", "sigma", "count", "sum_normalization"):
        np.testing.assert_allclose(getattr(kernel, name), getattr(array, name), rtol=1e-9)


@pytest.mark.parametrize("model", ["poisson", "azimuthal"])
def test_numba_kernel_on_counts_beyond_float32(whole_pixels, monkeypatch, model):
    """The kernel lists the far values in float32 with a margin over its rounding: on counts
    of 2e7 (float32 spaces them by 2) with a spread of a few counts, where the margin exceeds
    the bound and every value is listed, and on float64 frames with a fractional part, every
    frame still equals the NumPy path's clipping of it."""
    pytest.importorskip("numba")
    integ, _, image, _, _ = whole_pixels
    rng = np.random.default_rng(12)
    counts = np.stack([np.where(image < 0, 0, rng.poisson(np.maximum(image, 0))) for _ in range(4)])
    counts[1] = np.maximum(with_zingers(image, 4), 0)
    for stack in (counts.astype(np.int32) + 20_000_000, counts * 1.001 + 1e7 + 0.25):
        kw = dict(error_model=model, thres=2.5, max_iter=6)
        kernel = integ.sigma_clip_batch(stack, NPT, **kw)
        monkeypatch.setenv("GPUSAXS_NO_NUMBA", "1")
        array = integ.sigma_clip_batch(stack, NPT, **kw)
        monkeypatch.delenv("GPUSAXS_NO_NUMBA")
        assert np.nanmax(array.count) > 1000  # values kept, not all clipped or invalid
        for name in ("intensity", "std", "sigma", "count", "sum_normalization"):
            np.testing.assert_allclose(getattr(kernel, name), getattr(array, name), rtol=1e-9)


@pytest.mark.parametrize("percentile", [50, (10, 90), (0, 100), (25, 75), (0, 30)])
def test_percentile_kernel_on_whole_pixels_with_ties(whole_pixels, monkeypatch, percentile):
    """The kernel finds the kept entries by selection, not a sort: with whole pixels and no
    corrections every weight is 1, so the sums of weights are whole numbers that land exactly
    on the quantiles, and low counts make many equal values (ties go by position, as the
    NumPy path's stable sort); three frames (Poisson, zingers, a frame of zeros) equal the
    NumPy path's."""
    pytest.importorskip("numba")
    integ, _, image, _, _ = whole_pixels
    rng = np.random.default_rng(13)
    low = np.where(image < 0, image, rng.poisson(np.maximum(image, 0) / 20.0))
    stack = np.stack([low, with_zingers(low, 5), np.where(image < 0, image, 0)]).astype(np.int32)
    kw = dict(percentile=percentile, error_model="azimuthal", correct_solid_angle=False)
    kernel = integ.medfilt1d_batch(stack, NPT, **kw)
    monkeypatch.setenv("GPUSAXS_NO_NUMBA", "1")
    array = integ.medfilt1d_batch(stack, NPT, **kw)
    # an exact landing keeps two entries for the median; a range keeps many
    assert np.nanmax(array.count[0]) > (1 if percentile == 50 else 100)
    for name in ("intensity", "std", "sigma", "count"):
        np.testing.assert_allclose(getattr(kernel, name), getattr(array, name), rtol=1e-9)


@pytest.mark.parametrize("percentile,model", [((10, 90), "poisson"), (50, "azimuthal")])
def test_percentile_kernel_and_array_module_path_agree(
    split_pixels, monkeypatch, percentile, model
):
    """medfilt1d's CPU kernel and the NumPy/CuPy path, split pixels with a dark."""
    pytest.importorskip("numba")
    integ, _, image, _, _ = split_pixels
    dark = np.random.default_rng(7).uniform(0.0, 2.0, image.shape)
    kw = dict(percentile=percentile, error_model=model, dark=dark, correct_solid_angle=True)
    kernel = integ.medfilt1d_batch(image[None], NPT, **kw)
    monkeypatch.setenv("GPUSAXS_NO_NUMBA", "1")
    array = integ.medfilt1d_batch(image[None], NPT, **kw)
    for name in ("intensity", "std", "sigma", "count"):
        np.testing.assert_allclose(getattr(kernel, name), getattr(array, name), rtol=1e-9)


@pytest.mark.filterwarnings("ignore::RuntimeWarning")  # the means of empty chi bins
@pytest.mark.parametrize("model", ["poisson", "azimuthal", "hybrid"])
def test_integrate_radial_error_models_against_the_pixels(whole_pixels, model):
    """Whole pixels: each chi bin's mean, Poisson error and spread from the pixels whose
    centre (pyFAI's chiArray and qArray) lies in it and in the q range."""
    integ, ai, image, mask, _ = whole_pixels
    res = integ.integrate_radial(
        image, 360, npt_rad=100, radial_range=(0.5, 2.0), error_model=model
    )
    chi = np.rad2deg(ai.chiArray(image.shape))
    q = ai.qArray(image.shape)
    good = ~mask & (q >= 0.5) & (q < 2.0)
    which = np.floor(chi + 180.0).astype(int)
    x = image.astype(np.float64)
    mean = np.array([x[good & (which == k)].mean() for k in range(360)])
    assert agreement(res.intensity, mean) < 1e-3
    if model == "poisson":
        err = np.array(
            [
                np.sqrt(x[good & (which == k)].sum()) / (good & (which == k)).sum()
                for k in range(360)
            ]
        )
        assert agreement(res.sigma, err) < 1e-3
    else:
        std = np.array([x[good & (which == k)].std() for k in range(360)])
        n = np.array([(good & (which == k)).sum() for k in range(360)])
        assert agreement(res.std, std) < 1e-3
        assert agreement(res.sigma, std / np.sqrt(n)) < 1e-3
