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
from .host_threads import over_slices

__all__ = [
    "Sums",
    "SUM_FIELDS",
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
    mean: signal / norm (NaN where norm is 0) when the engine computed it in its pass (the CPU
    engine's map kernel), else None; it saves :func:`mean_intensity` a pass over a map.
    """

    signal: FloatArray
    norm: FloatArray
    variance: FloatArray | None = None
    squares: FloatArray | None = None
    mean: FloatArray | None = None


#: the sums every engine computes (``mean`` is an engine's option)
SUM_FIELDS = ("signal", "norm", "variance", "squares")


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
    return _moments(sums, with_errors=False)[0]


def error_model(sums: Sums) -> tuple[FloatArray, FloatArray | None, FloatArray]:
    """(I, std, err): mean, weighted standard deviation of pixel values, Poisson error.

    std is None when the sums carry no squares (engines asked for errors="poisson").
    """
    if sums.variance is None:
        raise ValueError("error_model needs sums with variance (errors=True or 'poisson')")
    intensity, std, err = _moments(sums, with_errors=True)
    assert err is not None
    return intensity, std, err


def _moments(
    sums: Sums, with_errors: bool
) -> tuple[FloatArray, FloatArray | None, FloatArray | None]:
    """(I, std, err) as error_model; without errors (I, None, None). Large arrays (maps) are
    computed in slices on the host's cores (:mod:`gpusaxs.host_threads`)."""
    signal, norm = np.asarray(sums.signal), np.asarray(sums.norm)
    given = sums.mean is not None  # the engine's own signal / norm
    if given and not with_errors:
        return np.asarray(sums.mean), None, None
    intensity = np.asarray(sums.mean) if given else np.empty(signal.shape)
    err = np.empty(signal.shape) if with_errors else None
    squares = sums.squares if with_errors else None
    std = None if squares is None else np.empty(signal.shape)
    flat = [a.reshape(-1) for a in (signal, norm, intensity)]

    def work(part: slice) -> None:
        s, n, i = (a[part] for a in flat)
        empty = ~(n > 0)
        with np.errstate(invalid="ignore", divide="ignore"):
            if not given:
                np.divide(s, n, out=i)
                np.copyto(i, np.nan, where=empty)
            if err is not None:
                e = err.reshape(-1)[part]
                np.sqrt(np.maximum(np.asarray(sums.variance).reshape(-1)[part], 0.0), out=e)
                np.divide(e, n, out=e)
                np.copyto(e, np.nan, where=empty)
            if std is not None:
                d = std.reshape(-1)[part]
                np.divide(np.asarray(squares).reshape(-1)[part], n, out=d)
                d -= i * i
                np.sqrt(np.maximum(d, 0.0, out=d), out=d)
                np.copyto(d, np.nan, where=empty)

    over_slices(work, intensity.size)
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
