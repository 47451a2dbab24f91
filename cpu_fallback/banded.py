"""The banded CPU kernel: stacks of frames (one frame up) at close to the memory read rate.

Layout (:func:`cpu_fallback.layout.banded_layout`, built once per matrix, NumPy only): the
image is cut into *bands* of ``P`` consecutive pixels (4096 by default: four PILATUS rows,
one EIGER 16M row); the matrix entries of each band are sorted by bin, so that each
(band, bin) *segment* is a short run of entries ``(local pixel index, w*s)`` (uint16,
float32).

Kernel (:func:`banded_sums`): each thread takes a contiguous run of bands (balanced by cost);
for each band and each group of 8 frames it

1. reads the 8 frames' values of the band once, in order (the only pass over the frames), and
   writes them pixel-major into a small float64 buffer (``P x 8``, 256 kB: L2), the dark
   subtracted, while checking that every value of an active pixel is valid;
2. if one is not (a negative, NaN, or the unsigned maximum on an unmasked pixel: rare, except
   for the module gaps of frames integrated without a mask), lists the pixels that hold one
   (blocks of ``LIST_BLOCK`` pixels checked first, those without one skipped), zeroes those
   values and adds their weights to ``lost`` (subtracted from the norm by the caller), the 8
   lanes of each matrix entry at once;
3. sums each segment of the band with :func:`cpu_fallback.simd.segment_add8`: per entry, two
   ``<4 x double>`` loads of the buffer and two FMAs serve all 8 frames, accumulated in
   registers and added once per segment to the thread's private output row block.  With
   errors, :func:`~cpu_fallback.simd.segment_add8_poisson` (and ``_full``) also sum w s^2 v
   (and w s^2 v^2) from the same lanes, plus each segment's precomputed sum of w s^2 dark
   (``var_dark``: the variance is of the raw counts); the slow path of step 2 takes that dark
   term back out for an invalid value.

So the frames are read from memory exactly once, the matrix once per band (it stays in L1/L2
across the frame groups), and no output element is updated per entry (the ELL kernel's chains
of read-modify-writes through memory are gone).  Frames beyond the last real one in a group of
8 read the last frame again; their lanes land in padding columns the caller drops.
"""

import numba
import numpy as np
from numba import types
from numba.extending import overload

from .kernel_cache import install, needs_compile
from .layout import BAND_PIXELS, LANES, banded_layout, check_layout, thread_bands
from .simd import segment_add8, segment_add8_full, segment_add8_poisson

install()  # the compiled kernels live in the user's cache (cpu_fallback.kernel_cache)

__all__ = [
    "BAND_PIXELS",
    "LANES",
    "banded_layout",
    "banded_sums",
    "check_layout",
    "thread_bands",
]


@numba.njit(inline="always")
def _lane_offsets(fb, n_frames, n_pixels):
    """Flat offsets of the 8 frames of the group starting at fb (past the end: the last)."""
    last = n_frames - 1
    n = np.uint64(n_pixels)
    return (
        np.uint64(fb) * n,
        np.uint64(min(fb + 1, last)) * n,
        np.uint64(min(fb + 2, last)) * n,
        np.uint64(min(fb + 3, last)) * n,
        np.uint64(min(fb + 4, last)) * n,
        np.uint64(min(fb + 5, last)) * n,
        np.uint64(min(fb + 6, last)) * n,
        np.uint64(min(fb + 7, last)) * n,
    )


@numba.njit(inline="always")
def _load8(flat, offsets, p):
    """The 8 lanes' raw values of pixel p (offsets from :func:`_lane_offsets`)."""
    o0, o1, o2, o3, o4, o5, o6, o7 = offsets
    return (
        flat[o0 + p],
        flat[o1 + p],
        flat[o2 + p],
        flat[o3 + p],
        flat[o4 + p],
        flat[o5 + p],
        flat[o6 + p],
        flat[o7 + p],
    )


@numba.njit(inline="always")
def _valid(x, upper):
    return x >= 0.0 and x < upper


def _lanes_invalid(v0, v1, v2, v3, v4, v5, v6, v7, upper):
    """True if one of the 8 raw values is invalid (negative, NaN, >= upper)."""


@overload(_lanes_invalid, inline="always")
def _lanes_invalid_impl(v0, v1, v2, v3, v4, v5, v6, v7, upper):
    if isinstance(v0, types.Integer) and v0.signed:

        def signed(v0, v1, v2, v3, v4, v5, v6, v7, upper):
            return (v0 | v1 | v2 | v3 | v4 | v5 | v6 | v7) < 0

        return signed
    if isinstance(v0, types.Integer):
        top = np.iinfo(np.dtype(str(v0))).max

        def unsigned(v0, v1, v2, v3, v4, v5, v6, v7, upper):
            return max(max(max(v0, v1), max(v2, v3)), max(max(v4, v5), max(v6, v7))) == top

        return unsigned

    def floating(v0, v1, v2, v3, v4, v5, v6, v7, upper):
        return not (
            _valid(v0, upper)
            & _valid(v1, upper)
            & _valid(v2, upper)
            & _valid(v3, upper)
            & _valid(v4, upper)
            & _valid(v5, upper)
            & _valid(v6, upper)
            & _valid(v7, upper)
        )

    return floating


@numba.njit(inline="always")
def _store8(buf, q, a0, a1, a2, a3, a4, a5, a6, a7):
    buf[q] = a0
    buf[q + np.uint64(1)] = a1
    buf[q + np.uint64(2)] = a2
    buf[q + np.uint64(3)] = a3
    buf[q + np.uint64(4)] = a4
    buf[q + np.uint64(5)] = a5
    buf[q + np.uint64(6)] = a6
    buf[q + np.uint64(7)] = a7


@numba.njit(inline="always")
def _transpose(flat, offsets, p0, n, buf, active, dark, has_dark, upper):
    """Write the 8 lanes of pixels p0..p0+n-1 pixel-major into buf (v = x - dark); True if a
    value of an active pixel is invalid."""
    bad = False
    base = np.uint64(p0)
    for i in range(n):
        k = np.uint64(i)
        p = base + k
        d = np.float64(dark[p]) if has_dark else 0.0
        v0, v1, v2, v3, v4, v5, v6, v7 = _load8(flat, offsets, p)
        bad |= _lanes_invalid(v0, v1, v2, v3, v4, v5, v6, v7, upper) & (active[p] != 0)
        _store8(
            buf,
            k * np.uint64(LANES),
            np.float64(v0) - d,
            np.float64(v1) - d,
            np.float64(v2) - d,
            np.float64(v3) - d,
            np.float64(v4) - d,
            np.float64(v5) - d,
            np.float64(v6) - d,
            np.float64(v7) - d,
        )
    return bad


#: pixels per block of the listing of invalid values: blocks without one are skipped after one
#: branch-free pass (module gaps are a few runs of columns and rows, not scattered pixels)
LIST_BLOCK = 64


@numba.njit(inline="always")
def _pixel_bad(flat, offsets, p, active, upper):
    """True if pixel p is active and one of its 8 lanes holds an invalid value."""
    v0, v1, v2, v3, v4, v5, v6, v7 = _load8(flat, offsets, p)
    return _lanes_invalid(v0, v1, v2, v3, v4, v5, v6, v7, upper) & (active[p] != 0)


@numba.njit(nogil=True, cache=True)
def _any_bad(flat, offsets, p0, n, active, upper):
    """True if an active pixel among p0..p0+n-1 has an invalid value among its 8 lanes."""
    bad = False
    base = np.uint64(p0)
    for i in range(n):
        bad |= _pixel_bad(flat, offsets, base + np.uint64(i), active, upper)
    return bad


@numba.njit(nogil=True, cache=True)
def _bad_pixels(flat, offsets, p0, n, active, upper, bad_at):
    """The number of active pixels among p0..p0+n-1 with an invalid value among their 8 lanes;
    their band indices in bad_at[:that number].  It and _any_bad are calls, not inlined: the
    slow path only (and inlining _lanes_invalid twice into one function trips numba's SSA
    check)."""
    n_bad = 0
    for b0 in range(0, n, LIST_BLOCK):
        m = min(LIST_BLOCK, n - b0)
        if not _any_bad(flat, offsets, p0 + b0, m, active, upper):
            continue
        base = np.uint64(p0 + b0)
        for i in range(m):
            if _pixel_bad(flat, offsets, base + np.uint64(i), active, upper):
                bad_at[n_bad] = b0 + i
                n_bad += 1
    return n_bad


@numba.njit(inline="always")
def _fix_invalid(
    flat, offsets, p0, bad_at, n_bad, buf, gone, upper, fb, n_real, csr, scale, dark, has_dark,
    out, bp,
):  # fmt: skip
    """Zero the invalid lanes of the pixels bad_at[:n_bad] (band indices of active pixels) in
    buf; add their weights to out[1] (lost) and, with a dark and a variance (out[2]), take their
    dark term back out of the variance.  gone: 8 float64 of scratch (1.0 where a real frame's
    lane is invalid), so that each entry updates its 8 lanes at once (contiguous: vector code),
    in the same order per lane as one lane at a time."""
    pixel_ptr, bins, weights = csr
    lost = out[1]
    take_dark_back = has_dark and len(out) > 2
    for j in range(n_bad):
        i = bad_at[j]
        p = p0 + i
        for f in range(LANES):
            gone[f] = 0.0
            if not _valid(np.float64(flat[offsets[f] + np.uint64(p)]), upper):
                buf[i * LANES + f] = 0.0
                if f < n_real:
                    gone[f] = 1.0
        s = np.float64(scale[p])
        for e in range(pixel_ptr[p], pixel_ptr[p + 1]):
            at = bins[e] * bp + fb
            w = np.float64(weights[e])
            for f in range(LANES):
                lost[at + f] += w * gone[f]
            if take_dark_back:  # the term var_dark added: banded_layout's wss x dark
                wss = np.float64(np.float32(w * s * s))
                term = wss * np.float64(dark[p])
                for f in range(LANES):
                    out[2][at + f] -= term * gone[f]


def _make_kernel(n_sums):
    """The banded kernel for one value of n_sums (a constant inside: the unused sums cost
    nothing)."""

    @numba.njit(parallel=True, nogil=True, cache=True, fastmath={"contract"})
    def kernel(
        sums,
        frames,
        bands,
        band_pixels,
        band_seg,
        seg_ptr,
        seg_bin,
        local,
        ws,
        wss,
        var_dark,
        active,
        dark,
        has_dark,
        scale,
        upper,
        csr,
    ):
        """See :func:`banded_sums`."""
        n_frames, n_pixels = frames.shape
        flat = frames.reshape(-1)
        bp = -(-n_frames // LANES) * LANES
        for t in numba.prange(len(bands) - 1):
            buf = np.zeros(band_pixels * LANES)  # the band's 8 lanes per pixel
            bad_at = np.empty(band_pixels, np.int64)  # the band's pixels with an invalid lane
            gone = np.zeros(LANES)  # their invalid lanes (_fix_invalid)
            out = sums[:, t]
            for band in range(bands[t], bands[t + 1]):
                s0 = band_seg[band]
                s1 = band_seg[band + 1]
                if s0 == s1:
                    continue
                p0 = band * band_pixels
                n = min(band_pixels, n_pixels - p0)
                for fb in range(0, n_frames, LANES):
                    offsets = _lane_offsets(fb, n_frames, n_pixels)
                    if _transpose(flat, offsets, p0, n, buf, active, dark, has_dark, upper):
                        n_bad = _bad_pixels(flat, offsets, p0, n, active, upper, bad_at)
                        n_real = min(LANES, n_frames - fb)
                        _fix_invalid(
                            flat, offsets, p0, bad_at, n_bad, buf, gone, upper, fb, n_real,
                            csr, scale, dark, has_dark, out, bp,
                        )  # fmt: skip
                    for s in range(s0, s1):
                        at = np.uint64(seg_bin[s] * bp + fb)
                        e0 = seg_ptr[s]
                        e1 = seg_ptr[s + 1]
                        if n_sums == 1:
                            segment_add8(out[0], at, buf, local, ws, e0, e1)
                            continue
                        offset = var_dark[s] if has_dark else 0.0
                        if n_sums == 2:
                            segment_add8_poisson(
                                out[0], out[2], at, buf, local, ws, wss, offset, e0, e1
                            )
                        else:
                            segment_add8_full(
                                out[0], out[2], out[3], at, buf, local, ws, wss, offset, e0, e1
                            )

    return kernel


_KERNELS = {n: _make_kernel(n) for n in (1, 2, 3)}


def banded_sums(sums, frames, bands, layout, dark, scale, n_sums, upper, csr, on_compile=None):
    """Add the per-thread sums of a stack to ``sums``, a zeroed float64 array
    (1 + n_sums, n_threads, n_bins * Bp), Bp = B rounded up to 8: planes signal, lost and, for
    n_sums 2 and 3, variance (sum w s^2 x of the raw counts), and for n_sums 3 squares
    (sum w s (s v)^2, v = x - dark).  Bin c, frame b is at c * Bp + b; the caller adds the
    threads and drops the columns b >= B.

    frames: (B, N) C-contiguous, any numeric dtype; bands: (n_threads + 1,) from
    :func:`thread_bands`; layout: from :func:`banded_layout` (of the matrix whose dark is
    ``dark``); dark: float32 (N,) or None; scale: the matrix's pixel_scale (float32 (N,));
    upper: values >= upper are invalid; csr: the matrix's (pixel_ptr, bins, weights), to add the
    weights of invalid values to ``lost``; on_compile: called before a kernel is compiled
    (not found in memory nor in the disk cache).
    """
    has_dark = dark is not None
    args = (
        sums,
        frames,
        bands,
        layout["band_pixels"],
        layout["band_seg"],
        layout["seg_ptr"],
        layout["seg_bin"],
        layout["local"],
        layout["ws"],
        layout["wss"],
        layout["var_dark"],
        layout["active"],
        dark if has_dark else np.zeros(0, np.float32),
        has_dark,
        scale,
        upper,
        csr,
    )
    kernel = _KERNELS[n_sums]
    if on_compile is not None and needs_compile(kernel, args):
        on_compile()  # the caller says so before the 5-15 s of compiling
    kernel(*args)


#: below this many values the threads' sums are zeroed and added by NumPy (a curve's few
#: thousand bins: a parallel launch would cost more than it saves)
PARALLEL_REDUCE_VALUES = 1 << 20


@numba.njit(parallel=True, nogil=True, cache=True)
def zero_sums(sums):
    """sums[...] = 0, the threads each zeroing a part (a map's sums are hundreds of MB)."""
    flat = sums.reshape(-1)
    n = flat.size
    chunk = 1 << 16
    for c in numba.prange((n + chunk - 1) // chunk):
        flat[c * chunk : min(n, (c + 1) * chunk)] = 0.0


@numba.njit(parallel=True, nogil=True, cache=True)
def reduce_threads(sums, out, b0, n):
    """out[p, b0 + f, c] = the threads' sums[p, t, c * Bp + f] added, for frames f < n: the
    reduction and the transpose to (frame, bin) in one parallel pass over the bins."""
    planes, threads, size = sums.shape
    n_bins = out.shape[2]
    bp = size // n_bins
    for c in numba.prange(n_bins):
        for p in range(planes):
            for f in range(n):
                s = 0.0
                for t in range(threads):
                    s += sums[p, t, c * bp + f]
                out[p, b0 + f, c] = s
