"""Stand-in engine for matrices with a dark (``pixel_offset``), until the engines implement it.

CONTRACTS.md 1: with v = x - offset, signal = sum w s v, norm = sum w, variance = sum w s^2
max(x, 0), squares = sum w (s v)^2, validity judged on the raw x.  The Integrator uses this
SciPy engine only when its engine does not declare ``supports_pixel_offset = True``; once the
CPU and GPU engines honour the contract (helpers "cpuperf", "gpu") it is no longer used.
"""

import numpy as np

from gpusaxs.cpu_fallback.engine import ScipyEngine, as_frame_stack, invalid_threshold

from .sums import Sums

__all__ = ["OffsetScipyEngine"]


class OffsetScipyEngine(ScipyEngine):
    """ScipyEngine applying ``matrix.pixel_offset`` (float64 sparse products; slow, simple)."""

    name = "scipy-offset"
    supports_pixel_offset = True

    def __init__(self, matrix):
        super().__init__(matrix)
        offset = matrix.pixel_offset
        self._offset = np.zeros(matrix.n_pixels) if offset is None else offset.astype(np.float64)

    def sums(self, stack, errors=False):
        frames = as_frame_stack(stack, self.matrix.shape)
        upper = invalid_threshold(frames.dtype)
        x = frames.astype(np.float64)
        with np.errstate(invalid="ignore"):
            valid = (x >= 0) & (x < upper)
        x = np.where(valid, x, 0.0)
        v = np.where(valid, (x - self._offset) * self._scale, 0.0)
        A = self._weights
        signal = (A @ v.T).T
        norm = (A @ valid.T.astype(np.float64)).T
        if not errors:
            return Sums(signal, norm)
        variance = (A @ (x * self._scale * self._scale).T).T
        squares = None if errors == "poisson" else (A @ (v * v).T).T
        return Sums(signal, norm, variance, squares)
