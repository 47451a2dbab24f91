"""The gather kernel: maps and cakes (10^5-10^6 bins) on the CPU, each bin summed where it is.

The banded kernel (:mod:`cpu_fallback.banded`) streams the frames once and adds each band's
segments into a private copy of all the bins per thread, then the copies are added: right for a
curve's 10^3 bins, but a 1000 x 1000 map makes those copies 16 MB per frame and thread, which
cost 5-10x the kernel itself to zero, add and transpose. Here each thread takes a run of bins
of the bin-major layout (:func:`cpu_fallback.layout.gather_layout`) and reads, for each bin,
its pixels in every frame (neighbouring cells are neighbouring pixels, so the reads stay local;
the bin's few entries stay in L1 across the frames) and writes the bin's sums once, in place,
with their mean: no private copies, no reduction, the output touched once and no second pass
over it for the intensity. Same definitions as the banded kernel (docs/ARCHITECTURE.md, the
engine contract).
"""

import numba
import numpy as np

from .kernel_cache import install, needs_compile

install()  # compiled once into the user's cache (cpu_fallback.kernel_cache)

__all__ = ["gather_sums", "bin_chunks", "pixel_major"]


@numba.njit(parallel=True, nogil=True, cache=True)
def pixel_major(frames, out):
    """out[p, f] = frames[f, p]: the stack pixel-major, each pixel's frames in one cache line
    (16 int32 frames: 64 bytes), in blocks of pixels over the threads."""
    n_frames, n_pixels = frames.shape
    block = 2048
    for c in numba.prange((n_pixels + block - 1) // block):
        for p in range(c * block, min(n_pixels, (c + 1) * block)):
            for f in range(n_frames):
                out[p, f] = frames[f, p]


def _make_kernel(n_sums):
    """The gather kernel for one value of n_sums (a constant inside: unused sums cost nothing)."""

    @numba.njit(parallel=True, nogil=True, cache=True, fastmath={"contract"})
    def kernel(out, stack, chunks, bin_ptr, pixels, w, ws, wss, dark, has_dark, upper):
        """See :func:`gather_sums`."""
        n_frames = stack.shape[1]
        for c in numba.prange(len(chunks) - 1):
            sums = np.empty((1 + n_sums, n_frames))  # the bin's sums, one lane per frame
            for b in range(chunks[c], chunks[c + 1]):
                sums[:] = 0.0
                for e in range(bin_ptr[b], bin_ptr[b + 1]):
                    p = pixels[e]
                    d = np.float64(dark[p]) if has_dark else 0.0
                    we = np.float64(w[e])
                    wse = np.float64(ws[e])
                    wsse = np.float64(wss[e])
                    for f in range(n_frames):  # contiguous lanes: vector loads and selects
                        x = np.float64(stack[p, f])
                        ok = x >= 0.0 and x < upper  # not negative, NaN, the unsigned maximum
                        v = x - d
                        sums[0, f] += wse * v if ok else 0.0
                        sums[1, f] += we if ok else 0.0
                        if n_sums >= 2:
                            sums[2, f] += wsse * x if ok else 0.0  # of the raw counts
                        if n_sums == 3:
                            sums[3, f] += wsse * v * v if ok else 0.0
                for f in range(n_frames):
                    signal = sums[0, f]
                    norm = sums[1, f]
                    out[0, f, b] = signal
                    out[1, f, b] = norm
                    out[2, f, b] = signal / norm if norm > 0.0 else np.nan
                    for k in range(2, 1 + n_sums):
                        out[k + 1, f, b] = sums[k, f]

    return kernel


_KERNELS = {n: _make_kernel(n) for n in (1, 2, 3)}


def bin_chunks(bin_ptr, n_threads, per_thread=8):
    """(n + 1,) int64 bin boundaries cutting the work (entries, plus one per bin; ``bin_ptr``:
    the bins' entry ranges) into ``per_thread`` runs per thread of about equal cost (numba
    hands out the runs in order)."""
    n_bins = len(bin_ptr) - 1
    cost = bin_ptr[1:] + np.arange(1, n_bins + 1)
    total = cost[-1] if n_bins else 0
    n = max(1, n_threads * per_thread)
    cuts = np.searchsorted(cost, total * np.arange(1, n) / n)
    return np.unique(np.r_[0, cuts, n_bins]).astype(np.int64)


def gather_sums(out, stack, chunks, layout, dark, n_sums, upper, on_compile=None):
    """Write the sums of a stack into ``out``, float64 (2 + n_sums, B, n_bins): planes signal
    (sum w s v, v = x - dark), norm (sum w over valid values), mean (signal / norm, NaN where
    norm is 0: the map's intensity, here at no extra read) and, for n_sums 2 and 3, variance
    (sum w s^2 x of the raw counts), and for n_sums 3 squares (sum w s^2 v^2).

    stack: the frames pixel-major, (N, B) C-contiguous (:func:`pixel_major`), any numeric
    dtype; chunks: from :func:`bin_chunks`; layout:
    from :func:`cpu_fallback.layout.gather_layout`; dark: float32 (N,) or None; upper: values
    >= upper (and negative or NaN ones) are invalid; on_compile: called before a kernel is
    compiled (not found in memory nor in the disk cache).
    """
    has_dark = dark is not None
    args = (
        out,
        stack,
        chunks,
        layout["bin_ptr"],
        layout["pixels"],
        layout["w"],
        layout["ws"],
        layout["wss"],
        dark if has_dark else np.zeros(0, np.float32),
        has_dark,
        float(upper),
    )
    kernel = _KERNELS[n_sums]
    if on_compile is not None and needs_compile(kernel, args):
        on_compile()
    kernel(*args)
