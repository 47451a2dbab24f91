"""The per-bin sums every engine returns, and their conversion to I, std and error."""
from typing import NamedTuple, Optional

import numpy as np


class Sums(NamedTuple):
    """Per-bin float64 sums of shape (B, n_bins); see docs/ARCHITECTURE.md.

    signal = sum w*s*x, norm = sum w, variance = sum w*s^2*x, squares = sum w*(s*x)^2,
    over valid pixels (unmasked, x >= 0, finite).
    """

    signal: np.ndarray
    norm: np.ndarray
    variance: Optional[np.ndarray] = None
    squares: Optional[np.ndarray] = None


def mean_intensity(sums):
    """Mean corrected intensity per bin, NaN where no valid pixel contributes."""
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(sums.norm > 0, sums.signal / sums.norm, np.nan)


def error_model(sums):
    """(I, std, err): mean, weighted standard deviation of pixel values, Poisson error.

    std is None when the sums carry no squares (engines asked for errors="poisson").
    """
    intensity = mean_intensity(sums)
    with np.errstate(invalid="ignore", divide="ignore"):
        empty = sums.norm <= 0
        err = np.where(empty, np.nan, np.sqrt(np.maximum(sums.variance, 0.0)) / sums.norm)
        std = None
        if sums.squares is not None:
            var = sums.squares / sums.norm - intensity * intensity
            std = np.where(empty, np.nan, np.sqrt(np.maximum(var, 0.0)))
    return intensity, std, err
