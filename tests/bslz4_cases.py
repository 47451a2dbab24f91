"""Frames and chunks of the bslz4 decoder's tests (tests/test_gpu_bslz4.py on the CPU shim,
tests/test_gpu_decode_device.py on a device): detector-like frames, the reference encoder and
decoder (the bitshuffle package, HDF5 filter framing) and hostile chunks."""

import struct

import numpy as np


def frames_like_detector(n, shape, dtype, seed=0):
    """Poisson counts with the detector's gap value (max of the type) in stripes."""
    rng = np.random.default_rng(seed)
    x = rng.poisson(4.0, size=(n, *shape)).astype(dtype)
    if np.dtype(dtype).kind == "u":
        x[:, :, 40:45] = np.iinfo(dtype).max
    return x


def encode(frame, block_bytes=8192):
    """Reference encoder: the bitshuffle package, HDF5 filter framing."""
    import bitshuffle

    frame = np.ascontiguousarray(frame)
    elems = block_bytes // frame.dtype.itemsize
    body = bitshuffle.compress_lz4(frame.reshape(-1), elems)
    return struct.pack(">QI", frame.nbytes, elems * frame.dtype.itemsize) + body.tobytes()


def reference(chunk, shape, dtype):
    """Reference decoder: the bitshuffle package."""
    import bitshuffle

    dtype = np.dtype(dtype)
    block = struct.unpack_from(">I", chunk, 8)[0] // dtype.itemsize
    body = np.frombuffer(chunk, dtype=np.uint8, offset=12)
    return bitshuffle.decompress_lz4(body, tuple(shape), dtype, block)


def hostile_chunks(good):
    """(name, chunk) pairs, each wrong in one way."""
    total, block = struct.unpack_from(">QI", good, 0)
    csize = struct.unpack_from(">I", good, 12)[0]
    out = {
        "short": good[:7],
        "truncated": good[: len(good) // 2],
        "total": struct.pack(">QI", total + 4, block) + good[12:],
        "block0": struct.pack(">QI", total, 0) + good[12:],
        "block_odd": struct.pack(">QI", total, 12) + good[12:],
        "csize_huge": good[:12] + struct.pack(">I", 0xFFFFFFF0) + good[16:],
        "csize_short": good[:12] + struct.pack(">I", csize - 3) + good[16:],
        "trailing": good + b"\0\0\0\0",
        "garbage_lz4": good[:16] + bytes(np.random.default_rng(0).integers(0, 256, csize, np.uint8))
        + good[16 + csize :],
    }  # fmt: skip
    # a match reaching before the block's start: literal 1 byte, offset 40000
    bad = bytes([0x10, 0x07, 0x40, 0x9C]) + b"\0" * (csize - 4)
    out["match_before_start"] = good[:16] + bad + good[16 + csize :]
    return out
