"""Every NeXus file the project writes validates against its application definition (issue 22.5).

The validator is nexusformat's ``nxvalidate`` (a peer the project did not write), run as a
process on the files as users get them: the API writer (1D, 2D, atomic and live, with and
without a calibration, every radial unit) and ``saxsdog --format nexus``. The stream writer's
files are checked in tests/test_stream_e2e.py with the same helper.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tifffile
from helpers import flat_calibration, nxvalidate

pytest.importorskip("nexusformat")

from gpusaxs import Calibration, Integrator
from gpusaxs.io.nexus import RADIAL_UNITS, NXazintWriter

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def cal():
    d = flat_calibration(Imagesize=[150, 120], BeamCenter=[75.0, 60.0], MaskFile=None)
    return Calibration.from_dict(d)


def _write(path, n_rad=50, azim=None, **kw):
    radial = np.linspace(0.1, 3.0, n_rad)
    shape = (3, n_rad) if azim is None else (3, azim.size, n_rad)
    rows = np.random.default_rng(0).random(shape)
    with NXazintWriter(path, radial, azimuthal=azim, **kw) as w:
        w.append(rows, rows / 10, np.arange(3), ["a::0", "a::1", "a::2"])
    return path


def test_validator_catches_a_missing_required_group(tmp_path, cal):
    """The check can fail: a file without the NXsource group NXazint1d requires is an error."""
    import h5py

    path = _write(tmp_path / "c.nxs", calibration=cal)
    with h5py.File(path, "a") as f:
        del f["entry/instrument/source"]
    errors, warnings, text = nxvalidate(path)
    assert errors >= 1, text
    assert "NXsource" in text


@pytest.mark.parametrize("unit", sorted(RADIAL_UNITS))
def test_api_writer_1d_every_unit_valid(tmp_path, cal, unit):
    path = _write(tmp_path / "c.nxs", calibration=cal, radial_unit=unit)
    assert nxvalidate(path)[:2] == (0, 0), nxvalidate(path)[2]


def test_api_writer_without_calibration_valid(tmp_path):
    path = _write(tmp_path / "c.nxs")
    assert nxvalidate(path)[:2] == (0, 0), nxvalidate(path)[2]
    path = _write(tmp_path / "w.nxs", wavelength_A=1.0, source_name="ELETTRA")
    assert nxvalidate(path)[:2] == (0, 0), nxvalidate(path)[2]


def test_api_writer_2d_cakes_valid(tmp_path, cal):
    stack = np.random.default_rng(4).poisson(40, size=(3, 150, 120)).astype(np.int32)
    res = Integrator(cal, backend="numpy").integrate2d_batch(stack, 40, npt_azim=12)
    path = tmp_path / "cakes.nxs"
    with NXazintWriter(
        path, res.radial, radial_unit=res.unit, azimuthal=res.azimuthal, calibration=cal
    ) as w:
        w.append(res.intensity, res.sigma, np.arange(3))
    assert nxvalidate(path)[:2] == (0, 0), nxvalidate(path)[2]
    path = _write(tmp_path / "nocal2d.nxs", azim=np.arange(8.0))
    assert nxvalidate(path)[:2] == (0, 0), nxvalidate(path)[2]


def test_live_writer_valid(tmp_path, cal):
    path = _write(tmp_path / "live.nxs", calibration=cal, live=True)
    assert nxvalidate(path)[:2] == (0, 0), nxvalidate(path)[2]


def test_saxsdog_format_nexus_valid(tmp_path):
    """As a user runs it: saxsdog --format nexus on a folder, into an output folder that does
    not exist yet, with a space in its name."""
    cal = flat_calibration(Imagesize=[150, 120], BeamCenter=[75.0, 60.0], MaskFile=None)
    (tmp_path / "cal.json").write_text(json.dumps(cal))
    data = tmp_path / "run 1"
    data.mkdir()
    rng = np.random.default_rng(1)
    for k in range(3):
        tifffile.imwrite(data / f"f_{k}.tif", rng.poisson(50, (150, 120)).astype(np.int32))
    env = dict(os.environ, PYTHONPATH=str(ROOT), GPUSAXS_BACKEND="numpy")
    r = subprocess.run(
        [sys.executable, "-m", "gpusaxs.clients.saxsdog", "-c", "cal.json"]
        + ["--format", "nexus", "-o", "new out", str(data)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )
    assert r.returncode == 0, r.stderr
    files = sorted((tmp_path / "new out").rglob("*.nxs"))
    assert files, r.stderr
    for f in files:
        assert nxvalidate(f)[:2] == (0, 0), nxvalidate(f)[2]
