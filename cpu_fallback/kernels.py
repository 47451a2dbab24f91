"""Numba kernels of the CPU engine.

Layout (built by :func:`cpu_fallback.engine.ell_layout` from the IntegrationMatrix): only the
*active* pixels (unmasked, with at least one bin) are visited, each with exactly ``S`` slots
(ELL format: ``bins (n_active, S)``, weights padded with 0), so the inner loop has a fixed trip
count and no branch mispredictions; entries beyond ``S`` (rare: fine user bins) go to a small
pixel-sorted overflow list.  The pixel scale (polarization, flat, solid angle) is folded into the
signal weights ``ws = w * s``.

Work is cut into tiles (frame group x pixel part), each with private float64 accumulators, so
there are no races; the caller adds the parts.  A tile takes up to ``FRAMES_PER_PASS`` (8) frames
per pass over the matrix, in blocks of ``BLOCK`` active pixels: the block's values of those frames
are first *staged* (read, converted to float64, validity-checked, dark-subtracted) into a small
pixel-major buffer ``(BLOCK, 8)`` that stays in L1, then each matrix slot adds ``ws * x`` for the
8 frames into the accumulator row ``acc[bin, 0:8]`` (contiguous: one SIMD FMA line).  Each matrix
entry read serves 8 frames, the bin index and weight are loaded once per 8 frames, and the
staging loop carries the per-frame branches, out of the scatter loop.  Invalid values (x < 0,
x >= the unsigned maximum, NaN) are staged as 0; the rare blocks that hold one are revisited to
add the invalid pixels' weights to ``lost`` (subtracted from the static norm by the caller).

Dark offset (``offset`` not None): the value used is v = x - offset, validity judged on raw x;
the Poisson variance uses the raw x.  Passing None compiles a specialisation without it.
"""
import numba
import numpy as np

#: Most frames processed per pass over the matrix (the width of an accumulator row).
FRAMES_PER_PASS = 8

#: Active pixels per staging block: the buffer (BLOCK, 8) float64 is 16 KiB (twice that with a
#: dark offset and errors), well inside L1.
BLOCK = 256


@numba.njit(inline="always")
def _tile_range(tile, n_parts, n_groups, n_frames, n_items):
    group = tile // n_parts
    part = tile % n_parts
    return (part, group * n_frames // n_groups, (group + 1) * n_frames // n_groups,
            part * n_items // n_parts, (part + 1) * n_items // n_parts)


@numba.njit(inline="always")
def _stage(frames, active, offset, upper, fb, nf, width, blk, blk_end, vbuf, xbuf, raw):
    """Stage frames fb..fb+nf of active pixels blk..blk_end into vbuf (and xbuf if raw);
    columns nf..width are zeroed.  Returns the number of invalid values."""
    n_invalid = 0
    for f in range(nf):
        row = frames[fb + f]
        for i in range(blk, blk_end):
            x = np.float64(row[active[i]])
            ok = x >= 0.0 and x < upper
            n_invalid += not ok
            if offset is None:
                vbuf[i - blk, f] = x if ok else 0.0
            else:
                vbuf[i - blk, f] = x - np.float64(offset[i]) if ok else 0.0
                if raw:
                    xbuf[i - blk, f] = x if ok else 0.0
    for f in range(nf, width):
        for i in range(blk, blk_end):
            vbuf[i - blk, f] = 0.0
            if raw:
                xbuf[i - blk, f] = 0.0
    return n_invalid


@numba.njit(inline="always")
def _one_pass(frames, active, ell_bins, ell_ws, ell_w, scale, offset, upper, fb, nf, width,
              i0, i1, acc, acc_lost, acc_var, acc_sq, vbuf, xbuf, errors, squares):
    """One pass over active pixels i0..i1 for frames fb..fb+nf, ``width`` (a constant at each
    call site: 8 or 1) accumulator columns."""
    n_slots = ell_bins.shape[1]
    raw = errors and offset is not None
    for blk in range(i0, i1, BLOCK):
        blk_end = min(blk + BLOCK, i1)
        n_invalid = _stage(frames, active, offset, upper, fb, nf, width, blk, blk_end, vbuf,
                           xbuf, raw)
        if not errors:
            for i in range(blk, blk_end):
                v = vbuf[i - blk]
                for k in range(n_slots):
                    ws = np.float64(ell_ws[i, k])
                    a = acc[ell_bins[i, k]]
                    for f in range(width):
                        a[f] += ws * v[f]
        else:
            for i in range(blk, blk_end):
                v = vbuf[i - blk]
                x = xbuf[i - blk] if raw else v
                s = np.float64(scale[i])
                for k in range(n_slots):
                    c = ell_bins[i, k]
                    ws = np.float64(ell_ws[i, k])
                    wss = ws * s
                    a = acc[c]
                    av = acc_var[c]
                    for h in range(0, width, 4):          # halves of 4: no register spills
                        for f in range(h, min(h + 4, width)):
                            a[f] += ws * v[f]
                            av[f] += wss * x[f]
                    if squares:
                        aq = acc_sq[c]
                        for f in range(width):
                            aq[f] += wss * v[f] * v[f]
        if n_invalid:                                 # rare: weights of invalid pixels
            for i in range(blk, blk_end):
                for f in range(nf):
                    x = np.float64(frames[fb + f, active[i]])
                    if not (x >= 0.0 and x < upper):
                        for k in range(n_slots):
                            acc_lost[ell_bins[i, k], f] += ell_w[i, k]


@numba.njit(inline="always")
def _flush(part, fb, nf, acc, acc_lost, acc_var, acc_sq, signal, lost, variance, sq_out,
           errors, squares):
    """Copy the pass's accumulator columns to the outputs and zero them."""
    for f in range(nf):
        for c in range(acc.shape[0]):
            signal[part, fb + f, c] = acc[c, f]
            lost[part, fb + f, c] = acc_lost[c, f]
            if errors:
                variance[part, fb + f, c] = acc_var[c, f]
                if squares:
                    sq_out[part, fb + f, c] = acc_sq[c, f]
    acc[:] = 0.0
    acc_lost[:] = 0.0
    acc_var[:] = 0.0
    acc_sq[:] = 0.0


@numba.njit(parallel=True, cache=True, nogil=True, fastmath={"contract"})
def accumulate(frames, active, ell_bins, ell_ws, ell_w, scale, offset, ovf_pix, ovf_bins,
               ovf_ws, ovf_w, ovf_offset, upper, n_bins, n_groups, n_parts, errors, squares):
    """Partial sums, each (n_parts, B, n_bins) float64; the caller adds the parts.

    Returns (signal, lost, variance, squares): signal = sum w*s*v over valid pixels, lost =
    sum w over invalid active pixels; if ``errors``, variance = sum w*s^2*x, and if also
    ``squares``, squares = sum w*(s*v)^2 (else left zero).  Without ``errors`` variance and
    squares are (0, B, n_bins) arrays.  frames: (B, N) of any numeric dtype; scale: (n_active,)
    float32 s; offset: (n_active,) float32 dark or None; ovf_offset: (n_ovf,) float32 or None.
    A tile's frames go in passes of 8 (the last one padded when 4 to 7 are left), then
    passes of 1 (two code copies only: numba compile time).
    """
    n_frames = frames.shape[0]
    n_tiles = n_groups * n_parts
    F = FRAMES_PER_PASS
    signal = np.zeros((n_parts, n_frames, n_bins))
    lost = np.zeros((n_parts, n_frames, n_bins))
    n_err = n_parts if errors else 0
    variance = np.zeros((n_err, n_frames, n_bins))
    sq_out = np.zeros((n_err, n_frames, n_bins))
    n_var = n_bins if errors else 0
    n_sq = n_bins if errors and squares else 0
    n_raw = BLOCK if errors and offset is not None else 0
    for tile in numba.prange(n_tiles):
        part, b0, b1, i0, i1 = _tile_range(tile, n_parts, n_groups, n_frames, len(active))
        acc = np.zeros((n_bins, F))
        acc_lost = np.zeros((n_bins, F))
        acc_var = np.zeros((n_var, F))
        acc_sq = np.zeros((n_sq, F))
        vbuf = np.zeros((BLOCK, F))                  # v = x - offset (or x), 0 if invalid
        xbuf = np.zeros((n_raw, F))                  # raw x (errors with a dark)
        fb = b0
        while fb < b1:
            left = b1 - fb
            if left >= F:
                nf = F
                _one_pass(frames, active, ell_bins, ell_ws, ell_w, scale, offset, upper, fb,
                          nf, F, i0, i1, acc, acc_lost, acc_var, acc_sq, vbuf, xbuf, errors,
                          squares)
            elif left >= 4:                           # 4 to 7 left: one padded pass
                nf = left
                _one_pass(frames, active, ell_bins, ell_ws, ell_w, scale, offset, upper, fb,
                          nf, F, i0, i1, acc, acc_lost, acc_var, acc_sq, vbuf, xbuf, errors,
                          squares)
            else:
                nf = 1
                _one_pass(frames, active, ell_bins, ell_ws, ell_w, scale, offset, upper, fb,
                          nf, 1, i0, i1, acc, acc_lost, acc_var, acc_sq, vbuf, xbuf, errors,
                          squares)
            _flush(part, fb, nf, acc, acc_lost, acc_var, acc_sq, signal, lost, variance,
                   sq_out, errors, squares)
            fb += nf
        if part == 0:                                 # overflow entries (rare), whole frames
            for b in range(b0, b1):
                for e in range(len(ovf_pix)):
                    x = np.float64(frames[b, ovf_pix[e]])
                    c = ovf_bins[e]
                    if x >= 0.0 and x < upper:
                        v = x if ovf_offset is None else x - np.float64(ovf_offset[e])
                        ws = np.float64(ovf_ws[e])
                        signal[0, b, c] += ws * v
                        if errors:
                            wss = ws * (ws / ovf_w[e])
                            variance[0, b, c] += wss * x
                            if squares:
                                sq_out[0, b, c] += wss * v * v
                    else:
                        lost[0, b, c] += ovf_w[e]
    return signal, lost, variance, sq_out
