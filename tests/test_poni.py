"""PONI geometry in: .poni files (versions 1, 2, 2.1, 3; every orientation) against pyFAI's own
geometry, PONI references in JSON calibrations, and errors for files of the wrong kind."""

import json
import logging
import warnings

import numpy as np
import pytest

from gpusaxs import Calibration, CalibrationError, Integrator
from gpusaxs.geometry import two_theta
from gpusaxs.io.masks import write_fit2d_mask
from gpusaxs.poni import PONI_DEFAULTS, read_poni

pyFAI = pytest.importorskip("pyFAI")
logging.getLogger("pyFAI").setLevel(logging.ERROR)
warnings.filterwarnings("ignore", module="pyFAI")
from pyFAI.detectors import Detector  # noqa: E402
from pyFAI.integrator.azimuthal import AzimuthalIntegrator  # noqa: E402

GEOMETRIES = [  # dist, poni1, poni2 (m), rot1, rot2, rot3 (rad)
    (1.031, 0.0412, 0.0667, 0.0, 0.0, 0.0),
    (0.35, 0.09, 0.02, 0.05, -0.08, 0.0),
    (0.8, 0.10, 0.12, -0.02, 0.03, 0.7),  # with a twist about the beam
    (0.2, -0.01, 0.15, 0.3, 0.2, -1.2),  # strongly tilted, PONI off the detector
]


def _tth(ai):
    """pyFAI's 2theta of every pixel centre in double precision (``twoThetaArray`` is float32)."""
    h, w = ai.detector.shape
    d1, d2 = np.meshgrid(
        np.arange(h, dtype=np.float64), np.arange(w, dtype=np.float64), indexing="ij"
    )
    return ai.tth(d1, d2)


def _ai(geometry, orientation, shape=(1043, 981), pixel=(172e-6, 172e-6), wavelength=1.54e-10):
    det = Detector(pixel1=pixel[0], pixel2=pixel[1], max_shape=shape, orientation=orientation)
    dist, p1, p2, r1, r2, r3 = geometry
    return AzimuthalIntegrator(
        dist=dist,
        poni1=p1,
        poni2=p2,
        rot1=r1,
        rot2=r2,
        rot3=r3,
        detector=det,
        wavelength=wavelength,
    )


@pytest.mark.parametrize("orientation", [1, 2, 3, 4])
@pytest.mark.parametrize("geometry", GEOMETRIES)
def test_two_theta_equals_pyfai_for_every_orientation(tmp_path, orientation, geometry):
    ai = _ai(geometry, orientation)
    path = tmp_path / "g.poni"
    ai.write(str(path))
    assert read_poni(path)["orientation"] == orientation
    cal = Calibration.from_file(path)
    assert cal.imagesize == (1043, 981)
    assert cal.pixel_size_um == pytest.approx((172.0, 172.0), rel=1e-12)
    assert cal.wavelength_A == pytest.approx(1.54, rel=1e-12)
    ours = two_theta(cal)
    ref = _tth(ai)
    assert ours.shape == ref.shape
    assert np.abs(ours - ref).max() < 1e-9
    assert np.abs(ours - ai.twoThetaArray()).max() < 1e-7  # pyFAI's float32 map


def test_rectangular_pixels_and_odd_shape(tmp_path):
    for orientation in (1, 2, 3, 4):
        ai = _ai(
            (0.5, 0.03, 0.01, 0.01, -0.02, 0.1),
            orientation,
            shape=(517, 1030),
            pixel=(75e-6, 55e-6),
        )
        ai.write(str(tmp_path / "g.poni"))
        cal = Calibration.from_file(tmp_path / "g.poni")
        assert cal.imagesize == (517, 1030)
        assert cal.pixel_size_um == pytest.approx((75.0, 55.0))
        assert np.abs(two_theta(cal) - _tth(ai)).max() < 1e-9


def test_named_detector_and_version_1(tmp_path):
    """A v1 file (PixelSize lines, a detector name) and a v2 file naming a pyFAI detector."""
    ai = AzimuthalIntegrator(
        dist=0.9,
        poni1=0.08,
        poni2=0.07,
        rot1=0.01,
        rot2=0.02,
        detector="Pilatus1M",
        wavelength=1.0e-10,
    )
    (tmp_path / "named.poni").write_text(
        "poni_version: 2\nDetector: Pilatus1M\nDetector_config: {}\nDistance: 0.9\n"
        "Poni1: 0.08\nPoni2: 0.07\nRot1: 0.01\nRot2: 0.02\nRot3: 0.0\nWavelength: 1e-10\n"
    )
    (tmp_path / "v1.poni").write_text(
        "# Calibration done with an old pyFAI\nPixelSize1: 0.000172\nPixelSize2: 0.000172\n"
        "Distance: 0.9\nPoni1: 0.08\nPoni2: 0.07\nRot1: 0.01\nRot2: 0.02\nRot3: 0.0\n"
        "Wavelength: 1e-10\n"
    )
    ref = _tth(ai)
    cal = Calibration.from_file(tmp_path / "named.poni")
    assert np.abs(two_theta(cal) - ref).max() < 1e-9
    # v1 with bare pixel sizes has no image shape: an error naming it, or a JSON giving it
    with pytest.raises(CalibrationError, match="v1.poni.*no image shape"):
        Calibration.from_file(tmp_path / "v1.poni")
    (tmp_path / "v1.json").write_text(json.dumps({"Geometry": "v1.poni", "Imagesize": [1043, 981]}))
    cal1 = Calibration.from_file(tmp_path / "v1.json")
    assert np.abs(two_theta(cal1) - ref).max() < 1e-9


def test_version_3_parallax(tmp_path):
    ai = _ai(GEOMETRIES[1], 3)
    ai.write(str(tmp_path / "g.poni"))
    text = (tmp_path / "g.poni").read_text()
    if "Parallax" not in text:  # an older pyFAI writes 2.1
        text = text.replace("poni_version: 2.1", "poni_version: 3") + "Parallax: False\n"
    (tmp_path / "v3.poni").write_text(text)
    cal = Calibration.from_file(tmp_path / "v3.poni")
    assert np.abs(two_theta(cal) - _tth(ai)).max() < 1e-9
    (tmp_path / "p.poni").write_text(text.replace("Parallax: False", "Parallax: True"))
    with pytest.raises(CalibrationError, match="Parallax"):
        Calibration.from_file(tmp_path / "p.poni")


def test_poni_defaults_and_integrator(tmp_path):
    ai = _ai((0.1, 0.02, 0.015, 0.01, -0.02, 0.0), 2, shape=(300, 200))
    ai.write(str(tmp_path / "g.poni"))
    cal = Calibration.from_file(tmp_path / "g.poni")
    assert cal.mask_file is None and cal.polarization is None
    assert cal.oversampling == PONI_DEFAULTS["Oversampling"]
    assert cal.pixel_per_radial_element == PONI_DEFAULTS["PixelPerRadialElement"]
    assert cal.source == str(tmp_path / "g.poni")
    integ = Integrator(str(tmp_path / "g.poni"), backend="numpy")
    frame = np.random.default_rng(0).poisson(50, size=(300, 200)).astype(np.int32)
    q, I = integ.integrate(frame)
    q2, I2 = Integrator(cal, backend="numpy").integrate(frame)
    np.testing.assert_array_equal(I, I2)
    assert np.nanmean(I) == pytest.approx(50, rel=0.02)


def test_json_with_a_poni_geometry(tmp_path):
    ai = _ai(GEOMETRIES[2], 3)
    (tmp_path / "geo").mkdir()
    ai.write(str(tmp_path / "geo" / "det.poni"))
    mask = np.zeros((1043, 981), dtype=bool)
    mask[:10] = True
    write_fit2d_mask(tmp_path / "m.msk", mask)
    (tmp_path / "cal.json").write_text(
        json.dumps(
            {
                "Geometry": "geo/det.poni",
                "MaskFile": "m.msk",
                "Oversampling": 2,
                "PolarizationCorrection": {"Fraction": 0.9, "Angle": 0},
                "Title": "with poni",
            }
        )
    )
    cal = Calibration.from_file(tmp_path / "cal.json")
    assert cal.mask_file == str(tmp_path / "m.msk")
    assert cal.oversampling == 2 and cal.polarization == (0.9, 0.0)
    assert cal.pixel_per_radial_element == 1 and cal.title == "with poni"
    assert np.abs(two_theta(cal) - _tth(ai)).max() < 1e-9
    assert cal.load_mask()[:10].all()
    # the nested form: one calibration per mask
    (tmp_path / "nested.json").write_text(
        json.dumps(
            {
                "Geometry": "geo/det.poni",
                "Wavelength": 1.0,
                "Masks": [{"MaskFile": "m.msk"}, {"MaskFile": None, "PixelPerRadialElement": 2}],
            }
        )
    )
    cals = Calibration.all_from_file(tmp_path / "nested.json")
    assert [c.mask_file for c in cals] == [str(tmp_path / "m.msk"), None]
    assert [c.pixel_per_radial_element for c in cals] == [1, 2]
    assert all(c.wavelength_A == 1.0 for c in cals)  # the JSON's value wins
    # a missing PONI is named
    (tmp_path / "bad.json").write_text(json.dumps({"Geometry": "nope.poni"}))
    with pytest.raises(
        CalibrationError, match="bad.json: #/Geometry: Geometry 'nope.poni'.*not found"
    ):
        Calibration.from_file(tmp_path / "bad.json")
    # from_dict (e.g. a network request) never reads files named in the dict
    with pytest.raises(CalibrationError, match="#/Geometry"):
        Calibration.from_dict({"Geometry": str(tmp_path / "geo" / "det.poni")})


def test_poni_without_wavelength(tmp_path):
    (tmp_path / "nowl.poni").write_text(
        'poni_version: 2\nDetector: Detector\nDetector_config: {"pixel1": 1e-4, "pixel2": 1e-4, '
        '"max_shape": [100, 200]}\nDistance: 0.1\nPoni1: 0.005\nPoni2: 0.01\nRot1: 0\nRot2: 0\n'
        "Rot3: 0\n"
    )
    with pytest.raises(
        CalibrationError, match="nowl.poni: #/Wavelength: the PONI file has no Wavelength"
    ):
        Calibration.from_file(tmp_path / "nowl.poni")
    (tmp_path / "c.json").write_text(json.dumps({"Geometry": "nowl.poni", "Wavelength": 1.2}))
    cal = Calibration.from_file(tmp_path / "c.json")
    assert cal.wavelength_A == 1.2 and cal.imagesize == (100, 200)
    assert cal.beam_center == pytest.approx((50.0, 100.0))


@pytest.mark.parametrize("kind", ["tiff", "hdf5", "text", "jsonlist"])
def test_wrong_file_kind_says_what_was_expected(tmp_path, kind):
    path = tmp_path / f"cal.{kind}"
    if kind == "tiff":
        import tifffile

        tifffile.imwrite(path, np.zeros((10, 10), np.int32))
    elif kind == "hdf5":
        import h5py

        with h5py.File(path, "w") as f:
            f["x"] = 1
    elif kind == "text":
        path.write_text("INFO: Refined Beam centre = 388.277 807.874 (pixels)\n")
    else:
        path = tmp_path / "cal.json"
        path.write_text("[1, 2]")
    with pytest.raises(CalibrationError) as info:
        Calibration.from_file(path)
    msg = str(info.value)
    assert str(path) in msg
    if kind == "jsonlist":
        assert "expected a JSON object" in msg
    else:
        assert "expected a JSON calibration file" in msg and ".poni" in msg


def test_poni_for_the_server_new_command(tmp_path):
    """saxsleash new sends read_calibration_file's dict; the server builds it with from_dict."""
    from gpusaxs.calibration_file import read_calibration_file

    ai = _ai(GEOMETRIES[3], 4, shape=(200, 150))
    ai.write(str(tmp_path / "g.poni"))
    d = read_calibration_file(tmp_path / "g.poni")
    sent = json.loads(json.dumps(d))  # over the wire
    cal = Calibration.from_dict(sent, base_dir=tmp_path)
    assert np.abs(two_theta(cal) - _tth(ai)).max() < 1e-9
