"""DECTRIS Stream V1 (the legacy "stream" interface, port 9999): multipart JSON + binary.

Reference: the SIMPLON API manual, chapter "Stream Interface" (message "Global Header"
``dheader-1.0`` [+ detector configuration, + flatfield/pixel mask/countrate parts when
header_detail is "all"], "Image Data" ``dimage-1.0`` + ``dimage_d-1.0`` + the data blob +
``dconfig-1.0``, "End of Series" ``dseries_end-1.0``).  ``dimage_d-1.0`` gives ``shape`` as
[x, y] (width, height), ``type`` ("uint16", "uint32", ...) and ``encoding``: ``bs32-lz4<``,
``bs16-lz4<``, ``bs8-lz4<`` (bitshuffle/LZ4, HDF5 framing), ``lz4<`` (one LZ4 block) or ``<``
(raw little endian).  The detector configuration holds lengths in metres and the wavelength in
angstrom.
"""

import hashlib
import json

import numpy as np

from .codecs import encode_bslz4, encode_lz4_block
from .idset import MAX_ID
from .messages import End, Image, MalformedMessage, Payload, Start

ENCODINGS = {
    "bs32-lz4<": ("bslz4", 4),
    "bs16-lz4<": ("bslz4", 2),
    "bs8-lz4<": ("bslz4", 1),
    "lz4<": ("lz4-block", None),
    "<": ("none", None),
}
TYPES = {
    "uint8": "u1",
    "uint16": "<u2",
    "uint32": "<u4",
    "int32": "<i4",
    "float32": "<f4",
}
MAX_JSON_PART = 16 * 1024 * 1024


def _json(part, what, series_id=None, image_id=None):
    if len(part) > MAX_JSON_PART:
        raise MalformedMessage(
            f"{what} part is {len(part)} bytes, too large for JSON", series_id, image_id
        )
    try:
        d = json.loads(bytes(part).decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        raise MalformedMessage(f"{what} part is not valid JSON", series_id, image_id) from None
    if not isinstance(d, dict):
        raise MalformedMessage(f"{what} part is not a JSON object", series_id, image_id)
    return d


def _uint(d, key, what, series_id=None, image_id=None):
    v = d.get(key)
    if isinstance(v, bool) or not isinstance(v, int) or not 0 <= v <= MAX_ID:
        raise MalformedMessage(
            f"{what}: field {key!r} missing or not an unsigned integer below 2**63",
            series_id,
            image_id,
        )
    return v


def _float(d, key):
    v = d.get(key)
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else None


def decode(parts):
    """A multipart message (list of bytes-like) -> Start, Image or End; raises MalformedMessage."""
    if not parts:
        raise MalformedMessage("empty multipart message")
    head = _json(parts[0], "first")
    htype = head.get("htype")
    if htype == "dimage-1.0":
        sid = _uint(head, "series", "dimage-1.0")
        iid = _uint(head, "frame", "dimage-1.0", sid)
        if len(parts) < 3:
            raise MalformedMessage(
                f"image message has {len(parts)} parts, at least 3 needed", sid, iid
            )
        d = _json(parts[1], "dimage_d-1.0", sid, iid)
        if d.get("htype") != "dimage_d-1.0":
            raise MalformedMessage(
                f"second part htype {d.get('htype')!r} is not dimage_d-1.0", sid, iid
            )
        shape = d.get("shape")
        if not (
            isinstance(shape, list)
            and len(shape) == 2
            and all(isinstance(s, int) and not isinstance(s, bool) and s > 0 for s in shape)
        ):
            raise MalformedMessage(f"dimage_d-1.0 shape {shape!r} is not [x, y]", sid, iid)
        if d.get("type") not in TYPES:
            raise MalformedMessage(f"dimage_d-1.0 type {d.get('type')!r} not supported", sid, iid)
        if d.get("encoding") not in ENCODINGS:
            raise MalformedMessage(
                f"dimage_d-1.0 encoding {d.get('encoding')!r} not supported", sid, iid
            )
        dtype = np.dtype(TYPES[d["type"]])
        compression, elem = ENCODINGS[d["encoding"]]
        if elem is not None and elem != dtype.itemsize:
            raise MalformedMessage(
                f"encoding {d['encoding']} does not fit type {d['type']}", sid, iid
            )
        size = d.get("size")
        data = parts[2]
        if isinstance(size, int) and size != len(data):
            raise MalformedMessage(
                f"data part has {len(data)} bytes, dimage_d-1.0 size says {size}",
                sid,
                iid,
            )
        return Image(sid, iid, Payload(compression, data, (shape[1], shape[0]), dtype, elem))
    if htype == "dheader-1.0":
        sid = _uint(head, "series", "dheader-1.0")
        detail = head.get("header_detail", "basic")
        if detail == "none" or len(parts) < 2:
            return Start(series_id=sid)
        cfg = _json(parts[1], "detector configuration", sid)
        w = cfg.get("x_pixels_in_detector")
        h = cfg.get("y_pixels_in_detector")
        size = (h, w) if isinstance(h, int) and isinstance(w, int) else None
        px, py = _float(cfg, "x_pixel_size"), _float(cfg, "y_pixel_size")
        n = None
        if isinstance(cfg.get("nimages"), int):
            n = cfg["nimages"] * (cfg["ntrigger"] if isinstance(cfg.get("ntrigger"), int) else 1)
            if not 0 <= n <= MAX_ID + 1:
                raise MalformedMessage("nimages x ntrigger is out of range", sid)
        bx, by = _float(cfg, "beam_center_x"), _float(cfg, "beam_center_y")
        return Start(
            series_id=sid,
            image_size=size,
            pixel_size_m=None if px is None or py is None else (py, px),
            number_of_images=n,
            beam_center=None if bx is None or by is None else (bx, by),
            distance_m=_float(cfg, "detector_distance"),
            wavelength_A=_float(cfg, "wavelength"),
            energy_eV=_float(cfg, "photon_energy"),
            count_time_s=_float(cfg, "count_time"),
        )
    if htype == "dseries_end-1.0":
        return End(_uint(head, "series", "dseries_end-1.0"))
    sid = head.get("series")
    sid = sid if type(sid) is int and 0 <= sid <= MAX_ID else None
    raise MalformedMessage(f"unknown htype {htype!r}", sid)


# -- encoding (simulator, tests) ----------------------------------------------------------------
def _j(d):
    return json.dumps(d).encode()


def encode_start(
    series_id,
    shape,
    pixel_size_m,
    number_of_images,
    *,
    beam_center=(0.0, 0.0),
    distance_m=1.0,
    wavelength_A=1.0,
    count_time=0.001,
):
    h, w = shape
    cfg = {
        "x_pixels_in_detector": int(w),
        "y_pixels_in_detector": int(h),
        "x_pixel_size": float(pixel_size_m[1]),
        "y_pixel_size": float(pixel_size_m[0]),
        "beam_center_x": float(beam_center[0]),
        "beam_center_y": float(beam_center[1]),
        "detector_distance": float(distance_m),
        "wavelength": float(wavelength_A),
        "photon_energy": 12398.419843320026 / wavelength_A,
        "count_time": float(count_time),
        "frame_time": float(count_time),
        "nimages": int(number_of_images),
        "ntrigger": 1,
        "description": "gpusaxs saxsdetsim",
        "detector_number": "SIM-0",
    }
    return [
        _j({"htype": "dheader-1.0", "series": int(series_id), "header_detail": "basic"}),
        _j(cfg),
    ]


def encode_image(series_id, image_id, frame, compression):
    """compression: "bslz4" -> bsNN-lz4<, "lz4" -> lz4<, "none" -> <."""
    frame = np.ascontiguousarray(frame)
    tname = {v: k for k, v in TYPES.items()}[
        frame.dtype.newbyteorder("<").str if frame.dtype.itemsize > 1 else frame.dtype.str
    ]
    if compression == "bslz4":
        data, enc = encode_bslz4(frame), f"bs{8 * frame.dtype.itemsize}-lz4<"
    elif compression == "lz4":
        data, enc = encode_lz4_block(frame), "lz4<"
    elif compression == "none":
        data, enc = frame.tobytes(), "<"
    else:
        raise ValueError(f"unknown compression {compression!r}")
    return [
        _j(
            {
                "htype": "dimage-1.0",
                "series": int(series_id),
                "frame": int(image_id),
                "hash": hashlib.md5(data).hexdigest(),
            }
        ),
        _j(
            {
                "htype": "dimage_d-1.0",
                "shape": [frame.shape[1], frame.shape[0]],
                "type": tname,
                "encoding": enc,
                "size": len(data),
            }
        ),
        data,
        _j(
            {
                "htype": "dconfig-1.0",
                "start_time": int(image_id) * 1000,
                "stop_time": int(image_id) * 1000 + 900,
                "real_time": 900,
            }
        ),
    ]


def encode_end(series_id):
    return [_j({"htype": "dseries_end-1.0", "series": int(series_id)})]
