"""A start-up-free CPU engine: NumPy ``bincount`` over the matrix entries, no numba, no SciPy.

The numba engine costs about a second to import and load its compiled kernels before the
first frame; for a run of a few frames that is most of the run.  This engine needs only NumPy
(already imported) and a gather of the frame at the matrix's entries, at ~20-50 ms per
PILATUS 1M frame: the right choice up to a few dozen frames (``make_engine(..., light=True)``,
saxsdog's choice for small jobs).  Same sums as the other engines (docs/ARCHITECTURE.md, with the
optional per-pixel dark ``pixel_offset``).
"""

import numpy as np

from gpusaxs.engine_contract import Sums, as_frame_stack, invalid_threshold, valid_mask

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
        # w * s in float64, with no float64 copy of the scale (this engine serves short runs,
        # where the set-up's memory traffic counts)
        self._ws = np.asarray(matrix.weights).astype(np.float64)
        self._ws *= np.asarray(matrix.pixel_scale)[self._pixel]
        offset = getattr(matrix, "pixel_offset", None)
        self._offset = None if offset is None else np.asarray(offset, np.float64)[self._pixel]
        self._variance_weights = None  # w * s^2 per entry, made on the first call with errors

    def _sum(self, values):
        return np.bincount(self._bins, weights=values, minlength=self.matrix.n_bins)

    def sums(self, stack, errors=False):
        """Sums of a stack (B, H, W) or a frame (H, W); errors: False, True or "poisson"."""
        frames = as_frame_stack(stack, self.matrix.shape)
        upper = invalid_threshold(frames.dtype)
        n_bins = self.matrix.n_bins
        if errors and self._variance_weights is None:
            scale = np.asarray(self.matrix.pixel_scale, np.float64)[self._pixel]
            self._variance_weights = self._ws * scale  # w s^2
        out = {k: np.zeros((frames.shape[0], n_bins)) for k in ("s", "n", "v", "q")}
        for i, frame in enumerate(frames):
            raw = frame[self._pixel]
            x = raw.astype(np.float64)
            out["n"][i] = self.matrix.norm
            all_valid = x.size == 0 or (x.min() >= 0 and x.max() < upper)  # False if NaN
            if not all_valid:  # rare: invalid values on unmasked pixels leave the norm
                valid = valid_mask(raw)
                invalid = ~valid
                x[invalid] = 0.0
                lost = np.asarray(self.matrix.weights, dtype=np.float64)[invalid]
                out["n"][i] -= np.bincount(self._bins[invalid], weights=lost, minlength=n_bins)
                np.maximum(out["n"][i], 0.0, out=out["n"][i])
            if self._offset is None:
                v = x
            elif all_valid:
                v = x - self._offset
            else:
                v = np.where(valid, x - self._offset, 0.0)
            out["s"][i] = self._sum(self._ws * v)
            if errors:
                out["v"][i] = self._sum(self._variance_weights * x)
                if errors != "poisson":
                    out["q"][i] = self._sum(self._variance_weights * v * v)
        if not errors:
            return Sums(out["s"], out["n"])
        return Sums(out["s"], out["n"], out["v"], None if errors == "poisson" else out["q"])
