"""The CPU engine: integrates stacks of frames with an IntegrationMatrix on the host.

``CpuEngine`` runs the numba kernels of :mod:`cpu_fallback.kernels` on all cores (the default);
``ScipyEngine`` is the plain NumPy/SciPy sparse product, used when numba is missing and as an
independent reference in tests.  Both return :class:`gpusaxs.sums.Sums` (float64, (B, n_bins)).
"""

import os

import numpy as np

from gpusaxs.sums import Sums

__all__ = ["CpuEngine", "ScipyEngine", "invalid_threshold", "as_frame_stack", "pixel_offset"]


def invalid_threshold(dtype):
    """Values >= this are invalid: the maximum of an unsigned type (EIGER gap flag), else inf."""
    dtype = np.dtype(dtype)
    if dtype.kind == "u":
        return float(np.iinfo(dtype).max)
    if dtype.kind in "if":
        return np.inf
    raise TypeError(f"frames must be integer or float, not {dtype}")


def as_frame_stack(stack, shape):
    """View ``stack`` (B, H, W) or (H, W) as a C-contiguous (B, H*W) array, native dtype kept."""
    arr = np.asarray(stack)
    if arr.ndim == 2:
        arr = arr[None]
    if arr.ndim != 3 or tuple(arr.shape[1:]) != tuple(shape):
        raise ValueError(
            f"frames of shape {arr.shape[-2:] if arr.ndim >= 2 else arr.shape} "
            f"do not match the calibration's Imagesize {tuple(shape)}"
        )
    if arr.dtype == np.bool_ or arr.dtype.kind not in "iuf":
        raise TypeError(f"frames must be integer or float, not {arr.dtype}")
    if arr.dtype.byteorder not in "=|":
        arr = arr.astype(arr.dtype.newbyteorder("="))
    return np.ascontiguousarray(arr).reshape(arr.shape[0], -1)


#: Most slots per pixel in the ELL layout; further entries of a pixel go to the overflow list.
MAX_SLOTS = 4


def ell_layout(matrix, max_slots=MAX_SLOTS):
    """Active-pixel ELL arrays of a matrix (see :mod:`cpu_fallback.kernels`).

    Returns a dict: active (n,) int32 pixel indices; bins (n, S) int32; ws (n, S) float32 =
    w*s; w (n, S) float32; scale (n,) float32; offset (n,) float32 dark or None; overflow arrays
    ovf_pix, ovf_bins, ovf_ws, ovf_w, ovf_offset (None without a dark).  Padding slots repeat
    the pixel's first bin with weight 0.
    """
    counts = np.diff(matrix.pixel_ptr)
    active = np.flatnonzero(counts)
    n_slots = int(min(max(int(counts.max(initial=0)), 1), max_slots))
    starts = matrix.pixel_ptr[active]
    n_active = len(active)
    bins = np.empty((n_active, n_slots), np.int32)
    weights = np.zeros((n_active, n_slots), np.float32)
    for k in range(n_slots):
        has = counts[active] > k
        entry = np.where(has, starts + k, starts)
        bins[:, k] = matrix.bins[entry]
        weights[:, k] = np.where(has, matrix.weights[entry], 0.0)
    scale = matrix.pixel_scale[active].astype(np.float32)
    extra = np.maximum(counts - n_slots, 0)
    ovf_entries = np.repeat(matrix.pixel_ptr[:-1] + n_slots, extra) + (
        np.arange(extra.sum()) - np.repeat(np.cumsum(extra) - extra, extra)
    )
    ovf_pix = np.repeat(np.arange(len(counts), dtype=np.int32), extra)
    ovf_w = matrix.weights[ovf_entries].astype(np.float32)
    dark = pixel_offset(matrix)
    return dict(
        active=active.astype(np.int32),
        bins=bins,
        ws=(weights * scale[:, None]).astype(np.float32),
        w=weights,
        scale=scale,
        offset=None if dark is None else np.ascontiguousarray(dark[active]),
        ovf_pix=ovf_pix,
        ovf_bins=matrix.bins[ovf_entries].astype(np.int32),
        ovf_ws=(ovf_w * matrix.pixel_scale[ovf_pix]).astype(np.float32),
        ovf_w=ovf_w,
        ovf_offset=None if dark is None else np.ascontiguousarray(dark[ovf_pix]),
    )


def pixel_offset(matrix):
    """The matrix's per-pixel dark offset as float32 (n_pixels,), or None (no dark)."""
    dark = getattr(matrix, "pixel_offset", None)
    if dark is None:
        return None
    dark = np.asarray(dark, dtype=np.float32).ravel()
    if dark.shape != (matrix.n_pixels,):
        raise ValueError(
            f"pixel_offset has {dark.size} values, the matrix {matrix.n_pixels} pixels"
        )
    return dark


_NO_DARK = np.zeros(0, dtype=np.float32)  # the kernels' offset argument without a dark

#: Stacks of this many frames or more go to the banded kernel (cpu_fallback/banded.py); smaller
#: ones to the ELL kernels (cpu_fallback/kernels.py), which waste no lanes on missing frames.
BANDED_MIN_FRAMES = 8
#: Bound on the banded kernel's private per-thread sums (bytes); larger stacks go in groups.
BANDED_OUTPUT_BYTES = 256 << 20


class CpuEngine:
    """Multi-threaded numba engine.  ``threads``: cores to use (default: all numba sees)."""

    name = "numba"
    #: the matrix's pixel_offset (dark) is applied in the kernel (CONTRACTS.md section 1)
    supports_pixel_offset = True

    def __init__(self, matrix, threads=None):
        import numba

        self.matrix = matrix
        self.threads = max(
            1, min(int(threads or numba.config.NUMBA_NUM_THREADS), numba.config.NUMBA_NUM_THREADS)
        )
        self.layout = ell_layout(matrix)
        self._banded = None  # built on the first stack of BANDED_MIN_FRAMES or more

    def banded_layout(self):
        """The band-sorted layout of :mod:`cpu_fallback.banded` (built once, on first use)."""
        if self._banded is None:
            from .banded import banded_layout

            self._banded = banded_layout(self.matrix)
        return self._banded

    def _tiles(self, n_frames):
        """(frame groups, pixel parts): frames split across threads, pixels too when B is small."""
        from .kernels import FRAMES_PER_PASS

        groups = max(1, min(-(-n_frames // FRAMES_PER_PASS), self.threads))
        parts = max(1, -(-self.threads // groups))
        return groups, parts

    def sums(self, stack, errors=False):
        """Per-bin sums of a stack (B, H, W) of any integer or float dtype.

        errors: False (signal, norm), True (also variance and squares) or "poisson" (also
        variance; squares None, which saves a quarter of the kernel's work).
        """
        import numba

        from . import kernels

        frames = as_frame_stack(stack, self.matrix.shape)
        n_frames, n_bins = frames.shape[0], self.matrix.n_bins
        if n_frames == 0:
            empty = [np.zeros((0, n_bins)) for _ in range(4 if errors else 2)]
            if errors == "poisson":
                empty[3] = None
            return Sums(*empty)
        if n_frames >= BANDED_MIN_FRAMES:
            return self._banded_sums(frames, errors)
        groups, parts = self._tiles(n_frames)
        lay = self.layout
        upper = invalid_threshold(frames.dtype)
        has_dark = lay["offset"] is not None
        dark = (lay["offset"], lay["ovf_offset"]) if has_dark else (_NO_DARK, _NO_DARK)
        overflow = (lay["ovf_pix"], lay["ovf_bins"], lay["ovf_ws"], lay["ovf_w"])
        previous = numba.get_num_threads()
        numba.set_num_threads(self.threads)
        try:
            if errors:
                parts_out = kernels.error_sums(
                    frames,
                    lay["active"],
                    lay["bins"],
                    lay["ws"],
                    lay["w"],
                    lay["scale"],
                    dark[0],
                    *overflow,
                    dark[1],
                    has_dark,
                    upper,
                    n_bins,
                    groups,
                    parts,
                    errors != "poisson",
                )
            else:
                parts_out = kernels.mean_sums(
                    frames,
                    lay["active"],
                    lay["bins"],
                    lay["ws"],
                    lay["w"],
                    dark[0],
                    *overflow,
                    dark[1],
                    has_dark,
                    upper,
                    n_bins,
                    groups,
                    parts,
                )
        finally:
            numba.set_num_threads(previous)
        signal, lost, *rest = (
            a[: parts * n_frames].reshape(parts, n_frames, n_bins).sum(axis=0) for a in parts_out
        )
        norm = np.maximum(self.matrix.norm[None, :] - lost, 0.0)
        if errors == "poisson":
            rest[1] = None
        return Sums(signal, norm, *rest)

    def _banded_sums(self, frames, errors):
        """Sums of a (B, N) stack by the banded kernel, in groups of frames that bound the
        threads' private output to about BANDED_OUTPUT_BYTES."""
        import numba

        from .banded import LANES, banded_sums, thread_bands

        n_frames, n_bins = frames.shape[0], self.matrix.n_bins
        lay = self.banded_layout()
        n_sums = 1 if not errors else (2 if errors == "poisson" else 3)
        dark = pixel_offset(self.matrix)
        per_frame = 4 * self.threads * n_bins * 8
        group = max(LANES, BANDED_OUTPUT_BYTES // per_frame // LANES * LANES)
        out = np.zeros((4, n_frames, n_bins))
        previous = numba.get_num_threads()
        numba.set_num_threads(self.threads)
        try:
            bands = thread_bands(lay, self.threads)
            for b0 in range(0, n_frames, group):
                part = frames[b0 : b0 + group]
                n = part.shape[0]
                bp = -(-n // LANES) * LANES
                sums = banded_sums(
                    part,
                    bands,
                    lay["band_pixels"],
                    lay["band_seg"],
                    lay["seg_ptr"],
                    lay["seg_bin"],
                    lay["local"],
                    lay["ws"],
                    lay["active"],
                    _NO_DARK if dark is None else dark,
                    dark is not None,
                    self.matrix.pixel_scale,
                    n_sums,
                    invalid_threshold(frames.dtype),
                    self.matrix.pixel_ptr,
                    self.matrix.bins,
                    self.matrix.weights,
                    n_bins,
                )
                total = sums[: 1 + n_sums].sum(axis=1).reshape(1 + n_sums, n_bins, bp)
                out[: 1 + n_sums, b0 : b0 + n] = total[:, :, :n].transpose(0, 2, 1)
        finally:
            numba.set_num_threads(previous)
        signal, lost, variance, squares = out
        norm = np.maximum(self.matrix.norm[None, :] - lost, 0.0)
        if not errors:
            return Sums(signal, norm)
        return Sums(signal, norm, variance, squares if errors is True else None)


class ScipyEngine:
    """Reference engine: float64 SciPy sparse products (slow, simple, independent of numba).

    Implements the engine contract (docs/ARCHITECTURE.md, CONTRACTS section 1) literally: with
    v = x - pixel_offset (v = x without a dark), over valid pixels (unmasked, x >= 0, finite, not
    the unsigned maximum): signal = sum w*s*v, norm = sum w, variance = sum w*s^2*x,
    squares = sum w*(s*v)^2.
    """

    name = "scipy"
    supports_pixel_offset = True

    def __init__(self, matrix):
        self.matrix = matrix
        self._weights = matrix.to_scipy(scaled=False)
        self._scale = matrix.pixel_scale.astype(np.float64)
        dark = pixel_offset(matrix)
        self._offset = None if dark is None else dark.astype(np.float64)

    def sums(self, stack, errors=False):
        frames = as_frame_stack(stack, self.matrix.shape)
        upper = invalid_threshold(frames.dtype)
        x = frames.astype(np.float64)
        with np.errstate(invalid="ignore"):
            valid = (x >= 0) & (x < upper)
        x = np.where(valid, x, 0.0)
        v = x if self._offset is None else np.where(valid, x - self._offset, 0.0)
        sv = v * self._scale
        A = self._weights
        signal = (A @ sv.T).T
        norm = (A @ valid.T.astype(np.float64)).T
        if not errors:
            return Sums(signal, norm)
        variance = (A @ (x * self._scale * self._scale).T).T
        squares = None if errors == "poisson" else (A @ (sv * sv).T).T
        return Sums(signal, norm, variance, squares)


def default_engine(matrix, threads=None):
    """CpuEngine when numba imports (and GPUSAXS_NO_NUMBA is unset), else ScipyEngine."""
    if not os.environ.get("GPUSAXS_NO_NUMBA"):
        try:
            import numba  # noqa: F401

            return CpuEngine(matrix, threads=threads)
        except ImportError:
            pass
    return ScipyEngine(matrix)
