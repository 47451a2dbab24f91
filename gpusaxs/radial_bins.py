"""The default radial bins of a calibration: uniform in q from 0 (or qStart) to the largest q
on the detector (or qStop), one bin per PixelPerRadialElement pixels at the detector edge.
One formula (:func:`q_bin_layout`) serves the matrix builder and the size limits (issue 24)."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np

from ._typing import FloatArray
from .geometry import _offsets, corner_offsets_mm, q_from_two_theta, two_theta_of_offsets

if TYPE_CHECKING:
    from .calibration_model import Calibration

__all__ = [
    "max_radius_mm",
    "q_bin_layout",
    "largest_q_at_corners",
    "default_q_edges",
    "radial_bin_count",
    "log_edges",
    "RADIAL_SPACINGS",
]

#: bin spacings of the pyFAI-style options: uniform, or uniform in log(radial) (SAXS)
RADIAL_SPACINGS = ("linear", "log")


def max_radius_mm(cal: Calibration) -> float:
    """Largest in-plane distance (mm) from the beam centre to a detector corner."""
    height, width = cal.imagesize
    y_center, x_center = cal.beam_center
    px_y, px_x = (p * 1e-3 for p in cal.pixel_size_um)
    dx = np.array([0.0, width]) - x_center
    dy = np.array([0.0, height]) - y_center
    return float(np.sqrt((np.abs(dx).max() * px_x) ** 2 + (np.abs(dy).max() * px_y) ** 2))


def q_bin_layout(cal: Calibration, q_max: float) -> tuple[float, float, int]:
    """(first edge, bin width, number of bins) in nm^-1 of the default bins, given the largest
    q on the detector ``q_max`` (nm^-1).

    Over [0, q_max] there are (corner distance in pixels) / PixelPerRadialElement bins, so 1
    means a bin about one pixel wide at the detector edge (for the reference PILATUS frame this
    gives fit2d's 1002 bins); qStart/qStop cut that grid (same width) to their range.
    """
    pixel_mm = float(np.mean(cal.pixel_size_um)) * 1e-3
    n_full = max(1, int(max_radius_mm(cal) / pixel_mm / cal.pixel_per_radial_element))
    dq = q_max / n_full
    q_start = getattr(cal, "q_start", None)
    q_stop = getattr(cal, "q_stop", None)
    lo = 0.0 if q_start is None else float(q_start)
    hi = q_max if q_stop is None else float(q_stop)
    if hi <= lo:
        raise ValueError(f"qStop ({hi} nm^-1) must be larger than qStart ({lo} nm^-1)")
    n = max(1, int(math.ceil((hi - lo) / dq - 1e-9))) if dq > 0 else 1
    return lo, dq, n


def largest_q_at_corners(cal: Calibration) -> float:
    """Largest q (nm^-1) at the four detector corners: a quick estimate of the matrix's q range
    (exact for an untilted detector)."""
    height, width = (float(v) for v in cal.imagesize)
    dx, dy = _offsets(cal, np.array([0.0, height]), np.array([0.0, width]))
    return float(q_from_two_theta(two_theta_of_offsets(cal, dx, dy).max(), cal.wavelength_A))


def default_q_edges(cal: Calibration, checkpoint: Callable[[], Any] | None = None) -> FloatArray:
    """Bin edges (nm^-1) of :func:`q_bin_layout`, with the largest q taken over every pixel
    corner (so every sub-pixel is inside). checkpoint: optional callable(), called before each
    block of 256 rows (it may raise :class:`gpusaxs.matrix.BuildCancelled`)."""
    q_hi = 0.0
    height = cal.imagesize[0]
    for start in range(0, height + 1, 256):
        if checkpoint is not None:
            checkpoint()
        dx, dy = corner_offsets_mm(cal, slice(start, start + 256))
        tth = two_theta_of_offsets(cal, dx, dy).max()
        q_hi = max(q_hi, float(q_from_two_theta(tth, cal.wavelength_A)))
    lo, dq, n = q_bin_layout(cal, q_hi)
    return (lo + dq * np.arange(n + 1)).astype(np.float64, copy=False)


def radial_bin_count(cal: Calibration, q_edges: Any = None) -> int:
    """Number of radial bins the matrix of ``cal`` will have, without building anything
    (``len(q_edges) - 1`` when edges are given); the largest q is estimated at the four
    detector corners when qStart or qStop cut the range."""
    if q_edges is not None:
        return max(len(q_edges) - 1, 0)
    if getattr(cal, "q_start", None) is None and getattr(cal, "q_stop", None) is None:
        pixel_mm = float(np.mean(cal.pixel_size_um)) * 1e-3
        return max(1, int(max_radius_mm(cal) / pixel_mm / cal.pixel_per_radial_element))
    try:
        return q_bin_layout(cal, largest_q_at_corners(cal))[2]
    except ValueError:  # qStop <= qStart: reported where the calibration is checked
        return 1


def log_edges(radial_range: tuple[float, float] | None, npt: int) -> FloatArray:
    """``npt`` bins uniform in log over ``radial_range`` (lo > 0): edges lo * (hi/lo)^(k/npt).
    ValueError without a range or with lo <= 0 (log bins need a positive start)."""
    if radial_range is None:
        raise ValueError("radial_spacing='log' needs radial_range (a positive lower bound)")
    lo, hi = (float(v) for v in radial_range)
    if not (0.0 < lo < hi and math.isfinite(hi)):
        raise ValueError(f"radial_spacing='log' needs 0 < low < high, got {radial_range!r}")
    if npt < 1:
        raise ValueError(f"npt must be a positive number of bins, got {npt}")
    edges: FloatArray = np.geomspace(lo, hi, int(npt) + 1)
    edges[0], edges[-1] = lo, hi
    return edges
