"""The numba kernels of the robust statistics on the CPU. Sigma clipping: bins in parallel on a
pixel-major copy of the stack, each bin's values of all frames gathered once into a private
buffer (the frames are the vector lanes); the entries with a value far from the mean listed
once, and the clipping iterations checking only them (the dropped values subtracted from the
sums). Weighted percentiles: a stable sort per bin and frame.
Same definitions as gpusaxs.robust (pyFAI's)."""

import math

import numba
import numpy as np

from .gather import bin_chunks, pixel_major
from .kernel_cache import install

install()  # compiled once into the user's cache (cpu_fallback.kernel_cache)

__all__ = ["sigma_clip", "sigma_clip_kernel", "percentile_kernel", "N_OUT"]

#: outputs per (frame, bin): mean, std, sigma, count, sum c v, sum c, variance, entries kept
N_OUT = 8
_SQRT_2PI = math.sqrt(2.0 * math.pi)
#: entries with a value further than NEAR x the bound from the mean are listed once; later
#: iterations check only them while the list provably holds every value that can go
NEAR = 0.7


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


@numba.njit(inline="always")
def _spread(v, start, n, weights, scale, mean, var):
    """var[f] = sum c^2 (v - mean[f])^2 over the kept values (not NaN) of every frame f: the
    azimuthal spread in an exact second pass (an empty frame: 0)."""
    n_frames = v.shape[1]
    for f in range(n_frames):
        var[f] = 0.0
    for j in range(n):
        e = start + j
        cj = weights[e] / scale[e]
        c2 = cj * cj
        for f in range(n_frames):
            d = v[j, f] - mean[f]
            var[f] += c2 * d * d if d == d else 0.0


@numba.njit(parallel=True, nogil=True, cache=True, fastmath={"contract"})
def sigma_clip_kernel(
    stack, threshold, pixels, weights, scale, offset, bin_ptr, chunks, thres, max_iter, model, out
):
    """Sigma clipping per bin of a pixel-major stack (n_pixels, B) (cpu_fallback.gather.
    pixel_major: each pixel's frames side by side); ``model``: 0 Poisson, 1 azimuthal, 2 hybrid
    (clip Poisson, report the spread). A raw value is valid when 0 <= x < threshold.
    ``offset``: the dark per entry, or an empty array; ``chunks``: bin boundaries, one run per
    parallel step. Writes ``out`` (N_OUT, B, n_bins).

    The frames are the vector lanes: a bin's values of all frames are gathered once (one cache
    line per pixel) into a private (entries, B) buffer, NaN once dropped, and every pass over
    it runs on all frames at once; a frame whose clipping has converged keeps its sums while
    the others go on. The entries with a value beyond NEAR x the bound of its frame are listed
    once; an iteration checks only them while, in every frame still clipping, NEAR x the
    listing's bound plus the move of the mean since stays within the bound (then no value off
    the list can go), else the list is made again. The spread used for the bound follows the
    drops as moments about the first mean; the spread reported is recomputed exactly."""
    n_frames = stack.shape[1]
    has_offset = offset.shape[0] > 0
    for c in numba.prange(len(chunks) - 1):
        s_cv = np.empty(n_frames)
        s_c = np.empty(n_frames)
        s_c2 = np.empty(n_frames)
        s_w = np.empty(n_frames)
        s_p = np.empty(n_frames)
        s_c2d = np.empty(n_frames)  # sum c^2 (v - ref), ref: the first mean
        s_c2d2 = np.empty(n_frames)  # sum c^2 (v - ref)^2
        ref = np.empty(n_frames)
        kept = np.empty(n_frames)
        mean = np.empty(n_frames)
        var = np.empty(n_frames)
        centre = np.empty(n_frames)
        bound = np.empty(n_frames)
        dropped = np.empty(n_frames)
        near_mean = np.empty(n_frames)  # the list's base: no other value is beyond
        near_bound = np.empty(n_frames)  # near_bound of near_mean
        going = np.empty(n_frames, dtype=np.bool_)
        for b in range(chunks[c], chunks[c + 1]):
            start = bin_ptr[b]
            n = bin_ptr[b + 1] - start
            v = np.empty((n, n_frames))
            far = np.empty(n, dtype=np.int64)  # the entries with a value that may go
            n_far = -1  # no list yet
            t_c = t_c2 = t_w = 0.0  # the bin's totals: a frame without invalid values has them
            for f in range(n_frames):
                s_cv[f] = s_p[f] = dropped[f] = 0.0
                going[f] = True
            for j in range(n):
                e = start + j
                p = pixels[e]
                sc = scale[e]
                wj = weights[e]
                cj = wj / sc
                w2 = wj * wj
                off = offset[e] if has_offset else 0.0
                t_c += cj
                t_c2 += cj * cj
                t_w += wj
                for f in range(n_frames):  # branch-free: the frames are vector lanes
                    x = float(stack[p, f])
                    ok = (x >= 0.0) & (x < threshold)
                    val = (x - off) * sc
                    v[j, f] = val if ok else np.nan
                    s_cv[f] += cj * val if ok else 0.0
                    s_p[f] += w2 * max(x, 1.0) if ok else 0.0
                    dropped[f] += 0.0 if ok else 1.0  # here: the invalid values
            for f in range(n_frames):
                s_c[f], s_c2[f], s_w[f], kept[f] = t_c, t_c2, t_w, float(n)
                if dropped[f] > 0.0:  # rare: a frame with invalid values sums its own
                    s_c[f] = s_c2[f] = s_w[f] = kept[f] = 0.0
                    for j in range(n):
                        if v[j, f] == v[j, f]:
                            cj = weights[start + j] / scale[start + j]
                            s_c[f] += cj
                            s_c2[f] += cj * cj
                            s_w[f] += weights[start + j]
                            kept[f] += 1.0
                mean[f] = s_cv[f] / s_c[f] if s_c[f] > 0.0 else np.nan
                ref[f] = mean[f] if s_c[f] > 0.0 else 0.0
                s_c2d[f] = s_c2d2[f] = 0.0
            if model != 0:  # the moments about the first mean: the spread as values go
                for j in range(n):
                    cj = weights[start + j] / scale[start + j]
                    c2 = cj * cj
                    for f in range(n_frames):
                        d = v[j, f] - ref[f]
                        s_c2d[f] += c2 * d if d == d else 0.0
                        s_c2d2[f] += c2 * d * d if d == d else 0.0
            for f in range(n_frames):
                delta = mean[f] - ref[f]
                spread = max(s_c2d2[f] - 2.0 * delta * s_c2d[f] + delta * delta * s_c2[f], 0.0)
                var[f] = spread if model == 1 else s_p[f]
            for _ in range(max_iter):
                active = False
                for f in range(n_frames):
                    going[f] = going[f] and s_c[f] > 0.0
                    if going[f]:
                        std = math.sqrt(var[f] / s_c2[f])
                        limit = math.sqrt(2.0 * math.log(max(s_w[f], 3.0) / _SQRT_2PI))
                        bound[f] = max(thres, limit) * std
                        centre[f] = mean[f]
                        active = True
                    dropped[f] = 0.0
                if not active:
                    break
                # the list of far values serves while, in every frame still clipping, a value
                # not on it (within near_bound of near_mean) is within this iteration's bound
                stale = n_far < 0
                for f in range(n_frames):
                    if going[f] and not (near_bound[f] + abs(centre[f] - near_mean[f]) <= bound[f]):
                        stale = True
                if stale:  # list again the entries with a value beyond NEAR x the bound
                    n_far = 0
                    for f in range(n_frames):
                        near_mean[f] = centre[f]
                        near_bound[f] = NEAR * bound[f] if going[f] else np.inf
                    for j in range(n):
                        hit = False
                        for f in range(n_frames):  # NaN: never
                            hit |= np.abs(v[j, f] - near_mean[f]) > near_bound[f]
                        if hit:
                            far[n_far] = j
                            n_far += 1
                for k in range(n_far):  # their values beyond the bound leave the sums
                    j = far[k]
                    e = start + j
                    p = pixels[e]
                    wj = weights[e]
                    cj = wj / scale[e]
                    c2 = cj * cj
                    w2 = wj * wj
                    for f in range(n_frames):  # branch-free over the frames
                        vj = v[j, f]
                        cut = going[f] & (vj == vj) & ~(np.abs(vj - centre[f]) <= bound[f])
                        x = float(stack[p, f])
                        d = vj - ref[f]
                        s_cv[f] -= cj * vj if cut else 0.0
                        s_c[f] -= cj if cut else 0.0
                        s_c2[f] -= c2 if cut else 0.0
                        s_w[f] -= wj if cut else 0.0
                        s_p[f] -= w2 * max(x, 1.0) if cut else 0.0
                        s_c2d[f] -= c2 * d if cut else 0.0
                        s_c2d2[f] -= c2 * d * d if cut else 0.0
                        dropped[f] += 1.0 if cut else 0.0
                        v[j, f] = np.nan if cut else vj
                for f in range(n_frames):
                    going[f] = going[f] and dropped[f] > 0.0
                    if not going[f]:
                        continue
                    kept[f] -= dropped[f]
                    if kept[f] == 0.0:
                        s_cv[f] = s_c[f] = s_c2[f] = s_w[f] = s_p[f] = 0.0
                        s_c2d[f] = s_c2d2[f] = 0.0
                    mean[f] = s_cv[f] / s_c[f] if s_c[f] > 0.0 else np.nan
                    delta = mean[f] - ref[f]
                    spread = s_c2d2[f] - 2.0 * delta * s_c2d[f] + delta * delta * s_c2[f]
                    var[f] = max(spread, 0.0) if model == 1 else s_p[f]
            if model != 0:  # the spread reported: exact, in a second pass over what is kept
                _spread(v, start, n, weights, scale, mean, var)
            for f in range(n_frames):
                _store(out, f, b, mean[f], var[f], s_c2[f], s_c[f], s_w[f], s_cv[f], kept[f])


def sigma_clip(
    frames, threshold, pixels, weights, scale, offset, bin_ptr, thres, max_iter, model, out
):
    """:func:`sigma_clip_kernel` of frames (B, n_pixels) C-contiguous: on their pixel-major
    copy (one frame is one already), the bins cut in runs of equal work for the threads."""
    if frames.shape[0] == 1:
        stack = frames.reshape(-1, 1)
    else:
        stack = np.empty(frames.shape[::-1], frames.dtype)
        pixel_major(frames, stack)
    chunks = bin_chunks(bin_ptr, numba.get_num_threads())
    sigma_clip_kernel(
        stack, threshold, pixels, weights, scale, offset, bin_ptr, chunks, thres, max_iter,
        model, out,
    )  # fmt: skip


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
