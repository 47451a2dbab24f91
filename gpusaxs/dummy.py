"""pyFAI's ``dummy`` / ``delta_dummy``: a pixel is invalid when its value is the dummy value,
and every other finite value counts, negative ones included (background-subtracted data).

The engines' own rule drops negative values (PILATUS gaps -1 and bad pixels -2). With a dummy
value the rule changes without a second kernel: the frames, dark-subtracted on the host in
float64, are shifted by a constant ``C`` so that every valid value is >= 0, and integrated
beside an indicator plane (1 on valid pixels) in the same engine call; the shift is then
taken back exactly, the sums being linear (and the squares quadratic) in ``C``::

    signal   = S(v + C) - C S(1)
    variance = V(v + C) - C V(1)              (V: sum w s^2 x, the Poisson sums)
    squares  = Q(v + C) - 2 C variance - C^2 V(1)

This costs one more plane per frame (only when a valid value is negative). With a dummy value
the Poisson variance is that of the values given (dark subtracted), and a bin whose variance
sum is negative has a NaN Poisson sigma: use ``error_model="azimuthal"`` for such data.
"""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np

from ._typing import AnyArray
from .engine_contract import Engine, Sums

__all__ = ["dummy_sums", "invalid_dummy", "warn_negative_floats", "NEGATIVE_WARNING_FRACTION"]

#: frames in one engine call of the dummy path (bounds its float64 copies to 2 x 8 frames)
FRAMES_PER_CALL = 8
#: a float frame whose finite values are negative (other than the flags -1, -2) above this
#: fraction draws a warning: without a dummy value those pixels are dropped
NEGATIVE_WARNING_FRACTION = 0.01


def invalid_dummy(raw: AnyArray, dummy: float, delta_dummy: float | None) -> AnyArray:
    """Boolean array: True where ``raw`` is not finite, equals ``dummy`` within
    ``delta_dummy`` (pyFAI: ``|x - dummy| <= delta_dummy``; None = exact), or is the unsigned
    type's maximum (EIGER's gap flag)."""
    delta = 0.0 if delta_dummy is None else float(delta_dummy)
    x = raw.astype(np.float64, copy=False)
    with np.errstate(invalid="ignore"):
        bad = ~np.isfinite(x) | (np.abs(x - float(dummy)) <= delta)
    if raw.dtype.kind == "u":
        bad |= raw == np.iinfo(raw.dtype).max
    return np.asarray(bad)


def dummy_sums(
    engine: Engine,
    stack: AnyArray,
    dark: Any,
    dummy: float,
    delta_dummy: float | None,
    errors: bool | str,
) -> Sums:
    """The engine's sums of ``stack`` (B, H, W) under the dummy rule.

    ``engine`` must integrate with a matrix without a dark (``pixel_offset`` None): the
    ``dark`` (H, W) or None is subtracted here, in float64.
    """
    stack = np.asarray(stack)
    dark64 = None if dark is None else np.asarray(dark, dtype=np.float64)
    parts: list[Sums] = []
    for b0 in range(0, stack.shape[0], FRAMES_PER_CALL):
        raw = stack[b0 : b0 + FRAMES_PER_CALL]
        bad = invalid_dummy(raw, dummy, delta_dummy)
        v = raw.astype(np.float64)
        if dark64 is not None:
            v -= dark64
        v[bad] = np.nan
        with np.errstate(invalid="ignore"):
            low = np.nanmin(v) if not bad.all() else 0.0
        shift = max(0.0, -float(low))
        if shift == 0.0:
            parts.append(engine.sums(v, errors=errors))
            continue
        n = v.shape[0]
        indicator = np.where(bad, np.nan, 1.0)
        both = engine.sums(np.concatenate([v + shift, indicator]), errors=errors)
        a, i = (_rows(both, slice(0, n)), _rows(both, slice(n, 2 * n)))
        signal = a.signal - shift * i.signal
        if not errors:
            parts.append(Sums(signal, a.norm))
            continue
        assert a.variance is not None and i.variance is not None
        variance = a.variance - shift * i.variance
        squares = None
        if a.squares is not None:
            squares = a.squares - 2.0 * shift * variance - shift * shift * i.variance
        parts.append(Sums(signal, a.norm, variance, squares))
    return _stack_sums(parts)


def _rows(s: Sums, rows: slice) -> Sums:
    return Sums(
        s.signal[rows],
        s.norm[rows],
        None if s.variance is None else s.variance[rows],
        None if s.squares is None else s.squares[rows],
    )


def _stack_sums(parts: list[Sums]) -> Sums:
    if len(parts) == 1:
        return parts[0]

    def cat(name: str) -> Any:
        planes = [getattr(p, name) for p in parts]
        return None if planes[0] is None else np.concatenate(planes)

    return Sums(cat("signal"), cat("norm"), cat("variance"), cat("squares"))


def warn_negative_floats(stack: AnyArray) -> None:
    """Warn when a float stack has many negative values that are not detector flags (-1,
    -2): without ``dummy`` they are dropped as invalid, which biases background-subtracted
    data. Checks about 65536 values spread over the stack (cheap beside the integration)."""
    if stack.dtype.kind != "f":
        return
    flat = np.asarray(stack).reshape(-1)
    sample = flat[:: max(61, flat.size // 65536)]
    finite = np.isfinite(sample)
    n = int(finite.sum())
    if n == 0:
        return
    with np.errstate(invalid="ignore"):
        negative = (sample < 0) & (sample != -1) & (sample != -2)
    fraction = float(negative.sum()) / n
    if fraction > NEGATIVE_WARNING_FRACTION:
        warnings.warn(
            f"{100 * fraction:.1f} % of the image's values are negative and are dropped as "
            "invalid pixels (gpusaxs's rule for detector flags); for background-subtracted "
            "data pass dummy= (pyFAI's dummy value, e.g. dummy=-1 or dummy=float('nan') to "
            "keep every finite value)",
            UserWarning,
            stacklevel=4,
        )
