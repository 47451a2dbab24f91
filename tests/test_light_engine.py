"""The start-up-free NumPy engine used by saxsdog for small jobs: same sums as the reference."""

import numpy as np
import pytest

from gpusaxs.calibration_model import Calibration
from gpusaxs.cpu_fallback.engine import ScipyEngine
from gpusaxs.cpu_fallback.light import BincountEngine
from gpusaxs.matrix_cache import get_matrix


def _check(matrix, stack):
    ours, ref = BincountEngine(matrix), ScipyEngine(matrix)
    for errors in (False, "poisson", True):
        a, b = ours.sums(stack, errors=errors), ref.sums(stack, errors=errors)
        for name in ("signal", "norm", "variance", "squares"):
            x, y = getattr(a, name), getattr(b, name)
            assert (x is None) == (y is None), (errors, name)
            if x is not None:
                assert x.shape == (len(stack), matrix.n_bins)
                np.testing.assert_allclose(x, y, rtol=1e-12, atol=1e-9, err_msg=name)


def test_reference_frame_matches_scipy_engine(reference_dir):
    from gpusaxs.io.images import read_image

    cal = Calibration.from_file(reference_dir / "buf1_00000.calibration.json").replace(
        polarization=(0.95, 0.0)
    )
    matrix = get_matrix(cal, cache_dir=False)
    img = read_image(reference_dir / "buf1_00000.tif")
    assert (img < 0).any()  # gaps and bad pixels carry no weight
    _check(matrix, np.stack([img, img[::-1, ::-1].copy()]))


@pytest.mark.parametrize("dtype", [np.uint16, np.float32, np.int32])
def test_invalid_pixels_and_dtypes(dtype):
    cal = Calibration(
        beam_center=(30.0, 20.0),
        distance_mm=300.0,
        imagesize=(60, 50),
        pixel_size_um=(172.0, 172.0),
        wavelength_A=1.0,
        oversampling=3,
        polarization=(0.9, 10.0),
        tilt_angle_deg=3.0,
        tilt_rot_deg=40.0,
    )
    matrix = get_matrix(cal, cache_dir=False)
    rng = np.random.default_rng(3)
    stack = rng.poisson(50, size=(3, 60, 50)).astype(dtype)
    if dtype == np.uint16:
        stack[:, 5, :] = np.iinfo(np.uint16).max  # EIGER's gap flag
    elif dtype == np.float32:
        stack[0, 7, 7] = np.nan
        stack[1, 8, 8] = np.inf
        stack[2, 9, 9] = -1
    else:
        stack[:, :, 3] = -1
    _check(matrix, stack)
    single = BincountEngine(matrix).sums(stack[0], errors=False)
    assert single.signal.shape == (1, matrix.n_bins)
