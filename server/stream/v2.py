"""DECTRIS Stream V2: one CBOR map per ZeroMQ message (types "start", "image", "end").

References (dectris/documentation): ``stream_v2/README.md`` ("Message Encoding", "Data Model",
"Compression", "Start Message", "Image Message", "End Message") and
``cbor/dectris-compression-tag.md`` (tag 56500).  Image data is a multi-dimensional array
(RFC 8746 section 3.1, tag 40, row-major ``[dims, typed array]``) whose typed array (RFC 8746
section 2, tags 64-87) wraps either a byte string or a tag-56500 compressed byte string
``["bslz4", elem_size, bytes]`` / ``["lz4", 0, bytes]``.  Decoded with ``cbor2``; the payload
stays compressed until :meth:`Payload.decode` runs on a decode thread, and is never copied:
:mod:`.cbor_spans` takes it out of the message before cbor2 parses the rest (a memoryview of
the ZeroMQ frame).

A detector sends every message as self-described CBOR (tag 55799, bytes ``d9 d9 f7``); cbor2
6.x decodes the maps under a tag as ``cbor2.frozendict``: every level accepts any
:class:`collections.abc.Mapping` (read in place, never copied).  Ids (``series_id``,
``image_id``) above the int64 range are refused as malformed.
"""

from collections.abc import Mapping

import numpy as np

from .cbor_spans import PLACEHOLDER_TAG, split_payloads
from .codecs import encode_bslz4, encode_lz4_h5
from .idset import MAX_ID
from .messages import End, Image, MalformedMessage, Payload, Start

TAG_MULTIDIM_ROW_MAJOR = 40
TAG_MULTIDIM_COLUMN_MAJOR = 1040
TAG_DECTRIS_COMPRESSION = 56500
#: RFC 8746 typed-array tags -> numpy dtype (the integer and float ones a detector may send)
TYPED_ARRAY_TAGS = {
    64: "u1",
    65: ">u2",
    66: ">u4",
    67: ">u8",
    68: "u1",
    69: "<u2",
    70: "<u4",
    71: "<u8",
    72: "i1",
    73: ">i2",
    74: ">i4",
    75: ">i8",
    77: "<i2",
    78: "<i4",
    79: "<i8",
    80: ">f2",
    81: ">f4",
    82: ">f8",
    84: "<f2",
    85: "<f4",
    86: "<f8",
}
#: a payload: bytes as cbor2 makes them, or a memoryview of the message (:mod:`.cbor_spans`)
_BYTES = (bytes, bytearray, memoryview)
DTYPE_TAGS = {np.dtype(v).str: k for k, v in TYPED_ARRAY_TAGS.items() if k != 68}


class _Compressed:
    __slots__ = ("algorithm", "data", "elem_size")

    def __init__(self, algorithm, elem_size, data):
        self.algorithm, self.elem_size, self.data = algorithm, elem_size, data


class _Typed:
    __slots__ = ("dtype", "value")

    def __init__(self, dtype, value):
        self.dtype, self.value = dtype, value


class _MultiDim:
    __slots__ = ("column_major", "dims", "typed")

    def __init__(self, dims, typed, column_major):
        self.dims, self.typed, self.column_major = dims, typed, column_major


def _tag_hook(first, second, payloads=None):
    # cbor2 5.x calls hook(decoder, tag), cbor2 6.x hook(tag, immutable)
    import cbor2

    tag = first if isinstance(first, cbor2.CBORTag) else second
    t = tag.tag
    if t == PLACEHOLDER_TAG and payloads is not None:  # a payload taken out by split_payloads
        return payloads[tag.value]
    if t == TAG_DECTRIS_COMPRESSION:
        v = tag.value
        if not (
            isinstance(v, (list, tuple))
            and len(v) == 3
            and isinstance(v[0], str)
            and isinstance(v[2], _BYTES)
            and (v[1] is None or (isinstance(v[1], int) and not isinstance(v[1], bool)))
        ):
            raise MalformedMessage("tag 56500 content is not [algorithm, integer modifier, bytes]")
        return _Compressed(v[0], v[1], v[2])
    if t in TYPED_ARRAY_TAGS:
        return _Typed(np.dtype(TYPED_ARRAY_TAGS[t]), tag.value)
    if t in (TAG_MULTIDIM_ROW_MAJOR, TAG_MULTIDIM_COLUMN_MAJOR):
        v = tag.value
        if not (isinstance(v, (list, tuple)) and len(v) == 2 and isinstance(v[0], (list, tuple))):
            raise MalformedMessage("tag 40 content is not [dimensions, array]")
        return _MultiDim(v[0], v[1], t == TAG_MULTIDIM_COLUMN_MAJOR)
    return tag


def _int(msg, key, series_id=None, image_id=None, required=True):
    v = msg.get(key)
    if v is None and not required:
        return None
    if isinstance(v, bool) or not isinstance(v, int) or not 0 <= v <= MAX_ID:
        raise MalformedMessage(
            f"field {key!r} is missing or not an unsigned integer below 2**63",
            series_id,
            image_id,
        )
    return v


def _id(msg, key):
    """The id ``key`` when it is a usable one (an int in 0 .. 2**63-1), else None."""
    v = msg.get(key)
    return v if type(v) is int and 0 <= v <= MAX_ID else None


def _float(msg, key):
    v = msg.get(key)
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else None


def _payload(value, series_id, image_id):
    if not isinstance(value, _MultiDim):
        raise MalformedMessage(
            "channel data is not a multi-dimensional array (tag 40)",
            series_id,
            image_id,
        )
    dims = value.dims
    if len(dims) != 2 or not all(
        isinstance(d, int) and not isinstance(d, bool) and d > 0 for d in dims
    ):
        raise MalformedMessage(
            f"image dimensions {dims!r} are not two positive integers",
            series_id,
            image_id,
        )
    if value.column_major:
        raise MalformedMessage(
            "column-major image data (tag 1040) is not supported", series_id, image_id
        )
    typed = value.typed
    if not isinstance(typed, _Typed):
        raise MalformedMessage(
            "image data is not a typed array (RFC 8746 tags 64-87)", series_id, image_id
        )
    inner = typed.value
    shape = (int(dims[0]), int(dims[1]))
    if isinstance(inner, _Compressed):
        if inner.algorithm not in ("bslz4", "lz4"):
            raise MalformedMessage(f"unknown compression {inner.algorithm!r}", series_id, image_id)
        return Payload(
            inner.algorithm,
            inner.data,
            shape,
            typed.dtype,
            inner.elem_size if inner.algorithm == "bslz4" else None,
        )
    if isinstance(inner, _BYTES):
        return Payload("none", inner, shape, typed.dtype)
    raise MalformedMessage("typed array holds neither bytes nor tag 56500", series_id, image_id)


def decode(raw):
    """One ZeroMQ message (bytes-like) -> Start, Image or End; raises MalformedMessage."""
    import cbor2

    split = split_payloads(raw)  # the frame stays a view of the message, never copied
    if split is None:
        body, hook = raw, _tag_hook
    else:
        body, payloads = split
        hook = lambda first, second: _tag_hook(first, second, payloads)  # noqa: E731
    try:
        msg = cbor2.loads(body, tag_hook=hook)  # bytes-like: no copy of the message
    except MalformedMessage:
        raise
    except Exception as exc:  # noqa: BLE001 - CBORDecodeError and whatever hostile input triggers
        cause = exc.__cause__ or exc.__context__  # cbor2 wraps what the tag hook raised
        if isinstance(cause, MalformedMessage):
            raise cause from None
        raise MalformedMessage(f"not valid CBOR: {type(exc).__name__}: {str(exc)[:120]}") from None
    if not isinstance(msg, Mapping):
        raise MalformedMessage("CBOR message is not a map")
    kind = msg.get("type")
    series_id = _id(msg, "series_id")
    if kind == "image":
        image_id = _id(msg, "image_id")
        sid = _int(msg, "series_id", series_id, image_id)
        iid = _int(msg, "image_id", sid, image_id)
        data = msg.get("data")
        if not isinstance(data, Mapping) or not data:
            raise MalformedMessage("image message has no channel data", sid, iid)
        channel = next(iter(data.values()))
        return Image(sid, iid, _payload(channel, sid, iid), str(msg.get("series_unique_id", "")))
    if kind == "start":
        sid = _int(msg, "series_id")
        h, w = _int(msg, "image_size_y", sid), _int(msg, "image_size_x", sid)
        px, py = _float(msg, "pixel_size_x"), _float(msg, "pixel_size_y")
        bx, by = _float(msg, "beam_center_x"), _float(msg, "beam_center_y")
        return Start(
            series_id=sid,
            unique_id=str(msg.get("series_unique_id", "")),
            image_size=(h, w),
            pixel_size_m=None if px is None or py is None else (py, px),
            number_of_images=_int(msg, "number_of_images", sid, required=False),
            beam_center=None if bx is None or by is None else (bx, by),
            distance_m=_float(msg, "detector_distance"),
            wavelength_A=_float(msg, "incident_wavelength"),
            energy_eV=_float(msg, "incident_energy"),
            channels=list(msg.get("channels") or []),
            count_time_s=_float(msg, "count_time"),
        )
    if kind == "end":
        return End(_int(msg, "series_id"), str(msg.get("series_unique_id", "")))
    raise MalformedMessage(f"unknown message type {kind!r}", series_id)


# -- encoding (simulator, tests) ----------------------------------------------------------------
#: the self-described CBOR tag (RFC 8949 section 3.4.6) that starts every DECTRIS message
SELF_DESCRIBED = b"\xd9\xd9\xf7"


def dumps(msg):
    """One message as the detector sends it: tag 55799 around the CBOR map."""
    import cbor2

    return SELF_DESCRIBED + cbor2.dumps(msg)


def encode_start(
    series_id,
    unique_id,
    shape,
    pixel_size_m,
    number_of_images,
    *,
    beam_center=(0.0, 0.0),
    distance_m=1.0,
    wavelength_A=1.0,
    count_time=0.001,
    channel="threshold_1",
    saturation_value=None,
):
    import cbor2

    h, w = shape
    energy = 12398.419843320026 / wavelength_A
    msg = {
        "type": "start",
        "series_id": int(series_id),
        "series_unique_id": str(unique_id),
        "arm_date": cbor2.CBORTag(0, "2026-01-01T00:00:00Z"),
        "beam_center_x": float(beam_center[0]),
        "beam_center_y": float(beam_center[1]),
        "channels": [channel],
        "count_time": float(count_time),
        "countrate_correction_enabled": False,
        "detector_description": "gpusaxs saxsdetsim",
        "detector_serial_number": "SIM-0",
        "detector_translation": [0.0, 0.0, distance_m],
        "flatfield_enabled": False,
        "frame_time": float(count_time),
        "image_size_x": int(w),
        "image_size_y": int(h),
        "incident_energy": energy,
        "incident_wavelength": float(wavelength_A),
        "number_of_images": int(number_of_images),
        "pixel_mask_enabled": False,
        "pixel_size_x": float(pixel_size_m[1]),
        "pixel_size_y": float(pixel_size_m[0]),
        "sensor_material": "Si",
        "sensor_thickness": 0.00045,
        "threshold_energy": {channel: energy / 2},
        "detector_distance": float(distance_m),
        "virtual_pixel_interpolation_enabled": False,
    }
    if saturation_value is not None:
        msg["saturation_value"] = int(saturation_value)
    return dumps(msg)


def image_data(frame, compression):
    """The ``data`` channel value of an image message for ``frame`` (a CBOR tag tree)."""
    import cbor2

    frame = np.ascontiguousarray(frame)
    tag = DTYPE_TAGS[
        frame.dtype.newbyteorder("<").str if frame.dtype.itemsize > 1 else frame.dtype.str
    ]
    if compression == "bslz4":
        inner = cbor2.CBORTag(
            TAG_DECTRIS_COMPRESSION,
            ["bslz4", frame.dtype.itemsize, encode_bslz4(frame)],
        )
    elif compression == "lz4":
        inner = cbor2.CBORTag(TAG_DECTRIS_COMPRESSION, ["lz4", 0, encode_lz4_h5(frame)])
    elif compression == "none":
        inner = frame.astype(frame.dtype.newbyteorder("<"), copy=False).tobytes()
    else:
        raise ValueError(f"unknown compression {compression!r}")
    return cbor2.CBORTag(TAG_MULTIDIM_ROW_MAJOR, [list(frame.shape), cbor2.CBORTag(tag, inner)])


def encode_image(series_id, unique_id, image_id, frame, compression, channel="threshold_1"):
    import cbor2

    return dumps(
        {
            "type": "image",
            "series_id": int(series_id),
            "series_unique_id": str(unique_id),
            "image_id": int(image_id),
            "real_time": [1, 1],
            "series_date": cbor2.CBORTag(0, "2026-01-01T00:00:00Z"),
            "start_time": [int(image_id), 1],
            "stop_time": [int(image_id) + 1, 1],
            "user_data": None,
            "data": {channel: image_data(frame, compression)},
        }
    )


def encode_end(series_id, unique_id):
    return dumps({"type": "end", "series_id": int(series_id), "series_unique_id": str(unique_id)})
