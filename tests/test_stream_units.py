"""Stream pieces in one process: codecs, the V2/V1 message formats, and the buffer limit policy."""

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


@pytest.fixture(scope="module")
def small_integrator():
    from gpusaxs.calibration import Calibration
    from gpusaxs.integrator import Integrator

    cal = Calibration.from_dict(
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
    return Integrator(cal, backend="numpy")


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
