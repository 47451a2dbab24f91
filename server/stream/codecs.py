"""Frame payload codecs of the DECTRIS streams, on top of the ecosystem's packages.

* ``bslz4``: bitshuffle + LZ4 with the HDF5 filter framing (a 12-byte header: uncompressed
  size as big-endian uint64, block size in bytes as big-endian uint32; then the blocks, each a
  big-endian uint32 compressed size and an LZ4 block).  Stream V2 tag 56500 ``"bslz4"`` and
  Stream V1 ``bs32-lz4<`` / ``bs16-lz4<`` / ``bs8-lz4<`` both use it.  Decoded with the
  ``bitshuffle`` package.
* ``lz4`` (V2, tag 56500 ``"lz4"``): LZ4 blocks with the HDF5 LZ4 filter framing (the same
  12-byte header; a block whose compressed size equals its plain size is stored as is).
  Decoded with the ``lz4`` package.
* ``lz4<`` (V1): one plain LZ4 block, no header.
* raw: the little-endian bytes.

Every decoder checks sizes against what the message announced and raises :class:`DecodeError`
(never returns a wrong-sized frame).  ``decode_bslz4(..., out=stack[k])`` decodes straight into
a recycled frame (bitshuffle's own ``bshuf_decompress_lz4``, called without the GIL): a fresh
4 MB array per frame costs more in page faults than the decoding itself.  Encoders are for the
simulator and the tests.
"""

import ctypes
import glob
import os
import struct

import numpy as np

from gpusaxs.io.bslz4 import HEADER as _H5_HEADER
from gpusaxs.io.bslz4 import check_blocks, check_header

__all__ = [
    "DecodeError",
    "decode_bslz4",
    "decode_lz4_block",
    "decode_lz4_h5",
    "decode_payload",
    "decode_raw",
    "encode_bslz4",
    "encode_lz4_block",
    "encode_lz4_h5",
]

#: DECTRIS' bitshuffle block size (bytes) for the simulator (8192 bytes, as the detectors use).
BSLZ4_BLOCK_BYTES = 8192
#: block size of the HDF5 LZ4 filter framing written by the simulator (1 GiB: one block).
LZ4_BLOCK_BYTES = 1 << 30


class DecodeError(ValueError):
    """A payload that cannot be decoded into the announced frame."""


def _expected(shape, dtype):
    dtype = np.dtype(dtype)
    n = 1
    for s in shape:
        n *= int(s)
    return dtype, n * dtype.itemsize


def _h5_header(name, buf, shape, dtype):
    """(bytes view, dtype, frame bytes, block bytes) of a payload with the HDF5 filter header."""
    dtype, nbytes = _expected(shape, dtype)
    mv = memoryview(buf).cast("B")
    if len(mv) < _H5_HEADER.size:
        raise DecodeError(f"{name} payload of {len(mv)} bytes is shorter than its header")
    total, block = _H5_HEADER.unpack_from(mv, 0)
    if total != nbytes:
        raise DecodeError(f"{name} header announces {total} bytes, the frame needs {nbytes}")
    return mv, dtype, nbytes, block


def decode_raw(buf, shape, dtype):
    """Uncompressed little-endian bytes -> array (a view, no copy)."""
    dtype, nbytes = _expected(shape, dtype)
    if len(buf) != nbytes:
        raise DecodeError(f"raw payload has {len(buf)} bytes, the frame needs {nbytes}")
    return np.frombuffer(buf, dtype=dtype).reshape(shape)


def _bshuf_decompress():
    """bitshuffle's C ``bshuf_decompress_lz4`` (ctypes; None if the library is not found)."""
    global _BSHUF
    if _BSHUF is None:
        try:
            import bitshuffle.ext

            fn = ctypes.CDLL(bitshuffle.ext.__file__).bshuf_decompress_lz4
            fn.restype = ctypes.c_int64
            fn.argtypes = [ctypes.c_void_p, ctypes.c_void_p] + [ctypes.c_size_t] * 3
            _BSHUF = fn
        except (ImportError, OSError, AttributeError):
            _BSHUF = False
    return _BSHUF or None


_BSHUF = None


def bitshuffle_one_thread():
    """Make bitshuffle decode on the calling thread only; True if it could be set.

    The ``bitshuffle`` wheel runs each call as an OpenMP parallel loop (its own bundled
    libgomp) over all cores, whose workers then spin: with the consumer's own decode threads
    beside the integrator this doubles the CPU spent per frame on a small machine.  The
    OpenMP thread count is per calling thread, so each decode thread calls this once.
    """
    try:
        import bitshuffle
    except ImportError:
        return False
    libs = os.path.join(os.path.dirname(os.path.dirname(bitshuffle.__file__)), "bitshuffle.libs")
    names = glob.glob(os.path.join(libs, "libgomp*.so*")) or ["libgomp.so.1"]
    try:
        ctypes.CDLL(names[0]).omp_set_num_threads(1)
    except (OSError, AttributeError):
        return False
    return True


def _fits(out, shape, dtype):
    return (
        out is not None
        and out.dtype == dtype
        and out.shape == tuple(shape)
        and out.flags.c_contiguous
        and out.flags.writeable
    )


def decode_bslz4(buf, shape, dtype, elem_size=None, out=None):
    """bitshuffle/LZ4 with HDF5 framing -> array of ``shape`` and ``dtype``.

    ``out``: an array to decode into when it fits (C-contiguous, that shape and dtype); the
    returned array is then ``out``.
    """
    import bitshuffle

    mv, dtype, nbytes, block = _h5_header("bslz4", buf, shape, dtype)
    if elem_size is not None and int(elem_size) != dtype.itemsize:
        raise DecodeError(
            f"bslz4 element size {elem_size} does not match dtype {dtype} ({dtype.itemsize} bytes)"
        )
    check_header(mv, nbytes, dtype.itemsize, DecodeError)  # size and block size (shared)
    _check_bslz4_blocks(mv, nbytes // dtype.itemsize, block // dtype.itemsize, dtype.itemsize)
    body = np.frombuffer(mv, dtype=np.uint8, offset=_H5_HEADER.size)
    fn = _bshuf_decompress() if _fits(out, shape, dtype) else None
    if fn is not None:
        used = fn(
            body.ctypes.data,
            out.ctypes.data,
            nbytes // dtype.itemsize,
            dtype.itemsize,
            block // dtype.itemsize,
        )
        if used != body.size:
            raise DecodeError(f"bslz4: decoding used {used} of {body.size} bytes")
        return out
    try:
        out = bitshuffle.decompress_lz4(
            body, tuple(int(s) for s in shape), dtype, block // dtype.itemsize
        )
    except (RuntimeError, ValueError) as exc:
        raise DecodeError(f"bslz4: {exc}") from None
    return out


def _check_bslz4_blocks(mv, n_elems, block_elems, itemsize):
    """Walk the bitshuffle block headers (shared with the HDF5 reader: gpusaxs.io.bslz4)."""
    check_blocks(mv, n_elems, block_elems, itemsize, DecodeError)


def decode_lz4_h5(buf, shape, dtype):
    """LZ4 with the HDF5 LZ4 filter framing -> array."""
    import lz4.block

    mv, dtype, nbytes, block = _h5_header("lz4", buf, shape, dtype)
    if block == 0:
        raise DecodeError("lz4 header has block size 0")
    out = np.empty(nbytes, dtype=np.uint8)
    pos, done = _H5_HEADER.size, 0
    while done < nbytes:
        want = min(block, nbytes - done)
        if pos + 4 > len(mv):
            raise DecodeError("lz4 payload truncated (block header)")
        (csize,) = struct.unpack_from(">I", mv, pos)
        pos += 4
        if pos + csize > len(mv):
            raise DecodeError("lz4 payload truncated (block data)")
        chunk = mv[pos : pos + csize]
        if csize == want:  # stored uncompressed
            out[done : done + want] = np.frombuffer(chunk, dtype=np.uint8)
        else:
            try:
                plain = lz4.block.decompress(chunk, uncompressed_size=want)
            except lz4.block.LZ4BlockError as exc:
                raise DecodeError(f"lz4: {exc}") from None
            if len(plain) != want:
                raise DecodeError(f"lz4 block decoded to {len(plain)} bytes, expected {want}")
            out[done : done + want] = np.frombuffer(plain, dtype=np.uint8)
        pos += csize
        done += want
    if pos != len(mv):
        raise DecodeError(f"lz4 payload has {len(mv) - pos} trailing bytes")
    return out.view(dtype).reshape(shape)


def decode_lz4_block(buf, shape, dtype):
    """One plain LZ4 block (Stream V1 ``lz4<``) -> array."""
    import lz4.block

    dtype, nbytes = _expected(shape, dtype)
    try:
        plain = lz4.block.decompress(buf, uncompressed_size=nbytes)
    except lz4.block.LZ4BlockError as exc:
        raise DecodeError(f"lz4: {exc}") from None
    if len(plain) != nbytes:
        raise DecodeError(f"lz4 block decoded to {len(plain)} bytes, the frame needs {nbytes}")
    return np.frombuffer(plain, dtype=dtype).reshape(shape)


def decode_payload(compression, buf, shape, dtype, elem_size=None, out=None):
    """Dispatch on the compression name: "bslz4", "lz4" (HDF5 framing), "lz4-block", "none".

    ``out``: where bslz4 may decode in place (see :func:`decode_bslz4`)."""
    if compression == "bslz4":
        return decode_bslz4(buf, shape, dtype, elem_size, out)
    if compression == "lz4":
        return decode_lz4_h5(buf, shape, dtype)
    if compression == "lz4-block":
        return decode_lz4_block(buf, shape, dtype)
    if compression == "none":
        return decode_raw(buf, shape, dtype)
    raise DecodeError(f"unknown compression {compression!r}")


# -- encoders (simulator, tests) ------------------------------------------------------------------
def encode_bslz4(arr, block_bytes=BSLZ4_BLOCK_BYTES):
    """Array -> bslz4 bytes with HDF5 framing."""
    import bitshuffle

    arr = np.ascontiguousarray(arr)
    elems = block_bytes // arr.dtype.itemsize
    body = bitshuffle.compress_lz4(arr.reshape(-1), elems)
    return _H5_HEADER.pack(arr.nbytes, elems * arr.dtype.itemsize) + body.tobytes()


def encode_lz4_h5(arr, block_bytes=LZ4_BLOCK_BYTES):
    """Array -> LZ4 bytes with the HDF5 LZ4 filter framing."""
    import lz4.block

    raw = np.ascontiguousarray(arr).tobytes()
    parts = [_H5_HEADER.pack(len(raw), block_bytes)]
    for start in range(0, len(raw), block_bytes):
        chunk = raw[start : start + block_bytes]
        comp = lz4.block.compress(chunk, store_size=False)
        if len(comp) >= len(chunk):
            comp = chunk
        parts.append(struct.pack(">I", len(comp)))
        parts.append(comp)
    return b"".join(parts)


def encode_lz4_block(arr):
    """Array -> one plain LZ4 block (Stream V1 ``lz4<``)."""
    import lz4.block

    return lz4.block.compress(np.ascontiguousarray(arr).tobytes(), store_size=False)
