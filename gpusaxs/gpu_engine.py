"""DeviceEngine: batched integration of frame stacks with an array module (CuPy or NumPy).

On a GPU (``xp=cupy``) the matrix is uploaded once in bin-major CSR form and each batch of
frames is integrated by ONE launch of a templated CUDA kernel (``KERNEL_SOURCE``): a block
handles one segment of one bin's entries for up to ``frames_per_block`` frames, so each matrix
entry (pixel index int32, weight float32, pixel scale float32: 12 bytes) is read once per frame
group from HBM and from L2 for the other groups of the batch, while every frame pixel is read in
its raw dtype (no host-side float conversion) and converted in registers.  Sums accumulate in
float64.  Host frames stream through pinned staging buffers on ``n_streams`` CUDA streams so the
copy of batch k+1 overlaps the integration of batch k.

With ``xp=numpy`` (CI, no GPU) the same scheduler runs over synchronous "streams" and the
"kernel" is a float64 SciPy sparse product with the same validity rules: batching, dtype
handling, staging and ordering are tested without a device.  The CUDA source itself only runs
on a device (tests compile and execute it on the CPU through a small emulation shim).

Validity (matches docs/ARCHITECTURE.md and cpu_fallback): a pixel value x is valid when
x >= 0 and finite; for unsigned dtypes every value is >= 0 but the type's maximum (2**32-1 for
uint32: EIGER gap/overflow flag; 65535 for uint16; 255 for uint8) is invalid.  uint32 values
above 2**31 are real counts, never reinterpreted as negative.
"""
import collections
import concurrent.futures
import ctypes
import os

import numpy as np

from gpusaxs.sums import Sums

__all__ = ["DeviceEngine", "valid_mask", "make_segments", "KERNEL_SOURCE", "kernel_name",
           "SyncStream", "CTYPES"]

#: CUDA C type of each frame dtype the kernel is instantiated for (others: converted on device).
CTYPES = {
    np.dtype(np.int8): "signed char", np.dtype(np.uint8): "unsigned char",
    np.dtype(np.int16): "short", np.dtype(np.uint16): "unsigned short",
    np.dtype(np.int32): "int", np.dtype(np.uint32): "unsigned int",
    np.dtype(np.int64): "long long", np.dtype(np.uint64): "unsigned long long",
    np.dtype(np.float32): "float", np.dtype(np.float64): "double",
}

#: Threads per block of the CUDA kernel.
BLOCK = 256

KERNEL_SOURCE = r"""
#ifndef GS_BLOCK
#define GS_BLOCK 256
#endif
#define GS_WARPS (GS_BLOCK / 32)

// Validity of a raw pixel value: x >= 0 and finite; the maximum of an unsigned type is a flag.
template <typename T> struct gs_valid {
    static __device__ __forceinline__ bool ok(T x) { return x >= 0; }
};
template <> struct gs_valid<unsigned char> {
    static __device__ __forceinline__ bool ok(unsigned char x) { return x != (unsigned char)0xFFu; }
};
template <> struct gs_valid<unsigned short> {
    static __device__ __forceinline__ bool ok(unsigned short x) { return x != (unsigned short)0xFFFFu; }
};
template <> struct gs_valid<unsigned int> {
    static __device__ __forceinline__ bool ok(unsigned int x) { return x != 0xFFFFFFFFu; }
};
template <> struct gs_valid<unsigned long long> {
    static __device__ __forceinline__ bool ok(unsigned long long x) { return x != 0xFFFFFFFFFFFFFFFFull; }
};
template <> struct gs_valid<float> {
    static __device__ __forceinline__ bool ok(float x) { return x >= 0.0f && x <= 3.402823466e+38f; }
};
template <> struct gs_valid<double> {
    static __device__ __forceinline__ bool ok(double x) { return x >= 0.0 && x <= 1.7976931348623157e+308; }
};

__device__ __forceinline__ double gs_warp_sum(double v) {
    for (int off = 16; off > 0; off >>= 1) v += __shfl_down_sync(0xffffffffu, v, off);
    return v;
}

// One block = one segment (a run of <= segment_length entries of ONE bin) x one group of up
// to FB frames.  Blocks are numbered segment-major (block = seg * n_groups + group) so the
// groups sharing a segment run together and its matrix entries come from L2 after the first.
// frames: (n_frames, n_pixels) raw values.  out: (NQ, n_frames, n_bins) float64, zeroed;
// q = 0 signal, 1 norm, 2 variance, 3 squares (2 and 3 only when ERR).
template <typename T, int FB, bool ERR>
__global__ void __launch_bounds__(GS_BLOCK) gs_integrate(
        const T* __restrict__ frames, const long long n_pixels,
        const int n_frames, const int n_groups,
        const int* __restrict__ seg_bin, const long long* __restrict__ seg_start,
        const long long* __restrict__ seg_end,
        const int* __restrict__ pix, const float* __restrict__ wgt,
        const float* __restrict__ scl,
        const int n_bins, double* __restrict__ out)
{
    const int NQ = ERR ? 4 : 2;
    __shared__ double gs_red[GS_WARPS][4 * FB];
    const long long block = (long long)blockIdx.x;
    const int group = (int)(block % n_groups);
    const long long seg = block / n_groups;
    const int f0 = group * FB;
    const int nf = (n_frames - f0 < FB) ? (n_frames - f0) : FB;
    const long long e0 = seg_start[seg];
    const long long e1 = seg_end[seg];
    const T* base = frames + (long long)f0 * n_pixels;

    double acc[4][FB];
#pragma unroll
    for (int f = 0; f < FB; ++f) { acc[0][f] = 0.0; acc[1][f] = 0.0; acc[2][f] = 0.0; acc[3][f] = 0.0; }

    for (long long e = e0 + (long long)threadIdx.x; e < e1; e += GS_BLOCK) {
        const long long p = (long long)pix[e];
        const double w = (double)wgt[e];
        const double s = (double)scl[e];
#pragma unroll
        for (int f = 0; f < FB; ++f) {
            if (f < nf) {
                const T raw = base[(long long)f * n_pixels + p];
                if (gs_valid<T>::ok(raw)) {
                    const double v = s * (double)raw;
                    acc[0][f] += w * v;
                    acc[1][f] += w;
                    if (ERR) { acc[2][f] += w * s * v; acc[3][f] += w * v * v; }
                }
            }
        }
    }

    const int lane = threadIdx.x & 31;
    const int warp = threadIdx.x >> 5;
#pragma unroll
    for (int q = 0; q < NQ; ++q) {
#pragma unroll
        for (int f = 0; f < FB; ++f) {
            const double v = gs_warp_sum(acc[q][f]);
            if (lane == 0) gs_red[warp][q * FB + f] = v;
        }
    }
    __syncthreads();
    const int bin = seg_bin[seg];
    for (int i = threadIdx.x; i < NQ * FB; i += GS_BLOCK) {
        const int q = i / FB;
        const int f = i - q * FB;
        if (f < nf) {
            double t = 0.0;
            for (int k = 0; k < GS_WARPS; ++k) t += gs_red[k][i];
            atomicAdd(&out[((long long)q * n_frames + f0 + f) * n_bins + bin], t);
        }
    }
}
"""


def kernel_name(dtype, frames_per_block, errors):
    """C++ name expression of the kernel instance for frames of ``dtype``."""
    return (f"gs_integrate<{CTYPES[np.dtype(dtype)]}, {int(frames_per_block)}, "
            f"{'true' if errors else 'false'}>")


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


# --------------------------------------------------------------------------------------------
# streams: the scheduler talks to these, so it runs unchanged on NumPy and on CuPy
# --------------------------------------------------------------------------------------------
class _DoneEvent:
    def synchronize(self):
        pass


class SyncStream:
    """Trivial stream of the NumPy backend: submitted work runs at once."""

    def run(self, fn, *args):
        """Run ``fn(*args)`` "on" this stream."""
        return fn(*args)

    def record(self):
        """An event that is complete when everything submitted so far is."""
        return _DoneEvent()

    def synchronize(self):
        pass


class _CupyStream:
    """A CUDA stream: ``run`` issues fn's asynchronous work with this stream current."""

    def __init__(self, cupy):
        self._cupy = cupy
        # blocking w.r.t. the legacy default stream (library calls that might use it stay
        # ordered), still concurrent with the other streams we create
        self.stream = cupy.cuda.Stream(non_blocking=False)

    def run(self, fn, *args):
        with self.stream:
            return fn(*args)

    def record(self):
        event = self._cupy.cuda.Event(disable_timing=True)
        event.record(self.stream)
        return event

    def synchronize(self):
        self.stream.synchronize()


class _NumpyOps:
    """Memory and copies of the NumPy backend ("device" memory is host memory)."""

    name = "numpy"

    def __init__(self):
        self.xp = np

    def empty_pinned(self, nbytes):
        return np.empty(nbytes, dtype=np.uint8)

    def empty_device(self, nbytes):
        return np.empty(nbytes, dtype=np.uint8)

    def is_pinned(self, arr):
        return False

    def h2d(self, dst, src):
        np.copyto(dst, src.reshape(dst.shape))

    def d2h(self, dst, src):
        np.copyto(dst, src)

    def new_stream(self):
        return SyncStream()

    def to_host(self, arr):
        return np.asarray(arr)

    def is_device_array(self, arr):
        return False


class _CupyOps:
    """Memory and asynchronous copies on a CUDA device (current stream)."""

    name = "cupy"

    def __init__(self, cupy):
        import cupyx

        self.xp = cupy
        self._cupyx = cupyx

    def empty_pinned(self, nbytes):
        return self._cupyx.empty_pinned((nbytes,), dtype=np.uint8)

    def empty_device(self, nbytes):
        return self.xp.empty((nbytes,), dtype=self.xp.uint8)

    def is_pinned(self, arr):
        """True when a host array lives in page-locked memory (async H2D possible)."""
        if not isinstance(arr, np.ndarray) or arr.nbytes == 0:
            return False
        try:
            pinned_type = self.xp.cuda.PinnedMemoryPointer
            base = arr
            while base is not None:  # cupyx.empty_pinned: ndarray over a PinnedMemoryPointer
                if isinstance(base, pinned_type):
                    return True
                base = getattr(base, "base", None)
        except Exception:
            pass
        try:
            attrs = self.xp.cuda.runtime.pointerGetAttributes(arr.ctypes.data)
            kind = getattr(attrs, "type", getattr(attrs, "memoryType", 0))
            return int(kind) == 1  # cudaMemoryTypeHost
        except Exception:
            return False

    def h2d(self, dst, src):
        assert src.flags.c_contiguous and dst.flags.c_contiguous and src.nbytes == dst.nbytes
        stream = self.xp.cuda.get_current_stream()
        dst.data.copy_from_host_async(ctypes.c_void_p(src.ctypes.data), src.nbytes, stream)

    def d2h(self, dst, src):
        assert src.flags.c_contiguous and dst.flags.c_contiguous and src.nbytes == dst.nbytes
        stream = self.xp.cuda.get_current_stream()
        src.data.copy_to_host_async(ctypes.c_void_p(dst.ctypes.data), dst.nbytes, stream)

    def new_stream(self):
        return _CupyStream(self.xp)

    def to_host(self, arr):
        return self.xp.asnumpy(arr)

    def is_device_array(self, arr):
        return isinstance(arr, self.xp.ndarray)


class _Slot:
    """One pipeline stage: a stream with its staging/device buffers (grown on demand)."""

    def __init__(self, ops, stream):
        self.ops = ops
        self.stream = stream
        self.event = None
        self.pending = None  # (b, nq, pinned_out view) while in flight
        self._bufs = {}

    def buffer(self, key, nbytes, pinned):
        buf = self._bufs.get(key)
        if buf is None or buf.nbytes < nbytes:
            self._bufs[key] = None  # free before allocating the bigger one
            buf = self.ops.empty_pinned(nbytes) if pinned else self.ops.empty_device(nbytes)
            self._bufs[key] = buf
        return buf[:nbytes]

    @property
    def busy(self):
        return self.pending is not None


def _view(buf, dtype, shape):
    return buf.view(dtype).reshape(shape)


class DeviceEngine:
    """Batched integration engine over an array module (CuPy on a GPU, NumPy in CI).

    matrix: IntegrationMatrix.  xp: cupy or numpy (default: the "auto" backend).
    batch_size: frames per kernel launch / pipeline stage.  n_streams: pipeline depth (>= 1).
    method: "kernel" (RawKernel gather, raw dtypes, float64 accumulation) or "spmm"
    (cupyx.scipy.sparse CSR product on float-converted frames; the simple GPU reference).
    On NumPy both methods are a float64 SciPy sparse product.
    frames_per_block: frames handled by one CUDA block (kernel template parameter).
    segment_length: most matrix entries per block (bins with more entries are split).
    spmm_dtype: value dtype of the "spmm" path on CuPy (float32 as in the naive approach, or
    float64); NumPy always uses float64.  staging_threads: threads copying pageable frames into
    pinned buffers.  stream_factory: callable returning a stream object (tests).

    Not thread-safe: use one engine per thread, and one integrate_stream at a time.
    """

    def __init__(self, matrix, xp=None, batch_size=32, n_streams=2, method="kernel",
                 frames_per_block=8, segment_length=4096, spmm_dtype="float32",
                 staging_threads=None, stream_factory=None):
        if xp is None:
            from gpusaxs.backend import array_module, select_backend
            xp = array_module(select_backend("auto")[0])
        if method not in ("kernel", "spmm"):
            raise ValueError(f"method must be 'kernel' or 'spmm', not {method!r}")
        if int(batch_size) < 1 or int(n_streams) < 1 or int(frames_per_block) < 1:
            raise ValueError("batch_size, n_streams and frames_per_block must be >= 1")
        if int(segment_length) < 1:
            raise ValueError("segment_length must be >= 1")
        self.matrix = matrix
        self.xp = xp
        self._ops = _NumpyOps() if xp is np else _CupyOps(xp)
        self.name = self._ops.name
        self.method = method
        self.batch_size = int(batch_size)
        self.n_streams = int(n_streams)
        self.frames_per_block = int(frames_per_block)
        self.segment_length = int(segment_length)
        self.spmm_dtype = np.dtype(np.float64 if xp is np else spmm_dtype)
        if self.spmm_dtype not in (np.dtype(np.float32), np.dtype(np.float64)):
            raise ValueError("spmm_dtype must be float32 or float64")
        self.staging_threads = int(staging_threads or min(8, os.cpu_count() or 1))
        self._stream_factory = stream_factory or self._ops.new_stream
        self.shape = tuple(int(v) for v in matrix.shape)
        self.n_pixels = matrix.n_pixels
        self.n_bins = matrix.n_bins

        # bin-major CSR on the host: (row_ptr int64, pixel int32, weight float32) + scale/entry
        row_ptr, pix, w = matrix.bin_major()
        self._row_ptr = np.asarray(row_ptr, dtype=np.int64)
        self._pix = np.ascontiguousarray(pix, dtype=np.int32)
        self._w = np.ascontiguousarray(w, dtype=np.float32)
        self._s = np.ascontiguousarray(np.asarray(matrix.pixel_scale, np.float32)[self._pix])
        self._seg_bin, self._seg_start, self._seg_end = make_segments(self._row_ptr,
                                                                      self.segment_length)
        self._dev = None
        self._sparse = None
        self._kernels = {}
        self._slots = None
        self._slot_counter = 0
        self._active = False
        self._pool = None
        if self.name == "cupy" and method == "kernel":
            self._upload()

    # ------------------------------------------------------------------ matrix on the device
    def _upload(self):
        """Copy the kernel's matrix arrays to the device once (12 bytes per entry)."""
        xp = self.xp
        self._dev = {k: xp.asarray(v) for k, v in (
            ("pix", self._pix), ("w", self._w), ("s", self._s), ("seg_bin", self._seg_bin),
            ("seg_start", self._seg_start), ("seg_end", self._seg_end))}
        xp.cuda.runtime.deviceSynchronize()  # the upload ran on the default stream

    def kernel_arrays(self):
        """Host copies of the kernel inputs: pix, w, s, seg_bin, seg_start, seg_end (tests)."""
        return {"pix": self._pix, "w": self._w, "s": self._s, "seg_bin": self._seg_bin,
                "seg_start": self._seg_start, "seg_end": self._seg_end}

    @property
    def device_nbytes(self):
        """Bytes of matrix data the kernel reads per batch (entries + segment table)."""
        return sum(a.nbytes for a in self.kernel_arrays().values())

    def _sparse_matrices(self):
        """(n_bins, n_pixels) CSR matrices with values w, w*s, w*s^2 (built once, lazily)."""
        if self._sparse is None:
            w = self._w.astype(np.float64)
            s = self._s.astype(np.float64)
            values = {"w": w, "ws": w * s, "ws2": w * s * s}
            shape = (self.n_bins, self.n_pixels)
            if self.xp is np:
                import scipy.sparse as sp
                self._sparse = {k: sp.csr_matrix((v, self._pix, self._row_ptr), shape=shape)
                                for k, v in values.items()}
            else:
                import cupyx.scipy.sparse as csp
                xp = self.xp
                idx = np.int32 if self._pix.size < 2**31 else np.int64
                ind = xp.asarray(self._pix.astype(idx))
                ptr = xp.asarray(self._row_ptr.astype(idx))
                self._sparse = {k: csp.csr_matrix((xp.asarray(v.astype(self.spmm_dtype)), ind,
                                                   ptr), shape=shape)
                                for k, v in values.items()}
                xp.cuda.runtime.deviceSynchronize()
        return self._sparse

    # ------------------------------------------------------------------ one batch, on device
    def _kernel(self, dtype, errors):
        key = (np.dtype(dtype), bool(errors))
        fn = self._kernels.get(key)
        if fn is None:
            names = [kernel_name(dtype, self.frames_per_block, e) for e in (False, True)]
            module = self.xp.RawModule(code=KERNEL_SOURCE,
                                       options=(f"-DGS_BLOCK={BLOCK}",),
                                       name_expressions=names)
            for e, name in zip((False, True), names):
                self._kernels[(np.dtype(dtype), e)] = module.get_function(name)
            fn = self._kernels[key]
        return fn

    def _integrate_into(self, frames, out, errors):
        """frames (b, n_pixels) raw dtype, on device; out (nq, b, n_bins) float64, overwritten.

        Runs on the current stream (asynchronous on CuPy)."""
        if self.name == "cupy" and self.method == "kernel":
            self._launch(frames, out, errors)
        else:
            self._spmm_into(frames, out, errors)

    def _launch(self, frames, out, errors):
        xp = self.xp
        if frames.dtype not in CTYPES:  # float16: exact in float32
            frames = frames.astype(xp.float32)
        b = int(frames.shape[0])
        out.fill(0)
        n_groups = -(-b // self.frames_per_block)
        grid = int(self._seg_bin.size) * n_groups
        if grid == 0:
            return
        d = self._dev
        self._kernel(frames.dtype, errors)(
            (grid,), (BLOCK,),
            (frames, np.int64(self.n_pixels), np.int32(b), np.int32(n_groups),
             d["seg_bin"], d["seg_start"], d["seg_end"], d["pix"], d["w"], d["s"],
             np.int32(self.n_bins), out))

    def _spmm_into(self, frames, out, errors):
        """Sparse-product path: frames converted to float on the device, invalid -> 0."""
        xp = self.xp
        mats = self._sparse_matrices()
        dt = self.spmm_dtype
        valid = valid_mask(frames, xp)
        x = xp.where(valid, frames.astype(dt), dt.type(0))
        xt = x.T  # (n_pixels, b)
        out[0] = (mats["ws"] @ xt).T
        out[1] = (mats["w"] @ valid.astype(dt).T).T
        if errors:
            out[2] = (mats["ws2"] @ xt).T
            out[3] = (mats["ws2"] @ (x * x).T).T

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
            raise ValueError(f"frames of shape {shape} do not match the matrix image shape "
                             f"{self.shape}")
        if arr.dtype.byteorder not in "=|":
            arr = arr.astype(arr.dtype.newbyteorder("="))
        return arr.reshape(b, self.n_pixels)

    def _empty_sums(self, xp, b, errors):
        z = xp.zeros((4 if errors else 2, b, self.n_bins), dtype=np.float64)
        return Sums(*z) if errors else Sums(z[0], z[1])

    # ------------------------------------------------------------------ device-resident input
    def sums_device(self, stack_dev, errors=False):
        """Sums of a stack already in device memory (CuPy array; NumPy array on NumPy).

        Returns Sums of device arrays (B, n_bins) float64 on the current stream, no host copy.
        The kernel path integrates the whole stack in one launch.
        """
        frames = self._as_frames(stack_dev)
        b = frames.shape[0]
        xp = self.xp
        nq = 4 if errors else 2
        out = xp.empty((nq, b, self.n_bins), dtype=np.float64)
        if b:
            if self.name == "cupy" and self.method == "kernel":
                self._launch(xp.ascontiguousarray(frames), out, errors)
            else:
                for i in range(0, b, self.batch_size):
                    part = frames[i:i + self.batch_size]
                    o = xp.empty((nq, part.shape[0], self.n_bins), dtype=np.float64)
                    self._spmm_into(part, o, errors)
                    out[:, i:i + part.shape[0]] = o
        return Sums(*out) if errors else Sums(out[0], out[1])

    # ------------------------------------------------------------------ host input
    def sums(self, stack, errors=False):
        """Sums of a stack (B, H, W) of any int/float dtype: float64 NumPy arrays (B, n_bins).

        A device (CuPy) array goes through sums_device; a host array is streamed in batches.
        """
        if self._ops.is_device_array(stack):
            res = self.sums_device(stack, errors)
            return Sums(*(None if a is None else self._ops.to_host(a) for a in res))
        frames = self._as_frames(np.asarray(stack))
        if frames.shape[0] == 0:
            return self._empty_sums(np, 0, errors)
        parts = list(self.integrate_stream(frames, errors))
        fields = [np.concatenate([getattr(p, f) for p in parts]) for f in Sums._fields[:2]]
        if errors:
            fields += [np.concatenate([getattr(p, f) for p in parts]) for f in Sums._fields[2:]]
        return Sums(*fields)

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
            res = self.sums_device(frames[i:i + self.batch_size], errors)
            yield Sums(*(None if a is None else self._ops.to_host(a) for a in res))

    # Job generators run inside _pipeline.  They obtain idle slots with
    # ``slot = yield from acquire()`` (which may yield a finished result first), fill the slot's
    # staging buffer, and yield ("submit", slot, src) with src a (b, P) host array to upload.
    def _stack_jobs(self, stack):
        direct = bool(stack.flags.c_contiguous and self._ops.is_pinned(stack))
        for i in range(0, stack.shape[0], self.batch_size):
            part = stack[i:i + self.batch_size]
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
                self._host_copy(stage[count:count + take], arr[pos:pos + take])
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
            self._slots = [_Slot(self._ops, self._stream_factory())
                           for _ in range(self.n_streams)]
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
        futures = [self._pool.submit(np.copyto, dst[:, c:c + step], src[:, c:c + step])
                   for c in range(0, self.n_pixels, step)]
        for f in futures:
            f.result()

    def _submit(self, slot, src, errors):
        """H2D of src (b, P), integration and D2H, asynchronously on the slot's stream."""
        b = src.shape[0]
        nq = 4 if errors else 2
        dev_frames = _view(slot.buffer("frames", src.nbytes, False), src.dtype,
                           (b, self.n_pixels))
        out_nbytes = nq * b * self.n_bins * 8
        dev_out = _view(slot.buffer("out", out_nbytes, False), np.float64, (nq, b, self.n_bins))
        host_out = _view(slot.buffer("result", out_nbytes, True), np.float64,
                         (nq, b, self.n_bins))
        stream = slot.stream
        stream.run(self._ops.h2d, dev_frames, src)
        stream.run(self._integrate_into, dev_frames, dev_out, errors)
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
        return Sums(*res) if nq == 4 else Sums(res[0], res[1])

    def close(self):
        """Release the staging thread pool (buffers are freed with the engine)."""
        if self._pool is not None:
            self._pool.shutdown()
            self._pool = None
