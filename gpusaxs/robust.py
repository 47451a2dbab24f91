"""Robust per-bin statistics on the bin-major view (sigma clipping, weighted percentiles),
written once with the array module ``xp`` (NumPy on the host, CuPy on a GPU).

Definitions are pyFAI's (``sigma_clip_ng``, ``medfilt1d_ng``; docs/robust.md). Per matrix
entry (pixel p in bin b, area fraction w, pixel scale s = 1 / corrections, raw value x):

* the corrected value ``v = (x - dark) * s`` and its weight ``c = w / s`` (pyFAI's
  ``w * norm``), so the mean is ``sum c v / sum c``;
* the Poisson variance of the raw value ``max(x, 1)``, weighted by ``w^2``;
* the azimuthal variance ``sum c^2 (v - mean)^2``; ``std = sqrt(var / sum c^2)``,
  ``sigma = std * sqrt(sum c^2) / sum c``.

A split pixel (several entries) is clipped, sorted and counted in each of its bins on its own,
with its weight there. Every function takes the values of a chunk of frames (B, nnz) and
returns per-bin arrays (B, n_bins) float64, NaN in empty bins.
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import numpy as np

from .bin_major import BinMajor
from .engine_contract import valid_mask

__all__ = [
    "ROBUST_ERROR_MODELS",
    "EntryValues",
    "RobustSums",
    "entry_values",
    "sigma_clip_sums",
    "percentile_sums",
    "quantiles",
    "chauvenet",
]

#: error models of the robust methods: which spread clips (first) and which one is reported
ROBUST_ERROR_MODELS = ("poisson", "azimuthal", "hybrid")


class EntryValues(NamedTuple):
    """Per entry of a chunk of frames (B, nnz): corrected value, weight c (0 when the pixel is
    invalid), w^2 * Poisson variance."""

    value: Any
    weight: Any
    poisson: Any


class RobustSums(NamedTuple):
    """Per bin (B, n_bins) of the kept entries: mean, std, sigma (standard error), count
    (sum of w), sum_signal (sum c v), sum_normalization (sum c), sum_variance, kept (entries)."""

    intensity: Any
    std: Any
    sigma: Any
    count: Any
    sum_signal: Any
    sum_normalization: Any
    sum_variance: Any
    kept: Any


def entry_values(frames: Any, view: BinMajor, xp: Any = np) -> EntryValues:
    """The entries' values of ``frames`` (B, H*W) (any dtype) gathered bin-major."""
    raw = frames[:, view.pixels]
    valid = valid_mask(raw, xp)
    raw = raw.astype(xp.float64)
    x = raw if view.offset is None else raw - view.offset
    value = xp.where(valid, x * view.scale, 0.0)
    weight = xp.where(valid, view.weights / view.scale, 0.0)
    poisson = xp.where(valid, view.weights**2 * xp.maximum(raw, 1.0), 0.0)
    return EntryValues(value, weight, poisson)


def chauvenet(count: Any, thres: float, xp: Any = np) -> Any:
    """pyFAI's clip bound in units of std: max(thres, sqrt(2 ln(max(n, 3) / sqrt(2 pi))))."""
    n = xp.maximum(count, 3.0)
    return xp.maximum(thres, xp.sqrt(2.0 * xp.log(n / math.sqrt(2.0 * math.pi))))


def _bin_sum(flat_bins: Any, values: Any, size: int, xp: Any) -> Any:
    return xp.bincount(flat_bins, weights=values.ravel(), minlength=size)


def _sums(
    ev: EntryValues, keep: Any, w: Any, flat: Any, shape: tuple[int, int], model: str, xp: Any
) -> tuple[Any, ...]:
    """(mean, std, sum c v, sum c, sum c^2, count, variance) of the kept entries per bin."""
    size = shape[0] * shape[1]
    c = ev.weight * keep
    total = _bin_sum(flat, c * ev.value, size, xp).reshape(shape)
    norm = _bin_sum(flat, c, size, xp).reshape(shape)
    norm2 = _bin_sum(flat, c * c, size, xp).reshape(shape)
    count = _bin_sum(flat, (c > 0) * w, size, xp).reshape(shape)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = xp.where(norm > 0, total / xp.where(norm > 0, norm, 1.0), xp.nan)
        if model == "azimuthal":
            dev = ev.value - _per_entry(mean, flat, shape, xp)
            var = _bin_sum(flat, (c * dev) ** 2, size, xp).reshape(shape)
        else:
            var = _bin_sum(flat, ev.poisson * keep, size, xp).reshape(shape)
        std = xp.sqrt(var / norm2)
    return mean, std, total, norm, norm2, count, var


def _per_entry(per_bin: Any, flat: Any, shape: tuple[int, int], xp: Any) -> Any:
    """A per-bin array (B, n_bins) read back at each entry (B, nnz)."""
    return per_bin.ravel()[flat].reshape(shape[0], -1)


def _flat_bins(view: BinMajor, n_frames: int, xp: Any) -> Any:
    frame = xp.arange(n_frames, dtype=xp.int64)[:, None] * view.n_bins
    return (frame + view.bin_of[None, :]).ravel()


def _finish(
    sums: tuple[Any, ...], kept: Any, xp: Any, report: tuple[Any, ...] | None = None
) -> RobustSums:
    mean, std, total, norm, norm2, count, var = sums
    if report is not None:  # the hybrid model: std and variance of the azimuthal spread
        std, var = report[1], report[6]
    empty = norm <= 0
    with np.errstate(invalid="ignore", divide="ignore"):
        sigma = std * xp.sqrt(norm2) / norm
    nan = xp.nan
    return RobustSums(
        intensity=xp.where(empty, nan, mean),
        std=xp.where(empty, nan, std),
        sigma=xp.where(empty, nan, sigma),
        count=count,
        sum_signal=total,
        sum_normalization=norm,
        sum_variance=var,
        kept=kept,
    )


def sigma_clip_sums(
    ev: EntryValues,
    view: BinMajor,
    thres: float = 5.0,
    max_iter: int = 5,
    error_model: str = "poisson",
    xp: Any = np,
) -> RobustSums:
    """pyFAI's iterative sigma clipping per bin of each frame: an entry is dropped when
    ``|v - mean| > max(thres, chauvenet(n)) * std`` (std of the clipping model: Poisson for
    "poisson" and "hybrid", the spread for "azimuthal"), then mean and std are recomputed;
    at most ``max_iter`` times, ending early when nothing more is dropped. "hybrid" reports the
    azimuthal spread of the kept entries."""
    if error_model not in ROBUST_ERROR_MODELS:
        raise ValueError(f"error_model must be one of {ROBUST_ERROR_MODELS}, got {error_model!r}")
    n_frames = ev.value.shape[0]
    shape = (n_frames, view.n_bins)
    flat = _flat_bins(view, n_frames, xp)
    w = xp.broadcast_to(view.weights, ev.value.shape)
    clip_model = "azimuthal" if error_model == "azimuthal" else "poisson"
    keep = ev.weight > 0
    sums = _sums(ev, keep, w, flat, shape, clip_model, xp)
    for _ in range(int(max_iter)):
        mean, std, count = sums[0], sums[1], sums[5]
        bound = chauvenet(count, thres, xp) * std
        dev = xp.abs(ev.value - _per_entry(mean, flat, shape, xp))
        with np.errstate(invalid="ignore"):
            still = keep & (dev <= _per_entry(bound, flat, shape, xp))
        if not bool(xp.any(still != keep)):
            break
        keep = still
        sums = _sums(ev, keep, w, flat, shape, clip_model, xp)
    report = None
    if error_model == "hybrid":
        report = _sums(ev, keep, w, flat, shape, "azimuthal", xp)
    kept = _bin_sum(flat, keep, shape[0] * shape[1], xp).reshape(shape)
    return _finish(sums, kept, xp, report)


def quantiles(percentile: float | tuple[float, float]) -> tuple[float, float]:
    """(lo, hi) in [0, 1] of a percentile (lo = hi) or a pair of them; ValueError else."""
    if np.ndim(percentile) == 0:
        lo = hi = float(percentile) / 100.0  # type: ignore[arg-type]
    else:
        lo, hi = (float(p) / 100.0 for p in percentile)  # type: ignore[union-attr]
        lo, hi = min(lo, hi), max(lo, hi)
    if not (0.0 <= lo <= 1.0 and 0.0 <= hi <= 1.0):
        raise ValueError(f"percentile must lie in [0, 100], got {percentile!r}")
    return lo, hi


def percentile_sums(
    ev: EntryValues,
    view: BinMajor,
    percentile: float | tuple[float, float] = 50.0,
    error_model: str = "poisson",
    xp: Any = np,
) -> RobustSums:
    """pyFAI's weighted percentile per bin of each frame: the entries of a bin sorted by value,
    their weights c summed up; an entry is kept when its cumulated weight reaches the lower
    quantile and the weight before it does not pass the upper one (one percentile: the entry
    at it, the median for 50; two: the weighted mean of those between them)."""
    if error_model not in ROBUST_ERROR_MODELS:
        raise ValueError(f"error_model must be one of {ROBUST_ERROR_MODELS}, got {error_model!r}")
    lo, hi = quantiles(percentile)
    n_frames = ev.value.shape[0]
    shape = (n_frames, view.n_bins)
    keep = xp.zeros(ev.value.shape, dtype=bool)
    starts = view.bin_ptr[:-1]
    for f in range(n_frames):
        c = ev.weight[f]
        key = xp.where(c > 0, ev.value[f], xp.inf)
        order = xp.lexsort(xp.stack([key, view.bin_of.astype(xp.float64)]))
        cs = c[order]
        cum = xp.cumsum(cs)
        before = xp.concatenate([xp.zeros(1), cum])[starts]
        upper = cum - before[view.bin_of]
        last = xp.bincount(view.bin_of, weights=cs, minlength=view.n_bins)[view.bin_of]
        lower = upper - cs
        sel = (upper >= lo * last) & (lower <= hi * last) & (cs > 0)
        keep[f, order] = sel
    flat = _flat_bins(view, n_frames, xp)
    w = xp.broadcast_to(view.weights, ev.value.shape)
    model = "poisson" if error_model == "poisson" else "azimuthal"
    sums = _sums(ev, keep, w, flat, shape, model, xp)
    kept = _bin_sum(flat, keep, shape[0] * shape[1], xp).reshape(shape)
    return _finish(sums, kept, xp)
