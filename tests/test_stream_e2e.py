"""Detector streams end to end on loopback: simulator -> saxsdogserver (a real process) -> NeXus.

Real-size frames (the demo's PILATUS 1M silver behenate, 1043 x 981), Stream V2 and V1, the
three compressions, uint16 and uint32, bad messages, a refused series, kill -9 mid-series and a
new series after the restart.  Every row is compared with ``Integrator.integrate`` of the same
frame; every image id must end as exactly one row or one error record.
"""

import json
import os
import signal
import threading

import numpy as np
import pytest

zmq = pytest.importorskip("zmq")
pytest.importorskip("cbor2")
pytest.importorskip("bitshuffle")
pytest.importorskip("lz4")

from helpers import nxvalidate
from net_support import SECRET, Proc, wait_for, write_config

from gpusaxs.clients.saxsdetsim import Encoder, demo_frames, publish_series, send
from gpusaxs.server.protocol import Client

N_DISTINCT = 4
PX = (172e-6, 172e-6)
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """Demo calibration + mask on disk, the reference integrator, frames and reference rows.

    The integration matrix is built once, here, into a cache folder the servers share
    (GPUSAXS_CACHE_DIR), so that a server start does not rebuild it.
    """
    from gpusaxs.calibration_model import Calibration
    from gpusaxs.demo import DEMO_CALIBRATION, PILATUS_1M_SHAPE, demo_mask
    from gpusaxs.integrator import Integrator
    from gpusaxs.io.masks import write_fit2d_mask

    d = tmp_path_factory.mktemp("stream")
    old_cache = os.environ.get("GPUSAXS_CACHE_DIR")
    os.environ["GPUSAXS_CACHE_DIR"] = str(d / "matrix-cache")
    cal_path = d / "cal.json"
    cal_path.write_text(json.dumps(DEMO_CALIBRATION))
    y, x = DEMO_CALIBRATION["BeamCenter"]
    write_fit2d_mask(d / "mask.msk", demo_mask(PILATUS_1M_SHAPE, (PILATUS_1M_SHAPE[0] - y, x)))
    cal = Calibration.from_file(cal_path)
    integ = Integrator(cal, backend="numpy")
    frames = {}
    ref = {}
    for dt in ("uint16", "uint32"):
        frames[dt] = demo_frames(N_DISTINCT, np.dtype(dt), seed=1, calibration=cal)
        ref[dt] = [integ.integrate(f)[1] for f in frames[dt]]
    yield {"dir": d, "cal": cal_path, "frames": frames, "ref": ref, "q": integ.q}
    if old_cache is None:
        os.environ.pop("GPUSAXS_CACHE_DIR", None)
    else:
        os.environ["GPUSAXS_CACHE_DIR"] = old_cache


class Detector:
    """A bound PUSH socket in the test process (the simulated detector)."""

    def __init__(self, version, hwm=1000, sndtimeo_ms=60_000):
        self.ctx = zmq.Context()
        self.sock = self.ctx.socket(zmq.PUSH)
        self.sock.setsockopt(zmq.SNDHWM, hwm)
        self.sock.setsockopt(zmq.SNDTIMEO, sndtimeo_ms)  # a dead server fails the test, no hang
        self.sock.setsockopt(zmq.LINGER, 2000)
        self.sock.bind("tcp://127.0.0.1:*")
        self.url = self.sock.getsockopt_string(zmq.LAST_ENDPOINT)
        self.version = version

    def series(self, series_id, frames, n, compression, rate=None):
        return publish_series(
            self.sock,
            Encoder(self.version, compression),
            frames,
            n,
            series_id,
            PX,
            rate=rate,
        )

    def close(self):
        self.sock.close()
        self.ctx.term()


def start_server(setup, tmp_path, url, version, *extra):
    """A saxsdogserver consuming ``url``; calibration from ``setup`` (None: from 'new')."""
    base = tmp_path / "base"
    out = tmp_path / "out"
    base.mkdir(exist_ok=True)
    cfg = write_config(tmp_path / "net.json", 0)
    cal = [] if setup is None else ["--calibration", setup["cal"]]
    args = ["--config", cfg, "--bind", "127.0.0.1", "-p", "0", "--detector", url]
    args += ["--stream-version", version, *cal, "-o", out, *extra]
    proc = Proc(
        "gpusaxs.server.saxsdogserver",
        [base, *args],
        tmp_path / "ready.json",
        tmp_path / "server.log",
        timeout=120,
    )
    client = Client(proc.info["url"], SECRET, timeout=20)
    return proc, client, out


def streams(client):
    ans = client.request("stat")
    assert ans["result"] == "stat", ans
    return ans["data"]["streams"]


def series_stat(client, sid):
    for s in streams(client)["series"]:
        if s["series_id"] == sid:
            return s
    return None


def send_calibration(client, cal_dict, mask_path):
    """'saxsleash new' over the protocol: the calibration and its mask for the next series."""
    from gpusaxs.server import protocol as P

    req, att = P.new_request(cal_dict, "setup", mask_path.read_bytes(), "mask.msk")
    ans = client.request(req["command"], req["argument"], attachments=att)
    assert ans["result"] == "new queue", ans


def wait_series(client, sid, state="done", timeout=120):
    ok = wait_for(lambda: (series_stat(client, sid) or {}).get("state") == state, timeout, 0.1)
    assert ok, series_stat(client, sid)
    return series_stat(client, sid)


def error_records(out, sid):
    p = out / f"series_{sid}.errors.jsonl"
    if not p.exists():
        return []
    return [json.loads(line) for line in p.read_text().splitlines()]


def check_rows(setup, path, dtype, expect_ids, validate=True):
    """Rows of a series file against the reference curves; ``validate``: the file also passes
    nexusformat's nxvalidate (not for the file of a killed writer, which keeps HDF5's "open for
    writing" flag until ``h5clear -s``, docs/streams.md)."""
    from gpusaxs.io.nexus import read_nxazint

    d = read_nxazint(path)
    ids = d["image_ids"]
    assert sorted(ids.tolist()) == sorted(expect_ids)
    assert len(set(ids.tolist())) == len(ids)  # each id once
    np.testing.assert_allclose(d["radial"], setup["q"], rtol=1e-12)
    assert d["radial_unit"] == "q_nm^-1"
    for row, i in zip(d["intensity"], ids, strict=True):
        np.testing.assert_allclose(
            row,
            setup["ref"][dtype][i % N_DISTINCT],
            rtol=1e-6,
            atol=1e-9,
            equal_nan=True,
        )
    assert np.isfinite(d["sigma"]).any()
    if validate:  # NXazint1d, checked by nexusformat (issue 22.5)
        errors, warnings, text = nxvalidate(path)
        assert (errors, warnings) == (0, 0), text
    return d


@pytest.mark.parametrize("version", [2, 1])
def test_series_end_to_end(setup, tmp_path, version):
    """V2: 1000 bslz4 uint32 frames; then lz4/uint16 and raw/uint32 series. V1 likewise,
    shorter."""
    det = Detector(version)
    proc, client, out = start_server(setup, tmp_path, det.url, version)
    try:
        n_big = 1000 if version == 2 else 200
        plan = [
            (1, "bslz4", "uint32", n_big),
            (2, "lz4", "uint16", 40),
            (3, "none", "uint32", 30),
        ]
        if version == 1:
            plan.append((4, "bslz4", "uint16", 30))
        for sid, comp, dt, n in plan:
            det.series(sid, setup["frames"][dt], n, comp)
        for sid, _comp, dt, n in plan:
            st = wait_series(client, sid)
            assert (st["received"], st["integrated"], st["errors"], st["missing"]) == (
                n,
                n,
                0,
                0,
            ), st
            assert st["file"] == f"series_{sid}.nxs"
            check_rows(setup, out / f"series_{sid}.nxs", dt, list(range(n)))
        assert streams(client)["malformed"] == 0
    finally:
        proc.stop()
        det.close()
    assert proc.p.returncode == 0, proc.output()


def _v2_image_raw(sid, iid, frame, compression):
    from gpusaxs.server.stream import v2

    return v2.encode_image(sid, "bad-series", iid, frame, compression)


def raw_image(sid, iid, algorithm, modifier, data, shape=(1043, 981), tag=70):
    """A hand-made V2 image message with a tag-56500 payload."""
    import cbor2

    arr = cbor2.CBORTag(
        40,
        [
            list(shape),
            cbor2.CBORTag(tag, cbor2.CBORTag(56500, [algorithm, modifier, data])),
        ],
    )
    return cbor2.dumps(
        {
            "type": "image",
            "series_id": sid,
            "image_id": iid,
            "data": {"threshold_1": arr},
        }
    )


def test_bad_messages_never_stop_the_server(setup, tmp_path):
    """Hand-made bad messages: each image id ends as one row or one error record."""
    import cbor2

    from gpusaxs.server.stream import codecs, v2

    det = Detector(2)
    proc, client, out = start_server(setup, tmp_path, det.url, 2)
    f = setup["frames"]["uint32"]
    try:
        n = 12
        send(det.sock, [v2.encode_start(5, "bad-series", f[0].shape, PX, n)])
        good = []

        def image(i):
            send(det.sock, [_v2_image_raw(5, i, f[i % N_DISTINCT], "bslz4")])
            good.append(i)

        image(0)
        send(det.sock, [b"\xff\x00 not cbor"])  # not CBOR
        send(det.sock, [cbor2.dumps([1, 2, 3])])  # not a map
        send(det.sock, [cbor2.dumps({"type": "fancy", "series_id": 5})])  # unknown type
        image(1)
        # image 2: a truncated bslz4 payload
        enc = codecs.encode_bslz4(f[0])
        send(det.sock, [raw_image(5, 2, "bslz4", 4, enc[: len(enc) // 3])])
        # image 3: wrong image size
        send(det.sock, [_v2_image_raw(5, 3, f[0][:500], "bslz4")])
        # image 4: an unknown compression
        send(det.sock, [raw_image(5, 4, "zstd-magic", 0, enc)])
        # image 5: a float16 typed array of the right size but 7 bytes of data
        send(
            det.sock,
            [
                cbor2.dumps(
                    {
                        "type": "image",
                        "series_id": 5,
                        "image_id": 5,
                        "data": {
                            "t": cbor2.CBORTag(40, [[1043, 981], cbor2.CBORTag(84, b"\x00" * 7)])
                        },
                    }
                )
            ],
        )
        image(6)
        image(6)  # duplicate
        # image 7: no image_id at all -> malformed, unattributable to an id
        send(det.sock, [cbor2.dumps({"type": "image", "series_id": 5, "data": {}})])
        image(8)
        # 9 never sent: missing
        for i in (10, 11):
            image(i)
        send(det.sock, [v2.encode_end(5, "bad-series")])
        st = wait_series(client, 5)
        assert proc.p.poll() is None
        rows_ids = sorted(set(good))
        check_rows(setup, out / "series_5.nxs", "uint32", rows_ids)
        recs = error_records(out, 5)
        err_ids = sorted(
            r["image_id"] for r in recs if r["image_id"] is not None and r["kind"] != "duplicate"
        )
        assert err_ids == [2, 3, 4, 5], recs
        kinds = {r["image_id"]: r["kind"] for r in recs if r["image_id"] is not None}
        assert kinds[6] == "duplicate"
        missing = [r for r in recs if r["kind"] == "missing"]
        assert missing and missing[0]["ids"] == [7, 9]
        assert set(rows_ids) | set(err_ids) | {7, 9} == set(range(n))
        assert st["integrated"] == len(rows_ids) and st["missing"] == 2
        assert st["duplicates"] == 1 and st["errors"] == 5  # 4 bad + the duplicate
        assert st["malformed"] == 2 and st["lag"] == 0  # unknown type, no image_id
        text = json.dumps(recs)
        assert "bslz4" in text and "1043 x 981" in text and "zstd-magic" in text
        assert streams(client)["malformed"] == 2  # not CBOR, not a map

        # a series whose start disagrees with the calibration is refused, clearly
        send(det.sock, [v2.encode_start(6, "wrong", (1000, 981), PX, 2)])
        for i in range(2):
            send(
                det.sock,
                [v2.encode_image(6, "wrong", i, np.zeros((1000, 981), np.uint32), "bslz4")],
            )
        send(det.sock, [v2.encode_end(6, "wrong")])
        send(det.sock, [v2.encode_start(7, "wrong-px", f[0].shape, (75e-6, 75e-6), 1)])
        send(det.sock, [v2.encode_end(7, "wrong-px")])
        st6 = wait_for(lambda: (series_stat(client, 6) or {}).get("errors") == 2, 60, 0.1)
        assert st6, series_stat(client, 6)
        st6 = series_stat(client, 6)
        assert st6["state"] == "refused" and "Imagesize" in st6["refused"]
        assert not (out / "series_6.nxs").exists()
        assert {r["kind"] for r in error_records(out, 6)} == {"refused"}
        st7 = wait_for(lambda: (series_stat(client, 7) or {}).get("state") == "refused", 60, 0.1)
        assert st7 and "PixelSizeMicroM" in series_stat(client, 7)["refused"]

        # and a good series after all that
        det.series(8, f, 20, "bslz4")
        st = wait_series(client, 8)
        assert st["integrated"] == 20
    finally:
        proc.stop()
        det.close()
    assert proc.p.returncode == 0, proc.output()


def test_kill_minus_9_mid_series_then_restart(setup, tmp_path):
    """kill -9 mid-series: the NeXus file is readable with every flushed row; restart works."""
    from gpusaxs.io.nexus import read_nxazint

    det = Detector(2, sndtimeo_ms=2000)
    proc, client, out = start_server(setup, tmp_path, det.url, 2)
    f = setup["frames"]["uint32"]
    halt = threading.Event()

    def progress(i):
        if halt.is_set():
            raise InterruptedError

    def run():
        try:
            publish_series(
                det.sock,
                Encoder(2, "bslz4"),
                f,
                100_000,
                1,
                PX,
                rate=200,
                progress=progress,
            )
        except (InterruptedError, zmq.ZMQError):  # stopped, or the server is gone
            pass

    sender = threading.Thread(target=run, daemon=True)
    try:
        sender.start()
        ok = wait_for(
            lambda: ((series_stat(client, 1) or {}).get("flushed") or 0) >= 100,
            120,
            0.1,
        )
        assert ok, series_stat(client, 1)
        flushed = series_stat(client, 1)["flushed"]
        proc.stop(signal.SIGKILL)
        halt.set()
        sender.join(30)
        assert not sender.is_alive()
        d = read_nxazint(out / "series_1.nxs")
        assert len(d["image_ids"]) >= flushed
        ids = list(range(len(d["image_ids"])))
        check_rows(setup, out / "series_1.nxs", "uint32", ids, validate=False)
    finally:
        halt.set()
        proc.stop()
        sender.join(30)
        det.close()

    det = Detector(2)
    proc, client, out = start_server(setup, tmp_path, det.url, 2)
    try:
        det.series(2, f, 50, "bslz4")
        wait_series(client, 2)
        check_rows(setup, out / "series_2.nxs", "uint32", list(range(50)))
        det.series(1, f, 10, "lz4")  # the id again: a new file, the old one kept
        st = wait_series(client, 1)
        assert st["file"] == "series_1.2.nxs"
        check_rows(setup, out / "series_1.2.nxs", "uint32", list(range(10)))
    finally:
        proc.stop()
        det.close()
    assert proc.p.returncode == 0, proc.output()


def test_saxsdetsim_process_to_server(setup, tmp_path):
    """The saxsdetsim console tool (its own process) -> server: Stream V1, lz4, uint16."""
    from net_support import free_port

    from gpusaxs.calibration_model import Calibration
    from gpusaxs.clients.saxsdetsim import demo_frames
    from gpusaxs.integrator import Integrator

    port = free_port()
    sim = Proc(
        "gpusaxs.clients.saxsdetsim",
        [
            "--stream-version",
            "1",
            "--bind",
            f"tcp://127.0.0.1:{port}",
            "--compression",
            "lz4",
            "--dtype",
            "uint16",
            "--frames",
            "25",
            "--distinct",
            "3",
            "--seed",
            "5",
            "--series-id",
            "42",
            "-c",
            setup["cal"],
        ],
        tmp_path / "sim-ready.json",
        tmp_path / "sim.log",
        timeout=120,
    )
    proc, client, out = start_server(setup, tmp_path, sim.info["url"], 1)
    try:
        st = wait_series(client, 42)
        assert (st["integrated"], st["errors"], st["missing"]) == (25, 0, 0), st
        assert sim.p.wait(60) == 0, sim.output()
    finally:
        proc.stop()
        sim.stop()
    cal = Calibration.from_file(setup["cal"])
    frames = demo_frames(3, np.uint16, seed=5, calibration=cal)
    integ = Integrator(cal, backend="numpy")
    from gpusaxs.io.nexus import read_nxazint

    d = read_nxazint(out / "series_42.nxs")
    assert d["image_ids"].tolist() == list(range(25))
    for row, i in zip(d["intensity"], d["image_ids"], strict=True):
        np.testing.assert_allclose(
            row, integ.integrate(frames[i % 3])[1], rtol=1e-6, equal_nan=True
        )


def test_calibration_from_saxsleash_new_and_chi(tmp_path):
    """No --calibration: a series is refused until 'new' sends one; then integrated (+ .chi)."""
    from net_support import SHAPE, frame, mask_array, write_setup

    from gpusaxs.calibration_model import Calibration
    from gpusaxs.integrator import Integrator
    from gpusaxs.io.chi import read_chi
    from gpusaxs.io.nexus import read_nxazint
    from gpusaxs.matrix_cache import matrix_key

    base = tmp_path / "base"
    cal_path, mask_path = write_setup(base / "setup")
    det = Detector(2)
    proc, client, out = start_server(None, tmp_path, det.url, 2, "--chi")
    frames = [np.clip(frame(i), 0, None).astype(np.uint32) for i in range(3)]
    try:
        det.series(1, frames, 3, "bslz4")
        wait_for(lambda: (series_stat(client, 1) or {}).get("errors") == 3, 60, 0.1)
        st = series_stat(client, 1)
        assert st["state"] == "refused" and "no calibration" in st["refused"], st
        cal_dict = json.loads(cal_path.read_text())
        send_calibration(client, cal_dict, mask_path)
        det.series(2, frames, 6, "lz4")
        st = wait_series(client, 2)
        assert (st["integrated"], st["errors"]) == (6, 0), st
    finally:
        proc.stop()
        det.close()
    assert proc.p.returncode == 0, proc.output()
    cal = Calibration.from_dict(dict(cal_dict, MaskFile=None))
    integ = Integrator(cal, backend="numpy", mask=mask_array(SHAPE))
    d = read_nxazint(out / "series_2.nxs")
    assert d["image_ids"].tolist() == list(range(6))
    assert d["calibration_key"] == matrix_key(cal, mask=mask_array(SHAPE))
    for row, i in zip(d["intensity"], d["image_ids"], strict=True):
        np.testing.assert_allclose(
            row, integ.integrate(frames[i % 3])[1], rtol=1e-6, equal_nan=True
        )
    chi = read_chi(out / "series_2" / "image_000004.chi")
    np.testing.assert_allclose(chi.intensity, d["intensity"][4], rtol=1e-6, equal_nan=True)
    assert chi.calibration_key == d["calibration_key"]  # resume tells stale curves apart


def test_grazing_incidence_maps_of_a_stream_series(tmp_path):
    """A calibration with a GrazingIncidence block sent by 'saxsleash new': the series file
    holds each frame's map and cut beside its curve (issue 28), as the Integrator computes them,
    and still validates (the --calibration path: tests/test_stream_grazing.py)."""
    import h5py
    from net_support import SHAPE, frame, mask_array, write_setup

    from gpusaxs.calibration_model import Calibration
    from gpusaxs.integrator import Integrator

    cal_path, mask_path = write_setup(tmp_path / "base" / "setup")
    cal_dict = json.loads(cal_path.read_text())
    cal_dict["GrazingIncidence"] = {
        "IncidentAngleDeg": 0.3,
        "Map": {"NptIp": 32, "NptOop": 24},
        "Cuts": [{"Name": "horizon", "VerticalIntegration": False, "Npt": 40}],
    }
    frames = [np.clip(frame(i), 0, None).astype(np.uint32) for i in range(3)]
    det = Detector(2)
    proc, client, out = start_server(None, tmp_path, det.url, 2)
    try:
        send_calibration(client, cal_dict, mask_path)
        det.series(1, frames, 5, "bslz4")
        st = wait_series(client, 1)
        assert (st["integrated"], st["errors"]) == (5, 0), st
    finally:
        proc.stop()
        det.close()
    assert proc.p.returncode == 0, proc.output()
    cal = Calibration.from_dict(dict(cal_dict, MaskFile=None))
    integ = Integrator(cal, backend="numpy", mask=mask_array(SHAPE))
    angles = dict(incident_angle=0.3, angle_unit="deg", error_model="poisson")
    path = out / "series_1.nxs"
    with h5py.File(path, "r") as f:
        ids = f["entry/data/image_id"][()]
        gi = f["entry/grazing_incidence"]
        maps, cuts, qip = gi["map/I"][()], gi["cut_horizon/I"][()], gi["map/qip"][()]
    assert ids.tolist() == list(range(5)) and maps.shape == (5, 24, 32) and cuts.shape == (5, 40)
    for k, i in enumerate(ids):
        ref = integ.integrate2d_grazing_incidence(frames[i % 3], npt_ip=32, npt_oop=24, **angles)
        np.testing.assert_allclose(qip, ref.inplane, rtol=1e-12)
        np.testing.assert_allclose(maps[k], ref.intensity, rtol=1e-6, equal_nan=True)
        one = integ.integrate1d_grazing_incidence(
            frames[i % 3], npt_ip=40, vertical_integration=False, **angles
        )
        np.testing.assert_allclose(cuts[k], one.intensity, rtol=1e-6, equal_nan=True)
    assert np.isnan(maps).any() and np.isfinite(maps).any()
    errors, warnings, text = nxvalidate(path)
    assert (errors, warnings) == (0, 0), text
