"""Tests of the saxsconverter console tool (fit2d text, templates, in-place update, PONI, forms)."""

import json
import logging
import math
import os
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gpusaxs.calibration_model import Calibration
from gpusaxs.clients.saxsconverter import main, parse_fit2d
from gpusaxs.poni import read_poni

REPO = Path(__file__).resolve().parents[1]

pyFAI = pytest.importorskip("pyFAI")
from pyFAI.integrator.azimuthal import AzimuthalIntegrator  # noqa: E402

logging.getLogger("pyFAI").setLevel(logging.ERROR)

SPEC_431 = """\
INFO: SOLUTION 2
INFO: Best fit beam centre (X/Y mm) = 66.78356 138.9544
INFO: Best fit beam centre (X/Y pixels) = 388.2765 807.8745
INFO: Cone 1 best fit 2 theta angle (degrees) = 1.392646
INFO: Best fit angle of tilt plane rotation (degrees) = 73.59509
INFO: Best fit angle of tilt (degrees) = -10.00601
INFO: Estimated coordinate radial position error (mm) = 0.7136476E-02
"""


def run_cli(*args, cwd=None):
    """Run the real console script in a subprocess; return (rc, stdout, stderr)."""
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    p = subprocess.run(
        [sys.executable, "-m", "gpusaxs.clients.saxsconverter", *map(str, args)],
        capture_output=True,
        text=True,
        cwd=cwd or REPO,
        env=env,
        timeout=120,
    )
    return p.returncode, p.stdout, p.stderr


def load(path):
    return json.loads(Path(path).read_text())


def fit2d_reference_ai(cal):
    """pyFAI integrator set up from our calibration with the documented setFit2D mapping."""
    ai = AzimuthalIntegrator()
    ai.setFit2D(
        cal.distance_mm,
        centerX=cal.beam_center[1],
        centerY=cal.imagesize[0] - cal.beam_center[0],
        tilt=cal.tilt_angle_deg,
        tiltPlanRotation=-cal.tilt_rot_deg,
        pixelX=cal.pixel_size_um[1],
        pixelY=cal.pixel_size_um[0],
    )
    return ai


def two_theta(ai, shape):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return np.asarray(ai.twoThetaArray(shape), dtype=np.float64)


# ------------------------------------------------------------------------------ fit2d text
def test_reference_fit2d_file(reference_dir, tmp_path):
    """fit2d's text holds no detector size: the image and the pixel size are given, and the
    mask only when named; the new file then loads (issue 22.6: nothing invented)."""
    out = tmp_path / "new folder" / "cal.json"
    src = reference_dir / "fit2d-calibration.txt"
    rc, stdout, stderr = run_cli(src, out)
    assert rc == 2 and not out.exists()
    assert "Imagesize (give -t TEMPLATE, --image FRAME or --imagesize H W)" in stderr
    assert "PixelSizeMicroM (give -t TEMPLATE or --pixel-size UM [UM])" in stderr
    frame = reference_dir / "buf1_00000.tif"
    rc, stdout, stderr = run_cli("--image", frame, "--pixel-size", "172", src, out)
    assert rc == 0, stderr
    d = load(out)
    assert d["BeamCenter"] == [807.874, 388.277]
    assert d["DedectorDistanceMM"] == 1031.657
    assert d["Wavelength"] == 1.54
    assert d["Tilt"] == {"TiltRotDeg": 73.595, "TiltAngleDeg": -10.006}
    assert d["Imagesize"] == [1043, 981] and d["PixelSizeMicroM"] == [172.0]
    assert d["MaskFile"] is None  # no mask invented
    assert d["Oversampling"] == 3 and d["PixelPerRadialElement"] == 1  # settings: defaults
    assert "PolarizationCorrection" not in d
    cal = Calibration.from_file(out)  # loads: no mask file to miss
    assert cal.beam_center == (807.874, 388.277) and cal.mask_file is None
    assert "wrote" in stdout and stderr == ""
    assert sorted(os.listdir(out.parent)) == ["cal.json"]
    # with --mask the mask is named, relative to the output's folder
    rc, _, stderr = run_cli(
        "--imagesize", "1043", "981", "--pixel-size", "172",
        "--mask", reference_dir / "AAA_integ.msk", src, tmp_path / "m.json",
    )  # fmt: skip
    assert rc == 0, stderr
    cal = Calibration.from_file(tmp_path / "m.json")
    assert cal.mask_file is not None and Path(cal.mask_file).name == "AAA_integ.msk"
    assert cal.load_mask().sum() > 0


def test_fit2d_other_detector_gets_its_own_size(tmp_path):
    """An EIGER 4M's fit2d output: q follows the pixel size given, not a PILATUS default."""
    src = tmp_path / "calibration.txt"
    src.write_text(SPEC_431 + "INFO: Refined sample to detector distance = 500.0 mm\n")
    rc, _, stderr = run_cli(src, tmp_path / "x.json")
    assert rc == 2 and "Wavelength" in stderr and "Imagesize" in stderr
    template = tmp_path / "t.json"
    template.write_text(json.dumps({"Wavelength": 1.0}))
    rc, _, stderr = run_cli(
        "-t", template, "--imagesize", "2167", "2070", "--pixel-size", "75", src,
        tmp_path / "e4m.json",
    )  # fmt: skip
    assert rc == 0, stderr
    cal = Calibration.from_file(tmp_path / "e4m.json")
    assert cal.imagesize == (2167, 2070) and cal.pixel_size_um == (75.0, 75.0)
    assert cal.mask_file is None


def test_spec_best_fit_lines(tmp_path):
    src = tmp_path / "calibration.txt"
    src.write_text(SPEC_431)
    out = tmp_path / "cal.json"
    template = tmp_path / "beamline.json"
    template.write_text(
        json.dumps(
            {"Imagesize": [1043, 981], "PixelSizeMicroM": [172.0], "DedectorDistanceMM": 1000.0}
            | {"Wavelength": 1.54, "BeamCenter": [1.0, 2.0], "MaskFile": None}
        )
    )
    rc, _, stderr = run_cli("-t", template, src, out)
    assert rc == 0, stderr
    d = load(out)
    assert d["BeamCenter"] == [807.8745, 388.2765]  # mm line ignored, X/Y swapped
    assert d["Tilt"] == {"TiltRotDeg": 73.59509, "TiltAngleDeg": -10.00601}
    assert d["DedectorDistanceMM"] == 1000.0  # not in the text: the template's, with a warning
    assert "no sample to detector distance line found" in stderr


def test_parse_last_occurrence_and_fortran_numbers():
    text = (
        "INFO: Refined Beam centre = 1.0 2.0 (pixels)\n"
        "INFO: Refined Beam centre = 66.784 138.954 (mm)\n"
        "INFO: Refined Beam centre = 3.5D+02 4.0E+01 (pixels)\n"
        "INFO: Refined tilt angle = -1.5 degrees\n"
    )
    found = parse_fit2d(text)
    assert found["beam"] == (350.0, 40.0)
    assert found["tilt"] == -1.5 and "tilt_rot" not in found


def test_template(reference_dir, tmp_path):
    tdir = tmp_path / "templates"
    tdir.mkdir()
    template = tdir / "beamline.json"
    template.write_text(
        json.dumps(
            {
                "Title": "beamline",
                "Imagesize": [512, 256],
                "PixelSizeMicroM": [75.0, 80.0],
                "MaskFile": "m/b.msk",
                "Oversampling": 2,
                "PolarizationCorrection": {"Fraction": 0.9, "Angle": 10.0},
            }
        )
    )
    outdir = tmp_path / "out"
    outdir.mkdir()
    out = outdir / "cal.json"
    rc, _, stderr = run_cli("-t", template, reference_dir / "fit2d-calibration.txt", out)
    assert rc == 0, stderr
    d = load(out)
    assert (
        d["Title"] == "beamline"
        and d["Imagesize"] == [512, 256]
        and d["PixelSizeMicroM"] == [75.0, 80.0]
    )
    assert d["Oversampling"] == 2 and d["PolarizationCorrection"] == {
        "Fraction": 0.9,
        "Angle": 10.0,
    }
    assert d["BeamCenter"] == [807.874, 388.277] and d["Wavelength"] == 1.54
    assert d["PixelPerRadialElement"] == 1  # default for what the template lacks
    # the template's relative mask path still points to the same file from the output's folder
    assert Calibration.from_file(out).mask_file == str(tdir / "m" / "b.msk")


def test_bad_template(reference_dir, tmp_path):
    template = tmp_path / "t.json"
    template.write_text('{"Wavelength": -1}')
    rc, _, stderr = run_cli(
        "-t", template, reference_dir / "fit2d-calibration.txt", tmp_path / "o.json"
    )
    assert rc == 2
    assert f"{template}: #/Wavelength:" in stderr
    assert not (tmp_path / "o.json").exists()


def test_update_in_place(reference_dir, tmp_path):
    out = tmp_path / "cal.json"
    existing = {
        "Title": "keep me",
        "Geometry": {
            "Tilt": {"TiltRotDeg": 0, "TiltAngleDeg": 0},
            "BeamCenter": [1, 2],
            "DetectorDistanceMM": 500,
            "Imagesize": [1043, 981],
            "PixelSizeMicroM": [172.0, 172.0],
        },
        "Wavelength": 1.0,
        "Threads": 3,
        "Directory": "/data",
        "Masks": [
            {"MaskFile": "a.msk", "Oversampling": 4, "PixelPerRadialElement": 2},
            {"MaskFile": "b.msk", "Oversampling": 1, "PixelPerRadialElement": 1, "qStop": 2.0},
        ],
    }
    out.write_text(json.dumps(existing))
    template = tmp_path / "ignored.json"
    template.write_text(json.dumps({"Imagesize": [10, 10]}))
    rc, _, stderr = run_cli("-t", template, reference_dir / "fit2d-calibration.txt", out)
    assert rc == 0, stderr
    d = load(out)
    geo = d["Geometry"]
    assert geo["BeamCenter"] == [807.874, 388.277]
    assert (
        geo["DetectorDistanceMM"] == 1031.657 and "DedectorDistanceMM" not in geo
    )  # spelling kept
    assert geo["Tilt"] == {"TiltRotDeg": 73.595, "TiltAngleDeg": -10.006}
    assert geo["Imagesize"] == [1043, 981]  # existing output wins over the template
    assert d["Wavelength"] == 1.54
    assert d["Title"] == "keep me" and d["Threads"] == 3 and d["Directory"] == "/data"
    assert d["Masks"] == existing["Masks"]
    assert sorted(os.listdir(tmp_path)) == ["cal.json", "ignored.json"]


def test_invalid_existing_output_is_not_clobbered(reference_dir, tmp_path):
    out = tmp_path / "cal.json"
    out.write_text('{"not": "a calibration"}')
    rc, _, stderr = run_cli(reference_dir / "fit2d-calibration.txt", out)
    assert rc == 2 and "--force" in stderr and str(out) in stderr
    assert out.read_text() == '{"not": "a calibration"}'
    rc, _, stderr = run_cli(
        "--force", "--imagesize", "1043", "981", "--pixel-size", "172",
        reference_dir / "fit2d-calibration.txt", out,
    )  # fmt: skip
    assert rc == 0, stderr
    assert load(out)["BeamCenter"] == [807.874, 388.277]


@pytest.mark.parametrize(
    "text,message",
    [
        (
            "INFO: Refined tilt angle = 1.0 degrees\n"
            "INFO: Refined tilt plane rotation angle = 2 degrees\n",
            "calibration.txt: no beam centre line found",
        ),
        ("", "calibration.txt: no beam centre line found"),
        (
            "INFO: Refined Beam centre = 1 2 (pixels)\nINFO: Refined tilt angle = 1.0 degrees\n",
            "calibration.txt: tilt angle line found but no tilt plane rotation line",
        ),
    ],
)
def test_unreadable_fit2d_input(text, message, tmp_path):
    src = tmp_path / "calibration.txt"
    src.write_text(text)
    rc, stdout, stderr = run_cli(src, tmp_path / "out.json")
    assert rc == 2
    assert message in stderr and "Traceback" not in stderr
    assert not (tmp_path / "out.json").exists()


def test_missing_input(tmp_path):
    rc, _, stderr = run_cli(tmp_path / "nothere.txt", tmp_path / "out.json")
    assert rc == 2 and "nothere.txt: file not found" in stderr


def test_help_explains_options():
    rc, stdout, _ = run_cli("--help")
    assert rc == 0
    for opt in (
        "--template",
        "--to-poni",
        "--from-poni",
        "--nested",
        "--flat",
        "--mask-index",
        "--force",
        "--quiet",
        "Examples:",
        "saxsconverter calibration.txt cal.json",
        "BeamCenter = [Y, X]",
    ):
        assert opt in stdout


# ------------------------------------------------------------------------------ forms
def test_nested_flat_conversion(reference_dir, tmp_path):
    nested = tmp_path / "sub" / "nested.json"
    nested.parent.mkdir()
    assert run_cli("--nested", reference_dir / "buf1_00000.calibration.json", nested)[0] == 0
    d = load(nested)
    assert set(d) >= {"Geometry", "Wavelength", "Masks"} and len(d["Masks"]) == 1
    ref = Calibration.from_file(reference_dir / "buf1_00000.calibration.json")
    assert Calibration.from_file(nested) == ref  # mask path rebased to the new folder
    flat = tmp_path / "flat.json"
    assert run_cli("--flat", nested, flat)[0] == 0
    assert "Geometry" not in load(flat)
    assert Calibration.from_file(flat) == ref
    d["Masks"].append({"MaskFile": "second.msk", "Oversampling": 1, "PixelPerRadialElement": 2})
    nested.write_text(json.dumps(d))
    assert run_cli("--flat", "--mask-index", "1", nested, flat)[0] == 0
    assert Calibration.from_file(flat).mask_file == str(nested.parent / "second.msk")
    rc, _, stderr = run_cli("--flat", "--mask-index", "5", nested, flat)
    assert rc == 2 and "#/Masks: mask index 5 out of range" in stderr


def test_invalid_json_input(tmp_path):
    src = tmp_path / "in.json"
    src.write_text('{"Tilt": {"TiltRotDeg": 0, "TiltAngleDeg": "x"}}')
    rc, _, stderr = run_cli("--nested", src, tmp_path / "out.json")
    assert rc == 2 and f"{src}: #/" in stderr


# ------------------------------------------------------------------------------ PONI
def test_reference_to_poni_matches_pyfai(reference_dir, tmp_path):
    poni = tmp_path / "ref.poni"
    rc, _, stderr = run_cli(reference_dir / "buf1_00000.calibration.json", poni)
    assert rc == 0, stderr
    cal = Calibration.from_file(reference_dir / "buf1_00000.calibration.json")
    ai = pyFAI.load(str(poni))
    ref = fit2d_reference_ai(cal)
    assert np.abs(two_theta(ai, cal.imagesize) - two_theta(ref, cal.imagesize)).max() < 1e-9
    assert tuple(ai.detector.max_shape) == (1043, 981)  # a list in pyFAI 2025.1
    assert ai.wavelength == pytest.approx(1.54e-10, rel=1e-15)
    back = tmp_path / "back.json"
    rc, _, stderr = run_cli("-t", reference_dir / "buf1_00000.calibration.json", poni, back)
    assert rc == 0, stderr
    again = Calibration.from_file(back)
    assert again.tilt_angle_deg == pytest.approx(-0.56, abs=1e-9)  # the template's sign is kept
    assert again.tilt_rot_deg == pytest.approx(73.569, abs=1e-9)
    assert again.beam_center == pytest.approx(cal.beam_center, abs=1e-9)
    assert again.distance_mm == pytest.approx(cal.distance_mm, abs=1e-9)
    assert again.mask_file == cal.mask_file


def _beam_direction(f2d):
    t, r = math.radians(f2d["tilt"]), math.radians(f2d["tiltPlanRotation"])
    return [math.sin(t) * math.sin(r), math.sin(t) * math.cos(r), math.cos(t)]


# pyFAI's own setFit2D takes acos of values near 1 and loses ~1e-8 rad for tilts below ~1e-2
# degree, so tiny non-zero tilts are left out of the 1e-9 rad comparison (our conversion uses
# atan2/Rodrigues).
geometries = st.fixed_dictionaries(
    {
        "tilt": st.one_of(st.just(0.0), st.floats(1e-2, 45), st.floats(-45, -1e-2)),
        "rot": st.floats(-360, 360),
        "y": st.floats(-200, 300),
        "x": st.floats(-200, 300),
        "dist": st.floats(20, 5000),
        "py": st.floats(30, 250),
        "px": st.floats(30, 250),
        "h": st.integers(16, 40),
        "w": st.integers(16, 40),
        "wl": st.floats(0.1, 3),
    }
)


def _cal_from(g, tmp_path):
    return Calibration.from_dict(
        {
            "Tilt": {"TiltRotDeg": g["rot"], "TiltAngleDeg": g["tilt"]},
            "BeamCenter": [g["y"], g["x"]],
            "DedectorDistanceMM": g["dist"],
            "Imagesize": [g["h"], g["w"]],
            "MaskFile": "m.msk",
            "Oversampling": 1,
            "PixelSizeMicroM": [g["py"], g["px"]],
            "PixelPerRadialElement": 1,
            "Wavelength": g["wl"],
        },
        base_dir=tmp_path,
    )


@pytest.mark.usefixtures("frozen_gc")  # pyFAI collects garbage per geometry
@settings(max_examples=60, deadline=None)
@given(geometries)
def test_calibration_to_poni_against_pyfai(tmp_path_factory, g):
    tmp = tmp_path_factory.mktemp("poni")
    cal = _cal_from(g, tmp)
    src, poni = tmp / "cal.json", tmp / "cal.poni"
    cal.to_json(src)
    assert main(["-q", str(src), str(poni)]) == 0
    ai = pyFAI.load(str(poni))
    ref = fit2d_reference_ai(cal)
    assert np.abs(two_theta(ai, cal.imagesize) - two_theta(ref, cal.imagesize)).max() < 1e-9
    got, want = ai.getFit2D(), ref.getFit2D()
    for k in ("directDist", "tilt", "pixelX", "pixelY"):
        assert got[k] == pytest.approx(want[k], rel=1e-9, abs=1e-7), k
    # both centres come out of pyFAI's getFit2D, whose acos-based conversion was seen 1.0e-7 px
    # off for the same geometry (2theta above agrees to 1e-9 rad); 1e-6 px is 0.03 um here
    for k in ("centerX", "centerY"):
        assert got[k] == pytest.approx(want[k], rel=1e-9, abs=1e-6), k
    # pyFAI's getFit2D finds tiltPlanRotation with acos (ill-conditioned at small tilt or near
    # 0/180 degree), so compare the beam direction it implies rather than the raw angle
    assert _beam_direction(got) == pytest.approx(_beam_direction(want), abs=1e-7)  # ~sqrt(eps)
    assert ai.wavelength == pytest.approx(g["wl"] * 1e-10, rel=1e-12)


@pytest.mark.usefixtures("frozen_gc")  # pyFAI collects garbage per geometry
@settings(max_examples=60, deadline=None)
@given(geometries)
def test_pyfai_poni_to_calibration(tmp_path_factory, g):
    tmp = tmp_path_factory.mktemp("frompyfai")
    ai = AzimuthalIntegrator()
    ai.setFit2D(
        g["dist"],
        centerX=g["x"],
        centerY=g["h"] - g["y"],
        tilt=g["tilt"],
        tiltPlanRotation=-g["rot"],
        pixelX=g["px"],
        pixelY=g["py"],
        wavelength=g["wl"],
    )
    poni = tmp / "pyfai.poni"
    ai.write(str(poni))
    template = tmp / "template.json"
    template.write_text(json.dumps({"Imagesize": [g["h"], g["w"]], "MaskFile": "m.msk"}))
    out = tmp / "out.json"
    assert main(["-q", "-t", str(template), str(poni), str(out)]) == 0
    cal = Calibration.from_file(out)
    assert cal.distance_mm == pytest.approx(g["dist"], abs=1e-6)
    assert cal.beam_center == pytest.approx((g["y"], g["x"]), abs=1e-6)
    assert cal.pixel_size_um == pytest.approx((g["py"], g["px"]), abs=1e-9)
    assert cal.wavelength_A == pytest.approx(g["wl"], abs=1e-9)
    # (tilt, rot) == (-tilt, rot + 180): compare the canonical pair, then the 2theta arrays
    tilt, rot = g["tilt"], g["rot"]
    if tilt < 0:
        tilt, rot = -tilt, rot + 180
    assert cal.tilt_angle_deg == pytest.approx(tilt, abs=1e-6)
    if tilt > 0.1:  # below, pyFAI's setFit2D (acos near 1) blurs the rotation it writes
        assert (cal.tilt_rot_deg - rot + 180) % 360 - 180 == pytest.approx(0, abs=1e-6)
    shape = (g["h"], g["w"])
    assert np.abs(two_theta(fit2d_reference_ai(cal), shape) - two_theta(ai, shape)).max() < 1e-9


def test_poni_subprocess_round_trip(tmp_path):
    cal = _cal_from(
        {
            "tilt": 30.0,
            "rot": -120.0,
            "y": 100.5,
            "x": 20.25,
            "dist": 250.0,
            "py": 75.0,
            "px": 100.0,
            "h": 30,
            "w": 20,
            "wl": 0.8,
        },
        tmp_path,
    )
    src = tmp_path / "cal.json"
    cal.to_json(src)
    rc, _, stderr = run_cli("--to-poni", src, tmp_path / "geometry.txt")
    assert rc == 0, stderr
    p = read_poni(tmp_path / "geometry.txt")
    assert p["pixel1"] == 75e-6 and p["pixel2"] == 100e-6 and p["max_shape"] == [30, 20]
    rc, _, stderr = run_cli("--from-poni", tmp_path / "geometry.txt", tmp_path / "back.json")
    assert rc == 0, stderr
    back = Calibration.from_file(tmp_path / "back.json")
    assert back.imagesize == (30, 20) and back.pixel_size_um == (75.0, 100.0)
    assert back.replace(mask_file=cal.mask_file, oversampling=1) == cal


def test_bad_poni(tmp_path):
    poni = tmp_path / "bad.poni"
    poni.write_text("poni_version: 2\nDistance: 0.1\nPoni1: 0.01\n")
    rc, _, stderr = run_cli(poni, tmp_path / "out.json")
    assert rc == 2 and "bad.poni: no Poni2 line" in stderr
    poni.write_text(
        'poni_version: 2.1\nDetector: Detector\nDetector_config: {"pixel1": 1e-4, "pixel2": 1e-4, '
        '"orientation": 7}\nDistance: 0.1\nPoni1: 0\nPoni2: 0\nRot1: 0\nRot2: 0\nRot3: 0\n'
    )
    rc, _, stderr = run_cli(poni, tmp_path / "out.json")
    assert rc == 2 and "orientation 7 is not supported" in stderr


def test_named_detector_poni(tmp_path):
    ai = AzimuthalIntegrator(
        dist=1.0, poni1=0.1, poni2=0.05, detector="Pilatus1M", wavelength=1.54e-10
    )
    poni = tmp_path / "p1m.poni"
    ai.write(str(poni))
    assert main(["-q", str(poni), str(tmp_path / "out.json")]) == 0
    cal = Calibration.from_file(tmp_path / "out.json")
    assert cal.pixel_size_um == pytest.approx((172.0, 172.0))
    assert cal.imagesize == (1043, 981)
    assert cal.beam_center == pytest.approx((1043 - 0.1 / 172e-6, 0.05 / 172e-6), abs=1e-6)
    assert cal.tilt_angle_deg == 0.0 and cal.distance_mm == pytest.approx(1000.0)
    assert math.isclose(cal.wavelength_A, 1.54)
