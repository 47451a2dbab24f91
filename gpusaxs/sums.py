"""The per-bin sums every engine returns, and their conversion to I, std and error."""

from __future__ import annotations

from typing import NamedTuple, Protocol

import numpy as np

from ._typing import ArrayLike, FloatArray


class Sums(NamedTuple):
    """Per-bin float64 sums of shape (B, n_bins); see docs/ARCHITECTURE.md.

    signal = sum w*s*x, norm = sum w, variance = sum w*s^2*x, squares = sum w*(s*x)^2,
    over valid pixels (unmasked, x >= 0, finite).
    """

    signal: FloatArray
    norm: FloatArray
    variance: FloatArray | None = None
    squares: FloatArray | None = None


class Engine(Protocol):
    """The interface every integration engine implements (docs/ARCHITECTURE.md, "The
    integration operator"): the CPU engines of gpusaxs.cpu_fallback, the GPU engine of
    gpusaxs.gpu_engine.  ``Integrator.engine`` is one."""

    #: short name for logs and ``repr`` (e.g. "numba", "scipy", "cupy")
    name: str

    def sums(self, stack: ArrayLike, errors: bool | str = False) -> Sums:
        """Per-bin sums of a (B, H, W) or (B, H * W) stack of frames (any numeric dtype).

        Parameters
        ----------
        stack : ndarray, shape (B, H, W) or (B, H * W)
            The frames.
        errors : bool or str
            False: signal and norm only; True: also variance and squares; ``"poisson"``:
            also variance (squares None).

        Returns
        -------
        Sums
            float64 arrays of shape (B, n_bins).
        """
        ...


def mean_intensity(sums: Sums) -> FloatArray:
    """Mean corrected intensity per bin, NaN where no valid pixel contributes."""
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(sums.norm > 0, sums.signal / sums.norm, np.nan)


def error_model(sums: Sums) -> tuple[FloatArray, FloatArray | None, FloatArray]:
    """(I, std, err): mean, weighted standard deviation of pixel values, Poisson error.

    std is None when the sums carry no squares (engines asked for errors="poisson").
    """
    if sums.variance is None:
        raise ValueError("error_model needs sums with variance (errors=True or 'poisson')")
    intensity = mean_intensity(sums)
    with np.errstate(invalid="ignore", divide="ignore"):
        empty = sums.norm <= 0
        err = np.where(empty, np.nan, np.sqrt(np.maximum(sums.variance, 0.0)) / sums.norm)
        std = None
        if sums.squares is not None:
            var = sums.squares / sums.norm - intensity * intensity
            std = np.where(empty, np.nan, np.sqrt(np.maximum(var, 0.0)))
    return intensity, std, err
