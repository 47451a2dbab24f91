"""The pyFAI-style options (issue 12) against pyFAI on real-size frames.

Two set-ups:
* a tilted synthetic geometry (1043 x 981 PILATUS 1M, tilt 12 deg) with Oversampling 1, whose
  whole-pixel binning is pyFAI's "no splitting" CSR integrator: same definitions give the same
  numbers to float precision, so every option is checked tightly (always runs, no data needed);
* the reference frame with its calibration (Oversampling 3), against pyFAI's full pixel
  splitting: the two splitting schemes differ by ~0.03 % median, the options must not add to it.
The agreement reached is listed in docs/pyfai-options.md.
"""

import numpy as np
import pytest

import gpusaxs
from tests.helpers import pyfai_integrator, tilted_synthetic_frame

pytest.importorskip("pyFAI")

NO_SPLIT = ("no", "csr", "cython")
FULL_SPLIT = ("full", "csr", "cython")


def agreement(ours, theirs):
    """(median, 95th percentile) of |ours - theirs| / |theirs| over bins both fill."""
    both = np.isfinite(ours) & np.isfinite(theirs) & (np.abs(theirs) > 0)
    assert both.sum() > 100, "too few bins to compare"
    rel = np.abs(ours[both] - theirs[both]) / np.abs(theirs[both])
    return np.median(rel), np.percentile(rel, 95)


def assert_same(ours, theirs, median=1e-6, p95=1e-3):
    med, p = agreement(ours, theirs)
    assert med < median and p < p95, f"median {med:.2e}, 95th percentile {p:.2e}"


@pytest.fixture(scope="module")
def tilted(tmp_path_factory):
    """(integrator, pyFAI integrator, frame, mask, dark, flat) of a tilted synthetic geometry."""
    cal, image, dark, flat = tilted_synthetic_frame(tmp_path_factory.mktemp("tilted"))
    mask = image < 0
    return (
        gpusaxs.Integrator(cal, backend="numpy"),
        pyfai_integrator(cal),
        image,
        mask,
        dark,
        flat,
    )


def pyfai_1d(
    ai, integ, image, mask, npt, unit="q_nm^-1", radial_range=None, method=NO_SPLIT, **kwargs
):
    """pyFAI's integrate1d on the bins of our matrix for the same npt/unit/range."""
    edges = integ.option_engine(npt=npt, unit=unit, radial_range=radial_range)[0].q_edges
    kwargs.setdefault("correctSolidAngle", False)
    return ai.integrate1d(
        image,
        npt,
        unit=unit,
        radial_range=(edges[0], edges[-1]),
        mask=mask,
        method=method,
        **kwargs,
    )


@pytest.mark.parametrize("unit", ["q_nm^-1", "q_A^-1", "2th_deg", "2th_rad", "r_mm"])
def test_each_radial_unit(tilted, unit):
    integ, ai, image, mask, _, _ = tilted
    ours = integ.integrate1d(image, npt=800, unit=unit)
    theirs = pyfai_1d(ai, integ, image, mask, 800, unit=unit)
    np.testing.assert_allclose(ours.radial, theirs.radial, rtol=1e-6)
    assert ours.unit == unit
    assert_same(ours.intensity, theirs.intensity)


def test_radial_range(tilted):
    integ, ai, image, mask, _, _ = tilted
    ours = integ.integrate1d(image, npt=300, unit="2th_deg", radial_range=(2.0, 20.0))
    assert ours.radial[0] == pytest.approx(2.03) and ours.radial[-1] == pytest.approx(19.97)
    theirs = pyfai_1d(ai, integ, image, mask, 300, unit="2th_deg", radial_range=(2.0, 20.0))
    assert_same(ours.intensity, theirs.intensity)


def test_per_pixel_corrections_one_at_a_time_and_all_together(tilted):
    integ, ai, image, mask, dark, flat = tilted
    cases = [
        (dict(correct_solid_angle=True), dict(correctSolidAngle=True)),
        (dict(dark=dark), dict(dark=dark)),
        (dict(polarization_factor=0.9), dict(polarization_factor=0.9)),
        (dict(polarization_factor=-0.5), dict(polarization_factor=-0.5)),
        (dict(normalization_factor=2.5), dict(normalization_factor=2.5)),
    ]
    plain = integ.integrate1d(image, npt=800)
    for ours_kw, pyfai_kw in cases:
        ours = integ.integrate1d(image, npt=800, **ours_kw)
        theirs = pyfai_1d(ai, integ, image, mask, 800, **pyfai_kw)
        # the mean of the corrected pixels (ours) and pyFAI's ratio of sums weight the noisy
        # pixels of a bin differently where the solid angle varies along the ring (tilt 12
        # deg): ~4e-4 median; the factors themselves equal pyFAI's (tests/test_geometry.py)
        assert_same(ours.intensity, theirs.intensity, median=1e-3, p95=5e-3)
        assert agreement(ours.intensity, plain.intensity)[0] > 1e-3, ours_kw  # it did something
    everything = dict(
        correct_solid_angle=True, dark=dark, polarization_factor=0.9, normalization_factor=2.5
    )
    ours = integ.integrate1d(image, npt=800, flat=flat, **everything)
    theirs = pyfai_1d(
        ai,
        integ,
        image,
        mask,
        800,
        flat=flat,
        correctSolidAngle=True,
        **{k: v for k, v in everything.items() if k != "correct_solid_angle"},
    )
    # the frame was drawn as ideal * flat * solid angle + dark: both recover the ideal curve
    assert_same(ours.intensity, theirs.intensity, median=2e-3, p95=6e-3)


def test_flat_field(tilted):
    """The flat divides each pixel: with a frame drawn through the flat, ours and pyFAI's
    (sum x / sum flat) recover the same curve; without it they differ by the definition."""
    integ, ai, image, mask, dark, flat = tilted
    ours = integ.integrate1d(image, npt=800, flat=flat, dark=dark)
    theirs = pyfai_1d(ai, integ, image, mask, 800, flat=flat, dark=dark)
    assert_same(ours.intensity, theirs.intensity, median=2e-3, p95=6e-3)


def test_azimuth_sector_and_sector_through_180(tilted):
    integ, ai, image, mask, _, _ = tilted
    ours = integ.integrate1d(image, npt=500, azimuth_range=(20.0, 70.0))
    theirs = pyfai_1d(ai, integ, image, mask, 500, azimuth_range=(20.0, 70.0))
    assert_same(ours.intensity, theirs.intensity)
    wrap = integ.integrate1d(image, npt=500, azimuth_range=(150.0, -150.0))
    same = integ.integrate1d(image, npt=500, azimuth_range=(-210.0, -150.0))
    np.testing.assert_array_equal(wrap.intensity, same.intensity)
    ai.setChiDiscAtZero()  # pyFAI's chi in [0, 360) for this sector
    try:
        theirs = pyfai_1d(ai, integ, image, mask, 500, azimuth_range=(150.0, 210.0))
    finally:
        ai.setChiDiscAtPi()
    assert_same(wrap.intensity, theirs.intensity)
    full = integ.integrate1d(image, npt=500)
    assert np.nansum(wrap.count) < 0.3 * np.nansum(full.count)


def test_cake_2d(tilted):
    integ, ai, image, mask, _, _ = tilted
    ours = integ.integrate2d(
        image, 300, 36, unit="2th_deg", radial_range=(0.0, 30.0), correct_solid_angle=True
    )
    theirs = ai.integrate2d(
        image,
        300,
        36,
        unit="2th_deg",
        radial_range=(0.0, 30.0),
        mask=mask,
        azimuth_range=(-180.0, 180.0),
        method=NO_SPLIT,
        correctSolidAngle=True,
    )
    assert ours.intensity.shape == (36, 300)
    np.testing.assert_allclose(ours.radial, theirs.radial, rtol=1e-6)
    np.testing.assert_allclose(ours.azimuthal, theirs.azimuthal, atol=1e-3)
    assert_same(ours.intensity, theirs.intensity, median=1e-4, p95=5e-4)
    intensity, radial, chi = ours  # unpacks like pyFAI's Integrate2dResult
    assert intensity is ours.intensity and chi is ours.azimuthal


@pytest.mark.parametrize("model", ["poisson", "azimuthal"])
def test_error_models_without_pixel_splitting(tilted, model):
    integ, ai, image, mask, _, _ = tilted
    ours = integ.integrate1d(image, npt=800, error_model=model)
    theirs = pyfai_1d(ai, integ, image, mask, 800, error_model=model)
    assert_same(ours.sigma, theirs.sigma, median=1e-5, p95=1e-3)
    if model == "azimuthal":
        assert_same(ours.std, theirs.std, median=1e-5, p95=1e-3)
    else:
        assert ours.std is None


# -- the reference frame, with pixel splitting -----------------------------------------------


@pytest.fixture(scope="module")
def reference(reference_dir):
    cal = gpusaxs.Calibration.from_file(reference_dir / "buf1_00000.calibration.json")
    image = gpusaxs.read_image(reference_dir / "buf1_00000.tif")
    integ = gpusaxs.Integrator(cal, backend="numpy")
    return integ, pyfai_integrator(cal), image, cal.load_mask() | (image < 0)


def test_reference_frame_all_options_in_a_sector(reference):
    integ, ai, image, mask = reference
    rng = np.random.default_rng(4)
    dark = rng.uniform(0.0, 2.0, image.shape)
    options = dict(
        correct_solid_angle=True,
        dark=dark,
        polarization_factor=0.95,
        normalization_factor=3.0,
        azimuth_range=(60.0, 120.0),
    )
    ours = integ.integrate1d(image, **options)
    theirs = pyfai_1d(
        ai,
        integ,
        image,
        mask,
        integ.matrix.n_bins,
        method=FULL_SPLIT,
        correctSolidAngle=True,
        **{k: v for k, v in options.items() if k != "correct_solid_angle"},
    )
    # the two splitting schemes alone differ by a median 0.03 %, 95th percentile 0.1 %
    assert_same(ours.intensity, theirs.intensity, median=1e-3, p95=4e-3)


def test_reference_frame_poisson_sigma_is_saxsdogs_not_pyfais(reference):
    """With pixel splitting our Poisson error is SAXSdog's sqrt(sum w x)/sum w, pyFAI's
    sqrt(sum w^2 x)/sum w: ours is larger by sqrt(sum w / sum w^2) (documented)."""
    integ, ai, image, mask = reference
    ours = integ.integrate1d(image)
    theirs = pyfai_1d(
        ai, integ, image, mask, integ.matrix.n_bins, method=FULL_SPLIT, error_model="poisson"
    )
    ratio = np.nanmedian(ours.sigma / theirs.sigma)
    assert 1.1 < ratio < 1.4
