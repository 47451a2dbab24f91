"""The pyFAI-style API (issue 12): defaults keep SAXSdog's numbers, batches equal single frames,
every engine gives the same numbers with the options on, results unpack like pyFAI's."""

import numpy as np
import pytest

import gpusaxs
from gpusaxs import matrix_cache
from gpusaxs.cpu_fallback.engine import CpuEngine, ScipyEngine
from tests.helpers import calibration_with_mask


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    folder = tmp_path_factory.mktemp("small")
    cal = calibration_with_mask(
        folder,
        Imagesize=[160, 150],
        BeamCenter=[70.2, 60.7],
        DedectorDistanceMM=120.0,
        Oversampling=3,
        Tilt={"TiltAngleDeg": 8.0, "TiltRotDeg": 30.0},
        PolarizationCorrection={"Fraction": 0.95, "Angle": 0.0},
    )
    rng = np.random.default_rng(9)
    stack = rng.poisson(200, (5,) + tuple(cal.imagesize)).astype(np.int32)
    stack[:, 40:44, :] = -1
    stack[2, 100, 10:30] = -2
    return gpusaxs.Integrator(cal, backend="numpy"), stack, rng


def test_defaults_are_the_saxsdog_numbers_bit_for_bit(small, tmp_path):
    integ, stack, _ = small
    res = integ.integrate1d(stack[0])
    q, intensity = integ.integrate(stack[0])
    i2, std, err = integ.integrate_error(stack[0])
    assert res.unit == "q_nm^-1" and res.std is None and res.azimuthal is None
    np.testing.assert_array_equal(res.radial, q)
    np.testing.assert_array_equal(res.intensity, intensity)
    np.testing.assert_array_equal(res.sigma, err)
    radial, inten, sigma = res  # unpacks like pyFAI's Integrate1dResult
    assert inten is res.intensity and len(res) == 3 and res[2] is res.sigma
    assert len(integ.integrate1d(stack[0], error_model=None)) == 2
    integ.integrate_chi(stack[0], tmp_path / "a.chi")
    back = gpusaxs.read_chi(tmp_path / "a.chi")
    finite = np.isfinite(intensity)
    np.testing.assert_allclose(back.intensity[finite], res.intensity[finite], rtol=1e-7)
    np.testing.assert_allclose(
        res.sum_signal / res.sum_normalization, res.intensity, equal_nan=True
    )


def test_batch_equals_single_frames_with_options(small):
    integ, stack, rng = small
    dark = rng.uniform(0, 5, integ.shape)
    opts = dict(
        npt=120,
        unit="2th_deg",
        azimuth_range=(150.0, -150.0),
        correct_solid_angle=True,
        dark=dark,
        flat=rng.uniform(0.9, 1.1, integ.shape),
        polarization_factor=0.5,
        error_model="azimuthal",
        mask=rng.random(integ.shape) < 0.01,
    )
    factors = np.array([1.0, 2.0, 0.5, 4.0, 1.5])
    batch = integ.integrate1d_batch(stack, normalization_factor=factors, **opts)
    assert batch.intensity.shape == (5, 120) and batch.std.shape == (5, 120)
    for i in range(5):
        one = integ.integrate1d(stack[i], normalization_factor=factors[i], **opts)
        for name in ("intensity", "sigma", "std", "count"):
            np.testing.assert_allclose(
                getattr(batch, name)[i], getattr(one, name), rtol=1e-12, equal_nan=True
            )
    cake = integ.integrate2d_batch(stack[:2], 50, 12, unit="r_mm", error_model="poisson")
    assert cake.intensity.shape == (2, 12, 50) and cake.sigma.shape == (2, 12, 50)
    one = integ.integrate2d(stack[1], 50, 12, unit="r_mm", error_model="poisson")
    np.testing.assert_allclose(cake.intensity[1], one.intensity, rtol=1e-12, equal_nan=True)


def test_options_give_the_same_sums_on_every_engine(small):
    """The options live in the matrix: the engines need nothing new (dark aside).  The GPU
    engine runs here on its NumPy stand-in (xp=numpy), the code path of its sparse products."""
    from gpusaxs.gpu_engine import DeviceEngine

    integ, stack, rng = small
    for opts in (
        dict(
            npt=90,
            unit="q_A^-1",
            correct_solid_angle=True,
            polarization_factor=-0.3,
            flat=rng.uniform(0.5, 1.5, integ.shape),
            azimuth_range=(-30.0, 80.0),
        ),
        dict(npt=40, azimuth_npt=18, azimuth_range=(-180.0, 180.0), unit="2th_rad"),
    ):
        matrix, _ = integ.option_engine(**opts)
        fast = CpuEngine(matrix).sums(stack, errors=True)
        ref = ScipyEngine(matrix).sums(stack, errors=True)
        device = DeviceEngine(matrix, xp=np, batch_size=2).sums(stack, errors=True)
        for name in ("signal", "norm", "variance", "squares"):  # mean: an engine's option
            for other in (fast, device):
                np.testing.assert_allclose(
                    getattr(other, name), getattr(ref, name), rtol=1e-6, atol=1e-9
                )


def test_dark_follows_the_engine_contract(small):
    """The engine contract: validity on the raw value, signal of x - dark, variance of x."""
    integ, stack, rng = small
    dark = rng.uniform(0, 5, integ.shape)
    with_dark = integ.integrate1d(stack[2], dark=dark, error_model="azimuthal")
    shifted = integ.integrate1d(
        np.where(stack[2] >= 0, stack[2] - dark, -1.0), error_model="azimuthal"
    )
    np.testing.assert_allclose(with_dark.intensity, shifted.intensity, rtol=1e-7, equal_nan=True)
    full = with_dark.count > 1  # the spread of a sliver of a pixel is all cancellation
    np.testing.assert_allclose(with_dark.std[full], shifted.std[full], rtol=1e-5, atol=1e-2)
    poisson = integ.integrate1d(stack[2], dark=dark)
    np.testing.assert_allclose(
        poisson.sigma, integ.integrate1d(stack[2]).sigma, rtol=1e-7, equal_nan=True
    )


def test_normalization_factor_and_flat_scale_the_curve(small):
    integ, stack, _ = small
    base = integ.integrate1d(stack[0], npt=100)
    half = integ.integrate1d(stack[0], npt=100, normalization_factor=2.0)
    np.testing.assert_allclose(half.intensity, base.intensity / 2, rtol=1e-12)
    np.testing.assert_allclose(half.sigma, base.sigma / 2, rtol=1e-12)
    flat = integ.integrate1d(stack[0], npt=100, flat=np.full(integ.shape, 4.0))
    np.testing.assert_allclose(flat.intensity, base.intensity / 4, rtol=1e-6)
    holes = np.ones(integ.shape)
    holes[:, :20] = 0.0  # a flat of 0: the pixel is dropped
    dropped = integ.integrate1d(stack[0], npt=100, flat=holes)
    masked = integ.integrate1d(stack[0], npt=100, mask=holes == 0)
    np.testing.assert_array_equal(dropped.count, masked.count)


def test_sectors_split_the_circle(small):
    """Four quarter sectors (one through +-180) together hold every pixel's weight once."""
    integ, stack, _ = small
    full = integ.integrate1d(stack[0], npt=60, unit="r_mm")
    parts = [
        integ.integrate1d(stack[0], npt=60, unit="r_mm", azimuth_range=r)
        for r in ((-45.0, 45.0), (45.0, 135.0), (135.0, -135.0), (-135.0, -45.0))
    ]
    np.testing.assert_allclose(sum(p.count for p in parts), full.count, rtol=1e-6)
    np.testing.assert_allclose(
        np.nansum([p.sum_signal for p in parts], axis=0), full.sum_signal, rtol=1e-7
    )
    cake = integ.integrate2d(stack[0], 60, 4, unit="r_mm", azimuth_range=(-45.0, 315.0))
    np.testing.assert_allclose(cake.count, np.array([p.count for p in parts]), rtol=1e-6)


def test_matrix_key_keeps_old_keys_and_separates_options(small):
    integ, _, _ = small
    cal = integ.calibration
    assert matrix_cache.matrix_key(cal) == matrix_cache.matrix_key(cal, options={})
    assert matrix_cache.matrix_key(cal) == matrix_cache.matrix_key(cal, options={"unit": "q_nm^-1"})
    keys = {
        matrix_cache.matrix_key(cal, options=o)
        for o in (
            None,
            {"unit": "2th_deg"},
            {"azimuth_range": (0, 90)},
            {"azimuth_range": (0, 91)},
            {"azimuth_edges": np.linspace(-180, 180, 5)},
        )
    }
    assert len(keys) == 5


def test_option_matrices_round_trip_through_the_disk_cache(small, tmp_path):
    integ, _, _ = small
    edges = np.linspace(0, 40, 31)
    built = matrix_cache.get_matrix(
        integ.calibration,
        q_edges=edges,
        cache_dir=tmp_path,
        options={"unit": "2th_deg", "azimuth_edges": np.linspace(-90, 90, 7)},
    )
    loaded = matrix_cache.load_matrix(next(tmp_path.glob("matrix-*.gsm")))
    assert loaded.radial_unit == "2th_deg" and loaded.n_bins == 30 * 6
    np.testing.assert_array_equal(loaded.azimuth_edges, built.azimuth_edges)
    np.testing.assert_array_equal(loaded.weights, built.weights)


@pytest.mark.parametrize(
    "bad, match",
    [
        (dict(unit="q_parsec"), "unknown radial unit"),
        (dict(error_model="gauss"), "error_model"),
        (dict(radial_range=(2.0, 1.0)), "radial_range"),
        (dict(azimuth_range=(10.0, 10.0)), "azimuth_range"),
        (dict(polarization_factor=1.5), "polarization_factor"),
        (dict(normalization_factor=0.0), "normalization_factor"),
        (dict(dark=np.zeros((3, 3))), "dark of shape"),
    ],
)
def test_bad_options_are_clear_errors(small, bad, match):
    integ, stack, _ = small
    with pytest.raises(ValueError, match=match):
        integ.integrate1d(stack[0], **bad)


def test_option_builder_with_a_full_circle_is_the_saxsdog_builder(small):
    """The general builder (any unit, sectors, cakes), asked for SAXSdog's bins over the full
    circle, gives the original builder's matrix entry for entry."""
    from gpusaxs.matrix import build_matrix

    integ, _, _ = small
    legacy = build_matrix(integ.calibration)
    general = build_matrix(integ.calibration, azimuth_range=(-180.0, 180.0))
    for field in ("q_edges", "pixel_ptr", "bins", "weights", "pixel_scale", "norm"):
        np.testing.assert_array_equal(getattr(general, field), getattr(legacy, field))


def test_the_option_set_is_one_value_recorded_in_the_result(small):
    """IntegrationOptions (issue 24): equal options built from equal arguments (arrays by
    content, not identity) are one cache entry; the result records them; as_dict is JSON."""
    import json

    from gpusaxs.integration_options import IntegrationOptions

    integ, stack, rng = small
    dark = rng.uniform(0, 3, integ.shape)
    res = integ.integrate1d(stack[0], npt=80, unit="2th_deg", dark=dark, azimuth_range=(-90, 90))
    expected = IntegrationOptions.make(
        npt=80, unit="2th_deg", dark=dark.copy(), azimuth_range=[-90.0, 90.0]
    )
    assert res.options == expected and hash(res.options) == hash(expected)
    assert res.options != IntegrationOptions.make(npt=80, unit="2th_deg", dark=dark + 1)
    first = integ.option_engine(npt=80, unit="2th_deg", dark=dark, azimuth_range=(-90, 90))
    again = integ.option_engine(npt=80, unit="2th_deg", dark=dark.copy(), azimuth_range=[-90, 90])
    assert first[0] is again[0] and first[1] is again[1]  # one build for one option set
    record = json.loads(json.dumps(res.options.as_dict()))
    assert record["npt"] == 80 and record["unit"] == "2th_deg"
    assert record["azimuth_range"] == [-90.0, 90.0] and len(record["dark"]["sha256"]) == 64
    with pytest.raises(ValueError):
        dark_view = res.options.dark.array
        dark_view[0, 0] = 1.0  # the recorded dark is read-only
