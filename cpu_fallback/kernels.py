"""Numba kernels of the CPU engine.

Layout (built by :class:`cpu_fallback.engine.CpuEngine` from the IntegrationMatrix): only the
*active* pixels (unmasked, with at least one bin) are visited, each with exactly ``S`` slots
(ELL format: ``bins (n_active, S)``, weights padded with 0), so the inner loop has a fixed trip
count and no branch mispredictions; entries beyond ``S`` (rare: fine user bins) go to a small
pixel-sorted overflow list.  The polarization scale is folded into the signal weights.

Work is cut into tiles (frame group x pixel part) with private float64 accumulator rows
``part * B + b``, so there are no races; the caller adds the parts.  Frames are processed two
at a time, so each matrix entry read from memory serves two frames.
"""
import numba
import numpy as np


@numba.njit(inline="always")
def _tile_range(tile, n_parts, n_groups, n_frames, n_items):
    group = tile // n_parts
    part = tile % n_parts
    return (part, group * n_frames // n_groups, (group + 1) * n_frames // n_groups,
            part * n_items // n_parts, (part + 1) * n_items // n_parts)


@numba.njit(parallel=True, cache=True, nogil=True)
def mean_sums(frames, active, ell_bins, ell_ws, ell_w, ovf_pix, ovf_bins, ovf_ws, ovf_w,
              upper, n_bins, n_groups, n_parts):
    """Partial (signal, lost) of shape (n_parts * B, n_bins).

    signal = sum w*s*x over valid pixels; lost = sum w over invalid ones (x < 0, x >= upper, NaN),
    to be subtracted from the static norm.  frames: (B, N) of any numeric dtype.
    """
    n_frames = frames.shape[0]
    n_active, n_slots = ell_bins.shape
    signal = np.zeros((n_parts * n_frames, n_bins))
    lost = np.zeros((n_parts * n_frames, n_bins))
    for tile in numba.prange(n_groups * n_parts):
        part, b0, b1, i0, i1 = _tile_range(tile, n_parts, n_groups, n_frames, n_active)
        b = b0
        while b < b1:
            pair = b + 1 < b1
            r0 = part * n_frames + b
            r1 = r0 + 1 if pair else r0
            for i in range(i0, i1):
                j = active[i]
                x = np.float64(frames[b, j])
                y = np.float64(frames[b + 1, j]) if pair else 0.0
                if not (x >= 0.0 and x < upper):
                    for s in range(n_slots):
                        lost[r0, ell_bins[i, s]] += ell_w[i, s]
                    x = 0.0
                if pair and not (y >= 0.0 and y < upper):
                    for s in range(n_slots):
                        lost[r1, ell_bins[i, s]] += ell_w[i, s]
                    y = 0.0
                for s in range(n_slots):
                    c = ell_bins[i, s]
                    ws = ell_ws[i, s]
                    signal[r0, c] += ws * x
                    signal[r1, c] += ws * y
            b += 2
        if part == 0:
            for b in range(b0, b1):
                for e in range(len(ovf_pix)):
                    x = np.float64(frames[b, ovf_pix[e]])
                    if x >= 0.0 and x < upper:
                        signal[b, ovf_bins[e]] += ovf_ws[e] * x
                    else:
                        lost[b, ovf_bins[e]] += ovf_w[e]
    return signal, lost


@numba.njit(parallel=True, cache=True, nogil=True)
def error_sums(frames, active, ell_bins, ell_ws, ell_w, scale, ovf_pix, ovf_bins, ovf_ws, ovf_w,
               upper, n_bins, n_groups, n_parts, with_squares):
    """As :func:`mean_sums`, plus partial variance (sum w s^2 x) and, if ``with_squares``,
    squares (sum w (s x)^2; left zero otherwise: the Poisson error alone needs no squares).

    ``scale`` is the per-active-pixel 1/K (float32).  Frames are taken two at a time.
    """
    n_frames = frames.shape[0]
    n_active, n_slots = ell_bins.shape
    shape = (n_parts * n_frames, n_bins)
    signal = np.zeros(shape)
    lost = np.zeros(shape)
    variance = np.zeros(shape)
    squares = np.zeros(shape)
    for tile in numba.prange(n_groups * n_parts):
        part, b0, b1, i0, i1 = _tile_range(tile, n_parts, n_groups, n_frames, n_active)
        b = b0
        while b < b1:
            pair = b + 1 < b1
            r0 = part * n_frames + b
            r1 = r0 + 1 if pair else r0
            for i in range(i0, i1):
                j = active[i]
                x = np.float64(frames[b, j])
                y = np.float64(frames[b + 1, j]) if pair else 0.0
                if not (x >= 0.0 and x < upper):
                    for k in range(n_slots):
                        lost[r0, ell_bins[i, k]] += ell_w[i, k]
                    x = 0.0
                if pair and not (y >= 0.0 and y < upper):
                    for k in range(n_slots):
                        lost[r1, ell_bins[i, k]] += ell_w[i, k]
                    y = 0.0
                s = np.float64(scale[i])
                sx = s * x
                sy = s * y
                for k in range(n_slots):
                    c = ell_bins[i, k]
                    ws = np.float64(ell_ws[i, k])
                    wx = ws * x
                    wy = ws * y
                    signal[r0, c] += wx
                    variance[r0, c] += wx * s
                    signal[r1, c] += wy
                    variance[r1, c] += wy * s
                    if with_squares:
                        squares[r0, c] += wx * sx
                        squares[r1, c] += wy * sy
            b += 2
        if part == 0:
            for b in range(b0, b1):
                for e in range(len(ovf_pix)):
                    x = np.float64(frames[b, ovf_pix[e]])
                    if x >= 0.0 and x < upper:
                        ws = np.float64(ovf_ws[e])
                        s = ws / ovf_w[e]
                        signal[b, ovf_bins[e]] += ws * x
                        variance[b, ovf_bins[e]] += ws * s * x
                        squares[b, ovf_bins[e]] += ws * s * x * x
                    else:
                        lost[b, ovf_bins[e]] += ovf_w[e]
    return signal, lost, variance, squares
