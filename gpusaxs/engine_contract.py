"""The contract every integration engine meets: its result (``Sums``), its interface
(``Engine``, ``StreamingEngine``), the pixel-validity rule and the dark (``pixel_offset``).

A leaf: the CPU engines (gpusaxs.cpu_fallback) and the GPU engine (gpusaxs.gpu_engine) import
it, it imports no engine.  docs/ARCHITECTURE.md, "The engine contract", says it in words.

Validity (the CUDA kernel and the numba kernel implement the same rule in their languages):
a pixel value x is valid when x >= 0 and finite; for an unsigned dtype every value is >= 0
but the type's maximum (2**32-1 for uint32: EIGER gap/overflow flag; 65535 for uint16; 255 for
uint8) is invalid.  uint32 values above 2**31 are real counts, never reinterpreted as negative.
An invalid value on an unmasked pixel leaves the sums and its weight leaves the norm.

Dark: a matrix with a ``pixel_offset`` (float32, one value per pixel) asks every engine to
sum v = x - pixel_offset for the signal and the squares; the variance stays of the raw counts.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any, NamedTuple, Protocol

import numpy as np

from ._typing import AnyArray, ArrayLike, FloatArray

__all__ = [
    "Sums",
    "Engine",
    "StreamingEngine",
    "mean_intensity",
    "error_model",
    "check_frame_dtype",
    "invalid_threshold",
    "valid_mask",
    "as_frame_stack",
    "pixel_offset",
]


class Sums(NamedTuple):
    """Per-bin float64 sums of shape (B, n_bins); see docs/ARCHITECTURE.md.

    signal = sum w*s*v, norm = sum w, variance = sum w*s^2*x, squares = sum w*(s*v)^2,
    over valid pixels (unmasked, x >= 0, finite, not the unsigned maximum), v = x - dark.
    """

    signal: FloatArray
    norm: FloatArray
    variance: FloatArray | None = None
    squares: FloatArray | None = None


class Engine(Protocol):
    """The interface every integration engine implements (docs/ARCHITECTURE.md, "The
    engine contract"): the CPU engines of gpusaxs.cpu_fallback, the GPU engine of
    gpusaxs.gpu_engine.  ``Integrator.engine`` is one; gpusaxs.engines.make_engine makes them."""

    #: short name for logs and ``repr`` (e.g. "numba", "scipy", "numpy-bincount", "cupy")
    name: str
    #: the matrix's pixel_offset (dark) is applied in the engine's one pass
    supports_pixel_offset: bool

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


class StreamingEngine(Engine, Protocol):
    """An engine that overlaps copies and integration (the GPU engine): batches are queued
    with ``submit`` and their Sums taken, oldest first, with ``collect``."""

    #: batches that may be in flight at once
    n_streams: int

    def submit(self, frames: Any, errors: bool | str = False) -> int:
        """Queue one batch (a list of (H, W) frames or a (b, H, W) stack); returns the number
        of batches in flight or waiting.  The caller may reuse the frames at once."""
        ...

    def collect(self) -> Sums:
        """Sums (host float64, (b, n_bins)) of the oldest submitted batch (waits for it)."""
        ...

    def pending(self) -> int:
        """Batches submitted and not yet collected."""
        ...

    def integrate_stream(self, frames: Iterable[Any], errors: bool | str = False) -> Iterator[Sums]:
        """Sums of each batch of a stack or an iterable of frames, in input order."""
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


# ------------------------------------------------------------------------------ validity
def check_frame_dtype(dtype: Any) -> np.dtype[Any]:
    """The dtype of frames, or TypeError unless it is an integer or floating type (no bool)."""
    found: np.dtype[Any] = np.dtype(dtype)
    if found == np.bool_ or found.kind not in "iuf":
        raise TypeError(f"frames must be integer or float, not {found}")
    return found


def invalid_threshold(dtype: Any) -> float:
    """Values >= this are invalid: the maximum of an unsigned type (EIGER gap flag), else inf.

    The validity rule as the kernels take it: valid means 0 <= x < invalid_threshold(dtype)
    (NaN fails both comparisons)."""
    found = check_frame_dtype(dtype)
    if found.kind == "u":
        return float(np.iinfo(found).max)
    return np.inf


def valid_mask(x: Any, xp: Any = np) -> Any:
    """Bool array of the validity rule on raw values x (NumPy or CuPy, xp their module):
    x >= 0 and finite; for unsigned dtypes x != the type's max (gap flag)."""
    kind = check_frame_dtype(x.dtype).kind
    if kind == "u":
        return x != x.dtype.type(np.iinfo(x.dtype).max)
    if kind == "i":
        return x >= 0
    if xp is np:
        with np.errstate(invalid="ignore"):
            return np.isfinite(x) & (x >= 0)
    return xp.isfinite(x) & (x >= 0)


# ------------------------------------------------------------------------------ input, dark
def as_frame_stack(stack: ArrayLike, shape: tuple[int, ...]) -> AnyArray:
    """View ``stack`` (B, H, W) or (H, W) as a C-contiguous (B, H*W) array, native dtype kept."""
    arr = np.asarray(stack)
    if arr.ndim == 2:
        arr = arr[None]
    if arr.ndim != 3 or tuple(arr.shape[1:]) != tuple(shape):
        raise ValueError(
            f"frames of shape {arr.shape[-2:] if arr.ndim >= 2 else arr.shape} "
            f"do not match the calibration's Imagesize {tuple(shape)}"
        )
    check_frame_dtype(arr.dtype)
    if arr.dtype.byteorder not in "=|":
        arr = arr.astype(arr.dtype.newbyteorder("="))
    return np.ascontiguousarray(arr).reshape(arr.shape[0], -1)


def pixel_offset(matrix: Any) -> AnyArray | None:
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
