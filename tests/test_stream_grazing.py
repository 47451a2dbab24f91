"""Grazing-incidence maps and cuts from the detector-stream consumer (issue 28): Stream V2 CBOR
messages into a StreamConsumer whose calibration asks for a map and a cut; the series' NeXus
file, read with h5py, holds them row by row beside the curves, equal to
``Integrator.integrate2d_grazing_incidence`` / ``integrate1d_grazing_incidence`` of the same
frames; a frame whose map fails is one error record, and the file still validates."""

import json
import types

import numpy as np
import pytest
from helpers import nxvalidate
from test_stream_units import SHAPE, running_consumer, send_series

h5py = pytest.importorskip("h5py")

from gpusaxs.calibration_model import Calibration  # noqa: E402
from gpusaxs.grazing_config import grazing_config  # noqa: E402
from gpusaxs.grazing_outputs import GrazingStage  # noqa: E402
from gpusaxs.integrator import Integrator  # noqa: E402
from gpusaxs.server.saxsdogserver import build_parser  # noqa: E402
from gpusaxs.server.stream.hook import start_consumer  # noqa: E402

GRAZING = {
    "IncidentAngleDeg": 0.5,
    "TiltAngleDeg": 2.0,
    "SplitPixels": False,
    "Map": {"NptIp": 40, "NptOop": 30},
    "Cuts": [{"Name": "yoneda", "VerticalIntegration": True, "Npt": 50, "IpRange": [-0.3, 0.3]}],
}
#: the same outputs as the Integrator's keywords, spelled out (not read from the config)
ANGLES = dict(incident_angle=0.5, tilt_angle=2.0, angle_unit="deg", split_pixels=False)
MAP = dict(npt_ip=40, npt_oop=30, error_model="poisson")
CUT = dict(npt_oop=50, ip_range=(-0.3, 0.3), vertical_integration=True, error_model="poisson")


def calibration_dict():
    return {
        "PixelSizeMicroM": [172.0],
        "Imagesize": list(SHAPE),
        "PixelPerRadialElement": 1,
        "Tilt": {"TiltRotDeg": 20.0, "TiltAngleDeg": 1.0},
        "Oversampling": 2,
        "Wavelength": 1.54,
        "BeamCenter": [15.5, 240.25],  # near the bottom edge: the module is above the horizon
        "DedectorDistanceMM": 300.0,
        "MaskFile": None,
        "GrazingIncidence": GRAZING,
    }


@pytest.fixture(scope="module")
def integ():
    return Integrator(Calibration.from_dict(calibration_dict()), backend="numpy")


def frames(n):
    rng = np.random.default_rng(7)
    return [rng.poisson(20.0 * (1 + i % 3), SHAPE).astype(np.uint32) for i in range(n)]


class MapRefused:
    """An integrator whose map integration refuses any stack holding the marked frame."""

    MARK = 99_999

    def __init__(self, integ):
        self._integ = integ

    def __getattr__(self, name):
        return getattr(self._integ, name)

    def integrate2d_grazing_incidence_batch(self, stack, **kwargs):
        if np.any(np.asarray(stack)[:, 1, 1] == self.MARK):
            raise RuntimeError("the map of this frame failed")
        return self._integ.integrate2d_grazing_incidence_batch(stack, **kwargs)


def run_series(tmp_path, stage, images, batch_size=4):
    with running_consumer(tmp_path, stage, batch_size=batch_size) as (cons, push):
        send_series(push, 1, "gi", images)
        assert cons.book.wait(lambda b: (b.get(1) or {}).get("state") == "done", 120)
        return cons.book.get(1), cons.book.info()


def test_the_series_file_holds_the_maps_and_cuts_of_every_frame(tmp_path, integ):
    images = frames(6)
    stage = GrazingStage(integ, grazing_config(calibration_dict(), SHAPE))
    st, _ = run_series(tmp_path, stage, images)
    assert (st["integrated"], st["errors"]) == (6, 0), st
    path = tmp_path / "series_1.nxs"
    with h5py.File(path, "r") as f:
        ids = f["entry/data/image_id"][()]
        curves = f["entry/data/I"][()]
        gmap = f["entry/grazing_incidence/map"]
        assert gmap.attrs["NX_class"] == "NXdata" and gmap.attrs["signal"] == "I"
        assert list(gmap.attrs["axes"]) == [".", "qoop", "qip"]
        maps, map_err = gmap["I"][()], gmap["I_errors"][()]
        qip, qoop = gmap["qip"][()], gmap["qoop"][()]
        assert gmap["qip"].attrs["units"] == "1/nm" and gmap["qoop"].attrs["units"] == "1/nm"
        np.testing.assert_array_equal(gmap["image_id"][()], ids)
        cut = f["entry/grazing_incidence/cut_yoneda"]
        cuts, cut_x = cut["I"][()], cut["qoop"][()]
        assert list(cut.attrs["axes"]) == [".", "qoop"]
        assert f["entry/grazing_incidence/incident_angle"][()] == 0.5
    assert sorted(ids.tolist()) == list(range(6))
    assert maps.shape == (6, 30, 40) and cuts.shape == (6, 50)
    for k, i in enumerate(ids):
        ref = integ.integrate2d_grazing_incidence(images[i], **ANGLES, **MAP)
        np.testing.assert_allclose(qip, ref.inplane, rtol=1e-12)
        np.testing.assert_allclose(qoop, ref.outofplane, rtol=1e-12)
        np.testing.assert_allclose(maps[k], ref.intensity, rtol=1e-6, equal_nan=True)
        np.testing.assert_allclose(map_err[k], ref.sigma, rtol=1e-6, equal_nan=True)
        one = integ.integrate1d_grazing_incidence(images[i], **ANGLES, **CUT)
        np.testing.assert_allclose(cut_x, one.radial, rtol=1e-12)
        np.testing.assert_allclose(cuts[k], one.intensity, rtol=1e-6, equal_nan=True)
        np.testing.assert_allclose(curves[k], integ.integrate(images[i])[1], rtol=1e-6)
    assert np.isnan(maps).any() and np.isfinite(maps).sum() > maps.size // 4  # wedge and data
    pytest.importorskip("nexusformat")
    errors, warnings, text = nxvalidate(path)
    assert (errors, warnings) == (0, 0), text


def test_a_frame_whose_map_fails_is_one_error_record(tmp_path, integ):
    images, bad = frames(6), 4
    images[bad][1, 1] = MapRefused.MARK
    stage = GrazingStage(MapRefused(integ), grazing_config(calibration_dict(), SHAPE))
    st, info = run_series(tmp_path, stage, images, batch_size=6)
    assert (st["integrated"], st["errors"]) == (5, 1), st
    (record,) = info["recent errors"]
    assert record["image_id"] == bad and record["kind"] == "integrate"
    assert "the map of this frame failed" in record["error"]
    with h5py.File(tmp_path / "series_1.nxs", "r") as f:
        ids = f["entry/data/image_id"][()]
        maps = f["entry/grazing_incidence/map/I"][()]
        assert f["entry/grazing_incidence/cut_yoneda/I"].shape[0] == len(ids)
    assert sorted(ids.tolist()) == [i for i in range(6) if i != bad]
    for k, i in enumerate(ids):  # every other frame's map, in its row
        ref = integ.integrate2d_grazing_incidence(images[i], **ANGLES, **MAP)
        np.testing.assert_allclose(maps[k], ref.intensity, rtol=1e-6, equal_nan=True)


def test_saxsdogserver_options_give_the_consumer_a_grazing_stage(tmp_path, integ):
    """``saxsdogserver --detector URL --calibration cal.json`` (the options as the server parses
    them): the consumer's integrator packs the maps, and a series' file holds them."""
    cal = tmp_path / "cal.json"
    cal.write_text(json.dumps(calibration_dict()))
    args = build_parser().parse_args(
        [str(tmp_path), "--detector", "tcp://127.0.0.1:1", "--calibration", str(cal)]
        + ["-o", str(tmp_path / "out"), "--backend", "numpy"]
    )
    service = types.SimpleNamespace(average=None, stream=None)
    consumer = start_consumer(args, service)
    try:
        stage = consumer._integrator()[0]
        assert isinstance(stage, GrazingStage) and stage.config.map["npt_ip"] == 40
        image = frames(1)[0]
        packed = stage.integrate_batch(image[None])
        _, grid, cuts = stage.split(packed[0])
        ref = integ.integrate2d_grazing_incidence(image, **ANGLES, **MAP)
        np.testing.assert_allclose(grid, ref.intensity, rtol=1e-6, equal_nan=True)
        assert list(cuts) == ["yoneda"]
    finally:
        consumer.stop()
