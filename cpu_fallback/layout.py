"""The layouts of a matrix for the numba kernels, on NumPy alone: the banded layout
(cpu_fallback.banded: the image cut into bands of ``BAND_PIXELS`` pixels, each band's entries
sorted by bin into segments) and the bin-major one (cpu_fallback.gather, for maps); the checks
of a cached layout; the split of the bands over threads.

Kept apart from the kernels so that an engine can be built, and its layout made or read from
the cache, without importing numba.
"""

import numpy as np

__all__ = [
    "BAND_PIXELS",
    "LANES",
    "banded_layout",
    "check_layout",
    "check_gather_layout",
    "gather_layout",
    "thread_bands",
]

#: Pixels per band (a uint16 local index needs <= 65536).
BAND_PIXELS = 4096
#: Frames per pass (the vector width of :func:`cpu_fallback.simd.segment_add8`).
LANES = 8


def banded_layout(matrix, band_pixels=BAND_PIXELS):
    """Band-sorted arrays of ``matrix`` for :func:`banded_sums`.

    Returns a dict: band_pixels; band_seg (n_bands + 1,) int64 segment ranges of each band;
    seg_ptr (n_seg + 1,) int64 entry ranges; seg_bin (n_seg,) int64; local (nnz,) uint16 pixel
    index within the band; ws (nnz,) float32 weight x pixel scale; wss (nnz,) float32 weight x
    scale^2; var_dark (n_seg,) float64 sum of wss x dark per segment (empty without a dark);
    active (n_pixels,) uint8 (1 where the pixel has entries); band_cost (n_bands,) float64
    (work estimate).
    """
    if not 0 < band_pixels <= 65536:
        raise ValueError(f"band_pixels must be in 1..65536, not {band_pixels}")
    counts = np.diff(matrix.pixel_ptr)
    n_pixels = matrix.n_pixels
    n_bands = -(-n_pixels // band_pixels)
    pixel = np.repeat(np.arange(n_pixels, dtype=np.int64), counts)
    band = pixel // band_pixels
    key = band * np.int64(matrix.n_bins) + matrix.bins.astype(np.int64)
    order = np.argsort(key, kind="stable")  # entries are pixel-sorted: stays so within a bin
    key = key[order]
    pixel = pixel[order]
    w = matrix.weights[order].astype(np.float64)
    scale = matrix.pixel_scale[pixel].astype(np.float64)
    ws = (w * scale).astype(np.float32)
    wss = (w * scale * scale).astype(np.float32)  # the Poisson variance's weights, w s^2
    starts = np.flatnonzero(np.r_[True, key[1:] != key[:-1]]) if len(key) else np.zeros(0, int)
    dark = getattr(matrix, "pixel_offset", None)
    if dark is None:
        var_dark = np.zeros(0)
    else:  # the variance is of the raw counts x = v + dark: sum w s^2 dark per segment
        terms = wss.astype(np.float64) * np.asarray(dark, np.float32)[pixel].astype(np.float64)
        var_dark = np.add.reduceat(terms, starts) if len(starts) else np.zeros(0)
    seg_band = key[starts] // matrix.n_bins
    band_entries = np.bincount(band, minlength=n_bands).astype(np.float64)
    return dict(
        band_pixels=band_pixels,
        band_seg=np.searchsorted(seg_band, np.arange(n_bands + 1)).astype(np.int64),
        seg_ptr=np.r_[starts, len(key)].astype(np.int64),
        seg_bin=(key[starts] % matrix.n_bins).astype(np.int64),
        local=(pixel - (pixel // band_pixels) * band_pixels).astype(np.uint16),
        ws=ws,
        wss=wss,
        var_dark=var_dark,
        active=(counts > 0).astype(np.uint8),
        # transposing a band with entries costs ~1 per pixel, summing ~0.5 per entry
        band_cost=np.where(band_entries > 0, band_pixels + 0.5 * band_entries, 0.0),
    )


def check_layout(layout, matrix):
    """Raise ValueError unless ``layout`` (e.g. read from the cache) fits ``matrix``: sizes
    and every index the kernel follows without bounds checks."""
    bp = layout["band_pixels"]
    n_bands = -(-matrix.n_pixels // bp) if 0 < bp <= 65536 else -1
    seg_ptr, band_seg, seg_bin = layout["seg_ptr"], layout["band_seg"], layout["seg_bin"]
    n_seg = len(seg_bin)
    sizes = {
        "band_seg": n_bands + 1,
        "seg_ptr": n_seg + 1,
        "local": matrix.nnz,
        "ws": matrix.nnz,
        "wss": matrix.nnz,
        "active": matrix.n_pixels,
        "band_cost": n_bands,
    }
    for name, n in sizes.items():
        if layout[name].ndim != 1 or len(layout[name]) != n:
            raise ValueError(f"banded layout: {name} has {layout[name].shape}, expected ({n},)")
    if len(layout["var_dark"]) not in (0, n_seg):
        raise ValueError("banded layout: var_dark does not match the segments")

    def ordered(a, lo, hi):
        return a[0] == lo and a[-1] == hi and (len(a) < 2 or np.diff(a).min() >= 0)

    if not (ordered(seg_ptr, 0, matrix.nnz) and ordered(band_seg, 0, n_seg)):
        raise ValueError("banded layout: seg_ptr or band_seg is not a valid index")
    if n_seg and (seg_bin.min() < 0 or seg_bin.max() >= matrix.n_bins):
        raise ValueError("banded layout: seg_bin holds a bin outside the matrix")
    if len(layout["local"]) and layout["local"].max() >= bp:
        raise ValueError("banded layout: local holds a pixel outside its band")


def thread_bands(layout, n_threads):
    """(n_threads + 1,) int64 band boundaries splitting the work evenly over threads."""
    cum = np.cumsum(layout["band_cost"])
    total = cum[-1] if len(cum) else 0.0
    cuts = np.searchsorted(cum, total * np.arange(1, n_threads) / n_threads)
    return np.r_[0, cuts, len(cum)].astype(np.int64)


def gather_layout(matrix):
    """Bin-major arrays of ``matrix`` for :func:`cpu_fallback.gather.gather_sums`.

    Returns a dict: bin_ptr (n_bins + 1,) int64 entry ranges of each bin; pixels (nnz,) int32
    (int64 beyond 2^31 pixels) flat pixel of each entry, ascending within a bin; w (nnz,)
    float32 weight; ws (nnz,) float32 weight x pixel scale; wss (nnz,) float32 weight x scale^2
    (the same roundings as :func:`banded_layout`).
    """
    counts = np.diff(matrix.pixel_ptr)
    pixel = np.repeat(np.arange(matrix.n_pixels, dtype=np.int64), counts)
    order = np.argsort(matrix.bins, kind="stable")  # entries are pixel-sorted: stays so
    pixel = pixel[order]
    w = matrix.weights[order].astype(np.float64)
    scale = matrix.pixel_scale[pixel].astype(np.float64)
    ptr = np.zeros(matrix.n_bins + 1, dtype=np.int64)
    np.cumsum(np.bincount(matrix.bins, minlength=matrix.n_bins), out=ptr[1:])
    return dict(
        bin_ptr=ptr,
        pixels=pixel.astype(np.int32) if matrix.n_pixels < 2**31 else pixel,
        w=w.astype(np.float32),
        ws=(w * scale).astype(np.float32),
        wss=(w * scale * scale).astype(np.float32),
    )


def check_gather_layout(layout, matrix):
    """Raise ValueError unless ``layout`` (e.g. read from the cache) fits ``matrix``: sizes and
    every index the gather kernel follows without bounds checks."""
    ptr = layout["bin_ptr"]
    if ptr.ndim != 1 or len(ptr) != matrix.n_bins + 1:
        raise ValueError(f"gather layout: bin_ptr has {ptr.shape}, expected ({matrix.n_bins + 1},)")
    if ptr[0] != 0 or ptr[-1] != matrix.nnz or (len(ptr) > 1 and np.diff(ptr).min() < 0):
        raise ValueError("gather layout: bin_ptr is not a valid index")
    for name in ("pixels", "w", "ws", "wss"):
        if layout[name].ndim != 1 or len(layout[name]) != matrix.nnz:
            raise ValueError(f"gather layout: {name} has {layout[name].shape}")
    pixels = layout["pixels"]
    if len(pixels) and (pixels.min() < 0 or pixels.max() >= matrix.n_pixels):
        raise ValueError("gather layout: pixels holds a pixel outside the frame")
