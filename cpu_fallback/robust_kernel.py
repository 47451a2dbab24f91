"""The numba kernel of sigma clipping on the CPU: bins in parallel, each bin's values of a
frame gathered once into a private buffer, then one pass per clipping iteration (the dropped
entries subtracted from the sums). Same definitions as gpusaxs.robust (pyFAI's)."""

import math

import numba
import numpy as np

from .kernel_cache import install

install()  # compiled once into the user's cache (cpu_fallback.kernel_cache)

__all__ = ["sigma_clip_kernel", "percentile_kernel", "N_OUT"]

#: outputs per (frame, bin): mean, std, sigma, count, sum c v, sum c, variance, entries kept
N_OUT = 8
_SQRT_2PI = math.sqrt(2.0 * math.pi)


@numba.njit(inline="always")
def _coef(uniform, weights, scale, e):
    """The entry's weight c = w / s (1 for whole pixels without corrections)."""
    if uniform:
        return 1.0
    return weights[e] / scale[e]


@numba.njit(inline="always")
def _spread(s_c2d2, s_c2d, s_c2, delta):
    """sum c^2 (v - mean)^2 from the moments about the reference, delta = mean - ref."""
    return max(s_c2d2 - 2.0 * delta * s_c2d + delta * delta * s_c2, 0.0)


@numba.njit(inline="always")
def _store(out, f, b, mean, var, s_c2, s_c, s_w, s_cv, kept):
    """A bin's outputs (N_OUT of them) from its sums; std and sigma NaN for an empty bin."""
    std = math.sqrt(var / s_c2) if s_c > 0.0 else np.nan
    out[0, f, b] = mean
    out[1, f, b] = std
    out[2, f, b] = std * math.sqrt(s_c2) / s_c if s_c > 0.0 else np.nan
    out[3, f, b] = s_w
    out[4, f, b] = s_cv
    out[5, f, b] = s_c
    out[6, f, b] = var
    out[7, f, b] = kept


@numba.njit(parallel=True, nogil=True, cache=True)
def sigma_clip_kernel(
    frames, threshold, pixels, weights, scale, offset, bin_ptr, thres, max_iter, model, out
):
    """Sigma clipping of ``frames`` (B, H*W) per bin; ``model``: 0 Poisson, 1 azimuthal, 2
    hybrid (clip Poisson, report the spread). A raw value is valid when 0 <= x < threshold.
    ``offset``: the dark per entry, or an empty array. Writes ``out`` (N_OUT, B, n_bins).
    Each bin's corrected values of a frame go to a private buffer, NaN once dropped; the sums
    (and the moments of the spread) lose what a pass drops, so a pass is one read."""
    n_frames = frames.shape[0]
    n_bins = bin_ptr.shape[0] - 1
    has_offset = offset.shape[0] > 0
    uniform = not has_offset
    for e in range(pixels.shape[0]):
        if weights[e] != 1.0 or scale[e] != 1.0:
            uniform = False
            break
    # frames x bins in one parallel loop: each thread takes whole frames in turn (its
    # frame stays in its cache), or a share of the bins of a single frame
    for t in numba.prange(n_frames * n_bins):
        f = t // n_bins
        b = t % n_bins
        start = bin_ptr[b]
        n = bin_ptr[b + 1] - start
        v = np.empty(n)
        s_cv = 0.0
        s_c = 0.0
        s_c2 = 0.0
        s_w = 0.0
        s_p = 0.0
        s_c2d = 0.0  # moments of d = v - ref (ref: the bin's first valid value)
        s_c2d2 = 0.0
        ref = np.nan
        kept = 0
        for j in range(n):
            e = start + j
            xf = float(frames[f, pixels[e]])
            if xf >= 0.0 and xf < threshold:
                if uniform:
                    val = xf
                    cj = 1.0
                    wj = 1.0
                else:
                    val = (xf - offset[e]) * scale[e] if has_offset else xf * scale[e]
                    cj = weights[e] / scale[e]
                    wj = weights[e]
                v[j] = val
                if kept == 0:
                    ref = val
                d = val - ref
                s_c2d += cj * cj * d
                s_c2d2 += cj * cj * d * d
                s_cv += cj * val
                s_c += cj
                s_c2 += cj * cj
                s_w += wj
                s_p += wj * wj * max(xf, 1.0)
                kept += 1
            else:
                v[j] = np.nan
        mean = s_cv / s_c if s_c > 0.0 else np.nan
        if model == 1:
            var = _spread(s_c2d2, s_c2d, s_c2, mean - ref)
        else:
            var = s_p
        for _ in range(max_iter):
            if not s_c > 0.0:
                break
            std = math.sqrt(var / s_c2)
            bound = max(thres, math.sqrt(2.0 * math.log(max(s_w, 3.0) / _SQRT_2PI))) * std
            dropped = 0
            for j in range(n):
                vj = v[j]
                if vj == vj and not abs(vj - mean) <= bound:
                    e = start + j
                    cj = _coef(uniform, weights, scale, e)
                    wj = 1.0 if uniform else weights[e]
                    xf = float(frames[f, pixels[e]])
                    d = vj - ref
                    s_c2d -= cj * cj * d
                    s_c2d2 -= cj * cj * d * d
                    s_cv -= cj * vj
                    s_c -= cj
                    s_c2 -= cj * cj
                    s_w -= wj
                    s_p -= wj * wj * max(xf, 1.0)
                    v[j] = np.nan
                    dropped += 1
            if dropped == 0:
                break
            kept -= dropped
            if kept == 0:
                s_cv = s_c = s_c2 = s_w = s_p = s_c2d = s_c2d2 = 0.0
            mean = s_cv / s_c if s_c > 0.0 else np.nan
            if model == 1:
                var = _spread(s_c2d2, s_c2d, s_c2, mean - ref)
            else:
                var = s_p
        if model == 2:
            var = _spread(s_c2d2, s_c2d, s_c2, mean - ref)
        _store(out, f, b, mean, var, s_c2, s_c, s_w, s_cv, kept)


@numba.njit(parallel=True, nogil=True, cache=True)
def percentile_kernel(
    frames, threshold, pixels, weights, scale, offset, bin_ptr, lo, hi, model, out
):
    """Weighted percentile per bin (pyFAI's medfilt1d rule, gpusaxs.robust.percentile_sums):
    each bin's valid entries sorted by value (stable), their weights c summed up; an entry is
    kept when its cumulated weight reaches ``lo`` x total and the weight before it does not
    pass ``hi`` x total. ``model``: 0 reports the Poisson error, else the spread. Writes
    ``out`` (N_OUT, B, n_bins) like :func:`sigma_clip_kernel`."""
    n_frames = frames.shape[0]
    n_bins = bin_ptr.shape[0] - 1
    has_offset = offset.shape[0] > 0
    # frames x bins in one parallel loop: each thread takes whole frames in turn (its
    # frame stays in its cache), or a share of the bins of a single frame
    for t in numba.prange(n_frames * n_bins):
        f = t // n_bins
        b = t % n_bins
        start = bin_ptr[b]
        n = bin_ptr[b + 1] - start
        v = np.empty(n)
        ent = np.empty(n, dtype=np.int64)
        m = 0
        for j in range(n):
            e = start + j
            xf = float(frames[f, pixels[e]])
            if xf >= 0.0 and xf < threshold:
                v[m] = (xf - offset[e]) * scale[e] if has_offset else xf * scale[e]
                ent[m] = e
                m += 1
        order = np.argsort(v[:m], kind="mergesort")
        total = 0.0
        for k in range(m):
            e = ent[k]
            total += weights[e] / scale[e]
        s_cv = 0.0
        s_c = 0.0
        s_c2 = 0.0
        s_w = 0.0
        s_p = 0.0
        kept = 0
        upper = 0.0
        keep = np.zeros(m, dtype=np.bool_)
        for k in range(m):
            i = order[k]
            e = ent[i]
            cj = weights[e] / scale[e]
            lower = upper
            upper += cj
            if upper >= lo * total and lower <= hi * total and cj > 0.0:
                keep[i] = True
                s_cv += cj * v[i]
                s_c += cj
                s_c2 += cj * cj
                s_w += weights[e]
                xf = float(frames[f, pixels[e]])
                s_p += weights[e] * weights[e] * max(xf, 1.0)
                kept += 1
        mean = s_cv / s_c if s_c > 0.0 else np.nan
        var = s_p
        if model != 0:
            var = 0.0
            for i in range(m):
                if keep[i]:
                    d = weights[ent[i]] / scale[ent[i]] * (v[i] - mean)
                    var += d * d
        _store(out, f, b, mean, var, s_c2, s_c, s_w, s_cv, kept)
