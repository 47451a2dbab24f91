"""Stream pieces in one process: codecs, the V2/V1 message formats, and the buffer limit policy."""

import contextlib
import json
import struct
import threading

import numpy as np
import pytest

zmq = pytest.importorskip("zmq")
pytest.importorskip("cbor2")
bitshuffle = pytest.importorskip("bitshuffle")
lz4_block = pytest.importorskip("lz4.block")

from gpusaxs.server.stream import codecs, v1, v2
from gpusaxs.server.stream.messages import MalformedMessage

SHAPE = (195, 487)  # one PILATUS module


def frame(dtype, seed=0):
    rng = np.random.default_rng(seed)
    f = rng.poisson(30, SHAPE).astype(dtype)
    f[:, 100:107] = np.iinfo(dtype).max
    return f


@pytest.mark.parametrize("dtype", [np.uint16, np.uint32])
def test_bslz4_framing_matches_the_hdf5_filter(dtype):
    """Our bslz4 bytes: the HDF5 filter header + bitshuffle's own blocks, decoded back exactly."""
    f = frame(dtype)
    enc = codecs.encode_bslz4(f)
    total, block = struct.unpack(">QI", enc[:12])
    assert total == f.nbytes and block == 8192
    body = np.frombuffer(enc[12:], np.uint8)
    # independent decode of the body with bitshuffle itself
    np.testing.assert_array_equal(
        bitshuffle.decompress_lz4(body, f.shape, f.dtype, block // f.itemsize), f
    )
    np.testing.assert_array_equal(codecs.decode_bslz4(enc, f.shape, f.dtype, f.itemsize), f)
    with pytest.raises(codecs.DecodeError, match="element size"):
        codecs.decode_bslz4(enc, f.shape, f.dtype, 8)
    with pytest.raises(codecs.DecodeError, match="header announces"):
        codecs.decode_bslz4(enc, (10, 10), f.dtype)
    with pytest.raises(codecs.DecodeError):
        codecs.decode_bslz4(enc[: len(enc) // 2], f.shape, f.dtype)


def test_lz4_hdf5_framing_and_plain_block():
    f = frame(np.uint32)
    raw = f.tobytes()
    # HDF5 LZ4 framing with several blocks, one of them stored uncompressed
    blocks = [raw[k : k + 100_000] for k in range(0, len(raw), 100_000)]  # 4 blocks
    parts = [struct.pack(">QI", len(raw), 100_000)]
    for k, b in enumerate(blocks):
        c = b if k == 1 else lz4_block.compress(b, store_size=False)
        parts += [struct.pack(">I", len(c)), c]
    np.testing.assert_array_equal(codecs.decode_lz4_h5(b"".join(parts), f.shape, f.dtype), f)
    np.testing.assert_array_equal(
        codecs.decode_lz4_h5(codecs.encode_lz4_h5(f), f.shape, f.dtype), f
    )
    plain = lz4_block.compress(raw, store_size=False)
    np.testing.assert_array_equal(codecs.decode_lz4_block(plain, f.shape, f.dtype), f)
    with pytest.raises(codecs.DecodeError):
        codecs.decode_lz4_block(plain[:-50], f.shape, f.dtype)
    with pytest.raises(codecs.DecodeError, match="trailing"):
        codecs.decode_lz4_h5(b"".join(parts) + b"xx", f.shape, f.dtype)


def test_v2_message_structure_is_the_documented_one():
    """Image data: tag 40 [dims, typed-array tag 70 (uint32 LE) [tag 56500 [bslz4, 4, bytes]]]."""
    import cbor2

    f = frame(np.uint32)
    raw = v2.encode_image(7, "u-7", 3, f, "bslz4")
    plain = cbor2.loads(raw)
    assert plain["type"] == "image" and plain["series_id"] == 7 and plain["image_id"] == 3
    arr = plain["data"]["threshold_1"]
    assert arr.tag == 40 and list(arr.value[0]) == [195, 487]
    typed = arr.value[1]
    assert typed.tag == 70 and typed.value.tag == 56500
    algo, elem, _ = typed.value.value
    assert (algo, elem) == ("bslz4", 4)
    msg = v2.decode(raw)
    assert (msg.series_id, msg.image_id, msg.payload.compression) == (7, 3, "bslz4")
    np.testing.assert_array_equal(msg.payload.decode(), f)
    f16 = frame(np.uint16)
    m16 = v2.decode(v2.encode_image(7, "u-7", 4, f16, "none"))
    assert v2.TYPED_ARRAY_TAGS[69] == "<u2" and m16.payload.dtype == np.dtype("<u2")
    np.testing.assert_array_equal(m16.payload.decode(), f16)
    start = v2.decode(v2.encode_start(7, "u-7", SHAPE, (75e-6, 75e-6), 10))
    assert start.image_size == SHAPE and start.number_of_images == 10
    assert start.pixel_size_m == (75e-6, 75e-6)
    with pytest.raises(MalformedMessage, match="not valid CBOR"):
        v2.decode(b"\x9f\x01")
    with pytest.raises(MalformedMessage) as e:
        v2.decode(cbor2.dumps({"type": "image", "series_id": 7, "image_id": 9, "data": {}}))
    assert (e.value.series_id, e.value.image_id) == (7, 9)


def test_v1_messages():
    f = frame(np.uint16)
    parts = v1.encode_image(3, 11, f, "bslz4")
    import json

    d = json.loads(parts[1])
    assert d["htype"] == "dimage_d-1.0" and d["encoding"] == "bs16-lz4<"
    assert d["shape"] == [487, 195] and d["type"] == "uint16"  # [x, y]
    msg = v1.decode(parts)
    assert (msg.series_id, msg.image_id) == (3, 11)
    np.testing.assert_array_equal(msg.payload.decode(), f)
    for comp, enc in (("lz4", "lz4<"), ("none", "<")):
        p = v1.encode_image(3, 12, f, comp)
        assert json.loads(p[1])["encoding"] == enc
        np.testing.assert_array_equal(v1.decode(p).payload.decode(), f)
    start = v1.decode(v1.encode_start(3, SHAPE, (172e-6, 172e-6), 5))
    assert start.image_size == SHAPE and start.number_of_images == 5
    assert v1.decode(v1.encode_end(3)).series_id == 3
    bad = list(parts)
    bad[1] = json.dumps(dict(d, encoding="bs32-lz4<")).encode()
    with pytest.raises(MalformedMessage, match="does not fit"):
        v1.decode(bad)
    with pytest.raises(MalformedMessage, match="size"):
        v1.decode([parts[0], parts[1], parts[2][:-1]])


# -- the limit policy: a consumer that cannot keep up -------------------------------------------
class GatedIntegrator:
    """A real Integrator whose batch call waits until the test opens the gate."""

    def __init__(self, integ):
        self.integ = integ
        self.gate = threading.Event()
        self.calls = 0

    def __getattr__(self, name):
        return getattr(self.integ, name)

    def integrate(self, image):
        return self.integ.integrate(image)

    def integrate_batch_error(self, stack, std=True):
        self.calls += 1
        if not self.gate.wait(60):
            raise RuntimeError("gate never opened")
        return self.integ.integrate_batch_error(stack, std=std)


def small_calibration():
    """A calibration of one PILATUS module (SHAPE), no mask, no oversampling."""
    from gpusaxs.calibration_model import Calibration

    return Calibration.from_dict(
        {
            "PixelSizeMicroM": [172.0],
            "Imagesize": list(SHAPE),
            "PixelPerRadialElement": 1,
            "Tilt": {"TiltRotDeg": 0, "TiltAngleDeg": 0},
            "Oversampling": 1,
            "Wavelength": 1.54,
            "BeamCenter": [100.0, 200.0],
            "DedectorDistanceMM": 1000.0,
            "MaskFile": None,
        }
    )


@pytest.fixture(scope="module")
def small_integrator():
    from gpusaxs.integrator import Integrator

    return Integrator(small_calibration(), backend="numpy")


@pytest.mark.parametrize("policy", ["drop", "block"])
def test_slow_consumer_limit_policy(tmp_path, small_integrator, policy):
    """Integration stalled: 'drop' counts and records every dropped id; 'block' loses nothing."""
    from gpusaxs.io.nexus import read_nxazint
    from gpusaxs.server.stream.consumer import StreamConsumer

    gated = GatedIntegrator(small_integrator)
    ctx = zmq.Context()
    push = ctx.socket(zmq.PUSH)
    push.setsockopt(zmq.SNDHWM, 5)
    push.setsockopt(zmq.SNDTIMEO, 60_000)
    push.bind("tcp://127.0.0.1:*")
    url = push.getsockopt_string(zmq.LAST_ENDPOINT)
    cons = StreamConsumer(
        url,
        tmp_path,
        version=2,
        integrator=gated,
        batch_size=4,
        decode_threads=1,
        buffer_frames=6,
        hwm=5,
        policy=policy,
        context=ctx,
    ).start()
    n = 80
    f = frame(np.uint32)
    sent = threading.Event()

    def sender():
        push.send(v2.encode_start(1, "slow", SHAPE, (172e-6, 172e-6), n))
        for i in range(n):
            push.send(v2.encode_image(1, "slow", i, np.roll(f, i, axis=1), "bslz4"))
        push.send(v2.encode_end(1, "slow"))
        sent.set()

    t = threading.Thread(target=sender, daemon=True)
    try:
        t.start()
        if policy == "drop":
            # the receiver keeps taking frames and drops what does not fit the buffer
            assert cons.book.wait(lambda b: (b.get(1) or {}).get("received") == n, 60)
            assert sent.wait(60)
        else:
            # the buffer is full and the sender is held back by the high-water marks
            assert cons.book.wait(lambda b: cons._buffer.full(), 60)
            assert not sent.is_set()
        gated.gate.set()
        assert cons.book.wait(lambda b: (b.get(1) or {}).get("state") == "done", 60), cons.book.get(
            1
        )
    finally:
        gated.gate.set()
        cons.stop()
        t.join(60)
        push.close(0)
        ctx.term()
    st = cons.book.get(1)
    rows = read_nxazint(tmp_path / "series_1.nxs")
    ids = rows["image_ids"].tolist()
    recs = [r for r in cons.book.info()["recent errors"]]
    log = tmp_path / "series_1.errors.jsonl"
    dropped_ids = []
    if log.exists():
        import json

        dropped_ids = [
            json.loads(x)["image_id"]
            for x in log.read_text().splitlines()
            if json.loads(x)["kind"] == "dropped"
        ]
    assert st["received"] == n and st["missing"] == 0
    assert st["integrated"] == len(ids) and st["dropped"] == len(dropped_ids)
    assert sorted(ids + dropped_ids) == list(range(n))  # each id once, row or record
    for row, i in zip(rows["intensity"], ids, strict=True):
        np.testing.assert_allclose(
            row,
            small_integrator.integrate(np.roll(f, i, axis=1))[1],
            rtol=1e-6,
            equal_nan=True,
        )
    if policy == "drop":
        assert st["dropped"] > 0 and all(r["kind"] == "dropped" for r in recs)
    else:
        assert st["dropped"] == 0 and len(ids) == n


# -- messages as a DECTRIS detector sends them (issue 22 case 2, issue 23 cases 1-3, 7) ---------
# Hand-assembled CBOR (RFC 8949 major types), following dectris/documentation
# stream_v2/README.md ("Message Encoding": every message is a map under the self-described
# CBOR tag 55799; "Image Message": data -> channel -> tag 40 [[rows, cols], typed array]) and
# cbor/dectris-compression-tag.md (tag 56500 ["bslz4", elem_size, bytes]).  Not cbor2's encoder.
def _head(major, n):
    if n < 24:
        return bytes([major << 5 | n])
    for ai, fmt in ((24, ">B"), (25, ">H"), (26, ">I"), (27, ">Q")):
        if n < 256 ** struct.calcsize(fmt):
            return bytes([major << 5 | ai]) + struct.pack(fmt, n)
    raise ValueError(n)


def _uint(n):
    return _head(0, n)


def _bytes(b):
    return _head(2, len(b)) + b


def _text(s):
    return _head(3, len(s.encode())) + s.encode()


def _array(*items):
    return _head(4, len(items)) + b"".join(items)


def _map(**fields):
    return _head(5, len(fields)) + b"".join(_text(k) + v for k, v in fields.items())


def _tag(t, item):
    return _head(6, t) + item


def _f64(x):
    return b"\xfb" + struct.pack(">d", x)


SELF_DESCRIBED = b"\xd9\xd9\xf7"  # tag 55799, as the documentation's examples start


def _doc_image(sid, iid, f, modifier=None, image_id_item=None):
    payload = codecs.encode_bslz4(f)
    mod = _uint(f.itemsize) if modifier is None else modifier
    typed = _tag(
        70 if f.dtype == np.uint32 else 69,
        _tag(56500, _array(_text("bslz4"), mod, _bytes(payload))),
    )
    data = _tag(40, _array(_array(_uint(f.shape[0]), _uint(f.shape[1])), typed))
    return SELF_DESCRIBED + _map(
        type=_text("image"),
        series_id=_uint(sid),
        series_unique_id=_text("01J0-doc"),
        image_id=image_id_item if image_id_item is not None else _uint(iid),
        real_time=_array(_uint(1), _uint(1000)),
        series_date=_tag(0, _text("2026-12-06T23:00:00Z")),
        start_time=_array(_uint(iid), _uint(1000)),
        stop_time=_array(_uint(iid + 1), _uint(1000)),
        user_data=b"\xf6",
        data=_map(threshold_1=data),
    )


def test_v2_decodes_messages_built_from_the_dectris_documentation():
    """Self-described CBOR (d9 d9 f7): cbor2 6.x gives frozendicts at every level; all accepted."""
    f = frame(np.uint32)
    start = SELF_DESCRIBED + _map(
        type=_text("start"),
        series_id=_uint(7),
        series_unique_id=_text("01J0-doc"),
        number_of_images=_uint(3),
        image_size_x=_uint(SHAPE[1]),
        image_size_y=_uint(SHAPE[0]),
        pixel_size_x=_f64(172e-6),
        pixel_size_y=_f64(172e-6),
        beam_center_x=_f64(240.5),
        beam_center_y=_f64(97.0),
        detector_distance=_f64(1.5),
        incident_wavelength=_f64(1.0),
        channels=_array(_text("threshold_1")),
        threshold_energy=_map(threshold_1=_f64(6000.0)),
    )
    s = v2.decode(start)
    assert (s.series_id, s.image_size, s.number_of_images) == (7, SHAPE, 3)
    assert s.pixel_size_m == (172e-6, 172e-6) and s.channels == ["threshold_1"]
    m = v2.decode(_doc_image(7, 2, f))
    assert (m.series_id, m.image_id, m.unique_id) == (7, 2, "01J0-doc")
    np.testing.assert_array_equal(m.payload.decode(), f)
    e = v2.decode(SELF_DESCRIBED + _map(type=_text("end"), series_id=_uint(7)))
    assert e.series_id == 7


def test_v2_accepts_the_frozendicts_of_cbor2s_own_tag():
    """cbor2.dumps(CBORTag(55799, msg)) decodes to nested frozendicts; the message is accepted."""
    import cbor2

    f = frame(np.uint16)
    msg = {
        "type": "image",
        "series_id": 3,
        "image_id": 0,
        "data": {"threshold_1": v2.image_data(f, "lz4")},
    }
    raw = cbor2.dumps(cbor2.CBORTag(55799, msg))
    from importlib.metadata import version

    if int(version("cbor2").split(".")[0]) >= 6:  # cbor2 5 (the lower bound) gives dicts
        assert type(cbor2.loads(raw)).__name__ == "frozendict"
    np.testing.assert_array_equal(v2.decode(raw).payload.decode(), f)
    assert v2.encode_end(3, "u")[:3] == SELF_DESCRIBED  # what the simulator sends


def test_hostile_ids_and_modifiers_are_malformed_messages():
    """An array modifier, image_id 2**63, a bignum series_id, V1 frame 2**63: MalformedMessage
    naming what was readable (never a TypeError/OverflowError later in a stage)."""
    f = frame(np.uint32)
    with pytest.raises(MalformedMessage, match="modifier") as ei:
        v2.decode(_doc_image(1, 0, f, modifier=_array(_uint(4))))
    with pytest.raises(MalformedMessage, match="image_id") as ei:
        v2.decode(_doc_image(1, 0, f, image_id_item=_uint(2**63)))
    assert ei.value.series_id == 1 and ei.value.image_id is None
    bignum = _tag(2, _bytes((10**5000).to_bytes(2077, "big")))
    with pytest.raises(MalformedMessage, match="series_id") as ei:
        v2.decode(SELF_DESCRIBED + _map(type=_text("end"), series_id=bignum))
    assert ei.value.series_id is None
    parts = v1.encode_image(1, 0, f, "none")
    parts[0] = b'{"htype": "dimage-1.0", "series": 1, "frame": 9223372036854775808}'
    with pytest.raises(MalformedMessage, match="frame") as ei:
        v1.decode(parts)
    assert ei.value.series_id == 1 and ei.value.image_id is None


def test_end_of_a_series_announcing_2_62_images_is_bounded(tmp_path):
    """start(number_of_images=2**62), three images, end: in a process capped at 1.5 GB of
    address space, the end answers at once with the missing ids as ranges (before: a list of
    2**62 ids built under the book's lock)."""
    import subprocess
    import sys

    code = f"""
import json, resource, sys, time
resource.setrlimit(resource.RLIMIT_AS, (1_500_000_000, 1_500_000_000))
from gpusaxs.server.stream.series import SeriesBook
book = SeriesBook({str(tmp_path)!r})
book.start(1, "u", 2**62)
for i in (0, 1, 5):
    book.receive(1, i)
t0 = time.monotonic()
s = book.end(1)
print(json.dumps([s.missing, s.missing_ranges, time.monotonic() - t0]))
"""
    from net_support import env

    p = subprocess.run(
        [sys.executable, "-c", code], env=env(), capture_output=True, text=True, timeout=60
    )
    assert p.returncode == 0, p.stderr[-2000:]
    missing, ranges, dt = json.loads(p.stdout)
    assert missing == 2**62 - 3
    assert ranges == [[2, 5], [6, 2**62]]
    assert dt < 1.0
    (rec,) = [json.loads(x) for x in (tmp_path / "series_1.errors.jsonl").read_text().splitlines()]
    assert rec["kind"] == "missing" and rec["ranges"] == ranges and rec["ranges complete"]


def test_strays_never_evict_a_series_still_receiving():
    """Images of 30 unknown series ids: the started series stays, its frames are accepted."""
    from gpusaxs.server.stream.series import SeriesBook

    book = SeriesBook(None)
    book.start(1, "u", 10)
    assert book.receive(1, 0)
    for k in range(30):
        book.receive(1000 + k, 0)
        book.error(1000 + k, 0, "no start", "no start")
    assert book.is_started(1) and book.get(1)["state"] == "receiving"
    assert book.receive(1, 1)
    assert book.get(1)["received"] == 2
    assert len(book.info()["series"]) <= 1 + 20  # the strays stay bounded


class _Bug(BaseException):
    """Not an Exception: escapes every per-message handler, as a real bug in a stage might."""


class _BuggyIntegrator:
    """Raises at its first batch, once ``gate`` is set (when the test has every frame received:
    a stage that dies stops the receiver, and frames still on the wire then never arrive)."""

    def __init__(self, integ, gate=None):
        self._integ = integ
        self._gate = gate

    def __getattr__(self, name):
        return getattr(self._integ, name)

    def integrate_batch_error(self, *a, **k):
        if self._gate is not None:
            self._gate.wait(30)
        raise _Bug("simulated bug in the integrator stage")


def test_a_stage_that_dies_is_reported_and_stops_the_consumer(tmp_path, small_integrator):
    """The dead stage is named in info()["failed"], on_fatal hears it (the server stops on it)
    and stop() returns at once instead of waiting on the dead stage's queue."""
    import time

    from gpusaxs.server.stream.consumer import StreamConsumer

    fatal = []
    gate = threading.Event()
    ctx = zmq.Context()
    push = ctx.socket(zmq.PUSH)
    push.setsockopt(zmq.SNDTIMEO, 10_000)
    push.bind("tcp://127.0.0.1:*")
    cons = StreamConsumer(
        push.getsockopt_string(zmq.LAST_ENDPOINT),
        tmp_path,
        integrator=_BuggyIntegrator(small_integrator, gate),
        batch_size=2,
        context=ctx,
        on_fatal=fatal.append,
    ).start()
    try:
        push.send(v2.encode_start(1, "bug", SHAPE, (172e-6, 172e-6), 2))
        for i in range(2):
            push.send(v2.encode_image(1, "bug", i, frame(np.uint32), "bslz4"))
        assert cons.book.wait(lambda b: (b.get(1) or {}).get("received", 0) >= 2, 30)
        gate.set()
        deadline = time.monotonic() + 30
        while not fatal and time.monotonic() < deadline:
            cons.book.wait(lambda b: bool(fatal), 0.1)
        assert fatal and "_integrate_loop" in fatal[0] and "simulated bug" in fatal[0]
        assert "_integrate_loop" in cons.info()["failed"]
    finally:
        t0 = time.monotonic()
        assert cons.stop(timeout=20)
        assert time.monotonic() - t0 < 20
        push.close(0)
        ctx.term()
    st = cons.book.get(1)
    assert st["errors"] == 2 and st["integrated"] == 0  # each frame one record


@contextlib.contextmanager
def running_consumer(tmp_path, integrator, **options):
    """A started StreamConsumer on a PUSH socket of its own: yields (consumer, push); stopped
    and closed on the way out."""
    from gpusaxs.server.stream.consumer import StreamConsumer

    ctx = zmq.Context()
    push = ctx.socket(zmq.PUSH)
    push.setsockopt(zmq.SNDTIMEO, 10_000)
    push.bind("tcp://127.0.0.1:*")
    cons = StreamConsumer(
        push.getsockopt_string(zmq.LAST_ENDPOINT),
        tmp_path,
        integrator=integrator,
        context=ctx,
        **options,
    ).start()
    try:
        yield cons, push
    finally:
        cons.stop()
        push.close(0)
        ctx.term()


def send_series(push, sid, name, frames):
    """A whole Stream V2 series of ``frames`` (bslz4) on ``push``."""
    push.send(v2.encode_start(sid, name, SHAPE, (172e-6, 172e-6), len(frames)))
    for i, f in enumerate(frames):
        push.send(v2.encode_image(sid, name, i, f, "bslz4"))
    push.send(v2.encode_end(sid, name))


class _OneFrameRefused:
    """An integrator whose device refuses any stack holding the frame marked at pixel (1, 1)."""

    MARK = 77_777

    def __init__(self, integ):
        self._integ = integ

    def __getattr__(self, name):
        return getattr(self._integ, name)

    def integrate_batch_error(self, stack, std=True):
        if np.any(stack[:, 1, 1] == self.MARK):
            raise RuntimeError("device refused the frame")
        return self._integ.integrate_batch_error(stack, std=std)


def test_one_frame_that_fails_to_integrate_fails_alone(tmp_path, small_integrator):
    """A batch whose integration raises is retried frame by frame (gpusaxs.frame_batches):
    the refused frame gets one "integrate" record, its batch mates their rows."""
    from gpusaxs.io.nexus import read_nxazint

    n, bad = 8, 5
    frames = [frame(np.uint32, seed=i) for i in range(n)]
    frames[bad][1, 1] = _OneFrameRefused.MARK
    refusing = _OneFrameRefused(small_integrator)
    with running_consumer(tmp_path, refusing, batch_size=8) as (cons, push):
        send_series(push, 1, "one", frames)
        assert cons.book.wait(lambda b: (b.get(1) or {}).get("state") == "done", 60)
    st = cons.book.get(1)
    assert st["integrated"] == n - 1 and st["errors"] == 1
    rows = read_nxazint(tmp_path / "series_1.nxs")
    assert sorted(rows["image_ids"].tolist()) == [i for i in range(n) if i != bad]
    for row, i in zip(rows["intensity"], rows["image_ids"], strict=True):
        np.testing.assert_allclose(
            row, small_integrator.integrate(frames[i])[1], rtol=1e-6, equal_nan=True
        )
    (record,) = cons.book.info()["recent errors"]
    assert record["image_id"] == bad and record["kind"] == "integrate"


def test_stream_rows_of_an_averaging_server_record_its_parameters(tmp_path, small_integrator):
    """saxsdogserver --average: the stream's rows are the sigma-clipped curves, and the series'
    NeXus file records the parameters as option_* fields (issue 27)."""
    import h5py

    from gpusaxs.io.nexus import read_nxazint
    from gpusaxs.robust_curves import AveragedIntegrator, average_params

    params = average_params("sigma-clip", clip_thres=3.0)
    frames = [frame(np.uint32, seed=i) for i in range(3)]
    averaging = AveragedIntegrator(small_integrator, params)
    with running_consumer(tmp_path, averaging, batch_size=4) as (cons, push):
        send_series(push, 1, "avg", frames)
        assert cons.book.wait(lambda b: (b.get(1) or {}).get("state") == "done", 60)
    rows = read_nxazint(tmp_path / "series_1.nxs")
    clipped = small_integrator.sigma_clip_batch(np.stack(frames), thres=3.0)
    for row, i in zip(rows["intensity"], rows["image_ids"], strict=True):
        np.testing.assert_allclose(row, clipped.intensity[i], rtol=1e-6, equal_nan=True)
    with h5py.File(tmp_path / "series_1.nxs", "r") as f:
        inp = f["entry/reduction/input"]
        assert inp["option_average"][()].decode() == '"sigma_clip"'
        assert json.loads(inp["option_thres"][()].decode()) == 3.0
