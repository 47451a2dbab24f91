"""Limits on what a calibration may make the matrix builder do: pixels, sub-pixels, radial
bins and the matrix's memory, checked before anything is built (issue 24: beside the matrix)."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

from gpusaxs.errors import CalibrationError
from gpusaxs.radial_bins import largest_q_at_corners, radial_bin_count

if TYPE_CHECKING:
    from gpusaxs.calibration_model import Calibration

__all__ = ["LIMITS", "check_limits", "estimate_matrix_bytes"]

# ----------------------------------------------------------------------------- size limits
#: Bounds on what a calibration may make the matrix builder do (checked before building).
#: ``pixels``: Imagesize rows x columns (an 8192 x 8192 frame; EIGER2 16M has 18 M pixels);
#: ``subpixels``: pixels x Oversampling^2, the builder's work (about a minute on 2 cores);
#: ``bins``: radial bins (a .chi of 100 000 rows is 4.5 MB); ``matrix_bytes``: the estimated
#: memory of the built matrix (:func:`estimate_matrix_bytes`).
LIMITS = {"pixels": 1 << 26, "subpixels": 1 << 28, "bins": 100_000, "matrix_bytes": 2 << 30}


def estimate_matrix_bytes(cal: Calibration, q_edges: Any = None) -> int:
    """Estimated memory (bytes) of the built IntegrationMatrix of ``cal``.

    pixel_ptr (8 B) and pixel_scale (4 B) per pixel, 8 B per entry (bin, weight), with about
    min(Oversampling^2, 1 + 1.3 / PixelPerRadialElement) entries per pixel (a pixel spans about
    1.3 bin widths of one pixel), plus the bin arrays.  An upper estimate for unmasked frames.
    """
    n_pixels = int(cal.imagesize[0]) * int(cal.imagesize[1])
    ov2 = int(cal.oversampling) ** 2
    per_pixel = min(ov2, 1.0 + 1.3 / float(cal.pixel_per_radial_element))
    n_bins = radial_bin_count(cal, q_edges)
    return int(n_pixels * (12 + 8 * per_pixel) + 16 * (n_bins + 1))


def check_limits(cal: Calibration, q_edges: Any = None, **limits: int) -> dict[str, int]:
    """Check the fields of ``cal`` that drive the matrix's memory and build time.

    Raises :class:`CalibrationError` naming the field and the limit (``LIMITS``; a keyword
    ``pixels=``, ``subpixels=``, ``bins=`` or ``matrix_bytes=`` overrides one) before anything
    is built.  Also rejects a qStart beyond the largest q on the detector.  Returns a dict:
    pixels, subpixels, bins, matrix_bytes (the estimates checked).
    """
    unknown = set(limits) - set(LIMITS)
    if unknown:
        raise TypeError(f"unknown limit(s): {', '.join(sorted(unknown))}")
    lim = {**LIMITS, **limits}
    source = getattr(cal, "source", None)
    height, width = (int(v) for v in cal.imagesize)
    ov = int(cal.oversampling)
    pixels = height * width
    if pixels > lim["pixels"]:
        raise CalibrationError(
            f"{height} x {width} = {pixels:,} pixels is more than the limit of "
            f"{lim['pixels']:,} pixels",
            source,
            "#/Imagesize",
        )
    subpixels = pixels * ov * ov
    if subpixels > lim["subpixels"]:
        best = max(1, int(math.sqrt(lim["subpixels"] / pixels)))
        raise CalibrationError(
            f"Oversampling {ov} on {pixels:,} pixels splits them into {subpixels:,} sub-pixels, "
            f"more than the limit of {lim['subpixels']:,} (at most Oversampling {best} for this "
            f"Imagesize)",
            source,
            "#/Oversampling",
        )
    q_start = getattr(cal, "q_start", None)
    if q_edges is None and q_start is not None:
        q_hi = largest_q_at_corners(cal)
        if q_start >= q_hi:
            raise CalibrationError(
                f"qStart ({q_start:g} nm^-1) is beyond the largest q on the "
                f"detector ({q_hi:.4g} nm^-1): no pixel would count",
                source,
                "#/qStart",
            )
    bins = radial_bin_count(cal, q_edges)
    if bins > lim["bins"]:
        q_stop = getattr(cal, "q_stop", None)
        if q_edges is not None:
            field, why = "q_edges", "the q_edges given"
        elif q_stop is not None and q_stop > 2 * largest_q_at_corners(cal):
            field, why = (
                "#/qStop",
                (
                    f"qStop {q_stop:g} nm^-1 is far beyond the largest q on the "
                    f"detector, {largest_q_at_corners(cal):.4g} nm^-1"
                ),
            )
        else:
            field, why = (
                "#/PixelPerRadialElement",
                (
                    f"PixelPerRadialElement {cal.pixel_per_radial_element:g} pixel; "
                    "use a larger value"
                ),
            )
        raise CalibrationError(
            f"{bins:,} radial bins is more than the limit of {lim['bins']:,} ({why})", source, field
        )
    nbytes = estimate_matrix_bytes(cal, q_edges)
    if nbytes > lim["matrix_bytes"]:
        raise CalibrationError(
            f"the integration matrix would need about {nbytes / 2**30:.1f} GiB, more than the "
            f"limit of {lim['matrix_bytes'] / 2**30:.1f} GiB (lower Oversampling or raise "
            f"PixelPerRadialElement)",
            source,
            "#/Oversampling",
        )
    return {"pixels": pixels, "subpixels": subpixels, "bins": bins, "matrix_bytes": nbytes}
