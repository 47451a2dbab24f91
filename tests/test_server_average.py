"""saxsdogserver --average (issue 27): the server writes sigma-clipped curves, run as users
run it (saxsdogserver and saxsleash processes), with the parameters in each curve's title and a
curve key of their own."""

import numpy as np
import pytest
import tifffile
from net_support import (
    SECRET,
    frame,
    free_port,
    leash,
    start_server,
    wait_for,
    write_config,
    write_setup,
)

import gpusaxs
from gpusaxs.io.chi import read_chi, read_chi_key
from gpusaxs.io.masks import read_mask
from gpusaxs.matrix_cache import matrix_key
from gpusaxs.robust_curves import average_key
from gpusaxs.server import protocol as P


def test_server_writes_sigma_clipped_curves(tmp_path):
    base = tmp_path / "base"
    (base / "run").mkdir(parents=True)
    cal_file, msk = write_setup(tmp_path / "setup")
    cfg = write_config(tmp_path / "net.json", free_port(), free_port())
    rng = np.random.default_rng(7)
    frames = []
    for i in range(3):
        img = np.roll(frame(0), i, axis=1)
        hot = rng.choice(img.size, img.size // 100, replace=False)  # zingers on 1 %
        img.flat[hot] = np.where(img.flat[hot] >= 0, img.flat[hot] + 2000, img.flat[hot])
        tifffile.imwrite(base / "run" / f"img_{i:05d}.tif", img)
        frames.append(img)
    srv = start_server(
        tmp_path,
        base,
        cfg,
        ["-f", "none", "--settle", "0", "--average", "sigma-clip", "--clip-thres", "3"],
    )
    try:
        url = srv.info["url"]
        rc, _, err = leash(cfg, url, "new", cal_file, msk, "run")
        assert rc == 0, err
        rc, _, err = leash(cfg, url, "readdir")
        assert rc == 0, err
        with P.Client(url, SECRET, timeout=10) as client:

            def done():
                d = client.request("stat", {})["data"]
                return d if d["stat"]["images processed"] >= 3 else None

            assert wait_for(done, 120, interval=0.1)
    finally:
        assert srv.stop() == 0
    cal = gpusaxs.Calibration.from_file(cal_file)
    mask = read_mask(msk, shape=cal.imagesize)
    integ = gpusaxs.Integrator(cal, backend="numpy", mask=mask)
    clipped = integ.sigma_clip_batch(np.stack(frames), thres=3.0, max_iter=5)
    mean = integ.integrate_batch(np.stack(frames))
    params = {"average": "sigma_clip", "thres": 3.0, "max_iter": 5, "error_model": "poisson"}
    for i in range(3):
        path = base / "run" / "work" / f"img_{i:05d}.chi"  # the default curve folder
        curve = read_chi(path)
        title = path.read_text().splitlines()[0]
        assert "average=sigma_clip" in title and "thres=3.0" in title
        mean_key = matrix_key(cal.replace(mask_file=None), mask=mask)  # as the server keys it
        assert read_chi_key(path) == average_key(mean_key, params) != mean_key
        np.testing.assert_allclose(curve.q, integ.q, rtol=1e-6)
        np.testing.assert_allclose(curve.intensity, clipped.intensity[i], rtol=1e-5, equal_nan=True)
        off = np.nanmedian(np.abs(mean[i] / clipped.intensity[i] - 1))
        assert off > 0.05  # the zingers move the mean: the clipped curve is what was written


def test_bad_average_option_is_refused_at_start(tmp_path):
    import subprocess
    import sys

    cfg = write_config(tmp_path / "net.json", free_port(), free_port())
    r = subprocess.run(
        [sys.executable, "-m", "gpusaxs.server.saxsdogserver", "--config", str(cfg)]
        + ["--average", "median", "--percentile", "120", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 2 and "--percentile" in r.stderr
    assert "Traceback" not in r.stderr


pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")
