"""Per-pixel corrections folded into an IntegrationMatrix (pyFAI's integrate1d options).

Each pixel's value x becomes ``(x - dark) / (K * solid_angle * flat)``: the dark goes into
``pixel_offset``, the product of the divisors into ``pixel_scale`` (docs/ARCHITECTURE.md), so the
engines apply every correction in their one pass over the frame.  A pixel whose flat is not a
positive finite number is dropped (as if masked).
"""

from dataclasses import replace
from typing import Any

import numpy as np

from .geometry import polarization_factor_rows, polarization_of, solid_angle, two_theta_and_azimuth
from .matrix import IntegrationMatrix, restrict_matrix

__all__ = ["pixel_divisor", "apply_corrections"]


def _frame_array(value, shape, name):
    arr = np.asarray(value, dtype=np.float64)
    if arr.shape != tuple(shape):
        raise ValueError(
            f"{name} of shape {arr.shape} does not match the frames' shape {tuple(shape)}"
        )
    return arr


def pixel_divisor(cal, correct_solid_angle=False, polarization_factor=None, flat=None):
    """(H, W) float64 divisor K * solid_angle * flat of every pixel.

    polarization_factor: None keeps the calibration's PolarizationCorrection (K = 1 without
    one); a number f in [-1, 1] is pyFAI's factor (fraction (1 + f) / 2 polarized in the
    horizontal plane, chi = 0) and replaces it.
    """
    shape = tuple(int(v) for v in cal.imagesize)
    if polarization_factor is None:
        divisor = np.ones(shape) if cal.polarization is None else polarization_factor_rows(cal)
    else:
        f = float(polarization_factor)
        if not -1.0 <= f <= 1.0:
            raise ValueError(f"polarization_factor must lie in [-1, 1], got {f}")
        tth, phi = two_theta_and_azimuth(cal)
        divisor = polarization_of(tth, phi, 0.5 * (1.0 + f), 0.0)
    if correct_solid_angle:
        divisor = divisor * solid_angle(cal)
    if flat is not None:
        divisor = divisor * _frame_array(flat, shape, "flat")
    return divisor


def apply_corrections(
    matrix: IntegrationMatrix,
    cal: Any,
    correct_solid_angle: bool = False,
    polarization_factor: float | None = None,
    flat: Any = None,
    dark: Any = None,
) -> IntegrationMatrix:
    """``matrix`` with the corrections folded in; the same object when there are none."""
    if not correct_solid_angle and polarization_factor is None and flat is None and dark is None:
        return matrix
    if correct_solid_angle or polarization_factor is not None or flat is not None:
        divisor = pixel_divisor(cal, correct_solid_angle, polarization_factor, flat)
        bad = ~(np.isfinite(divisor) & (divisor > 0))
        if bad.any():
            matrix = restrict_matrix(matrix, bad)
        with np.errstate(divide="ignore", invalid="ignore"):
            scale = np.where(bad, 0.0, 1.0 / divisor).astype(np.float32).ravel()
        matrix = replace(matrix, pixel_scale=scale)
    if dark is not None:
        offset = _frame_array(dark, matrix.shape, "dark")
        if not np.isfinite(offset).all():
            raise ValueError("dark has NaN or infinite values")
        matrix = replace(matrix, pixel_offset=offset.astype(np.float32).ravel())
    return matrix
