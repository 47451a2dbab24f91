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
it: gpu_ops.expected_failure) falls back to the cupyx sparse product, then to the CPU engine
that gpusaxs.engines.make_engine hands it (``host_engine``), recorded in ``fallbacks`` /
``engine_fallbacks()`` / ``backend_info()``; frames of a dtype
without a kernel are recorded the same way; any other exception raises.

With ``xp=numpy`` (CI, no GPU) the same scheduler, layouts, upload modes and checks run over
synchronous "streams" (gpusaxs/gpu_ops.py), and the "kernel" is a float64 SciPy sparse product
on the memory the CUDA kernel would read (base pointer and row stride, see ``_launch``), with
the same validity rules.  The CUDA source is
compiled in CI by NVRTC and run on the CPU through an emulation shim (tests).

Validity: the rule of gpusaxs.engine_contract (``valid_mask`` on the sparse paths, the same
rule in CUDA in the kernels).  Float validity is judged on the bits, so a negative subnormal is
invalid on the GPU (compiled with -ftz=true) as on the CPU.

Kernel names and NVRTC options: gpusaxs.gpu_kernels; device operations: gpusaxs.gpu_ops; the
streaming scheduler (streams, pinned slots, submit/collect): gpusaxs.gpu_scheduler; the
process-wide fallback log: gpusaxs.gpu_fallbacks (its names are re-exported here, where
saxsdog and the server import ``fallback_lines``).
"""

import logging
import os

import numpy as np

from gpusaxs.engine_contract import Sums, check_frame_dtype
from gpusaxs.gpu_decode import CompressedInput
from gpusaxs.gpu_fallbacks import engine_fallbacks, fallback_lines, record
from gpusaxs.gpu_kernels import (
    BLOCK,
    CTYPES,
    FRAME_MAJOR_DTYPES,
    FRAMES_PER_BLOCK,
    KERNEL_DTYPES,
    LAYOUTS,
    NVRTC_OPTIONS,
    kernel_mode,
    kernel_name,
    kernel_names,
    kernel_source,
    make_segments,
    transpose_name,
)
from gpusaxs.gpu_ops import CupyOps, NumpyOps, expected_failure
from gpusaxs.gpu_scheduler import StreamScheduler
from gpusaxs.gpu_sparse import SparseProduct

#: DeviceEngine; the fallback log's readers are re-exported for clients/saxsdog.py and
#: server/saxsdogserver.py, which import ``fallback_lines`` from here
__all__ = ["DeviceEngine", "engine_fallbacks", "fallback_lines"]

UPLOADS = ("copy", "mapped")

_log = logging.getLogger(__name__)


class DeviceEngine(StreamScheduler, SparseProduct, CompressedInput):
    """Batched integration engine over an array module (CuPy on a GPU, NumPy in CI).

    matrix: IntegrationMatrix (its optional ``pixel_offset`` is subtracted in the kernel).
    xp: cupy or numpy, the array module (make_engine passes CuPy's; the backend is chosen
    there, not here).
    batch_size: frames per kernel launch / pipeline stage.  n_streams: pipeline depth (>= 1).
    method: "kernel" (custom CUDA kernels, raw dtypes, float64 accumulation) or "spmm"
    (cupyx.scipy.sparse CSR product on float-converted frames; the simple GPU reference).
    On CuPy a kernel that fails to compile or launch falls back to "spmm", then to the CPU
    engine ``host_engine(matrix)`` makes (make_engine passes its CPU choice; None: the chain
    ends at "spmm"), each step logged once and listed by ``engine_fallbacks()``.
    On NumPy both methods are a float64 SciPy sparse product.
    layout: device stack layout of the kernel path, "pixel" ((n_pixels, frames): the FB frames
    of one matrix entry are contiguous) or "frame" ((frames, n_pixels), int32/uint32 only).
    upload: how host frames reach the pixel-major stack: "copy" (DMA copy, then a transposing
    kernel on the device) or "mapped" (the transposing kernel reads the pinned staging buffer
    itself: one pass).  segment_length: most matrix entries per block.
    spmm_dtype: value dtype of the "spmm" path on CuPy (float32 or float64); NumPy always uses
    float64.  staging_threads: threads copying pageable frames into pinned buffers.
    stream_factory: callable returning a stream object (tests).  host_engine: callable(matrix)
    -> Engine, the last step of the fallback chain.  Build it with gpusaxs.engines.make_engine.

    Not thread-safe: use one engine per thread, and one integrate_stream at a time.
    """

    #: the matrix's pixel_offset (dark) is applied in the kernels (docs/ARCHITECTURE.md)
    supports_pixel_offset = True

    def __init__(
        self,
        matrix,
        xp,
        batch_size=32,
        n_streams=2,
        method="kernel",
        layout="pixel",
        upload="copy",
        segment_length=4096,
        spmm_dtype="float32",
        staging_threads=None,
        stream_factory=None,
        host_engine=None,
    ):
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
        self._chain = (["kernel"] if method == "kernel" else []) + ["spmm"]
        self._host_engine = host_engine
        if host_engine is not None:
            self._chain.append("cpu")
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
        record(entry)
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
                if why is None or len(self._chain) == 1:  # a bug, or no path left
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

    def _cpu_into(self, x, out, errors):
        """Last resort: the CPU engine on a host copy of x (n_pixels, b)."""
        if self._cpu is None:
            self._cpu = self._host_engine(self.matrix)
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
        return kernel_mode(errors) + 2

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
