"""Numba kernels of the CPU engine.

Layout (built by :class:`cpu_fallback.engine.CpuEngine` from the IntegrationMatrix): only the
*active* pixels (unmasked, with at least one bin) are visited, each with exactly ``S`` slots
(ELL format: ``bins (n_active, S)``, weights padded with 0), so the inner loop has a fixed trip
count and no branch mispredictions; entries beyond ``S`` (rare: fine user bins) go to a small
pixel-sorted overflow list.  The polarization scale is folded into the signal weights.
The dark (``pixel_offset``, one value per active pixel) is subtracted from each valid value in
the same pass; validity and the Poisson variance use the raw value (docs/ARCHITECTURE.md).
Without a dark the kernels get an empty offset array and ``has_dark=False`` (no extra load).

Work is cut into tiles (frame group x pixel part) with private float64 accumulator rows
``part * B + b``, so there are no races; the caller adds the parts.  Frames are processed four
at a time, so each matrix entry read from memory serves four frames; in a last pass of two or
three frames the missing ones read the first frame again and accumulate into a scratch row of
the tile (row ``n_parts * B + tile``), which the caller drops; a single frame left over gets a
pass of its own.
"""

import numba
import numpy as np

#: Frames processed per pass over the matrix.
FRAMES_PER_PASS = 4


@numba.njit(inline="always")
def _tile_range(tile, n_parts, n_groups, n_frames, n_items):
    group = tile // n_parts
    part = tile % n_parts
    return (
        part,
        group * n_frames // n_groups,
        (group + 1) * n_frames // n_groups,
        part * n_items // n_parts,
        (part + 1) * n_items // n_parts,
    )


@numba.njit(inline="always")
def _quads_end(b0, b1):
    """End of the frames [b0, b1) done in passes of four: all of them, unless exactly one is
    left over (a pass of four for one frame would do four frames' work); a last pass of two or
    three real frames is still cheaper as one pass than as single ones."""
    return b1 - 1 if (b1 - b0) % FRAMES_PER_PASS == 1 else b1


@numba.njit(inline="always")
def _quad(b, b1, part, n_frames, scratch):
    """Frame indices and accumulator rows of the (up to) four frames starting at b."""
    f1 = b + 1 if b + 1 < b1 else b
    f2 = b + 2 if b + 2 < b1 else b
    f3 = b + 3 if b + 3 < b1 else b
    row = part * n_frames
    return (
        f1,
        f2,
        f3,
        row + b,
        row + f1 if f1 != b else scratch,
        row + f2 if f2 != b else scratch,
        row + f3 if f3 != b else scratch,
    )


@numba.njit(inline="always")
def _take(value, dark, upper, lost, row, ell_bins, ell_w, i):
    """(value - dark, value) as float64 if the value is valid; else (0, 0), after adding pixel
    i's weights to ``lost[row]``."""
    x = np.float64(value)
    if x >= 0.0 and x < upper:
        return x - dark, x
    for k in range(ell_bins.shape[1]):
        lost[row, ell_bins[i, k]] += ell_w[i, k]
    return 0.0, 0.0


@numba.njit(inline="always")
def _dark(offset, i, has_dark):
    return np.float64(offset[i]) if has_dark else 0.0


@numba.njit(parallel=True, cache=True, nogil=True)
def mean_sums(
    frames,
    active,
    ell_bins,
    ell_ws,
    ell_w,
    offset,
    ovf_pix,
    ovf_bins,
    ovf_ws,
    ovf_w,
    ovf_offset,
    has_dark,
    upper,
    n_bins,
    n_groups,
    n_parts,
):
    """Partial (signal, lost), each (n_parts * B + n_tiles, n_bins); the first n_parts * B rows
    are the result.

    signal = sum w*s*(x - dark) over valid pixels; lost = sum w over invalid ones (x < 0,
    x >= upper, NaN), to be subtracted from the static norm.  frames: (B, N) of any numeric
    dtype; offset: (n_active,) float32 dark (empty when ``has_dark`` is False).
    """
    n_frames = frames.shape[0]
    n_active, n_slots = ell_bins.shape
    n_tiles = n_groups * n_parts
    signal = np.zeros((n_parts * n_frames + n_tiles, n_bins))
    lost = np.zeros((n_parts * n_frames + n_tiles, n_bins))
    for tile in numba.prange(n_tiles):
        part, b0, b1, i0, i1 = _tile_range(tile, n_parts, n_groups, n_frames, n_active)
        scratch = n_parts * n_frames + tile
        quads_end = _quads_end(b0, b1)
        for b in range(b0, quads_end, FRAMES_PER_PASS):
            f1, f2, f3, r0, r1, r2, r3 = _quad(b, b1, part, n_frames, scratch)
            for i in range(i0, i1):
                j = active[i]
                d = _dark(offset, i, has_dark)
                x0, _ = _take(frames[b, j], d, upper, lost, r0, ell_bins, ell_w, i)
                x1, _ = _take(frames[f1, j], d, upper, lost, r1, ell_bins, ell_w, i)
                x2, _ = _take(frames[f2, j], d, upper, lost, r2, ell_bins, ell_w, i)
                x3, _ = _take(frames[f3, j], d, upper, lost, r3, ell_bins, ell_w, i)
                for k in range(n_slots):
                    c = ell_bins[i, k]
                    ws = np.float64(ell_ws[i, k])
                    signal[r0, c] += ws * x0
                    signal[r1, c] += ws * x1
                    signal[r2, c] += ws * x2
                    signal[r3, c] += ws * x3
        if quads_end < b1:  # one frame left: a pass of its own
            r0 = part * n_frames + quads_end
            for i in range(i0, i1):
                x0, _ = _take(
                    frames[quads_end, active[i]],
                    _dark(offset, i, has_dark),
                    upper,
                    lost,
                    r0,
                    ell_bins,
                    ell_w,
                    i,
                )
                for k in range(n_slots):
                    signal[r0, ell_bins[i, k]] += np.float64(ell_ws[i, k]) * x0
        if part == 0:
            for b in range(b0, b1):
                for e in range(len(ovf_pix)):
                    x = np.float64(frames[b, ovf_pix[e]])
                    if x >= 0.0 and x < upper:
                        signal[b, ovf_bins[e]] += ovf_ws[e] * (x - _dark(ovf_offset, e, has_dark))
                    else:
                        lost[b, ovf_bins[e]] += ovf_w[e]
    return signal, lost


@numba.njit(parallel=True, cache=True, nogil=True)
def error_sums(
    frames,
    active,
    ell_bins,
    ell_ws,
    ell_w,
    scale,
    offset,
    ovf_pix,
    ovf_bins,
    ovf_ws,
    ovf_w,
    ovf_offset,
    has_dark,
    upper,
    n_bins,
    n_groups,
    n_parts,
    with_squares,
):
    """As :func:`mean_sums`, plus partial variance (sum w s^2 x, raw x) and, if
    ``with_squares``, squares (sum w (s (x - dark))^2; left zero otherwise: the Poisson error
    alone needs no squares).

    ``scale`` is the per-active-pixel 1/K (float32).
    """
    n_frames = frames.shape[0]
    n_active, n_slots = ell_bins.shape
    n_tiles = n_groups * n_parts
    shape = (n_parts * n_frames + n_tiles, n_bins)
    signal = np.zeros(shape)
    lost = np.zeros(shape)
    variance = np.zeros(shape)
    squares = np.zeros(shape)
    for tile in numba.prange(n_tiles):
        part, b0, b1, i0, i1 = _tile_range(tile, n_parts, n_groups, n_frames, n_active)
        scratch = n_parts * n_frames + tile
        quads_end = _quads_end(b0, b1)
        for b in range(b0, quads_end, FRAMES_PER_PASS):
            f1, f2, f3, r0, r1, r2, r3 = _quad(b, b1, part, n_frames, scratch)
            for i in range(i0, i1):
                j = active[i]
                d = _dark(offset, i, has_dark)
                x0, y0 = _take(frames[b, j], d, upper, lost, r0, ell_bins, ell_w, i)
                x1, y1 = _take(frames[f1, j], d, upper, lost, r1, ell_bins, ell_w, i)
                x2, y2 = _take(frames[f2, j], d, upper, lost, r2, ell_bins, ell_w, i)
                x3, y3 = _take(frames[f3, j], d, upper, lost, r3, ell_bins, ell_w, i)
                s = np.float64(scale[i])
                for k in range(n_slots):
                    c = ell_bins[i, k]
                    ws = np.float64(ell_ws[i, k])
                    w0 = ws * x0
                    w1 = ws * x1
                    w2 = ws * x2
                    w3 = ws * x3
                    wss = ws * s
                    signal[r0, c] += w0
                    signal[r1, c] += w1
                    signal[r2, c] += w2
                    signal[r3, c] += w3
                    variance[r0, c] += wss * y0
                    variance[r1, c] += wss * y1
                    variance[r2, c] += wss * y2
                    variance[r3, c] += wss * y3
                    if with_squares:
                        squares[r0, c] += w0 * s * x0
                        squares[r1, c] += w1 * s * x1
                        squares[r2, c] += w2 * s * x2
                        squares[r3, c] += w3 * s * x3
        if quads_end < b1:  # one frame left: a pass of its own
            r0 = part * n_frames + quads_end
            for i in range(i0, i1):
                x0, y0 = _take(
                    frames[quads_end, active[i]],
                    _dark(offset, i, has_dark),
                    upper,
                    lost,
                    r0,
                    ell_bins,
                    ell_w,
                    i,
                )
                s = np.float64(scale[i])
                for k in range(n_slots):
                    c = ell_bins[i, k]
                    w0 = np.float64(ell_ws[i, k]) * x0
                    signal[r0, c] += w0
                    variance[r0, c] += np.float64(ell_ws[i, k]) * s * y0
                    if with_squares:
                        squares[r0, c] += w0 * s * x0
        if part == 0:
            for b in range(b0, b1):
                for e in range(len(ovf_pix)):
                    x = np.float64(frames[b, ovf_pix[e]])
                    if x >= 0.0 and x < upper:
                        ws = np.float64(ovf_ws[e])
                        s = ws / ovf_w[e]
                        v = x - _dark(ovf_offset, e, has_dark)
                        signal[b, ovf_bins[e]] += ws * v
                        variance[b, ovf_bins[e]] += ws * s * x
                        squares[b, ovf_bins[e]] += ws * s * v * v
                    else:
                        lost[b, ovf_bins[e]] += ovf_w[e]
    return signal, lost, variance, squares
