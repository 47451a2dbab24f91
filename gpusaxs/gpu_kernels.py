"""The CUDA kernels of the GPU engine by name: their source (gpusaxs/kernels/integrate.cu), the
C++ name expression of every instance the engine may request, the NVRTC options, the launch
constants (threads per block, frames per block) and the segment table the kernels walk.

CI compiles every name of ``kernel_names()`` with NVRTC (tests/test_gpu_nvrtc.py), on the CPU
through an emulation shim too, so a name the engine asks for always exists.
"""

from pathlib import Path

import numpy as np

__all__ = [
    "CTYPES",
    "BLOCK",
    "FRAMES_PER_BLOCK",
    "KERNEL_DTYPES",
    "FRAME_MAJOR_DTYPES",
    "LAYOUTS",
    "NVRTC_OPTIONS",
    "kernel_source",
    "kernel_mode",
    "kernel_name",
    "transpose_name",
    "kernel_names",
    "make_segments",
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

LAYOUTS = ("pixel", "frame")


def kernel_source():
    """Text of the CUDA source (gpusaxs/kernels/integrate.cu, shipped as package data)."""
    return (Path(__file__).parent / "kernels" / "integrate.cu").read_text()


def kernel_mode(errors):
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
        f"{fn}<{CTYPES[np.dtype(dtype)]}, {FRAMES_PER_BLOCK}, {kernel_mode(errors)}, "
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
