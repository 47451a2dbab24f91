"""pyFAI's dummy / delta_dummy and negative values (issue 22.10), against pyFAI on a real-size
frame: background-subtracted data keep their negative values when a dummy value is given."""

import warnings

import numpy as np
import pytest

import gpusaxs
from gpusaxs.cpu_fallback.engine import ScipyEngine
from gpusaxs.dummy import dummy_sums
from tests.helpers import pyfai_integrator, tilted_synthetic_frame

pytest.importorskip("pyFAI")

NO_SPLIT = ("no", "csr", "cython")
DUMMY = -10000.0


@pytest.fixture(scope="module")
def subtracted(tmp_path_factory):
    """(integrator, pyFAI integrator, background-subtracted float frame, mask): a tilted
    PILATUS 1M frame minus a flat background, so that a large part of it is negative; the
    detector's gaps carry the dummy value."""
    cal, image, dark, _ = tilted_synthetic_frame(tmp_path_factory.mktemp("dummy"))
    gaps = image < 0
    sub = image.astype(np.float64) - np.median(image[~gaps])
    sub[gaps] = DUMMY
    assert (sub[~gaps] < 0).mean() > 0.3  # really background-subtracted
    return gpusaxs.Integrator(cal, backend="numpy"), pyfai_integrator(cal), sub, gaps, dark


def _pyfai(ai, integ, image, npt, **kw):
    edges = integ.option_engine(npt=npt)[0].q_edges
    return ai.integrate1d(
        image, npt, unit="q_nm^-1", radial_range=(edges[0], edges[-1]), method=NO_SPLIT,
        correctSolidAngle=False, **kw,
    )  # fmt: skip


def test_dummy_keeps_negative_values_as_pyfai(subtracted):
    integ, ai, sub, _, _ = subtracted
    ours = integ.integrate1d(sub, npt=600, dummy=DUMMY, delta_dummy=0.5)
    theirs = _pyfai(ai, integ, sub, 600, dummy=DUMMY, delta_dummy=0.5)
    both = np.isfinite(ours.intensity) & np.isfinite(theirs.intensity)
    assert both.sum() > 500
    # as tests/test_options_pyfai.py: same definitions, whole pixels; a few bins differ where
    # pyFAI's float32 positions put a pixel in the next bin. Values cross zero: the
    # differences are taken relative to the curve's spread at that q (its largest |I| / 100)
    diff = np.abs(ours.intensity[both] - theirs.intensity[both])
    scale = np.abs(theirs.intensity[both]).max() / 100
    assert np.median(diff / scale) < 1e-6 and np.percentile(diff / scale, 99) < 1e-2
    assert (ours.intensity[both] < 0).sum() > 50  # negative means survive
    # without a dummy value, the old rule drops them and biases the curve upwards, with a warning
    with pytest.warns(UserWarning, match="negative and are dropped"):
        old = integ.integrate1d(sub, npt=600)
    assert np.nanmedian(old.intensity - ours.intensity) > 0


def test_dummy_with_dark_and_errors_matches_direct_sums(subtracted):
    """Dark, azimuthal std and Poisson variance under the dummy rule equal a direct float64
    computation (the shift by C is taken back exactly)."""
    integ, _, sub, gaps, dark = subtracted
    res = integ.integrate1d(sub, npt=300, dummy=DUMMY, dark=dark, error_model="azimuthal")
    matrix = integ.option_engine(npt=300)[0]
    v = np.where(gaps, 0.0, sub - dark).ravel()
    valid = (~gaps).ravel().astype(np.float64)
    w = matrix.to_scipy(scaled=False)  # (n_bins, n_pixels) weights
    s = matrix.pixel_scale.astype(np.float64)
    signal = w @ (s * v * valid)
    norm = w @ valid
    squares = w @ ((s * v) ** 2 * valid)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = signal / norm
        std = np.sqrt(np.maximum(squares / norm - mean**2, 0))
    filled = norm > 0
    np.testing.assert_allclose(res.intensity[filled], mean[filled], rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(res.std[filled], std[filled], rtol=1e-7, atol=1e-7)


def test_nan_dummy_keeps_every_finite_value(subtracted):
    integ, _, sub, gaps, _ = subtracted
    with_nan = np.where(gaps, np.nan, sub)
    a = integ.integrate1d(with_nan, npt=300, dummy=float("nan"))
    b = integ.integrate1d(sub, npt=300, dummy=DUMMY)
    np.testing.assert_allclose(a.intensity, b.intensity, rtol=1e-12, equal_nan=True)


def test_stack_in_groups_equals_frame_by_frame(subtracted):
    integ, _, sub, _, _ = subtracted
    stack = np.stack([sub + k for k in range(11)])  # more than one group of 8
    batch = integ.integrate1d_batch(stack, npt=200, dummy=DUMMY, error_model="poisson")
    for k in (0, 7, 8, 10):
        one = integ.integrate1d(stack[k], npt=200, dummy=DUMMY, error_model="poisson")
        np.testing.assert_allclose(batch.intensity[k], one.intensity, rtol=1e-12, equal_nan=True)


def test_integer_frames_and_no_negatives_take_one_plane(subtracted):
    """Without a negative valid value no shift is needed: one engine plane per frame."""
    integ, _, _, _, _ = subtracted
    calls = []
    engine = ScipyEngine(integ.option_engine(npt=100)[0])
    real = engine.sums
    engine.sums = lambda st, errors=False: calls.append(len(st)) or real(st, errors)
    frame = np.random.default_rng(0).poisson(20, integ.shape).astype(np.uint32)
    frame[0, 0] = np.iinfo(np.uint32).max  # EIGER's gap flag stays invalid
    dummy_sums(engine, frame[None], None, -1.0, None, False)
    assert calls == [1]


def test_delta_dummy_without_dummy_is_an_error(subtracted):
    integ, _, sub, _, _ = subtracted
    with pytest.raises(ValueError, match="delta_dummy needs dummy"):
        integ.integrate1d(sub, delta_dummy=1.0)


def test_integer_frames_draw_no_warning(subtracted):
    integ, _, _, _, _ = subtracted
    frame = np.random.default_rng(1).poisson(5, integ.shape).astype(np.int32)
    frame[::7] = -1  # PILATUS gaps: flags, not data
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        integ.integrate1d(frame, npt=100)
