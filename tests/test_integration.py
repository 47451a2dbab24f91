"""Integration against fit2d's curve and pyFAI, and the accuracy checks of sections 4.4-4.7."""

import numpy as np
import pytest

import gpusaxs
from gpusaxs.cpu_fallback.engine import CpuEngine, ScipyEngine
from gpusaxs.geometry import polarization_factor
from tests.helpers import calibration_with_mask, fit2d_edges, pyfai_integrator


@pytest.fixture(scope="module")
def reference(reference_dir):
    cal = gpusaxs.Calibration.from_file(reference_dir / "buf1_00000.calibration.json")
    image = gpusaxs.read_image(reference_dir / "buf1_00000.tif")
    chi = gpusaxs.read_chi(reference_dir / "buf1_00000.fit2d.chi")
    return cal, image, chi


def relative_deviation(ours, theirs):
    both = (theirs > 0) & np.isfinite(ours) & (ours > 0)
    return np.abs(ours[both] - theirs[both]) / theirs[both], both.sum()


def test_curve_matches_fit2d(reference):
    cal, image, chi = reference
    integ = gpusaxs.Integrator(cal, backend="numpy", q_edges=fit2d_edges(chi.q))
    q, intensity = integ.integrate(image)
    np.testing.assert_allclose(q, chi.q, rtol=1e-6)
    rel, n = relative_deviation(intensity, chi.intensity)
    assert n > 900
    assert np.median(rel) <= 0.0025, f"median |dI|/I = {np.median(rel):.4%}"
    assert np.percentile(rel, 95) <= 0.009, f"95th percentile = {np.percentile(rel, 95):.4%}"


def test_curve_matches_pyfai_full_splitting(reference):
    cal, image, chi = reference
    mask = cal.load_mask()
    integ = gpusaxs.Integrator(cal, backend="numpy", q_edges=fit2d_edges(chi.q))
    _, ours = integ.integrate(image)
    ai = pyfai_integrator(cal)
    res = ai.integrate1d(
        image,
        npt=len(chi.q),
        unit="q_nm^-1",
        mask=mask | (image < 0),
        radial_range=(integ.q_edges[0], integ.q_edges[-1]),
        method=("full", "csr", "cython"),
        correctSolidAngle=False,
    )
    rel, n = relative_deviation(ours, res.intensity)
    assert n > 900
    # two pixel-splitting schemes on the same bins: they agree far better than either with fit2d
    assert np.median(rel) < 0.002 and np.percentile(rel, 95) < 0.008


def test_mask_covers_every_negative_pixel(reference):
    cal, image, _ = reference
    assert cal.load_mask()[image < 0].all()


def test_constant_image_with_real_mask_integrates_to_one(reference):
    """Section 4.6: the mask itself as image (1 where unmasked) gives 1 in every non-empty bin."""
    cal, _, _ = reference
    mask = cal.load_mask()
    integ = gpusaxs.Integrator(cal, backend="numpy")
    _, intensity = integ.integrate((~mask).astype(np.float32))
    filled = np.isfinite(intensity)
    assert filled.sum() > 900
    assert np.max(np.abs(intensity[filled] - 1.0)) < 1e-6


def test_polarization_image_integrates_to_one(tmp_path, reference_dir):
    """Section 4.4: with the correction on, the image K itself integrates to 1."""
    cal = gpusaxs.Calibration.from_file(reference_dir / "buf1_00000.calibration.json")
    cal = cal.replace(polarization=(1.0, 0.0), tilt_angle_deg=-10.0)
    integ = gpusaxs.Integrator(cal, backend="numpy")
    k = polarization_factor(cal)
    _, intensity = integ.integrate(k * 1000.0)
    filled = np.isfinite(intensity)
    assert np.max(np.abs(intensity[filled] / 1000.0 - 1.0)) < 1e-6
    _, flat = integ.integrate(np.full(cal.imagesize, 1000.0))
    assert np.nanmax(flat) / 1000.0 > 1.0 + 1e-4  # ones alone show the polarization wiggles


def test_empty_bins_are_nan_and_negative_pixels_carry_no_weight(tmp_path):
    cal = calibration_with_mask(tmp_path, Imagesize=[120, 100], BeamCenter=[60.0, 50.0])
    integ = gpusaxs.Integrator(cal, backend="numpy")
    image = np.full(cal.imagesize, 7, dtype=np.int32)
    image[::3, ::2] = -1  # gaps: must not pull the mean down
    image[5, 5] = -2
    _, intensity = integ.integrate(image)
    filled = np.isfinite(intensity)
    np.testing.assert_allclose(intensity[filled], 7.0, rtol=1e-12)
    q_beyond = np.linspace(0, 3 * integ.q_edges[-1], 200)
    far = gpusaxs.Integrator(cal, backend="numpy", q_edges=q_beyond)
    _, beyond = far.integrate(image)
    assert np.isnan(beyond[far.q > integ.q_edges[-1] * 1.01]).all()


def test_intensity_is_conserved_by_oversampling(tmp_path):
    """Each unmasked pixel's weights add up to 1 inside the q range: nothing lost or doubled."""
    rng = np.random.default_rng(3)
    mask = rng.random((90, 110)) < 0.2
    cal = calibration_with_mask(
        tmp_path, mask=mask, Imagesize=[90, 110], BeamCenter=[45.3, 20.1], Oversampling=4
    )
    m = gpusaxs.Integrator(cal, backend="numpy").matrix
    per_pixel = np.add.reduceat(np.r_[m.weights.astype(np.float64), 0.0], m.pixel_ptr[:-1])
    per_pixel[np.diff(m.pixel_ptr) == 0] = 0.0
    np.testing.assert_allclose(per_pixel.reshape(mask.shape)[~mask], 1.0, atol=1e-6)
    assert (per_pixel.reshape(mask.shape)[mask] == 0).all()


def test_error_model_matches_direct_computation(tmp_path):
    """Poisson error sqrt(sum w s^2 x)/sum w and weighted std, computed here by hand."""
    rng = np.random.default_rng(5)
    cal = calibration_with_mask(
        tmp_path,
        Imagesize=[64, 70],
        BeamCenter=[30.0, 35.0],
        PolarizationCorrection={"Fraction": 0.9, "Angle": 10.0},
        DedectorDistanceMM=60.0,
    )
    integ = gpusaxs.Integrator(cal, backend="numpy")
    image = rng.poisson(50, cal.imagesize).astype(np.int32)
    image[rng.random(cal.imagesize) < 0.05] = -1
    intensity, std, err = integ.integrate_error(image)
    A = integ.matrix.to_scipy().toarray()  # (n_bins, n_pixels) weights w
    s = 1.0 / polarization_factor(cal).ravel()
    x = image.ravel().astype(float)
    v = x >= 0
    w = A * v
    norm = w.sum(axis=1)
    ok = norm > 0
    mean = (w @ (x * s))[ok] / norm[ok]
    np.testing.assert_allclose(intensity[ok], mean, rtol=1e-6)
    np.testing.assert_allclose(err[ok], np.sqrt(w @ (x * s * s))[ok] / norm[ok], rtol=1e-6)
    spread = np.sqrt(np.maximum((w @ (x * s) ** 2)[ok] / norm[ok] - mean**2, 0))
    np.testing.assert_allclose(std[ok], spread, rtol=1e-5, atol=1e-9)


@pytest.mark.parametrize(
    "dtype", [np.int32, np.uint32, np.uint16, np.int16, np.float32, np.float64, ">i4"]
)
def test_every_dtype_gives_the_float64_result(tmp_path, dtype):
    rng = np.random.default_rng(7)
    cal = calibration_with_mask(tmp_path, Imagesize=[50, 60], BeamCenter=[20.0, 25.0])
    integ = gpusaxs.Integrator(cal, backend="numpy")
    image = rng.integers(0, 1000, cal.imagesize)
    _, ref = integ.integrate(image.astype(np.float64))
    _, got = integ.integrate(image.astype(dtype))
    np.testing.assert_allclose(got, ref, rtol=1e-12, equal_nan=True)


def test_unsigned_maximum_and_nan_are_invalid(tmp_path):
    cal = calibration_with_mask(tmp_path, Imagesize=[40, 40], BeamCenter=[20.0, 20.0])
    integ = gpusaxs.Integrator(cal, backend="numpy")
    image = np.full(cal.imagesize, 3, dtype=np.uint32)
    image[::2] = np.iinfo(np.uint32).max  # EIGER gap flag
    _, got = integ.integrate(image)
    np.testing.assert_allclose(got[np.isfinite(got)], 3.0)
    fimage = image.astype(np.float32)
    fimage[::2] = np.nan
    _, got = integ.integrate(fimage)
    np.testing.assert_allclose(got[np.isfinite(got)], 3.0)


@pytest.mark.parametrize("n_frames", [1, 2, 3, 4, 5, 6, 9])
def test_numba_engine_equals_scipy_reference_on_a_real_size_stack(reference, n_frames):
    cal, image, _ = reference
    cal = cal.replace(polarization=(0.95, 0.0))
    integ = gpusaxs.Integrator(cal, backend="numpy")
    rng = np.random.default_rng(n_frames)
    stack = np.stack(
        [np.where(image < 0, image, rng.poisson(np.maximum(image, 0))) for _ in range(n_frames)]
    ).astype(np.int32)
    stack[-1, 500, 400:420] = -2  # invalid pixels inside the mask's open area
    for errors in (False, True):
        fast = CpuEngine(integ.matrix).sums(stack, errors=errors)
        ref = ScipyEngine(integ.matrix).sums(stack, errors=errors)
        for name in fast._fields[: 4 if errors else 2]:
            a, b = getattr(fast, name), getattr(ref, name)
            assert np.max(np.abs(a - b) / np.maximum(np.abs(b), 1e-12)) < 1e-6, name
    batch = integ.integrate_batch(stack)
    for i in range(n_frames):
        np.testing.assert_array_equal(batch[i], integ.integrate(stack[i])[1])


def test_poisson_only_errors_equal_the_full_error_model(reference):
    """integrate_batch_error(std=False): same I and err, no std (both CPU engines)."""
    cal, image, _ = reference
    integ = gpusaxs.Integrator(cal.replace(polarization=(0.95, 0.0)), backend="numpy")
    stack = np.stack([image, np.where(image < 0, image, image + 3), image])
    full = integ.integrate_batch_error(stack)
    intensity, std, err = integ.integrate_batch_error(stack, std=False)
    assert std is None and full[1] is not None
    np.testing.assert_array_equal(intensity, full[0])
    np.testing.assert_array_equal(err, full[2])
    for engine in (CpuEngine(integ.matrix), ScipyEngine(integ.matrix)):
        sums = engine.sums(stack, errors="poisson")
        assert sums.squares is None
        np.testing.assert_allclose(
            sums.variance, engine.sums(stack, errors=True).variance, rtol=1e-12
        )


def test_fine_user_bins_use_the_overflow_path(tmp_path):
    """Bins much finer than a pixel: pixels feed many bins; results still conserve intensity."""
    cal = calibration_with_mask(
        tmp_path, Imagesize=[40, 50], BeamCenter=[20.0, 25.0], Oversampling=5
    )
    coarse = gpusaxs.Integrator(cal, backend="numpy")
    edges = np.linspace(0, coarse.q_edges[-1], 20 * coarse.matrix.n_bins)
    fine = gpusaxs.Integrator(cal, backend="numpy", q_edges=edges)
    assert np.diff(fine.matrix.pixel_ptr).max() > 4
    rng = np.random.default_rng(1)
    stack = rng.integers(0, 100, (3, 40, 50)).astype(np.int32)
    stack[1, 3:9, 4] = -1
    for errors in (False, True):
        a = CpuEngine(fine.matrix).sums(stack, errors=errors)
        b = ScipyEngine(fine.matrix).sums(stack, errors=errors)
        np.testing.assert_allclose(a.signal, b.signal, rtol=1e-6)
        np.testing.assert_allclose(a.norm, b.norm, rtol=1e-6, atol=1e-9)


def test_default_bins_follow_pixel_per_radial_element(reference):
    cal, _, chi = reference
    one = gpusaxs.Integrator(cal, backend="numpy")
    assert one.matrix.n_bins == len(chi.q)  # fit2d's 1002 bins for this detector
    two = gpusaxs.Integrator(cal.replace(pixel_per_radial_element=2), backend="numpy")
    assert two.matrix.n_bins == len(chi.q) // 2
    assert one.q_edges[0] == 0.0


def test_matrix_cache_round_trip(tmp_path, reference):
    from gpusaxs import matrix_cache

    cal, image, _ = reference
    built = matrix_cache.get_matrix(cal, cache_dir=tmp_path)
    files = list(tmp_path.glob("matrix-*.gsm"))
    assert len(files) == 1
    loaded = matrix_cache.load_matrix(files[0])
    for field in ("q_edges", "pixel_ptr", "bins", "weights", "pixel_scale", "norm"):
        np.testing.assert_array_equal(getattr(loaded, field), getattr(built, field))
    assert loaded.shape == built.shape
    files[0].write_bytes(b"corrupt")  # a corrupt cache file is rebuilt
    matrix_cache._MEMORY.clear()
    again = matrix_cache.get_matrix(cal, cache_dir=tmp_path)
    np.testing.assert_array_equal(again.weights, built.weights)
    np.testing.assert_array_equal(matrix_cache.load_matrix(files[0]).bins, built.bins)
    assert matrix_cache.matrix_key(cal) != matrix_cache.matrix_key(cal.replace(oversampling=2))


def test_wrong_image_size_is_a_clear_error(tmp_path):
    cal = calibration_with_mask(tmp_path, Imagesize=[40, 50], BeamCenter=[20.0, 25.0])
    integ = gpusaxs.Integrator(cal, backend="numpy")
    with pytest.raises(ValueError, match="Imagesize"):
        integ.integrate(np.zeros((50, 40)))


def test_legacy_api_of_section_6(tmp_path, reference_dir):
    legacy = gpusaxs.calibration(str(reference_dir / "buf1_00000.calibration.json"))
    image = gpusaxs.read_image(reference_dir / "buf1_00000.tif")
    q, intensity = legacy.integrate(image)
    data = legacy.integratechi(image, str(tmp_path / "frame.chi"))
    assert data.shape == (3, len(q))
    back = gpusaxs.read_chi(tmp_path / "frame.chi")
    finite = np.isfinite(intensity)
    np.testing.assert_allclose(back.intensity[finite], intensity[finite], rtol=1e-7)
    errs = legacy.integrateerror(image)
    np.testing.assert_allclose(errs[0], intensity, equal_nan=True)
    fig = legacy.plot(image, outputfile=str(tmp_path / "plot.png"))
    assert (tmp_path / "plot.png").stat().st_size > 1000 and fig is not None
    assert gpusaxs.openmask(str(reference_dir / "buf1_00000.calibration.json")).shape == image.shape
