"""Device operations of the GPU engine: memory, copies, streams and the failures a device may
raise, with one implementation on CuPy and one on NumPy (CI) behind the same interface.

gpusaxs.gpu_engine's scheduler and batch code call only these, so on NumPy they run the same
code paths as on a device: mapped upload (a pinned buffer's device view), staging buffers
allocated when the engine is built, padding that is zeroed, streams that run at once.
"""

import ctypes

import numpy as np

__all__ = ["SyncStream", "NumpyOps", "CupyOps", "Slot", "view", "expected_failure"]


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


class CupyStream:
    """A CUDA stream: ``run`` issues fn's asynchronous work with this stream current.

    Non-blocking: work on it never waits for the legacy default stream (nor the default
    stream for it), so the engine's streams overlap whatever else the process runs.  The
    engine puts nothing on the default stream after construction (matrix upload and warm-up
    are synchronised there once)."""

    def __init__(self, cupy):
        self._cupy = cupy
        self.stream = cupy.cuda.Stream(non_blocking=True)

    def run(self, fn, *args):
        with self.stream:
            return fn(*args)

    def record(self):
        event = self._cupy.cuda.Event(disable_timing=True)
        event.record(self.stream)
        return event

    def synchronize(self):
        self.stream.synchronize()


# --------------------------------------------------------------------------------------------
# memory and copies
# --------------------------------------------------------------------------------------------
class NumpyOps:
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
        assert src.flags.c_contiguous and dst.flags.c_contiguous and src.nbytes == dst.nbytes
        np.copyto(dst, src.reshape(dst.shape))

    def d2h(self, dst, src):
        assert src.flags.c_contiguous and dst.flags.c_contiguous and src.nbytes == dst.nbytes
        np.copyto(dst, src)

    def new_stream(self):
        return SyncStream()

    def to_host(self, arr):
        return np.asarray(arr)

    def is_device_array(self, arr):
        return False

    def mapped(self, arr):
        """The "device view" of a pinned host array: the array itself (same checks as CuPy)."""
        if not arr.flags.c_contiguous:
            raise ValueError("mapped upload needs a C-contiguous pinned buffer")
        return arr


class CupyOps:
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
        pinned_type = self.xp.cuda.PinnedMemoryPointer
        base = arr
        while base is not None:  # cupyx.empty_pinned: ndarray over a PinnedMemoryPointer
            if isinstance(base, pinned_type):
                return True
            base = getattr(base, "base", None)
        try:
            attrs = self.xp.cuda.runtime.pointerGetAttributes(arr.ctypes.data)
        except self.xp.cuda.runtime.CUDARuntimeError:
            return False
        return int(attrs.type) == int(self.xp.cuda.runtime.memoryTypeHost)

    def h2d(self, dst, src):
        assert src.flags.c_contiguous and dst.flags.c_contiguous and src.nbytes == dst.nbytes
        stream = self.xp.cuda.get_current_stream()
        dst.data.copy_from_host_async(ctypes.c_void_p(src.ctypes.data), src.nbytes, stream)

    def d2h(self, dst, src):
        assert src.flags.c_contiguous and dst.flags.c_contiguous and src.nbytes == dst.nbytes
        stream = self.xp.cuda.get_current_stream()
        src.data.copy_to_host_async(ctypes.c_void_p(dst.ctypes.data), dst.nbytes, stream)

    def new_stream(self):
        return CupyStream(self.xp)

    def to_host(self, arr):
        return self.xp.asnumpy(arr)

    def is_device_array(self, arr):
        return isinstance(arr, self.xp.ndarray)

    def mapped(self, arr):
        """Device view of a pinned host array: the device address of page-locked memory
        (cudaPointerGetAttributes; with unified addressing it is the host address)."""
        if not arr.flags.c_contiguous:
            raise ValueError("mapped upload needs a C-contiguous pinned buffer")
        cp = self.xp
        runtime = cp.cuda.runtime
        attrs = runtime.pointerGetAttributes(arr.ctypes.data)
        if int(attrs.type) != int(runtime.memoryTypeHost) or not attrs.devicePointer:
            raise ValueError("mapped upload needs page-locked (pinned) host memory")
        device = cp.cuda.runtime.getDevice()
        mem = cp.cuda.UnownedMemory(int(attrs.devicePointer), arr.nbytes, arr, device)
        return cp.ndarray(arr.shape, arr.dtype, cp.cuda.MemoryPointer(mem, 0))


# --------------------------------------------------------------------------------------------
# pipeline slots
# --------------------------------------------------------------------------------------------
class Slot:
    """One pipeline stage: a stream with its staging/device buffers (reserved when the engine
    is built, grown only for a larger dtype or batch).  Device buffers are zeroed when
    allocated with ``zero``, so the padding columns of a pixel-major stack are never
    uninitialised."""

    def __init__(self, ops, stream):
        self.ops = ops
        self.stream = stream
        self.event = None
        self.pending = None  # (b, nq, pinned_out view) while in flight
        self._bufs = {}
        self.allocations = 0

    def buffer(self, key, nbytes, pinned, zero=False):
        """The leading nbytes of buffer ``key`` (pinned host or device memory), allocated or
        grown here; ``zero``: a new buffer is zeroed on this slot's stream."""
        buf = self._bufs.get(key)
        if buf is None or buf.nbytes < nbytes:
            self._bufs[key] = None  # free before allocating the bigger one
            buf = self.ops.empty_pinned(nbytes) if pinned else self.ops.empty_device(nbytes)
            if zero:
                self.stream.run(buf.fill, 0)
            self._bufs[key] = buf
            self.allocations += 1
        return buf[:nbytes]

    @property
    def busy(self):
        return self.pending is not None


def view(buf, dtype, shape):
    """(shape) array of dtype on the leading bytes of a uint8 buffer (C-contiguous)."""
    n = int(np.prod(shape)) * np.dtype(dtype).itemsize
    return buf[:n].view(dtype).reshape(shape)


# --------------------------------------------------------------------------------------------
# failures
# --------------------------------------------------------------------------------------------
#: Substrings of CUDA / NVRTC error messages (CuPy puts the error's name first) that mean the
#: device cannot run a path: no device, no memory, or no code for this device or driver.
_DEVICE_REASONS = {
    "out of memory": ("out of memory", "MEMORY_ALLOCATION", "MemoryAllocation"),
    "no usable device": (
        "NO_DEVICE",
        "NoDevice",
        "INSUFFICIENT_DRIVER",
        "InsufficientDriver",
        "DevicesUnavailable",
        "DEVICE_UNAVAILABLE",
    ),
    "no kernel code for this device": (
        "NO_BINARY_FOR_GPU",
        "NoKernelImageForDevice",
        "UNSUPPORTED_PTX_VERSION",
        "UnsupportedPtxVersion",
        "INVALID_PTX",
        "InvalidPtx",
        "NOT_SUPPORTED",
        "NotSupported",
    ),
}

#: Exception class names CuPy raises for the device, the driver and NVRTC.
_DEVICE_ERRORS = ("CUDARuntimeError", "CUDADriverError", "CompileException", "NVRTCError")


def expected_failure(exc):
    """Why a path may fall back on ``exc`` ("out of memory", "no usable device", "no kernel
    code for this device"), or None: then it is a bug and must raise."""
    if isinstance(exc, MemoryError) or type(exc).__name__ == "OutOfMemoryError":
        return "out of memory"
    if type(exc).__name__ not in _DEVICE_ERRORS:
        return None
    text = str(exc)
    for reason, marks in _DEVICE_REASONS.items():
        if any(m in text for m in marks):
            return reason
    return None
