"""bitshuffle-LZ4 frames decoded on the device (issue 26): the decoder's CUDA source and names
(gpusaxs/kernels/bslz4.cu), the compressed batch staging (chunks end to end in one pinned buffer
with their offsets, sent over PCIe compressed) and the decode launch that writes the frames where
the integration kernels read them.

On NumPy the same staging runs and each chunk is decoded on the host by bitshuffle (the CPU
path, ``host_decode`` True); on CuPy the chunks are decoded by the two kernels, and a frame the
device rejects (a hostile or unusual chunk) fails alone with an error record.
"""

import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from gpusaxs.engine_contract import Sums
from gpusaxs.errors import ImageReadError
from gpusaxs.gpu_fallbacks import record_decode
from gpusaxs.io.bslz4 import HEADER, Bslz4Error, check_payload
from gpusaxs.io.direct_chunks import DirectChunkReader
from gpusaxs.io.hdf5_checks import invalid_value

__all__ = [
    "DECODE_DTYPES",
    "DEVICE_DECODE_VAR",
    "MAX_BLOCK_BYTES",
    "STATUS",
    "CompressedBatch",
    "CompressedInput",
    "CompressedSums",
    "DeviceDecoder",
    "blocks_per_frame",
    "decode_names",
    "decode_source",
    "device_decode_enabled",
    "stage_chunks",
]

#: set to 1 to decode bitshuffle-LZ4 frames on the GPU in saxsdog, the server's queue, the
#: stream consumer (saxsdogserver --detector) and the Dask tasks (opt-in until validated)
DEVICE_DECODE_VAR = "GPUSAXS_DEVICE_DECODE"

#: largest bitshuffle block (bytes) the device decodes (GS_BS_MAX_BLOCK in bslz4.cu)
MAX_BLOCK_BYTES = 16384
#: warps per thread block of gs_bslz4_decode (GS_BS_WARPS); one warp decodes one block
DECODE_WARPS = 2
#: threads per block of gs_bslz4_index (one thread per frame)
INDEX_THREADS = 128
#: frame dtypes the device decodes (element sizes 1, 2 and 4 bytes)
DECODE_DTYPES = tuple(
    np.dtype(d) for d in (np.int8, np.uint8, np.int16, np.uint16, np.int32, np.uint32, np.float32)
)

#: status code of a frame -> what was wrong (the GS_BS_* codes of bslz4.cu)
STATUS = {
    0: "ok",
    1: "chunk offsets outside the input buffer",
    2: "chunk shorter than its 12-byte header",
    3: "header's total bytes differ from the frame's",
    4: "block size is 0 or not a multiple of 8 elements",
    5: f"block size above {MAX_BLOCK_BYTES} bytes (not decoded on the device)",
    6: "more blocks than the position table holds",
    7: "a block header or block runs past the chunk",
    8: "a compressed block is larger than LZ4 allows",
    9: "bytes left between the last block and the raw tail",
    10: "malformed LZ4 sequence (overrun or bad match offset)",
    11: "a block decoded to the wrong length",
    -1: "chunk stored without the filter or never written (not read by this path)",
}


def device_decode_enabled(engine, choice=None):
    """Whether frames for ``engine`` are decoded on the device: the one rule of every product.

    ``choice`` None: on a CuPy engine when $GPUSAXS_DEVICE_DECODE is 1 (opt-in until the device
    check has run the decoder on a real GPU, docs/gpu.md); True/False: forced (tests, the
    NumPy module).  Never for an engine without ``sums_compressed``."""
    if choice is None:
        on_device = getattr(engine, "name", None) == "cupy"
        choice = on_device and os.environ.get(DEVICE_DECODE_VAR) == "1"
    return bool(choice) and hasattr(engine, "sums_compressed")


def decode_source():
    """Text of the decoder's CUDA source (gpusaxs/kernels/bslz4.cu, shipped as package data)."""
    return (Path(__file__).parent / "kernels" / "bslz4.cu").read_text()


def decode_names():
    """Every name expression the decoder can request (what CI compiles with NVRTC)."""
    return ["gs_bslz4_index"] + [f"gs_bslz4_decode<{e}>" for e in (1, 2, 4)]


def blocks_per_frame(frame_bytes, itemsize, block_bytes):
    """Blocks of a frame of ``frame_bytes`` in blocks of ``block_bytes`` (bitshuffle's rule: full
    blocks, one last block of the remainder rounded down to 8 elements, a raw tail)."""
    n = frame_bytes // itemsize
    be = max(8, block_bytes // itemsize)
    last = (n % be) - (n % 8)
    return max(1, n // be + (1 if last > 0 else 0))


@dataclass
class CompressedBatch:
    """Compressed chunks of one batch, end to end in ``data`` (pinned on CuPy), chunk k at
    ``offsets[k]:offsets[k+1]``; frames of ``shape`` and ``dtype``."""

    data: np.ndarray
    offsets: np.ndarray
    shape: tuple
    dtype: np.dtype
    max_blocks: int
    ids: list = field(default_factory=list)

    @property
    def n(self):
        return len(self.offsets) - 1

    @property
    def nbytes(self):
        return int(self.offsets[-1])

    @property
    def frame_bytes(self):
        return int(np.prod(self.shape)) * self.dtype.itemsize

    def chunk(self, k):
        return self.data[int(self.offsets[k]) : int(self.offsets[k + 1])]


def stage_chunks(chunks, shape, dtype, empty=None, ids=None):
    """Lay ``chunks`` (bytes-like, one compressed frame each) end to end in one buffer from
    ``empty(nbytes)`` (a pinned allocator on CuPy; NumPy by default) with their offsets.

    The position table's size comes from the smallest block size the chunk headers announce
    (12 bytes read per chunk: nothing is decoded on the host); a header that lies about it is
    caught by the device's checks."""
    dtype = np.dtype(dtype)
    shape = tuple(int(s) for s in shape)
    frame_bytes = int(np.prod(shape)) * dtype.itemsize
    sizes = [memoryview(c).nbytes for c in chunks]
    offsets = np.zeros(len(sizes) + 1, dtype=np.int64)
    np.cumsum(sizes, out=offsets[1:])
    total = int(offsets[-1])
    data = (empty or (lambda n: np.empty(n, dtype=np.uint8)))(max(total, 1))[:total]
    block = MAX_BLOCK_BYTES
    for k, c in enumerate(chunks):
        mv = memoryview(c).cast("B")
        data[offsets[k] : offsets[k + 1]] = np.frombuffer(mv, dtype=np.uint8)
        if len(mv) >= HEADER.size:
            announced = HEADER.unpack_from(mv, 0)[1]
            if 8 * dtype.itemsize <= announced < block:
                block = announced
    max_blocks = blocks_per_frame(frame_bytes, dtype.itemsize, block)
    return CompressedBatch(data, offsets, shape, dtype, max_blocks, list(ids or range(len(sizes))))


class DeviceDecoder:
    """Decode a CompressedBatch into a frame-major stack (n, *shape) in device memory.

    ``decode(batch)`` returns (frames, status): frames an (n, *shape) array of the batch's dtype
    on the device (CuPy) or host (NumPy), status an int32 NumPy array, 0 for a decoded frame,
    else a code of STATUS.  On NumPy each chunk is checked and decoded by bitshuffle on the host
    (``host_decode`` True); on CuPy the chunks go over PCIe compressed and the kernels of
    bslz4.cu decode them (``host_decode`` False)."""

    def __init__(self, xp, empty_pinned=None):
        self.xp = xp
        self.host_decode = xp is np
        self.path = "host" if self.host_decode else "device"
        self._module = None
        self._empty_pinned = empty_pinned
        self._staging = {}

    def staging(self, nbytes, slot=0):
        """A staging buffer of ``nbytes`` (pinned on CuPy) of ``slot`` (0 and 1: a stream's batch
        being decoded and the next one, staged meanwhile; "one": sums_compressed's), reused and
        grown across batches (decode() waits for its copy before returning, so reuse is safe
        once its batch is done)."""
        buf = self._staging.get(slot)
        if buf is None or buf.nbytes < nbytes:
            alloc = self._empty_pinned or (lambda n: np.empty(n, dtype=np.uint8))
            buf = self._staging[slot] = alloc(max(int(nbytes * 1.25), 1 << 20))
        return buf[:nbytes]

    def _kernels(self):
        if self._module is None:
            self._module = self.xp.RawModule(code=decode_source(), name_expressions=decode_names())
        return self._module

    def decode(self, batch):
        if batch.dtype not in DECODE_DTYPES:
            raise TypeError(f"no device decoder for {batch.dtype} frames")
        if self.host_decode:
            return self._decode_host(batch)
        return self._decode_device(batch)

    @staticmethod
    def _decode_host(batch, which=None):
        out = np.zeros((batch.n, *batch.shape), dtype=batch.dtype)
        status = np.zeros(batch.n, dtype=np.int32)
        for k in range(batch.n) if which is None else which:
            frame = host_decode(batch.chunk(k), batch.shape, batch.dtype)
            if frame is None:
                status[k] = 10
            else:
                out[k] = frame
        return out, status

    def _decode_device(self, batch):
        cp = self.xp
        mod = self._kernels()
        n, item = batch.n, batch.dtype.itemsize
        d_in = cp.empty(max(batch.nbytes, 1), dtype=cp.uint8)
        if batch.nbytes:
            d_in[: batch.nbytes].set(batch.data[: batch.nbytes])
        d_off = cp.asarray(batch.offsets)
        frames = cp.empty((n, *batch.shape), dtype=batch.dtype)
        pos = cp.empty(max(n * batch.max_blocks, 1), dtype=cp.int64)
        block_bytes = cp.empty(max(n, 1), dtype=cp.int32)
        status = cp.zeros(max(n, 1), dtype=cp.int32)
        if n == 0:
            return frames, np.zeros(0, dtype=np.int32)
        fb = np.int64(batch.frame_bytes)
        in_bytes, out_bytes = np.int64(batch.nbytes), np.int64(frames.nbytes)
        index = mod.get_function("gs_bslz4_index")
        index(
            (-(-n // INDEX_THREADS),),
            (INDEX_THREADS,),
            (d_in, in_bytes, d_off, np.int32(n), fb, np.int32(item), pos,
             np.int32(batch.max_blocks), block_bytes, status, frames, out_bytes),
        )  # fmt: skip
        decode = mod.get_function(f"gs_bslz4_decode<{item}>")
        warps = n * batch.max_blocks
        decode(
            (-(-warps // DECODE_WARPS),),
            (32 * DECODE_WARPS,),
            (d_in, in_bytes, d_off, np.int32(n), fb, pos, np.int32(batch.max_blocks),
             block_bytes, status, frames, out_bytes),
        )  # fmt: skip
        return frames, cp.asnumpy(status[:n])


def host_decode(chunk, shape, dtype):
    """One chunk decoded by bitshuffle on the host after gpusaxs.io.bslz4's checks; None when
    it is refused."""
    import bitshuffle

    dtype = np.dtype(dtype)
    mv = memoryview(chunk).cast("B")
    try:
        check_payload(mv, int(np.prod(shape)) * dtype.itemsize, dtype.itemsize)
        block = HEADER.unpack_from(mv, 0)[1]
        body = np.frombuffer(mv, dtype=np.uint8, offset=HEADER.size)
        return bitshuffle.decompress_lz4(body, tuple(shape), dtype, block // dtype.itemsize)
    except (Bslz4Error, RuntimeError, ValueError):
        return None


def error_records(batch, status):
    """One record per frame the decoder rejected: {"id", "status", "reason"}."""
    return [
        {"id": batch.ids[k], "status": int(s), "reason": STATUS.get(int(s), "unknown")}
        for k, s in enumerate(status)
        if s
    ]


@dataclass
class CompressedSums:
    """Sums of the frames of a compressed batch that decoded (``ids``, in batch order) and one
    error record per frame that did not (``errors``: {"id", "status", "reason"})."""

    sums: Sums
    ids: list
    errors: list
    path: str
    compressed_bytes: int
    decoded_bytes: int


class CompressedInput:
    """DeviceEngine's compressed input (issue 26): bslz4 chunks staged end to end (pinned on
    CuPy), sent compressed, decoded on the device into the stack the kernels read."""

    def decoder(self):
        dec = getattr(self, "_bslz4_decoder", None)
        if dec is None:
            dec = DeviceDecoder(self.xp, None if self.xp is np else self._ops.empty_pinned)
            self._bslz4_decoder = dec
        return dec

    def sums_compressed(self, chunks, shape, dtype, errors=False, ids=None, invalid_index=None):
        """Sums of the frames in ``chunks`` (bslz4 bytes with the HDF5 filter framing, one frame
        of ``shape`` and ``dtype`` each: HDF5 chunks read as stored, Stream V2 tag-56500
        payloads).  Returns CompressedSums (host arrays).  A frame the device refuses fails
        alone with an error record; one with blocks larger than the device decodes (status 5)
        is decoded on the host instead, and counted as such.  invalid_index: flat indices of
        pixels marked invalid after decoding (an EIGER master's pixel_mask)."""
        batch = self._stage_compressed(chunks, shape, dtype, ids, "one")  # not a stream's slot
        return self._sums_staged(batch, errors, invalid_index)

    def sums_compressed_stream(self, batches, shape, dtype, errors=False, invalid_index=None):
        """Generator of CompressedSums, one per ``(chunks, ids)`` of ``batches``, in order, as
        :meth:`sums_compressed`; batch k+1 is taken from ``batches`` (e.g. read from a file) and
        staged on a host thread while batch k is decoded and integrated.  Two staging slots
        alternate: batch k+2 is staged only after batch k's call returned (its copy done)."""
        batches = iter(batches)

        def stage(k):
            nxt = next(batches, None)
            if nxt is None:
                return None
            return self._stage_compressed(nxt[0], shape, dtype, nxt[1], k % 2)

        with ThreadPoolExecutor(1, thread_name_prefix="bslz4-stage") as pool:
            pending, k = pool.submit(stage, 0), 0
            while (batch := pending.result()) is not None:
                k += 1
                pending = pool.submit(stage, k)  # slot k % 2: batch k - 2's call has returned
                yield self._sums_staged(batch, errors, invalid_index)

    def _stage_compressed(self, chunks, shape, dtype, ids, slot):
        """``chunks`` laid end to end in the decoder's staging slot ``slot`` (host: NumPy)."""
        dec = self.decoder()
        empty = None if dec.host_decode else (lambda n: dec.staging(n, slot))
        return stage_chunks(chunks, shape, np.dtype(dtype), empty=empty, ids=ids)

    def _sums_staged(self, batch, errors, invalid_index):
        """sums_compressed of a staged batch (decoded, refused frames counted, integrated)."""
        dtype, dec = batch.dtype, self.decoder()
        frames, status = dec.decode(batch)
        big = np.flatnonzero(status == 5) if not dec.host_decode else np.zeros(0, np.intp)
        host_frames = None
        if big.size:
            host_frames, host_status = DeviceDecoder._decode_host(batch, big)
            status[big] = host_status[big]
        good = np.flatnonzero(status == 0)
        fb = batch.frame_bytes
        on_device = np.setdiff1d(good, big, assume_unique=True)
        record_decode(dec.path, on_device.size, _chunk_bytes(batch, on_device), fb * on_device.size)
        if big.size:
            ok_big = np.intersect1d(big, good)
            record_decode("host", ok_big.size, _chunk_bytes(batch, ok_big), fb * ok_big.size)
        records = error_records(batch, status)
        if records:
            record_decode("failed", len(records), 0, 0)
        if host_frames is not None and big.size:
            ok_big = np.intersect1d(big, good)
            if ok_big.size:
                frames[self.xp.asarray(ok_big)] = self.xp.asarray(host_frames[ok_big])
        if good.size < batch.n:
            frames = frames[self.xp.asarray(good)] if good.size else frames[:0]
        if invalid_index is not None and good.size:
            flat = frames.reshape(frames.shape[0], -1)
            flat[:, self.xp.asarray(invalid_index)] = invalid_value(dtype)
        if dec.host_decode:
            sums = self.sums(frames, errors)
        else:
            res = self.sums_device(frames, errors)
            sums = Sums(*(None if a is None else self._ops.to_host(a) for a in res))
        return CompressedSums(
            sums,
            [batch.ids[k] for k in good],
            records,
            dec.path,
            _chunk_bytes(batch, good),
            fb * good.size,
        )

    def sums_hdf5(self, path, dataset=None, errors=False, batch_size=None):
        """Sums of every frame of an EIGER master (or ``file.h5`` with ``dataset``) whose
        chunks are bslz4, one frame each: read as stored (gpusaxs.io.direct_chunks), decoded
        on the device (on NumPy: on the host).  Yields CompressedSums per batch of
        ``batch_size`` frames (the engine's), ids the frame indices.  Raises ValueError naming
        why a file is stored otherwise (read it through the filter on the host then), and
        ImageReadError for an unreadable pixel_mask; the pixel_mask marks pixels invalid as
        the host reader does."""
        step = int(batch_size or self.batch_size)
        with DirectChunkReader(path, dataset) as reader:
            if reader.unsupported:
                raise ValueError(f"{path}: {reader.unsupported}")
            if reader.mask_error:
                raise ImageReadError(str(path), reader.mask_error)
            missing = {}  # batch start -> frames without a stored chunk (the staging thread's)

            def batches():
                for start in range(0, reader.n, step):
                    got = reader.chunks(range(start, min(start + step, reader.n)))
                    missing[start] = [i for i, c in got if c is None]
                    got = [(i, c) for i, c in got if c is not None]
                    yield [c for _, c in got], [i for i, _ in got]

            parts = self.sums_compressed_stream(
                batches(), reader.shape, reader.dtype, errors, reader.mask_index
            )
            try:
                for start, res in zip(range(0, reader.n, step), parts, strict=True):
                    lost = missing.pop(start)
                    res.errors += [{"id": i, "status": -1, "reason": STATUS[-1]} for i in lost]
                    yield res
            finally:  # a batch being staged is read before the file closes
                parts.close()


def _chunk_bytes(batch, which):
    which = np.asarray(which, dtype=np.intp)
    return int((batch.offsets[which + 1] - batch.offsets[which]).sum()) if which.size else 0
