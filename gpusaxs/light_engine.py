"""A start-up-free CPU engine: NumPy ``bincount`` over the matrix entries, no numba, no SciPy.

The numba engine costs about a second to import and load its compiled kernels before the
first frame; for a run of a few frames that is most of the run.  This engine needs only NumPy
(already imported) and a gather of the frame at the matrix's entries, at ~20-50 ms per
PILATUS 1M frame: the right choice up to a few dozen frames (``saxsdog`` picks it for small
jobs).  Same sums as the other engines (docs/ARCHITECTURE.md, CONTRACTS section 1, with the
optional per-pixel dark ``pixel_offset``).
"""

import numpy as np

from .sums import Sums

__all__ = ["BincountEngine"]


class BincountEngine:
    """Per-bin sums of frames with ``np.bincount`` (float64); ``matrix``: an IntegrationMatrix."""

    name = "numpy-bincount"
    supports_pixel_offset = True

    def __init__(self, matrix):
        self.matrix = matrix
        counts = np.diff(matrix.pixel_ptr)
        self._pixel = np.repeat(np.arange(matrix.n_pixels, dtype=np.intp), counts)
        self._bins = np.asarray(matrix.bins, dtype=np.intp)
        self._w = np.asarray(matrix.weights, dtype=np.float64)
        self._s = np.asarray(matrix.pixel_scale, dtype=np.float64)[self._pixel]
        offset = getattr(matrix, "pixel_offset", None)
        self._offset = None if offset is None else np.asarray(offset, np.float64)[self._pixel]

    def _sum(self, values):
        return np.bincount(self._bins, weights=values, minlength=self.matrix.n_bins)

    def sums(self, stack, errors=False):
        """Sums of a stack (B, H, W) or a frame (H, W); errors: False, True or "poisson"."""
        from gpusaxs.cpu_fallback.engine import as_frame_stack, invalid_threshold

        frames = as_frame_stack(stack, self.matrix.shape)
        upper = invalid_threshold(frames.dtype)
        n_bins = self.matrix.n_bins
        out = {k: np.zeros((frames.shape[0], n_bins)) for k in ("s", "n", "v", "q")}
        for i, frame in enumerate(frames):
            x = frame[self._pixel].astype(np.float64)
            with np.errstate(invalid="ignore"):
                valid = (x >= 0) & (x < upper)
            x[~valid] = 0.0
            w = np.where(valid, self._w, 0.0)
            v = x if self._offset is None else np.where(valid, x - self._offset, 0.0)
            sv = self._s * v
            out["s"][i] = self._sum(w * sv)
            out["n"][i] = self._sum(w)
            if errors:
                out["v"][i] = self._sum(w * self._s * self._s * x)
                if errors != "poisson":
                    out["q"][i] = self._sum(w * sv * sv)
        if not errors:
            return Sums(out["s"], out["n"])
        return Sums(out["s"], out["n"], out["v"], None if errors == "poisson" else out["q"])
