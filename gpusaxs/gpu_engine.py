"""DeviceEngine: batched integration of frame stacks with an array module (CuPy or NumPy).

On a GPU (``xp=cupy``) the matrix is uploaded once in bin-major CSR form and each batch of
frames is integrated by ONE launch of a templated CUDA kernel (gpusaxs/kernels/integrate.cu,
``kernel_source()``; every instance the engine can request is listed by ``kernel_names()`` and
compiled with NVRTC in CI): a block handles one segment of one bin's entries for
``FRAMES_PER_BLOCK`` frames; each matrix entry (pixel index int32, weight and pixel scale
float32, plus the dark offset float32 when the matrix has one) is read once per frame group,
every frame pixel in its raw dtype, converted in registers; sums accumulate in float64.  The
default device stack is pixel-major, (n_pixels, frames), so the frames of one entry share one
32-byte sector; host frames are uploaded frame-major and transposed on the device (or read
through their mapped pinned buffer by the transposing kernel, ``upload="mapped"``).  Host
frames stream through pinned staging buffers on ``n_streams`` CUDA streams so the copy of batch
k+1 overlaps the integration of batch k; staging buffers are allocated when the engine is built.
A path that fails for an expected reason (out of memory, no usable device, no kernel code for
it: gpu_ops.expected_failure) falls back to the cupyx sparse product, then to the CPU engine,
recorded in ``fallbacks`` / ``engine_fallbacks()`` / ``backend_info()``; frames of a dtype
without a kernel are recorded the same way; any other exception raises.

With ``xp=numpy`` (CI, no GPU) the same scheduler, layouts, upload modes and checks run over
synchronous "streams" (gpusaxs/gpu_ops.py), and the "kernel" is a float64 SciPy sparse product
on the memory the CUDA kernel would read (base pointer and row stride, see ``_launch``), with
the same validity rules.  The CUDA source is
compiled in CI by NVRTC and run on the CPU through an emulation shim (tests).

Validity (matches docs/ARCHITECTURE.md and cpu_fallback): a pixel value x is valid when
x >= 0 and finite; for unsigned dtypes every value is >= 0 but the type's maximum (2**32-1 for
uint32: EIGER gap/overflow flag; 65535 for uint16; 255 for uint8) is invalid.  uint32 values
above 2**31 are real counts, never reinterpreted as negative.  Float validity is judged on the
bits, so a negative subnormal is invalid on the GPU (compiled with -ftz=true) as on the CPU.
"""

import collections
import concurrent.futures
import logging
import os
from pathlib import Path

import numpy as np

from gpusaxs.gpu_ops import CupyOps, NumpyOps, Slot, SyncStream, expected_failure
from gpusaxs.gpu_ops import view as _view
from gpusaxs.sums import Sums

__all__ = [
    "DeviceEngine",
    "valid_mask",
    "make_segments",
    "kernel_source",
    "kernel_names",
    "kernel_name",
    "transpose_name",
    "SyncStream",
    "CTYPES",
    "FRAMES_PER_BLOCK",
    "engine_fallbacks",
    "fallback_lines",
]

#: CUDA C type of each frame dtype the kernel is instantiated for (others: converted on device).
CTYPES = {
    np.dtype(np.int8): "signed char",
    np.dtype(np.uint8): "unsigned char",
    np.dtype(np.int16): "short",
    np.dtype(np.uint16): "unsigned short",
    np.dtype(np.int32): "int",
    np.dtype(np.uint32): "unsigned int",
    np.dtype(np.int64): "long long",
    np.dtype(np.uint64): "unsigned long long",
    np.dtype(np.float32): "float",
    np.dtype(np.float64): "double",
}

#: Threads per block of the CUDA kernel.
BLOCK = 256

#: Frames handled by one CUDA block (template parameter FB of every integration kernel).
FRAMES_PER_BLOCK = 8

#: Dtypes the custom kernels are instantiated for.  8-byte dtypes (int64, uint64, float64; no
#: detector writes them) and float16 (converted to float32) go through other paths.
KERNEL_DTYPES = tuple(
    np.dtype(d) for d in (np.int8, np.uint8, np.int16, np.uint16, np.int32, np.uint32, np.float32)
)

#: Dtypes that also have the frame-major kernel (layout="frame"), kept where it may win.
FRAME_MAJOR_DTYPES = (np.dtype(np.int32), np.dtype(np.uint32))

#: errors argument -> kernel MODE (number of sums - 2)
_MODES = {False: 0, "poisson": 1, True: 2}

LAYOUTS = ("pixel", "frame")
UPLOADS = ("copy", "mapped")

_log = logging.getLogger(__name__)


def kernel_source():
    """Text of the CUDA source (gpusaxs/kernels/integrate.cu, shipped as package data)."""
    return (Path(__file__).parent / "kernels" / "integrate.cu").read_text()


def _mode(errors):
    """Kernel MODE of an errors argument: False 0, "poisson" 1, True 2."""
    if isinstance(errors, str):
        if errors != "poisson":
            raise ValueError(f"errors must be False, True or 'poisson', not {errors!r}")
        return 1
    return 2 if errors else 0


def kernel_name(dtype, errors=True, offset=False, layout="pixel"):
    """C++ name expression of the integration kernel instance for frames of ``dtype``.

    errors: False, "poisson" or True (kernel MODE 0, 1, 2); offset: the matrix has a
    pixel_offset; layout: "pixel" (stack (n_pixels, ld)) or "frame" (stack (B, n_pixels))."""
    fn = "gs_integrate_pm" if layout == "pixel" else "gs_integrate"
    return (
        f"{fn}<{CTYPES[np.dtype(dtype)]}, {FRAMES_PER_BLOCK}, {_mode(errors)}, "
        f"{'true' if offset else 'false'}>"
    )


def transpose_name(dtype):
    """C++ name expression of the frame-major -> pixel-major transposition for ``dtype``."""
    return f"gs_to_pixel_major<{CTYPES[np.dtype(dtype)]}>"


def kernel_names():
    """Every name expression the engine can request (what CI compiles with NVRTC)."""
    names = []
    for dtype in KERNEL_DTYPES:
        layouts = LAYOUTS if dtype in FRAME_MAJOR_DTYPES else ("pixel",)
        for layout in layouts:
            for errors in (False, "poisson", True):
                for offset in (False, True):
                    names.append(kernel_name(dtype, errors, offset, layout))
        names.append(transpose_name(dtype))
    return names


#: NVRTC options (CuPy adds -arch and its own include path; it passes these by default).
NVRTC_OPTIONS = (f"-DGS_BLOCK={BLOCK}",)


def check_frame_dtype(dtype):
    """Raise TypeError unless ``dtype`` is an integer or floating type (bool excluded)."""
    dtype = np.dtype(dtype)
    if dtype == np.bool_ or dtype.kind not in "iuf":
        raise TypeError(f"frames must be integer or float, not {dtype}")
    return dtype


def valid_mask(x, xp=np):
    """Bool array: x >= 0 and finite; for unsigned dtypes x != the type's max (gap flag)."""
    kind = x.dtype.kind
    if kind == "u":
        return x != x.dtype.type(np.iinfo(x.dtype).max)
    if kind == "i":
        return x >= 0
    if kind == "f":
        if xp is np:
            with np.errstate(invalid="ignore"):
                return np.isfinite(x) & (x >= 0)
        return xp.isfinite(x) & (x >= 0)
    raise TypeError(f"frames must be integer or float, not {x.dtype}")


def make_segments(row_ptr, segment_length):
    """Split each bin's entry range into segments of <= segment_length entries, evenly.

    row_ptr: (n_bins+1,) bin-major CSR offsets.  Returns (seg_bin int32, seg_start int64,
    seg_end int64); empty bins get no segment; segments of a bin are contiguous and ordered.
    """
    row_ptr = np.asarray(row_ptr, dtype=np.int64)
    counts = np.diff(row_ptr)
    n_seg = (counts + segment_length - 1) // segment_length
    seg_bin = np.repeat(np.arange(len(counts), dtype=np.int32), n_seg)
    first = np.cumsum(n_seg) - n_seg
    k = np.arange(len(seg_bin), dtype=np.int64) - np.repeat(first, n_seg)
    nb = n_seg[seg_bin]
    c = counts[seg_bin]
    seg_start = row_ptr[seg_bin] + (k * c) // np.maximum(nb, 1)
    seg_end = row_ptr[seg_bin] + ((k + 1) * c) // np.maximum(nb, 1)
    return seg_bin, seg_start.astype(np.int64), seg_end.astype(np.int64)


_FALLBACKS: list[dict[str, str]] = []


def engine_fallbacks() -> list[dict[str, str]]:
    """Fallbacks taken in this process (list of dicts: from, to, reason), oldest first."""
    return [dict(f) for f in _FALLBACKS]


def fallback_lines() -> list[str]:
    """engine_fallbacks() in words, one line each (saxsdog's summary, the server's stat)."""
    return [f"{f['from']} -> {f['to']}: {f['reason']}" for f in _FALLBACKS]


def _host_engine(matrix):
    """The CPU engine, last step of the fallback chain."""
    from gpusaxs.cpu_fallback.engine import default_engine

    return default_engine(matrix)


class DeviceEngine:
    """Batched integration engine over an array module (CuPy on a GPU, NumPy in CI).

    matrix: IntegrationMatrix (its optional ``pixel_offset`` is subtracted in the kernel).
    xp: cupy or numpy (default: the "auto" backend).
    batch_size: frames per kernel launch / pipeline stage.  n_streams: pipeline depth (>= 1).
    method: "kernel" (custom CUDA kernels, raw dtypes, float64 accumulation) or "spmm"
    (cupyx.scipy.sparse CSR product on float-converted frames; the simple GPU reference).
    On CuPy a kernel that fails to compile or launch falls back to "spmm", then to the CPU
    engine, each step logged once and listed by ``engine_fallbacks()`` / ``backend_info()``.
    On NumPy both methods are a float64 SciPy sparse product.
    layout: device stack layout of the kernel path, "pixel" ((n_pixels, frames): the FB frames
    of one matrix entry are contiguous) or "frame" ((frames, n_pixels), int32/uint32 only).
    upload: how host frames reach the pixel-major stack: "copy" (DMA copy, then a transposing
    kernel on the device) or "mapped" (the transposing kernel reads the pinned staging buffer
    itself: one pass).  segment_length: most matrix entries per block.
    spmm_dtype: value dtype of the "spmm" path on CuPy (float32 or float64); NumPy always uses
    float64.  staging_threads: threads copying pageable frames into pinned buffers.
    stream_factory: callable returning a stream object (tests).

    Not thread-safe: use one engine per thread, and one integrate_stream at a time.
    """

    #: the matrix's pixel_offset (dark) is applied in the kernels (docs/ARCHITECTURE.md)
    supports_pixel_offset = True

    def __init__(
        self,
        matrix,
        xp=None,
        batch_size=32,
        n_streams=2,
        method="kernel",
        layout="pixel",
        upload="copy",
        segment_length=4096,
        spmm_dtype="float32",
        staging_threads=None,
        stream_factory=None,
    ):
        if xp is None:
            from gpusaxs.backend import array_module, select_backend

            xp = array_module(select_backend("auto")[0])
        if method not in ("kernel", "spmm"):
            raise ValueError(f"method must be 'kernel' or 'spmm', not {method!r}")
        if layout not in LAYOUTS:
            raise ValueError(f"layout must be one of {LAYOUTS}, not {layout!r}")
        if upload not in UPLOADS:
            raise ValueError(f"upload must be one of {UPLOADS}, not {upload!r}")
        if int(batch_size) < 1 or int(n_streams) < 1:
            raise ValueError("batch_size and n_streams must be >= 1")
        if int(segment_length) < 1:
            raise ValueError("segment_length must be >= 1")
        self.matrix = matrix
        self.xp = xp
        self._ops = NumpyOps() if xp is np else CupyOps(xp)
        self.name = self._ops.name
        self.method = method
        self.layout = layout
        self.upload = upload
        self.batch_size = int(batch_size)
        self.n_streams = int(n_streams)
        self.frames_per_block = FRAMES_PER_BLOCK
        self.segment_length = int(segment_length)
        self.spmm_dtype = np.dtype(np.float64 if xp is np else spmm_dtype)
        if self.spmm_dtype not in (np.dtype(np.float32), np.dtype(np.float64)):
            raise ValueError("spmm_dtype must be float32 or float64")
        self.staging_threads = int(staging_threads or min(8, os.cpu_count() or 1))
        self._stream_factory = stream_factory or self._ops.new_stream
        self.shape = tuple(int(v) for v in matrix.shape)
        self.n_pixels = matrix.n_pixels
        self.n_bins = matrix.n_bins
        # paths tried in order; one that fails for an expected reason (expected_failure: out
        # of memory, no usable device, no code for it) is dropped, recorded and logged once.
        # NumPy runs the same chain: its "kernel" reads memory as the CUDA kernels do.
        self._chain = (["kernel"] if method == "kernel" else []) + ["spmm", "cpu"]
        self.fallbacks = []
        self._dtype_notes = set()

        # bin-major CSR on the host: (row_ptr int64, pixel int32, weight float32) + scale and
        # dark offset gathered per entry
        row_ptr, pix, w = matrix.bin_major()
        self._row_ptr = np.asarray(row_ptr, dtype=np.int64)
        self._pix = np.ascontiguousarray(pix, dtype=np.int32)
        self._w = np.ascontiguousarray(w, dtype=np.float32)
        self._s = np.ascontiguousarray(np.asarray(matrix.pixel_scale, np.float32)[self._pix])
        offset = getattr(matrix, "pixel_offset", None)
        self._pixel_offset = None if offset is None else np.asarray(offset, np.float32)
        self._o = None if offset is None else np.ascontiguousarray(self._pixel_offset[self._pix])
        self._seg_bin, self._seg_start, self._seg_end = make_segments(
            self._row_ptr, self.segment_length
        )
        self._dev = None
        self._sparse = None
        self._cpu = None
        self._modules = {}
        self._offsets = {}
        self._slots = None
        self._slot_counter = 0
        self._active = False
        self._pool = None
        if self.name == "cupy" and method == "kernel":
            self._upload()
        self._reserve(self.batch_size, 4)

    def _reserve(self, b, itemsize):
        """Allocate every slot's pinned staging and device buffers for batches of b frames of
        ``itemsize`` bytes (errors=True), so no batch allocates (pinned allocation takes
        0.15-0.7 s).  Larger dtypes or batches grow the buffers when they come."""
        nq = 4
        out_nbytes = nq * b * self.n_bins * 8
        for slot in self._get_slots():
            slot.buffer("stage", b * self.n_pixels * itemsize, True)
            slot.buffer("result", out_nbytes, True)
            slot.buffer("out", out_nbytes, False)
            pixel = self.layout == "pixel" and self.method == "kernel"
            if not pixel or self.upload == "copy":
                slot.buffer("frames", b * self.n_pixels * itemsize, False)
            if pixel:
                slot.buffer(
                    "pixel_major", self.n_pixels * self._leading_dim(b) * itemsize, False, True
                )
        for slot in self._slots:
            slot.stream.synchronize()

    def warm_up(self, dtypes=(np.int32,)):
        """Compile the kernels of ``dtypes`` now (CuPy compiles a RawModule when a function
        is first asked for; NVRTC takes seconds), not inside the first batch or a timing."""
        if self.name == "cupy" and self.path == "kernel":
            for dtype in dtypes:
                if np.dtype(dtype) in KERNEL_DTYPES:
                    self._function(dtype, transpose_name(dtype))

    @property
    def path(self):
        """The integration path in use: "kernel", "spmm" or "cpu"."""
        return self._chain[0]

    # ------------------------------------------------------------------ matrix on the device
    def _upload(self):
        """Copy the kernel's matrix arrays to the device once (12 bytes per entry, 16 with a
        dark offset)."""
        xp = self.xp
        self._dev = {
            k: (None if v is None else xp.asarray(v)) for k, v in self.kernel_arrays().items()
        }
        xp.cuda.runtime.deviceSynchronize()  # the upload ran on the default stream

    def kernel_arrays(self):
        """Host copies of the kernel inputs: pix, w, s, o (None without offset), seg_bin,
        seg_start, seg_end (tests)."""
        return {
            "pix": self._pix,
            "w": self._w,
            "s": self._s,
            "o": self._o,
            "seg_bin": self._seg_bin,
            "seg_start": self._seg_start,
            "seg_end": self._seg_end,
        }

    @property
    def device_nbytes(self):
        """Bytes of matrix data the kernel reads per batch (entries + segment table)."""
        return sum(a.nbytes for a in self.kernel_arrays().values() if a is not None)

    def _sparse_matrices(self, dtype=None):
        """(n_bins, n_pixels) CSR matrices with values w, w*s, w*s^2 (built once per value
        dtype, lazily)."""
        dtype = np.dtype(dtype or self.spmm_dtype)
        if self._sparse is None:
            self._sparse = {}
        if dtype not in self._sparse:
            w = self._w.astype(np.float64)
            s = self._s.astype(np.float64)
            values = {"w": w, "ws": w * s, "ws2": w * s * s}
            shape = (self.n_bins, self.n_pixels)
            if self.xp is np:
                import scipy.sparse as sp

                mats = {
                    k: sp.csr_matrix((v, self._pix, self._row_ptr), shape=shape)
                    for k, v in values.items()
                }
            else:
                import cupyx.scipy.sparse as csp

                xp = self.xp
                idx = np.int32 if self._pix.size < 2**31 else np.int64
                ind = xp.asarray(self._pix.astype(idx))
                ptr = xp.asarray(self._row_ptr.astype(idx))
                mats = {
                    k: csp.csr_matrix((xp.asarray(v.astype(dtype)), ind, ptr), shape=shape)
                    for k, v in values.items()
                }
                xp.cuda.runtime.deviceSynchronize()
            self._sparse[dtype] = mats
        return self._sparse[dtype]

    # ------------------------------------------------------------------ paths and fallbacks
    def _fallback(self, exc, why):
        """Drop the failing path (logged once per engine and step, kept for backend_info)."""
        failed = self._chain.pop(0)
        entry = {
            "from": failed,
            "to": self._chain[0],
            "reason": f"{why}: {type(exc).__name__}: {exc}",
        }
        self._record(entry)

    def _record(self, entry):
        self.fallbacks.append(entry)
        _FALLBACKS.append(entry)
        _log.warning(
            "gpusaxs DeviceEngine: %s path not used (%s); falling back to %s",
            entry["from"],
            entry["reason"],
            entry["to"],
        )

    def _note_dtype(self, dtype):
        """Frames of a dtype with no kernel go through the float64 sparse product: recorded
        once per dtype as a fallback of that dtype only (the engine stays on its path)."""
        dtype = np.dtype(dtype)
        if dtype not in self._dtype_notes:
            self._dtype_notes.add(dtype)
            self._record(
                {
                    "from": "kernel",
                    "to": "spmm",
                    "reason": f"unsupported dtype: no kernel for {dtype.name} frames",
                    "dtype": dtype.name,
                }
            )

    def _kernel_ok(self, dtype):
        return self.path == "kernel" and np.dtype(dtype) in KERNEL_DTYPES

    def batch_layout(self, dtype):
        """Layout of the device stack for frames of ``dtype``: "pixel" or "frame"."""
        dtype = np.dtype(dtype)
        if not self._kernel_ok(dtype):
            return "frame"
        if self.layout == "frame" and dtype in FRAME_MAJOR_DTYPES:
            return "frame"
        return "pixel"

    def _leading_dim(self, b):
        """ld of a pixel-major stack of b frames: b rounded up to frames per block."""
        return -(-b // FRAMES_PER_BLOCK) * FRAMES_PER_BLOCK

    def _module(self, dtype):
        """RawModule with every kernel of ``dtype`` (compiled on first use)."""
        dtype = np.dtype(dtype)
        mod = self._modules.get(dtype)
        if mod is None:
            names = [
                n for n in kernel_names() if f"<{CTYPES[dtype]}," in n or n == transpose_name(dtype)
            ]
            mod = self.xp.RawModule(
                code=kernel_source(), options=NVRTC_OPTIONS, name_expressions=names
            )
            self._modules[dtype] = mod
        return mod

    def _function(self, dtype, name):
        return self._module(dtype).get_function(name)

    # ------------------------------------------------------------------ one batch, on device
    def _integrate_into(self, arr, layout, b, out, errors):
        """Sums of b frames of arr into out (nq, b, n_bins) float64, overwritten.

        arr: (b, n_pixels) for layout "frame"; (n_pixels, ld) with b valid columns for
        "pixel".  Runs on the current stream (asynchronous on CuPy).  A path that raises for
        an expected reason (``expected_failure``) is dropped, recorded, and the batch redone
        on the next one; any other exception is a bug and raises."""
        while True:
            path = self.path
            try:
                if path == "kernel" and self._kernel_ok(arr.dtype):
                    self._launch(arr, layout, b, out, errors)
                elif path == "kernel":  # no kernel for 8-byte dtypes and float16
                    self._note_dtype(arr.dtype)
                    self._spmm_into(self._pixel_view(arr, layout, b), out, errors, np.float64)
                elif path == "spmm":
                    self._spmm_into(self._pixel_view(arr, layout, b), out, errors)
                else:
                    self._cpu_into(self._pixel_view(arr, layout, b), out, errors)
                return
            except Exception as exc:
                why = expected_failure(exc)
                if path == "cpu" or why is None:
                    raise
                self._fallback(exc, why)

    @staticmethod
    def _pixel_view(arr, layout, b):
        """(n_pixels, b) view of a batch in either layout."""
        return arr[:, :b] if layout == "pixel" else arr[:b].T

    def _lead(self, arr, layout, b):
        """Row stride (elements) of a kernel operand, from its strides: the kernels read
        ``base + row * lead + column``.  A layout the kernels cannot read (columns not
        contiguous, rows not aligned for the vector loads) is a bug: ValueError."""
        item = arr.itemsize
        rows, cols = (self.n_pixels, b) if layout == "pixel" else (b, self.n_pixels)
        if arr.ndim != 2 or arr.shape[0] < rows or arr.shape[1] < cols:
            raise ValueError(f"kernel operand of shape {arr.shape} for {rows}x{cols} values")
        if cols > 1 and arr.strides[1] != item or arr.strides[0] % item:
            raise ValueError(f"kernel operand with strides {arr.strides}: columns not contiguous")
        lead = arr.strides[0] // item if rows > 1 else arr.shape[1]
        if lead < cols:
            raise ValueError(f"kernel operand rows of {lead} elements overlap ({cols} needed)")
        if layout == "pixel" and (lead % FRAMES_PER_BLOCK or self._ptr(arr) % 16):
            raise ValueError(
                f"pixel-major operand: lead {lead} not a multiple of {FRAMES_PER_BLOCK} "
                "or data not 16-byte aligned"
            )
        return lead

    def _ptr(self, arr):
        return arr.ctypes.data if self.name == "numpy" else arr.data.ptr

    @staticmethod
    def _raw(arr, rows, cols, lead):
        """What a kernel reads from arr's base pointer: rows x cols values, row stride lead
        (the NumPy module's stand-in for a device pointer)."""
        item = arr.itemsize
        return np.lib.stride_tricks.as_strided(
            arr, shape=(rows, cols), strides=(lead * item, item), writeable=False
        )

    def _launch(self, arr, layout, b, out, errors):
        """One launch of the integration kernel of ``layout`` on b frames of arr (pointer and
        row stride from arr's strides).  NumPy: the same checks, then the float64 product on
        the memory the kernel would read."""
        lead = self._lead(arr, layout, b)
        if self.name == "numpy":
            rows, cols = (self.n_pixels, b) if layout == "pixel" else (b, self.n_pixels)
            raw = self._raw(arr, rows, cols, lead)
            x = raw if layout == "pixel" else raw.T
            self._spmm_into(x, out, errors, np.float64)
            return
        out.fill(0)
        n_groups = -(-b // FRAMES_PER_BLOCK)
        grid = int(self._seg_bin.size) * n_groups
        if grid == 0 or b == 0:
            return
        d = self._dev
        offset = self._o is not None
        fn = self._function(arr.dtype, kernel_name(arr.dtype, errors, offset, layout))
        zero = d["w"]  # placeholder pointer when there is no offset (never read)
        fn(
            (grid,),
            (BLOCK,),
            (
                arr,
                np.int64(lead),
                np.int32(b),
                np.int32(n_groups),
                d["seg_bin"],
                d["seg_start"],
                d["seg_end"],
                d["pix"],
                d["w"],
                d["s"],
                d["o"] if offset else zero,
                np.int32(self.n_bins),
                out,
            ),
        )

    def _transpose(self, src, b, dst):
        """Frame-major src (b, n_pixels) -> pixel-major dst (n_pixels, >= ld), on the device
        (src may be a mapped pinned host buffer; its rows must be contiguous, n_pixels apart;
        dst's row stride is read from its strides).  NumPy: the same checks and writes."""
        if self._lead(src, "frame", b) != self.n_pixels:
            raise ValueError("the transposition reads frames n_pixels apart")
        ld = self._lead(dst, "pixel", b)
        if self.name == "numpy":
            out = np.lib.stride_tricks.as_strided(
                dst, shape=(self.n_pixels, b), strides=(ld * dst.itemsize, dst.itemsize)
            )
            np.copyto(out, src[:b].T)
            return
        n_ptiles = -(-self.n_pixels // 32)
        grid = n_ptiles * (-(-b // 32))
        fn = self._function(src.dtype, transpose_name(src.dtype))
        fn(
            (grid,),
            (256,),
            (src, np.int64(self.n_pixels), np.int32(b), np.int64(ld), dst),
        )

    def _pixel_batch(self, src, b, dev_pm, out, errors):
        """Transpose src (b, P) into dev_pm (P, ld) and integrate it; if the transposition
        kernel fails for an expected reason, fall back and integrate src as it is."""
        try:
            self._transpose(src, b, dev_pm)
        except Exception as exc:
            why = expected_failure(exc)
            if why is None or self.path != "kernel":
                raise
            self._fallback(exc, why)
            self._integrate_into(src, "frame", b, out, errors)
            return
        self._integrate_into(dev_pm, "pixel", b, out, errors)

    def _spmm_into(self, x, out, errors, dtype=None):
        """Sparse-product path on x (n_pixels, b): frames converted to float, invalid -> 0.

        The reference path through cupyx.scipy.sparse, without avoidable copies: the float
        frames are made frame-major (b, n_pixels), C-contiguous (no copy of a frame-major
        batch), so each product gets their transpose, the F-contiguous (n_pixels, b) operand
        cuSPARSE's SpMM reads (cupyx copies any other layout first); the dark offset stays on
        the device (``_offset_on``)."""
        xp = self.xp
        dt = np.dtype(dtype or self.spmm_dtype)
        mats = self._sparse_matrices(dt)
        xt = x.T  # (b, n_pixels): a C-contiguous view for a frame-major batch
        valid = valid_mask(xt, xp)
        xv = xp.where(valid, xt.astype(dt), dt.type(0))
        if self._o is not None:
            d = xp.where(valid, xv - self._offset_on(dt)[None, :], dt.type(0))
        else:
            d = xv
        out[0] = (mats["ws"] @ d.T).T
        out[1] = (mats["w"] @ valid.astype(dt).T).T
        if errors:
            out[2] = (mats["ws2"] @ xv.T).T
        if errors is True:
            out[3] = (mats["ws2"] @ (d * d).T).T

    def _offset_on(self, dtype):
        """The per-pixel dark offset as a device array of dtype (uploaded once)."""
        dtype = np.dtype(dtype)
        if dtype not in self._offsets:
            self._offsets[dtype] = self.xp.asarray(self._pixel_offset.astype(dtype))
        return self._offsets[dtype]

    def _cpu_into(self, x, out, errors):
        """Last resort: the CPU engine on a host copy of x (n_pixels, b)."""
        if self._cpu is None:
            self._cpu = _host_engine(self.matrix)
        frames = np.ascontiguousarray(self._ops.to_host(x).T).reshape((-1,) + self.shape)
        res = self._cpu.sums(frames, errors=errors)
        for q in range(out.shape[0]):
            out[q] = self.xp.asarray(res[q])

    # ------------------------------------------------------------------ input checking
    def _as_frames(self, arr):
        """(b, n_pixels) view of a (B, H, W), (H, W), (B, P) or (P,) array; dtype checked."""
        check_frame_dtype(arr.dtype)
        shape = tuple(arr.shape)
        if arr.ndim == 3 and shape[1:] == self.shape:
            b = shape[0]
        elif arr.ndim == 2 and shape == self.shape:
            b = 1
        elif arr.ndim == 2 and shape[1] == self.n_pixels:
            b = shape[0]
        elif arr.ndim == 1 and shape[0] == self.n_pixels:
            b = 1
        else:
            raise ValueError(
                f"frames of shape {shape} do not match the matrix image shape {self.shape}"
            )
        if arr.dtype.byteorder not in "=|":
            arr = arr.astype(arr.dtype.newbyteorder("="))
        return arr.reshape(b, self.n_pixels)

    def _nq(self, errors):
        return _mode(errors) + 2

    def _empty_sums(self, xp, b, errors):
        return self._to_sums(xp.zeros((self._nq(errors), b, self.n_bins), dtype=np.float64))

    @staticmethod
    def _to_sums(out):
        """Sums from an (nq, b, n_bins) array: nq 2 (signal, norm), 3 (+ variance), 4."""
        return Sums(*out)

    # ------------------------------------------------------------------ device-resident input
    def sums_device(self, stack_dev, errors=False, pixel_major=False):
        """Sums of a stack already in device memory (CuPy array; NumPy array on NumPy).

        stack_dev: (B, H, W) / (B, n_pixels) frames, or with ``pixel_major=True`` an
        (n_pixels, B) array (frames produced on the device in the kernel's layout: no
        transposition).  Returns Sums of device arrays (B, n_bins) float64 on the current
        stream, no host copy.  errors: False, "poisson" or True.  A frame-major stack on the
        pixel-major path is transposed batch by batch (one extra read and write of the stack).
        """
        xp = self.xp
        nq = self._nq(errors)
        if pixel_major:
            check_frame_dtype(stack_dev.dtype)
            if stack_dev.ndim != 2 or stack_dev.shape[0] != self.n_pixels:
                raise ValueError(
                    f"a pixel-major stack must be (n_pixels={self.n_pixels}, B), "
                    f"not {tuple(stack_dev.shape)}"
                )
            b = int(stack_dev.shape[1])
        else:
            frames = self._as_frames(stack_dev)
            b = int(frames.shape[0])
        out = xp.empty((nq, b, self.n_bins), dtype=np.float64)
        if b == 0:
            return self._to_sums(out)
        dtype = stack_dev.dtype if pixel_major else frames.dtype
        layout = self.batch_layout(dtype)
        if pixel_major:
            ld = self._leading_dim(b)
            aligned = self._ptr(stack_dev) % 16 == 0
            if layout == "pixel" and ld == b and stack_dev.flags.c_contiguous and aligned:
                self._integrate_into(stack_dev, "pixel", b, out, errors)
            elif layout == "pixel":
                buf = xp.zeros((self.n_pixels, ld), dtype=dtype)  # padding: zeros
                buf[:, :b] = stack_dev
                self._integrate_into(buf, "pixel", b, out, errors)
            else:
                frames = xp.ascontiguousarray(stack_dev.T)
                self._integrate_into(frames, "frame", b, out, errors)
            return self._to_sums(out)
        if layout == "frame":
            if self._kernel_ok(dtype):  # one launch; the kernel follows the row stride
                if frames.strides[1] != frames.itemsize:
                    frames = xp.ascontiguousarray(frames)
                self._integrate_into(frames, "frame", b, out, errors)
                return self._to_sums(out)
            for i in range(0, b, self.batch_size):
                part = frames[i : i + self.batch_size]
                o = xp.empty((nq, part.shape[0], self.n_bins), dtype=np.float64)
                self._integrate_into(part, "frame", part.shape[0], o, errors)
                out[:, i : i + part.shape[0]] = o
            return self._to_sums(out)
        step = self.batch_size
        buf = xp.empty((self.n_pixels, self._leading_dim(min(step, b))), dtype=dtype)
        for i in range(0, b, step):
            part = xp.ascontiguousarray(frames[i : i + step])
            k = int(part.shape[0])
            view = buf[:, : self._leading_dim(k)]  # the last, partial batch: a strided view
            if view.shape[1] > k:
                view[:, k:] = 0  # padding of a partial frame group: zeros, not garbage
            self._transpose(part, k, view)
            o = xp.empty((nq, k, self.n_bins), dtype=np.float64)
            self._integrate_into(view, "pixel", k, o, errors)
            out[:, i : i + k] = o
        return self._to_sums(out)

    # ------------------------------------------------------------------ host input
    def sums(self, stack, errors=False):
        """Sums of a stack (B, H, W) of any int/float dtype: float64 NumPy arrays (B, n_bins).

        A device (CuPy) array goes through sums_device; a host array is streamed in batches;
        any other iterable (an iterator or generator of frames (H, W) or blocks (k, H, W), a
        list) through integrate_stream, as it comes.
        """
        if self._ops.is_device_array(stack):
            res = self.sums_device(stack, errors)
            return Sums(*(None if a is None else self._ops.to_host(a) for a in res))
        if isinstance(stack, np.ndarray) or not hasattr(stack, "__iter__"):
            frames = self._as_frames(np.asarray(stack))
            if frames.shape[0] == 0:
                return self._empty_sums(np, 0, errors)
            parts = list(self.integrate_stream(frames, errors))
        else:
            parts = list(self.integrate_stream(stack, errors))
            if not parts:
                return self._empty_sums(np, 0, errors)
        return Sums(*(np.concatenate([p[q] for p in parts]) for q in range(self._nq(errors))))

    def integrate_stream(self, frames, errors=False):
        """Generator of Sums (host float64, (b, n_bins)), one per batch, in input order.

        frames: a host stack (B, H, W) (split into batches of batch_size; a pinned stack is
        copied to the device without staging and must not change until the generator ends),
        a device stack (integrated batch by batch), or an iterable of frames (H, W) / blocks
        (k, H, W), each copied into a pinned staging buffer as soon as it is received (so the
        producer may reuse its buffers), grouped into batches of batch_size frames (a dtype
        change ends a batch).  Batch k+1 is copied while batch k is integrated.
        """
        if self._ops.is_device_array(frames):
            return self._device_stream(frames, errors)
        if isinstance(frames, np.ndarray):
            return self._pipeline(self._stack_jobs(self._as_frames(frames)), errors)
        return self._pipeline(self._iter_jobs(frames), errors)

    def _device_stream(self, stack_dev, errors):
        frames = self._as_frames(stack_dev)
        for i in range(0, frames.shape[0], self.batch_size):
            res = self.sums_device(frames[i : i + self.batch_size], errors)
            yield Sums(*(None if a is None else self._ops.to_host(a) for a in res))

    # Job generators run inside _pipeline.  They obtain idle slots with
    # ``slot = yield from acquire()`` (which may yield a finished result first), fill the slot's
    # staging buffer, and yield ("submit", slot, src) with src a (b, P) host array to upload.
    def _stack_jobs(self, stack):
        direct = bool(stack.flags.c_contiguous and self._ops.is_pinned(stack))
        for i in range(0, stack.shape[0], self.batch_size):
            part = stack[i : i + self.batch_size]
            slot = yield ("acquire",)
            if direct:
                src = part
            else:
                src = self._stage(slot, part.dtype, part.shape[0])
                self._host_copy(src, part)
            yield ("submit", slot, src)

    def _iter_jobs(self, iterable):
        slot = stage = None
        count = 0
        for item in iterable:
            arr = self._as_frames(np.asarray(item))
            pos = 0
            while pos < arr.shape[0]:
                if stage is not None and arr.dtype != stage.dtype:
                    yield ("submit", slot, stage[:count])
                    slot = stage = None
                if stage is None:
                    slot = yield ("acquire",)
                    stage = self._stage(slot, arr.dtype, self.batch_size)
                    count = 0
                take = min(self.batch_size - count, arr.shape[0] - pos)
                # copied now: the producer may reuse its buffer as soon as we ask for the next
                self._host_copy(stage[count : count + take], arr[pos : pos + take])
                count += take
                pos += take
                if count == self.batch_size:
                    yield ("submit", slot, stage)
                    slot = stage = None
        if stage is not None and count:
            yield ("submit", slot, stage[:count])

    def _stage(self, slot, dtype, b):
        """(b, P) view of dtype on slot's pinned staging buffer (slot must be idle)."""
        nbytes = b * self.n_pixels * dtype.itemsize
        return _view(slot.buffer("stage", nbytes, True), dtype, (b, self.n_pixels))

    def _get_slots(self):
        if self._slots is None:
            self._slots = [Slot(self._ops, self._stream_factory()) for _ in range(self.n_streams)]
        return self._slots

    def _pipeline(self, jobs, errors):
        """Drive a job generator: round-robin over the slots, results in submission order.

        A slot is handed to a job only when idle (its previous batch finished and its result
        copied out), so staging buffers are never overwritten while a stream reads them."""
        if self._active:
            raise RuntimeError("another integrate_stream of this engine is still running")
        self._active = True
        slots = self._get_slots()
        inflight = collections.deque()
        try:
            reply = None
            while True:
                try:
                    request = jobs.send(reply)
                except StopIteration:
                    break
                reply = None
                if request[0] == "acquire":
                    slot = slots[self._slot_counter % len(slots)]
                    self._slot_counter += 1
                    if slot.busy:  # with round-robin the busy slot is the oldest in flight
                        assert inflight and inflight[0] is slot
                        yield self._finish(inflight.popleft())
                    reply = slot
                else:
                    _, slot, src = request
                    self._submit(slot, src, errors)
                    inflight.append(slot)
            while inflight:
                yield self._finish(inflight.popleft())
        finally:
            jobs.close()
            for slot in inflight:  # abandoned generator: wait for the work still in flight
                slot.event.synchronize()
                slot.pending = None
                slot.event = None
            self._active = False

    def _host_copy(self, dst, src):
        """Copy host frames src (k, P) into dst (k, P), split over threads when large."""
        if self.staging_threads <= 1 or dst.nbytes < (8 << 20):
            np.copyto(dst, src)
            return
        if self._pool is None:
            self._pool = concurrent.futures.ThreadPoolExecutor(self.staging_threads)
        step = -(-self.n_pixels // self.staging_threads)
        futures = [
            self._pool.submit(np.copyto, dst[:, c : c + step], src[:, c : c + step])
            for c in range(0, self.n_pixels, step)
        ]
        for f in futures:
            f.result()

    def _submit(self, slot, src, errors):
        """H2D of src (b, P), integration and D2H, asynchronously on the slot's stream.

        Pixel-major path: upload "copy" copies src to a frame-major device buffer and
        transposes it into the slot's pixel-major stack; "mapped" lets the transposing kernel
        read the pinned src directly (upload and transposition in one pass)."""
        b = src.shape[0]
        nq = self._nq(errors)
        layout = self.batch_layout(src.dtype)
        out_nbytes = nq * b * self.n_bins * 8
        dev_out = _view(slot.buffer("out", out_nbytes, False), np.float64, (nq, b, self.n_bins))
        host_out = _view(slot.buffer("result", out_nbytes, True), np.float64, (nq, b, self.n_bins))
        stream = slot.stream
        if layout == "pixel":
            ld = self._leading_dim(b)
            dev_pm = _view(
                slot.buffer("pixel_major", self.n_pixels * ld * src.itemsize, False, True),
                src.dtype,
                (self.n_pixels, ld),
            )
            if self.upload == "mapped":
                dev_src = self._ops.mapped(src)
            else:
                dev_src = _view(
                    slot.buffer("frames", src.nbytes, False), src.dtype, (b, self.n_pixels)
                )
                stream.run(self._ops.h2d, dev_src, src)
            stream.run(self._pixel_batch, dev_src, b, dev_pm, dev_out, errors)
        else:
            dev_frames = _view(
                slot.buffer("frames", src.nbytes, False), src.dtype, (b, self.n_pixels)
            )
            stream.run(self._ops.h2d, dev_frames, src)
            stream.run(self._integrate_into, dev_frames, "frame", b, dev_out, errors)
        stream.run(self._ops.d2h, host_out, dev_out)
        slot.event = stream.record()
        slot.pending = (b, nq, host_out)

    def _finish(self, slot):
        """Wait for slot's event; copy its results out of the pinned buffer."""
        slot.event.synchronize()
        b, nq, host_out = slot.pending
        res = np.array(host_out, copy=True)
        slot.pending = None
        slot.event = None
        return self._to_sums(res)

    # ------------------------------------------------------------------ service batches
    def submit(self, frames, errors=False):
        """Queue one batch (a list of (H, W) frames or a (b, H, W) stack) without waiting.

        The frames are copied into a pinned staging buffer at once (the caller may reuse them)
        and uploaded, integrated and copied back asynchronously on the next stream, so a
        service overlaps batch k+1's copies with batch k's integration.  If every stream is
        busy, the oldest batch is waited for (its Sums stay queued for ``collect``).  Returns
        the number of batches in flight or waiting.  Not to be mixed with integrate_stream.
        """
        if self._active:
            raise RuntimeError("integrate_stream of this engine is running")
        if not hasattr(self, "_service"):
            self._service = collections.deque()  # (slot or None, Sums or None)
        items = list(frames) if isinstance(frames, (list, tuple)) else [frames]
        arrs = [self._as_frames(np.asarray(it)) for it in items]
        if len(arrs) == 0 or sum(a.shape[0] for a in arrs) == 0:
            raise ValueError("an empty batch")
        dtype = arrs[0].dtype
        if any(a.dtype != dtype for a in arrs):
            raise ValueError("all frames of a batch must have one dtype")
        b = sum(a.shape[0] for a in arrs)
        slots = self._get_slots()
        slot = slots[self._slot_counter % len(slots)]
        self._slot_counter += 1
        if slot.busy:  # round-robin: the busy slot is the oldest in flight
            for k, (s_, _res) in enumerate(self._service):
                if s_ is slot:
                    self._service[k] = (None, self._finish(slot))
                    break
        stage = self._stage(slot, dtype, b)
        pos = 0
        for a in arrs:
            self._host_copy(stage[pos : pos + a.shape[0]], a)
            pos += a.shape[0]
        self._submit(slot, stage, errors)
        self._service.append((slot, None))
        return len(self._service)

    def pending(self):
        """Batches submitted and not yet collected."""
        return len(getattr(self, "_service", ()))

    def collect(self):
        """Sums (host float64, (b, n_bins)) of the oldest submitted batch (waits for it)."""
        service = getattr(self, "_service", None)
        if not service:
            raise RuntimeError("no batch submitted")
        slot, res = service.popleft()
        return res if slot is None else self._finish(slot)

    def close(self):
        """Release the staging thread pool (buffers are freed with the engine)."""
        if self._pool is not None:
            self._pool.shutdown()
            self._pool = None
