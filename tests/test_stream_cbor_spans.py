"""The V2 receiver's zero-copy path (server/stream/cbor_spans.py) against cbor2's own parse."""

import numpy as np
import pytest

cbor2 = pytest.importorskip("cbor2")
pytest.importorskip("bitshuffle")
pytest.importorskip("lz4.block")

from gpusaxs.server.stream import v2
from gpusaxs.server.stream.cbor_spans import MIN_BYTES, PLACEHOLDER_TAG, split_payloads


def _frame(dtype=np.uint32):
    rng = np.random.default_rng(3)
    return rng.poisson(50, size=(195, 487)).astype(dtype)


@pytest.mark.parametrize("compression", ["bslz4", "lz4", "none"])
def test_payload_is_a_view_of_the_message_and_decodes_to_the_frame(compression):
    f = _frame()
    raw = v2.encode_image(7, "u", 3, f, compression)
    body, payloads = split_payloads(raw)
    assert len(payloads) == 1 and len(body) < 1000
    msg = v2.decode(raw)
    assert isinstance(msg.payload.data, memoryview) and msg.payload.data.obj is raw
    # the same bytes cbor2 finds in the message itself
    tree = cbor2.loads(raw)
    inner = tree["data"]["threshold_1"].value[1].value
    want = inner if compression == "none" else inner.value[2]
    assert bytes(msg.payload.data) == want
    np.testing.assert_array_equal(msg.payload.decode(), f)
    assert (msg.series_id, msg.image_id) == (7, 3)


def test_small_and_misplaced_byte_strings_stay_with_cbor2():
    f = _frame(np.uint8)[:10]  # below MIN_BYTES
    assert f.nbytes < MIN_BYTES and split_payloads(v2.encode_image(1, "u", 0, f, "none")) is None
    big = b"x" * MIN_BYTES  # a large byte string that is no payload (user data): not taken out
    raw = v2.dumps({"type": "image", "series_id": 1, "image_id": 0, "user_data": big, "data": {}})
    assert split_payloads(raw) is None
    with pytest.raises(v2.MalformedMessage):
        v2.decode(raw)


def test_the_walk_gives_up_on_what_it_does_not_know():
    f = _frame()
    raw = v2.encode_image(1, "u", 0, f, "bslz4")
    # a placeholder tag already in the message, an unknown tag, trailing bytes, a truncation
    planted = v2.dumps({"a": cbor2.CBORTag(PLACEHOLDER_TAG, 0), "data": cbor2.loads(raw)["data"]})
    assert split_payloads(planted) is None
    assert split_payloads(v2.dumps(cbor2.CBORTag(12345, cbor2.loads(raw)))) is None
    assert split_payloads(raw + b"\x00") is None
    assert split_payloads(raw[:-1]) is None
    with pytest.raises(v2.MalformedMessage):
        v2.decode(raw[:-1])
    # an indefinite-length map around the same content: parsed by cbor2 alone, same frame
    body = cbor2.dumps(cbor2.loads(raw))
    indefinite = b"\xbf" + body[1:] + b"\xff"  # body starts with a one-byte map header
    assert body[0] == 0xA0 + len(cbor2.loads(raw))
    assert split_payloads(indefinite) is None
    np.testing.assert_array_equal(v2.decode(indefinite).payload.decode(), f)
