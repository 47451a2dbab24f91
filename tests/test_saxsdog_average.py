"""saxsdog --average sigma-clip / median (issue 27): the curves against pyFAI's medfilt1d_ng
on the calibration's bins, the parameters recorded in the .chi title and the NeXus file, and
a key of their own (resume redoes a curve of another average)."""

import json

import numpy as np
import pytest
import tifffile
from helpers import pyfai_integrator, run_saxsdog

import gpusaxs
from gpusaxs.io.chi import read_chi
from gpusaxs.io.nexus import read_nxazint

pytest.importorskip("pyFAI")
h5py = pytest.importorskip("h5py")


@pytest.fixture(scope="module")
def folder(reference_dir, tmp_path_factory):
    """(tmp folder, calibration file, frame with zingers) with the frame as images/f1.tif."""
    tmp = tmp_path_factory.mktemp("average")
    d = json.loads((reference_dir / "buf1_00000.calibration.json").read_text())
    d["MaskFile"] = str(reference_dir / "AAA_integ.msk")
    cal_file = tmp / "cal.json"
    cal_file.write_text(json.dumps(d))
    image = gpusaxs.read_image(reference_dir / "buf1_00000.tif")
    rng = np.random.default_rng(3)
    idx = rng.choice(image.size, image.size // 100, replace=False)
    idx = idx[image.flat[idx] >= 0]
    image.flat[idx] += rng.integers(100, 1000, idx.size).astype(image.dtype)
    (tmp / "images").mkdir()
    tifffile.imwrite(tmp / "images" / "f1.tif", image.astype(np.int32))
    return tmp, cal_file, image


def test_median_curve_matches_medfilt1d_ng_and_records_its_parameters(folder):
    tmp, cal_file, image = folder
    out = tmp / "median"
    args = ["-c", cal_file, "-o", out, "--format", "chi+nexus", "--average", "median"]
    r = run_saxsdog([*args, "--percentile", "10,90", tmp / "images"], cwd=tmp)
    assert r.returncode == 0, r.stderr
    curve = read_chi(out / "f1.chi")
    title = (out / "f1.chi").read_text().splitlines()[0]
    assert "average=medfilt1d" in title and "percentile=[10.0,90.0]" in title

    cal = gpusaxs.Calibration.from_file(cal_file)
    integ = gpusaxs.Integrator(cal, backend="numpy")
    edges = integ.q_edges
    theirs = pyfai_integrator(cal).medfilt1d_ng(
        image,
        len(edges) - 1,
        unit="q_nm^-1",
        radial_range=(edges[0], edges[-1]),
        mask=cal.load_mask() | (image < 0),
        correctSolidAngle=False,
        method=("full", "csr", "cython"),
        percentile=(10, 90),
    )
    ours = np.asarray(curve.intensity)
    both = np.isfinite(ours) & (ours > 0) & np.isfinite(theirs.intensity) & (theirs.intensity > 0)
    assert both.sum() > 500
    rel = np.abs(ours[both] / theirs.intensity[both] - 1)
    assert np.median(rel) < 0.01
    mean = integ.integrate(image)[1]
    assert np.median(np.abs(mean[both] / theirs.intensity[both] - 1)) > 0.03

    nxs = next(out.glob("*.nxs"))
    with h5py.File(nxs, "r") as fh:
        inp = fh["entry/reduction/input"]
        assert inp["option_average"][()].decode() == '"medfilt1d"'
        assert json.loads(json.loads(inp["option_percentile"][()].decode())) == [10.0, 90.0]
    np.testing.assert_allclose(read_nxazint(nxs)["intensity"][0], ours, rtol=1e-6)


def test_sigma_clip_curve_key_and_resume(folder):
    tmp, cal_file, image = folder
    out = tmp / "clip"
    base = ["-c", cal_file, "-o", out]
    r = run_saxsdog([*base, "--average", "sigma-clip", "--clip-thres", "4", tmp / "images"], tmp)
    assert r.returncode == 0, r.stderr
    clipped = read_chi(out / "f1.chi")
    title = (out / "f1.chi").read_text().splitlines()[0]
    assert "average=sigma_clip thres=4.0 max_iter=5 error_model=poisson" in title
    integ = gpusaxs.Integrator(gpusaxs.Calibration.from_file(cal_file), backend="numpy")
    assert clipped.calibration_key != integ.matrix_key  # a key of its own
    library = integ.sigma_clip(image, thres=4.0)
    np.testing.assert_allclose(clipped.intensity, library.intensity, rtol=1e-6, equal_nan=True)
    # -r with the mean: the clipped curve is of another average, so it is made again
    r = run_saxsdog([*base, "-r", tmp / "images"], tmp)
    assert r.returncode == 0, r.stderr
    mean = read_chi(out / "f1.chi")
    assert mean.calibration_key == integ.matrix_key
    np.testing.assert_allclose(mean.intensity, integ.integrate(image)[1], rtol=1e-6)


def test_bad_percentile_is_a_usage_error(folder):
    tmp, cal_file, _ = folder
    r = run_saxsdog(["-c", cal_file, "--average", "median", "--percentile", "5,120", tmp], tmp)
    assert r.returncode == 2 and "percentile" in r.stderr
