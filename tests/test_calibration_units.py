"""Measured values in the wrong unit are refused; an inverted mask is flagged; the schema
validation markers cannot be planted (issues 22.7 and 23.12)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from helpers import flat_calibration

from gpusaxs.calibration_file import _validated_digest, validate_dict
from gpusaxs.calibration_model import Calibration
from gpusaxs.errors import CalibrationError
from gpusaxs.io.masks import write_fit2d_mask

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize(
    "field, value, json_path, cause",
    [
        ("Wavelength", 1.54e-10, "#/Wavelength", "looks like metres"),  # a PONI's value
        ("DedectorDistanceMM", 1.03, "#/DedectorDistanceMM", "looks like metres"),
        ("PixelSizeMicroM", [0.000172], "#/PixelSizeMicroM/0", "looks like metres"),
        ("PixelSizeMicroM", [172.0, 0.172], "#/PixelSizeMicroM/1", "looks like millimetres"),
        ("Wavelength", 1000.0, "#/Wavelength", "angstrom"),
    ],
)
def test_values_in_the_wrong_unit_are_refused(tmp_path, field, value, json_path, cause):
    d = flat_calibration(**{field: value})
    with pytest.raises(CalibrationError) as exc:
        validate_dict(d, "cal.json")
    msg = str(exc.value)
    assert msg.startswith(f"cal.json: {json_path}: ") and cause in msg, msg


def test_wrong_unit_refused_through_the_command_line(tmp_path):
    """As a user meets it: saxsdog exits with the field, the unit and the cause, no curve."""
    (tmp_path / "cal.json").write_text(json.dumps(flat_calibration(Wavelength=1.54e-10)))
    (tmp_path / "data").mkdir()
    env = dict(os.environ, PYTHONPATH=str(ROOT), GPUSAXS_BACKEND="numpy")
    r = subprocess.run(
        [sys.executable, "-m", "gpusaxs.clients.saxsdog", "-c", "cal.json", "data"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )
    assert r.returncode != 0
    assert "#/Wavelength" in r.stderr and "looks like metres" in r.stderr, r.stderr


def test_plausible_values_pass():
    for changes in (
        {"Wavelength": 0.154, "DedectorDistanceMM": 60.0},  # WAXS, hard X-rays
        {"Wavelength": 12.0, "DedectorDistanceMM": 30000.0, "PixelSizeMicroM": [75.0]},
    ):
        validate_dict(flat_calibration(**changes), "cal.json")


def test_pyfai_poni_in_metres_gives_millimetres(tmp_path):
    """The PONI route converts metres itself: the same values there are fine."""
    poni = tmp_path / "g.poni"
    poni.write_text(
        "poni_version: 2\nDetector: Detector\n"
        'Detector_config: {"pixel1": 0.000172, "pixel2": 0.000172, "max_shape": [100, 80]}\n'
        "Distance: 1.03\nPoni1: 0.01\nPoni2: 0.01\nRot1: 0\nRot2: 0\nRot3: 0\n"
        "Wavelength: 1.54e-10\n"
    )
    d = flat_calibration(Imagesize=[100, 80])
    d.pop("DedectorDistanceMM")
    d.pop("BeamCenter")
    d.pop("PixelSizeMicroM")
    d["Geometry"] = "g.poni"
    (tmp_path / "cal.json").write_text(json.dumps(d))
    cal = Calibration.from_file(tmp_path / "cal.json")
    assert cal.distance_mm == pytest.approx(1030.0) and cal.wavelength_A == pytest.approx(1.54)


def test_mask_hiding_almost_everything_warns(tmp_path):
    shape = (60, 50)
    inverted = np.ones(shape, bool)
    inverted[:5, :5] = False  # the convention flipped: 99 % hidden
    write_fit2d_mask(tmp_path / "m.msk", inverted)
    d = flat_calibration(Imagesize=list(shape), MaskFile="m.msk")
    cal = Calibration.from_dict(d, base_dir=tmp_path)
    with pytest.warns(UserWarning, match=r"hides 99\.2 % of the pixels; is its convention"):
        cal.load_mask()
    normal = np.zeros(shape, bool)
    normal[:, :10] = True
    write_fit2d_mask(tmp_path / "n.msk", normal)
    cal = Calibration.from_dict(flat_calibration(Imagesize=list(shape), MaskFile="n.msk"), tmp_path)
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert cal.load_mask().sum() == 600


def test_planted_validation_marker_does_not_skip_validation(tmp_path, monkeypatch):
    """Someone who can write the cache folder plants the marker of an invalid document: the
    schema still runs (markers are HMACs under a private key), and the error is raised."""
    from gpusaxs import calibration_file as cmod

    bad = flat_calibration(Oversampling=0)  # schema: minimum 1
    digest = _validated_digest(bad, "flat")
    cache = Path(os.environ["GPUSAXS_CACHE_DIR"])
    marker = cache / "validated" / digest[:40]
    marker.parent.mkdir(parents=True, exist_ok=True)
    marker.write_text("")  # what an empty marker meant before
    monkeypatch.setattr(cmod, "_VALID", set())
    with pytest.raises(CalibrationError, match="Oversampling"):
        validate_dict(bad, "cal.json")
    marker.write_text("0" * 64)  # a forged signature
    with pytest.raises(CalibrationError, match="Oversampling"):
        validate_dict(bad, "cal.json")
    # a genuine marker is honoured: a valid document is not validated again
    good = flat_calibration()
    validate_dict(good, "cal.json")
    monkeypatch.setattr(cmod, "_VALID", set())
    assert cmod._known_valid(_validated_digest(good, "flat"))
    key = cache / "validated" / ".key"
    assert key.stat().st_mode & 0o777 == 0o600
    key.chmod(0o644)  # a key others can read is not trusted
    monkeypatch.setattr(cmod, "_VALID", set())
    assert not cmod._known_valid(_validated_digest(good, "flat"))
