"""The numba kernels of the robust statistics on the CPU. Sigma clipping: bins in parallel on a
copy of the stack in the bin-major order of the matrix's entries, each bin's values of all
frames one contiguous block (the frames are the vector lanes); the entries with a value far
from the mean listed once, and the clipping iterations checking only them (the dropped values
subtracted from the sums). Weighted percentiles: a stable sort per bin and frame.
Same definitions as gpusaxs.robust (pyFAI's)."""

import math
import threading

import numba
import numpy as np

from .gather import bin_chunks
from .kernel_cache import install

install()  # compiled once into the user's cache (cpu_fallback.kernel_cache)

__all__ = [
    "sigma_clip",
    "sigma_clip_kernel",
    "bin_order_copy",
    "copy_plan",
    "percentile_kernel",
    "N_OUT",
]

#: outputs per (frame, bin): mean, std, sigma, count, sum c v, sum c, variance, entries kept
N_OUT = 8
_SQRT_2PI = math.sqrt(2.0 * math.pi)
#: entries with a value further than NEAR x the bound from the mean are listed once; later
#: iterations check only them while the list provably holds every value that can go
NEAR = 0.7
#: the float32 list's bound is lowered by this x (|mean| + 4 x bound + 2 x |dark| x scale):
#: 2^-19, 8x float32's worst rounding of a value within 4 x the bound of the mean
LIST_MARGIN = 2.0**-19


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


#: bytes of the copy's tile: a run of pixels of every frame, read one frame after another (one
#: stream of memory at a time, not one per frame) into a buffer that stays in L1/L2
TILE_BYTES = 64 << 10
#: the tile's rows are padded by a cache line, so that a pixel's frames do not all fall in the
#: same few sets of the cache (a row of 512 int32 without it: 29 ms instead of 14, 32 frames)
TILE_PAD_BYTES = 64


def copy_plan(pixel_ptr, n_frames, itemsize, n_threads):
    """(tile, pad, starts) of :func:`bin_order_copy`: the tile's pixels and its rows' padding
    (elements), and the runs of pixels of the parallel steps (whole tiles, about equal
    entries, 8 a thread)."""
    tile = max(16, TILE_BYTES // max(n_frames * itemsize, 1))
    n_pixels = pixel_ptr.shape[0] - 1
    targets = np.linspace(0, pixel_ptr[-1], 8 * n_threads + 1)
    cuts = np.searchsorted(pixel_ptr, targets) // tile * tile
    starts = np.unique(np.concatenate([[0], np.minimum(cuts, n_pixels), [n_pixels]]))
    return tile, max(1, TILE_PAD_BYTES // itemsize), starts.astype(np.int64)


@numba.njit(parallel=True, nogil=True, cache=True)
def bin_order_copy(frames, pixel_ptr, slot, tile, pad, starts, out):
    """out[slot[k], f] = frames[f, p] for each entry k of pixel p (pixel_ptr[p]:pixel_ptr[p+1]):
    the stack in the order of the bin-major entries, each entry's frames side by side (16 int32
    frames: one 64-byte line), so that a bin's values of all frames are one contiguous block.
    Each parallel step takes a run of pixels (``starts``, :func:`copy_plan`) in tiles of
    ``tile`` pixels: it reads the tile of each frame in turn into a buffer (rows padded by
    ``pad``) and writes each entry's frames from there. Tiles with no entries are skipped.

    32 PILATUS 1M int32 frames, 666k entries, 2 threads (AMD EPYC): 14 ms; the frames read
    pixel by pixel (32 streams of memory at once), 25 ms (docs/robust.md)."""
    n_frames = frames.shape[0]
    for c in numba.prange(len(starts) - 1):
        buf = np.empty((n_frames, tile + pad), frames.dtype)
        for p0 in range(starts[c], starts[c + 1], tile):
            p1 = min(starts[c + 1], p0 + tile)
            if pixel_ptr[p0] == pixel_ptr[p1]:
                continue
            for f in range(n_frames):
                buf[f, : p1 - p0] = frames[f, p0:p1]
            for p in range(p0, p1):
                for k in range(pixel_ptr[p], pixel_ptr[p + 1]):
                    e = slot[k]
                    for f in range(n_frames):
                        out[e, f] = buf[f, p - p0]


@numba.njit(inline="always")
def _spread(vals, threshold, start, n, weights, scale, offset, has_offset, mean, var):
    """var[f] = sum c^2 (v - mean[f])^2 over the valid values left in ``vals`` of every frame f:
    the azimuthal spread in an exact second pass (an empty frame: 0)."""
    n_frames = vals.shape[1]
    for f in range(n_frames):
        var[f] = 0.0
    for j in range(n):
        e = start + j
        sc = scale[e]
        cj = weights[e] / sc
        c2 = cj * cj
        off = offset[e] if has_offset else 0.0
        for f in range(n_frames):
            x = float(vals[e, f])
            ok = (x >= 0.0) & (x < threshold)
            d = (x - off) * sc - mean[f]
            var[f] += c2 * d * d if ok else 0.0


@numba.njit(parallel=True, nogil=True, cache=True, fastmath={"contract"})
def sigma_clip_kernel(
    vals, threshold, dropped_value, weights, scale, offset, bin_ptr, chunks, thres, max_iter,
    model, out,
):  # fmt: skip
    """Sigma clipping per bin of a stack in bin order (nnz, B) (:func:`bin_order_copy`: entry
    e's frames side by side); ``model``: 0 Poisson, 1 azimuthal, 2 hybrid (clip Poisson, report
    the spread). A raw value is valid when 0 <= x < threshold; a value clipped is overwritten
    with ``dropped_value`` (invalid: -1, or the unsigned maximum), so ``vals`` is consumed.
    ``offset``: the dark per entry, or an empty array; ``chunks``: bin boundaries, one run per
    parallel step. Writes ``out`` (N_OUT, B, n_bins).

    The frames are the vector lanes and a bin's values of all frames are one contiguous block
    (read from memory once, then from the cache): every pass over it runs on all frames at
    once; a frame whose clipping has converged keeps its sums while the others go on. The
    entries with a value beyond NEAR x the bound of its frame are listed once; an iteration
    checks only them while, in every frame still clipping, NEAR x the listing's bound plus
    the move of the mean since stays within the bound (then no value off the list can go),
    else the list is made again. The list is made in float32 (twice the lanes of a vector), a
    superset of the exact one (LIST_MARGIN); an iteration checks each listed entry's frames at
    once and takes the few values that go one by one. The spread used for the bound follows
    the drops as moments about a value of the bin (taken in the first pass with the sums); the
    spread reported is recomputed exactly.

    Passes over a bin's block, 32 frames of a PILATUS 1M, 500 bins, 2 threads (AMD EPYC): the
    sums (6-7 ms in all, 10 with the moments), the first listing and iteration (9 ms), each
    later iteration (1-2 ms); the copy before it 12-15 ms (docs/robust.md)."""
    n_frames = vals.shape[1]
    has_offset = offset.shape[0] > 0
    moments = model != 0
    counts = model != 1
    zero32 = np.float32(0.0)
    threshold32 = np.float32(threshold)
    for c in numba.prange(len(chunks) - 1):
        s_cv = np.empty(n_frames)
        s_c = np.empty(n_frames)
        s_c2 = np.empty(n_frames)
        s_w = np.empty(n_frames)
        s_p = np.empty(n_frames)
        s_c2d = np.empty(n_frames)  # sum c^2 (v - ref), ref: a value of the bin
        s_c2d2 = np.empty(n_frames)  # sum c^2 (v - ref)^2
        ref = np.zeros(n_frames)
        kept = np.empty(n_frames)
        mean = np.empty(n_frames)
        var = np.empty(n_frames)
        centre = np.empty(n_frames)
        bound = np.empty(n_frames)
        dropped = np.empty(n_frames)
        near_mean = np.empty(n_frames)  # the list's base: no other value is beyond
        near_bound = np.empty(n_frames)  # near_bound of near_mean
        going = np.empty(n_frames, dtype=np.bool_)
        cut = np.empty(n_frames, dtype=np.bool_)
        mean32 = np.empty(n_frames, dtype=np.float32)
        bound32 = np.empty(n_frames, dtype=np.float32)
        for b in range(chunks[c], chunks[c + 1]):
            start = bin_ptr[b]
            n = bin_ptr[b + 1] - start
            big_dark = 0.0  # 2 x the largest |dark| x scale of the bin (the list's margin)
            if has_offset:
                for j in range(n):
                    big_dark = max(big_dark, 2.0 * abs(offset[start + j]) * scale[start + j])
            far = np.empty(n, dtype=np.int64)  # the entries with a value that may go
            n_far = -1  # no list yet
            t_c = t_c2 = t_w = 0.0  # the bin's totals: a frame without invalid values has them
            sc0 = scale[start] if n > 0 else 1.0
            off0 = offset[start] if has_offset and n > 0 else 0.0
            for f in range(n_frames):
                s_cv[f] = s_p[f] = dropped[f] = s_c2d[f] = s_c2d2[f] = 0.0
                going[f] = True
                # the moments' reference: the bin's first value (close to the mean, so the
                # spread from the moments keeps its digits), else the last bin's
                x0 = float(vals[start, f]) if n > 0 else -1.0
                if (x0 >= 0.0) & (x0 < threshold):
                    ref[f] = (x0 - off0) * sc0
            for j in range(n):
                e = start + j
                sc = scale[e]
                wj = weights[e]
                cj = wj / sc
                c2 = cj * cj
                w2 = wj * wj
                off = offset[e] if has_offset else 0.0
                t_c += cj
                t_c2 += c2
                t_w += wj
                for f in range(n_frames):  # branch-free: the frames are vector lanes
                    x = float(vals[e, f])
                    ok = (x >= 0.0) & (x < threshold)
                    val = (x - off) * sc
                    s_cv[f] += cj * val if ok else 0.0
                    dropped[f] += 0.0 if ok else 1.0  # here: the invalid values
                    if counts:  # the Poisson variance (not needed by the azimuthal model)
                        s_p[f] += w2 * max(x, 1.0) if ok else 0.0
                    if moments:  # the moments about ref: the spread as values go
                        d = val - ref[f]
                        s_c2d[f] += c2 * d if ok else 0.0
                        s_c2d2[f] += c2 * d * d if ok else 0.0
            for f in range(n_frames):
                s_c[f], s_c2[f], s_w[f], kept[f] = t_c, t_c2, t_w, float(n)
                if dropped[f] > 0.0:  # rare: a frame with invalid values sums its own
                    s_c[f] = s_c2[f] = s_w[f] = kept[f] = 0.0
                    for j in range(n):
                        x = float(vals[start + j, f])
                        if (x >= 0.0) & (x < threshold):
                            cj = weights[start + j] / scale[start + j]
                            s_c[f] += cj
                            s_c2[f] += cj * cj
                            s_w[f] += weights[start + j]
                            kept[f] += 1.0
                mean[f] = s_cv[f] / s_c[f] if s_c[f] > 0.0 else np.nan
                delta = mean[f] - ref[f] if s_c[f] > 0.0 else 0.0
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
                        # the list in float32 (8 lanes a vector, not 4), a superset of the
                        # exact one: the bound lowered by more than float32's rounding can move
                        # a value within 4 x the bound of the mean
                        margin = LIST_MARGIN * (abs(centre[f]) + 4.0 * near_bound[f] + big_dark)
                        mean32[f] = np.float32(centre[f])
                        bound32[f] = np.float32(max(near_bound[f] - margin, 0.0))
                    for j in range(n):
                        e = start + j
                        sc = np.float32(scale[e])
                        off = np.float32(offset[e]) if has_offset else zero32
                        hit = False
                        for f in range(n_frames):  # ok may take an invalid value: checked later
                            x = np.float32(vals[e, f])
                            ok = (x >= zero32) & (x <= threshold32)
                            hit |= ok & (np.abs((x - off) * sc - mean32[f]) > bound32[f])
                        if hit:
                            far[n_far] = j
                            n_far += 1
                for k in range(n_far):  # their values beyond the bound leave the sums
                    e = start + far[k]
                    sc = scale[e]
                    off = offset[e] if has_offset else 0.0
                    any_cut = False
                    for f in range(n_frames):  # branch-free (an OR vectorizes, a sum not)
                        x = float(vals[e, f])
                        ok = (x >= 0.0) & (x < threshold)
                        c = going[f] & ok & ~(np.abs((x - off) * sc - centre[f]) <= bound[f])
                        cut[f] = c
                        any_cut |= c
                    if not any_cut:  # most listed entries in most iterations
                        continue
                    wj = weights[e]
                    cj = wj / sc
                    c2 = cj * cj
                    w2 = wj * wj
                    for f in range(n_frames):  # the few values that go, one by one
                        if not cut[f]:
                            continue
                        x = float(vals[e, f])
                        vj = (x - off) * sc
                        d = vj - ref[f]
                        s_cv[f] -= cj * vj
                        s_c[f] -= cj
                        s_c2[f] -= c2
                        s_w[f] -= wj
                        s_p[f] -= w2 * max(x, 1.0)
                        s_c2d[f] -= c2 * d
                        s_c2d2[f] -= c2 * d * d
                        dropped[f] += 1.0
                        vals[e, f] = dropped_value
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
                _spread(vals, threshold, start, n, weights, scale, offset, has_offset, mean, var)
            for f in range(n_frames):
                _store(out, f, b, mean[f], var[f], s_c2[f], s_c[f], s_w[f], s_cv[f], kept[f])


#: bytes of the bin-ordered copy per call: frames beyond it go in further calls (48 PILATUS 1M
#: int32 frames a call), at least MIN_RUN a call (an EIGER 16M: 4 frames, 256 MB; fewer frames
#: fill less of a vector)
COPY_BYTES = 128 << 20
MIN_RUN = 4

_spare: list[np.ndarray] = []  # the copy's last block, kept for the next call
_spare_lock = threading.Lock()


def _block(nbytes):
    """A uint8 block of ``nbytes``: the last one given back when large enough (a fresh 85 MB
    block, 32 PILATUS 1M frames, costs ~6 ms of page faults on first touch). One block, at
    most COPY_BYTES, stays held between calls."""
    with _spare_lock:
        if _spare and _spare[0].nbytes >= nbytes:
            return _spare.pop()
    return np.empty(nbytes, np.uint8)


def _give_back(block):
    with _spare_lock:
        _spare[:] = [block]


def sigma_clip(
    frames, threshold, pixels, weights, scale, offset, bin_ptr, pixel_ptr, slot, thres,
    max_iter, model, out,
):  # fmt: skip
    """:func:`sigma_clip_kernel` of frames (B, n_pixels) C-contiguous: on their copy in bin
    order (:func:`bin_order_copy`; ``pixel_ptr``/``slot``: each pixel's entries, their places
    in the bin-major order), in runs of frames of at most COPY_BYTES (MIN_RUN frames at least), the
    bins cut in runs of equal work for the threads. ``pixels`` is unused (the copy places the
    values)."""
    del pixels
    n_frames = frames.shape[0]
    nnz = slot.shape[0]
    step = max(MIN_RUN, COPY_BYTES // max(nnz * frames.dtype.itemsize, 1))
    kind = frames.dtype.kind
    dropped_value = frames.dtype.type(np.iinfo(frames.dtype).max if kind == "u" else -1)
    n_threads = numba.get_num_threads()
    chunks = bin_chunks(bin_ptr, n_threads)
    block = _block(nnz * min(step, n_frames) * frames.dtype.itemsize)
    try:
        for f0 in range(0, n_frames, step):
            part = frames[f0 : f0 + step]
            size = nnz * part.shape[0] * frames.dtype.itemsize
            vals = block[:size].view(frames.dtype).reshape(nnz, part.shape[0])
            plan = copy_plan(pixel_ptr, part.shape[0], frames.dtype.itemsize, n_threads)
            bin_order_copy(part, pixel_ptr, slot, *plan, vals)
            sigma_clip_kernel(
                vals, threshold, dropped_value, weights, scale, offset, bin_ptr, chunks, thres,
                max_iter, model, out[:, f0 : f0 + step],
            )  # fmt: skip
    finally:
        _give_back(block)


@numba.njit(inline="always")
def _before(v, a, b):
    """Entry a comes before entry b in the stable order by value (ties: by position)."""
    return v[a] < v[b] or (v[a] == v[b] and a < b)


#: value buckets of the percentile kernel's selection
N_BUCKETS = 256


@numba.njit(cache=True)
def _crossings(v, c, lo_target, hi_target):
    """The two entries (indices into v) where the weights c, summed in the stable order by value
    (ties: by position), cross the targets: the first whose sum up to and with it reaches
    ``lo_target``, and the last whose sum before it does not pass ``hi_target`` (-1 where there
    is none). No sort: the values are put in N_BUCKETS buckets of equal width (a monotone map,
    so the buckets keep the order), the weights summed per bucket, and only the bucket of each
    crossing is sorted. Expected linear in len(v)."""
    m = v.shape[0]
    if m == 0:
        return -1, -1
    v_min = v.min()
    span = v.max() - v_min
    to_bucket = (N_BUCKETS - 1) / span if span > 0.0 else 0.0
    bucket = np.empty(m, dtype=np.int64)
    weight = np.zeros(N_BUCKETS)
    for i in range(m):
        k = int((v[i] - v_min) * to_bucket)
        bucket[i] = k
        weight[k] += c[i]
    # the first bucket whose sum up to and with it reaches lo_target (non-empty), the last
    # whose sum before it does not pass hi_target (non-empty)
    k_lo = -1
    k_hi = -1
    w_lo = w_hi = 0.0  # the weight before each
    before = 0.0
    for k in range(N_BUCKETS):
        if weight[k] == 0.0:
            continue
        if k_lo < 0 and before + weight[k] >= lo_target:
            k_lo, w_lo = k, before
        if before <= hi_target:
            k_hi, w_hi = k, before
        before += weight[k]
    first = _walk(v, c, bucket, k_lo, w_lo, lo_target, True) if k_lo >= 0 else -1
    last = _walk(v, c, bucket, k_hi, w_hi, hi_target, False) if k_hi >= 0 else -1
    return first, last


@numba.njit(cache=True)
def _walk(v, c, bucket, k, before, target, reach):
    """In bucket k (``before``: the weight of the buckets before it), its entries in the stable
    order by value: ``reach`` True, the first whose sum up to and with it reaches target; False,
    the last whose sum before it does not pass target."""
    members = np.flatnonzero(bucket == k)  # in position order: a stable sort keeps ties so
    members = members[np.argsort(v[members], kind="mergesort")]
    found = -1
    for i in members:
        if reach:
            if before + c[i] >= target:
                return i
        elif before <= target:
            found = i
        else:
            break
        before += c[i]
    return found


@numba.njit(parallel=True, nogil=True, cache=True)
def percentile_kernel(
    frames, threshold, pixels, weights, scale, offset, bin_ptr, lo, hi, model, out
):
    """Weighted percentile per bin (pyFAI's medfilt1d rule, gpusaxs.robust.percentile_sums):
    each bin's valid entries in the stable order by value, their weights c summed up; an entry
    is kept when its cumulated weight reaches ``lo`` x total and the weight before it does not
    pass ``hi`` x total. The kept entries are those between the two crossings, found through
    value buckets (:func:`_crossings`) rather than a sort. ``model``: 0 reports the Poisson error,
    else the spread. Writes ``out`` (N_OUT, B, n_bins) like :func:`sigma_clip_kernel`."""
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
        c = np.empty(n)
        ent = np.empty(n, dtype=np.int64)
        m = 0
        total = 0.0
        for j in range(n):
            e = start + j
            xf = float(frames[f, pixels[e]])
            if xf >= 0.0 and xf < threshold:
                v[m] = (xf - offset[e]) * scale[e] if has_offset else xf * scale[e]
                c[m] = weights[e] / scale[e]
                total += c[m]
                ent[m] = e
                m += 1
        first, last = _crossings(v[:m], c[:m], lo * total, hi * total)
        s_cv = 0.0
        s_c = 0.0
        s_c2 = 0.0
        s_w = 0.0
        s_p = 0.0
        kept = 0
        keep = np.zeros(m, dtype=np.bool_)
        if first >= 0 and last >= 0:
            for i in range(m):  # between the crossings, in the stable order by value
                if _before(v, i, first) or _before(v, last, i) or not c[i] > 0.0:
                    continue
                e = ent[i]
                keep[i] = True
                s_cv += c[i] * v[i]
                s_c += c[i]
                s_c2 += c[i] * c[i]
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
                    d = c[i] * (v[i] - mean)
                    var += d * d
        _store(out, f, b, mean, var, s_c2, s_c, s_w, s_cv, kept)
