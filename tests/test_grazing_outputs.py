"""The grazing-incidence part of the calibration file (schema, SAXS_py3's GISAXSmode/Slices)
and saxsdog's outputs (the map as NeXus NXdata with both axes, the cuts as .chi), checked
against pyFAI's FiberIntegrator without pixel splitting on the same frame (issue 28)."""

import json

import numpy as np
import pytest
import tifffile
from helpers import pyfai_integrator, require_fiber_reference, run_saxsdog

from gpusaxs.calibration_model import Calibration
from gpusaxs.errors import CalibrationError
from gpusaxs.grazing_config import grazing_config, read_grazing_config
from gpusaxs.io.chi import read_chi

H, W = 200, 180
NO_SPLIT = ("no", "histogram", "cython")


def small_calibration(**grazing):
    return {
        "Imagesize": [H, W],
        "Tilt": {"TiltRotDeg": 20.0, "TiltAngleDeg": 1.0},
        "MaskFile": None,
        "Oversampling": 2,
        "Wavelength": 1.54,
        "BeamCenter": [20.5, 88.25],  # near the bottom edge: the image is above the horizon
        "DedectorDistanceMM": 300.0,
        "PixelSizeMicroM": [172.0, 172.0],
        "PixelPerRadialElement": 1,
        **grazing,
    }


GRAZING = {
    "IncidentAngleDeg": 0.5,
    "TiltAngleDeg": 2.0,
    "SplitPixels": False,
    "Map": {"NptIp": 40, "NptOop": 30},
    "Cuts": [{"Name": "yoneda", "VerticalIntegration": True, "Npt": 50, "IpRange": [-0.2, 0.2]}],
}
SLICE = {"Direction": "y", "Plane": "Vertical", "CutPosition": 100, "CutMargin": 3}


def test_the_schema_checks_the_grazing_fields(tmp_path):
    Calibration.from_dict(small_calibration(GrazingIncidence=GRAZING))
    nested = {
        "Geometry": {k: small_calibration()[k] for k in ("Imagesize", "Tilt", "BeamCenter")}
        | {"DedectorDistanceMM": 300.0, "PixelSizeMicroM": [172.0]},
        "Wavelength": 1.54,
        "Masks": [{"MaskFile": None, "Oversampling": 2, "PixelPerRadialElement": 1}],
        "GISAXSmode": True,
        "Slices": [dict(SLICE, IncidentAngle=0.3, MaskRef=0)],
    }
    Calibration.from_dict(nested)
    bad = [
        {**GRAZING, "Map": {"UnitIp": "2th_deg"}},
        {**GRAZING, "SampleOrientation": 9},
        {**GRAZING, "IncidentAngle": 0.5},
        {k: v for k, v in GRAZING.items() if k != "IncidentAngleDeg"},
        {**GRAZING, "Cuts": [{"Name": "../escape"}]},
    ]
    for block in bad:
        with pytest.raises(CalibrationError):
            Calibration.from_dict(small_calibration(GrazingIncidence=block))
    with pytest.raises(CalibrationError):
        Calibration.from_dict(small_calibration(Slices=[dict(SLICE, Direction="z")]))


def test_saxs_py3_fields_map_to_cuts_and_a_map():
    d = small_calibration(GISAXSmode=True, Slices=[dict(SLICE, IncidentAngle=0.3)])
    config = grazing_config(d, (H, W))
    assert config.common["incident_angle"] == 0.3 and config.common["angle_unit"] == "deg"
    assert config.map["npt_ip"] == 500 and config.map["npt_oop"] == 500
    (cut,) = config.cuts
    kwargs = config.cut_kwargs(cut, (H, W))
    assert kwargs["vertical_integration"] and kwargs["npt_oop"] == H
    kept = ~kwargs["mask"]
    assert kept[:, 96:103].all() and kept.sum() == 7 * H  # columns 97..103, 1-based
    row = grazing_config(
        small_calibration(
            Slices=[dict(SLICE, Direction="x", Plane="InPlane", CutPosition=1, IncidentAngle=0.3)]
        ),
        (H, W),
    )
    kept = ~row.cut_kwargs(row.cuts[0], (H, W))["mask"]
    assert kept[H - 4 :].all() and kept.sum() == 4 * W  # the bottom rows (fit2d's Y from 1)
    assert row.map is None
    assert grazing_config(small_calibration(), (H, W)) is None
    with pytest.raises(CalibrationError, match="incident angles"):
        grazing_config(
            small_calibration(
                Slices=[dict(SLICE, IncidentAngle=0.3), dict(SLICE, IncidentAngle=0.4)]
            ),
            (H, W),
        )


def test_saxsdog_writes_maps_and_cuts_as_pyfai_computes_them(tmp_path):
    h5py = pytest.importorskip("h5py")
    pytest.importorskip("pyFAI")
    require_fiber_reference()
    d = small_calibration(GrazingIncidence=GRAZING, Slices=[dict(SLICE, IncidentAngle=0.5)])
    (tmp_path / "cal.json").write_text(json.dumps(d))
    rng = np.random.default_rng(3)
    frames = tmp_path / "frames"
    frames.mkdir()
    images = []
    for k in range(2):
        img = rng.poisson(50 + 400 * np.exp(-np.arange(H)[:, None] / 40.0), (H, W))
        img = img.astype(np.int32)
        img[10 * k + 5, 30:40] = -1  # a gap
        tifffile.imwrite(frames / f"f{k}.tif", img)
        images.append(img)
    out = tmp_path / "out"
    proc = run_saxsdog(["-c", "cal.json", "-o", out, "-s", frames], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr

    cal = Calibration.from_file(tmp_path / "cal.json")
    config = read_grazing_config(tmp_path / "cal.json", (H, W))
    fi = pyfai_integrator(cal, fiber=True)
    angles = dict(incident_angle=np.deg2rad(0.5), tilt_angle=np.deg2rad(2.0))
    for k, img in enumerate(images):
        gaps = img < 0
        with h5py.File(out / f"f{k}.gi.nxs") as h5:
            data = h5["entry/data"]
            assert data.attrs["signal"] == "intensity"
            assert list(data.attrs["axes"]) == ["qoop", "qip"]
            assert data["qip"].attrs["units"] == "1/nm"
            ours = data["intensity"][()]
            qip, qoop = data["qip"][()], data["qoop"][()]
            assert h5["entry/grazing_incidence/incident_angle"][()] == 0.5
        theirs = fi.integrate2d_grazing_incidence(
            img,
            npt_ip=40,
            npt_oop=30,
            mask=gaps,
            correctSolidAngle=False,
            method=NO_SPLIT,
            **angles,
        )
        assert ours.shape == (30, 40)
        np.testing.assert_allclose(qip, theirs.inplane, rtol=0, atol=1e-6 * np.ptp(qip))
        np.testing.assert_allclose(qoop, theirs.outofplane, rtol=0, atol=1e-6 * np.ptp(qoop))
        filled = theirs.count > 0
        np.testing.assert_allclose(ours[filled], theirs.intensity[filled], rtol=1e-6)
        assert np.isnan(ours[~filled]).all()

        for name, mask, kwargs in (
            ("yoneda", gaps, dict(npt_oop=50, ip_range=(-0.2, 0.2))),
            ("slice0", gaps | config.cut_kwargs(config.cuts[1], (H, W))["mask"], dict(npt_oop=H)),
        ):
            cut = read_chi(out / f"f{k}_{name}.chi")
            x, intensity = cut[0], cut[1]
            ref = fi.integrate1d_grazing_incidence(
                img,
                mask=mask,
                vertical_integration=True,
                correctSolidAngle=False,
                method=NO_SPLIT,
                **kwargs,
                **angles,
            )
            step = ref.integrated[1] - ref.integrated[0]
            assert np.max(np.abs(x - ref.integrated)) <= 0.01 * step, name
            both = np.isfinite(intensity) & (ref.count > 0)
            assert both.sum() > 10
            rel = np.abs(intensity[both] - ref.intensity[both]) / ref.intensity[both]
            assert np.median(rel) <= 1e-3, (name, np.median(rel))
        assert (out / f"f{k}.chi").is_file()  # the curve as before


def test_the_server_queue_writes_maps_and_cuts(tmp_path):
    """saxsdogserver's queue: a 'new queue' whose calibration has a GrazingIncidence block
    writes each frame's map and cuts beside its curve, as pyFAI computes them."""
    h5py = pytest.importorskip("h5py")
    pytest.importorskip("pyFAI")
    require_fiber_reference()
    from net_support import SECRET, ask, signed, wait_for, write_frames

    from gpusaxs.server import protocol as P
    from gpusaxs.server.saxsdogserver import SaxsdogService

    base = tmp_path / "base"
    (base / "data").mkdir(parents=True)
    (path,) = write_frames(base / "data", 1)
    svc = SaxsdogService(base, SECRET, threads=1, batch_size=4, backend="numpy")
    try:
        d = small_calibration(GrazingIncidence=GRAZING)
        req, atts = P.new_request(d, "data", None, "m.msk")
        req["command"] = "new queue"
        assert ask(svc, signed(req, atts))["result"] == "new queue"
        ask(svc, signed({"command": "readdir"}))
        assert wait_for(lambda: svc.queue.pics == 1, 60), svc.queue.recent_errors
        plot = ask(svc, signed({"command": "send plot"}))
        assert len(plot["data"]["array"][0]) == len(plot["data"]["array"][1])  # the curve only
    finally:
        svc.shutdown(timeout=30)
    work = base / "data" / "work"
    img = tifffile.imread(path)
    with h5py.File(work / "img_00000.gi.nxs") as h5:
        ours = h5["entry/data/intensity"][()]
        qip, qoop = h5["entry/data/qip"][()], h5["entry/data/qoop"][()]

    def span(x):  # our axis' range: its edges (the default spans the unmasked pixels, and
        # the frame's invalid top row is no static mask)
        half = 0.5 * (x[1] - x[0])
        return (x[0] - half, x[-1] + half)

    fi = pyfai_integrator(Calibration.from_dict(d), fiber=True)
    theirs = fi.integrate2d_grazing_incidence(
        img,
        npt_ip=40,
        npt_oop=30,
        ip_range=span(qip),
        oop_range=span(qoop),
        mask=img < 0,
        correctSolidAngle=False,
        method=NO_SPLIT,
        incident_angle=np.deg2rad(0.5),
        tilt_angle=np.deg2rad(2.0),
    )
    filled = theirs.count > 0
    np.testing.assert_allclose(ours[filled], theirs.intensity[filled], rtol=1e-6)
    assert (work / "img_00000_yoneda.chi").is_file() and (work / "img_00000.chi").is_file()
