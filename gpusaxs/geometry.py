"""Detector geometry: scattering angle, azimuth, q and the polarization factor (sections 4.3, 4.4).

Conventions (fit2d's, pinned down in the reference README):

* ``BeamCenter = [Y, X]`` in pixels; X counts columns from the left edge, Y counts rows from the
  *bottom* edge, so with the image read top-down (row 0 at the top) the beam is at row
  ``H - Y``, column ``X``.  Pixel centres are at ``index + 0.5``.
* ``DedectorDistanceMM`` is the sample-to-detector distance along the beam (sample to beam centre).
* The detector is tilted by ``TiltAngleDeg`` about an in-plane axis; ``TiltRotDeg`` is the
  rotation of the tilt plane.

The scattering angle is exact (no small-angle shortcut): a point at in-plane offset ``(a, b)``
from the beam centre, ``a`` along the tilt direction, lies at ``(a cos(tau), b)`` across the beam
and ``D + a sin(tau)`` along it, so ``2theta = atan2(sqrt(a^2 cos^2(tau) + b^2), D + a sin(tau))``.
This is the law-of-cosines construction of section 4.3 (``calc_theta``), written with atan2 for
accuracy near 0.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, TypeAlias

import numpy as np
from numpy.typing import NDArray

from ._typing import ArrayLike, FloatArray

if TYPE_CHECKING:
    from .calibration_model import Calibration

#: image rows: a slice, an index array, or None for all rows
Rows: TypeAlias = "slice | NDArray[np.integer[Any]] | None"

__all__ = [
    "pixel_offsets_mm",
    "corner_offsets_mm",
    "two_theta",
    "two_theta_of_offsets",
    "azimuth",
    "two_theta_and_azimuth",
    "q_from_two_theta",
    "q_map",
    "polarization_factor",
    "polarization_factor_rows",
    "polarization_of",
    "calc_theta",
    "lab_coordinates",
    "chi",
    "chi_of_lab",
    "solid_angle",
    "solid_angle_rows",
]


def _tilt(cal: Calibration) -> tuple[float, float]:
    """(tau, rho) in radians: tilt angle and in-plane direction of the tilt."""
    tau = np.deg2rad(cal.tilt_angle_deg)
    # fit2d measures the tilt-plane rotation anticlockwise from +X with the Y axis pointing up,
    # which is the frame of our offsets (dx right, dy up).
    rho = np.deg2rad(cal.tilt_rot_deg)
    return tau, rho


def pixel_offsets_mm(
    cal: Calibration, rows: Rows = None, oversampling: int = 1
) -> tuple[FloatArray, FloatArray]:
    """Offsets (dx, dy) in mm from the beam centre of the (sub)pixel centres.

    ``rows``: a slice or index array of image rows (default all rows).  Returns arrays of
    shape (n_rows*ov, W*ov) where ``ov = oversampling``: dx to the right, dy upwards.
    """
    height, width = cal.imagesize
    ov = int(oversampling)
    row_index = np.arange(height)[rows if rows is not None else slice(None)]
    sub = (np.arange(ov) + 0.5) / ov
    # Row r spans Y in [H - r - 1, H - r] (Y from the bottom edge); sub-rows go downwards.
    y_pix = (height - row_index[:, None] - sub[None, :]).ravel()
    x_pix = (np.arange(width)[:, None] + sub[None, :]).ravel()
    return _offsets(cal, y_pix, x_pix)


def corner_offsets_mm(cal: Calibration, rows: Rows = None) -> tuple[FloatArray, FloatArray]:
    """Offsets (dx, dy) in mm of the pixel corners: the top edges of ``rows`` (default all rows,
    plus the bottom edge of the image) by the W + 1 column edges."""
    height, width = cal.imagesize
    edges = np.arange(height + 1)[rows if rows is not None else slice(None)]
    return _offsets(cal, (height - edges).astype(float), np.arange(width + 1, dtype=float))


def _offsets(
    cal: Calibration, y_pix: FloatArray, x_pix: FloatArray
) -> tuple[FloatArray, FloatArray]:
    """Broadcast (dx, dy) in mm of fit2d pixel positions y_pix (rows), x_pix (columns)."""
    y_center, x_center = cal.beam_center
    px_y, px_x = cal.pixel_size_um
    dx = (x_pix - x_center) * (px_x * 1e-3)
    dy = (y_pix - y_center) * (px_y * 1e-3)
    return np.broadcast_to(dx[None, :], (len(y_pix), len(x_pix))), np.broadcast_to(
        dy[:, None], (len(y_pix), len(x_pix))
    )


def _lab_transverse(
    cal: Calibration, dx: FloatArray, dy: FloatArray
) -> tuple[FloatArray, FloatArray, FloatArray]:
    """Lab-frame offsets across the beam (tx right, ty up) and along it (tz), in mm."""
    tau, rho = _tilt(cal)
    cos_r, sin_r = np.cos(rho), np.sin(rho)
    a = dx * cos_r + dy * sin_r  # along the tilt direction
    b = -dx * sin_r + dy * cos_r  # along the tilt axis
    a_proj = a * np.cos(tau)
    tx = a_proj * cos_r - b * sin_r
    ty = a_proj * sin_r + b * cos_r
    tz = cal.distance_mm + a * np.sin(tau)
    return tx, ty, tz


def two_theta_of_offsets(cal: Calibration, dx: FloatArray, dy: FloatArray) -> FloatArray:
    """2theta (radians) of detector points at offsets (dx, dy) mm from the beam centre."""
    tx, ty, tz = _lab_transverse(cal, dx, dy)
    return np.arctan2(np.hypot(tx, ty), tz)


def two_theta_and_azimuth(
    cal: Calibration, rows: Rows = None, oversampling: int = 1
) -> tuple[FloatArray, FloatArray]:
    """(2theta, phi) in radians for the (sub)pixels of ``rows``.

    phi is the azimuth of the scattered ray, clockwise from 12 o'clock on the image as displayed
    with row 0 at the top (0 = up, pi/2 = right).
    """
    dx, dy = pixel_offsets_mm(cal, rows, oversampling)
    tx, ty, tz = _lab_transverse(cal, dx, dy)
    return np.arctan2(np.hypot(tx, ty), tz), np.arctan2(tx, ty)


def lab_coordinates(
    cal: Calibration, rows: Rows = None, oversampling: int = 1
) -> tuple[FloatArray, FloatArray, FloatArray]:
    """Lab-frame position (tx right, ty up, tz along the beam), mm from the sample, of the
    (sub)pixel centres of ``rows``."""
    return _lab_transverse(cal, *pixel_offsets_mm(cal, rows, oversampling))


def chi_of_lab(tx: FloatArray, ty: FloatArray) -> FloatArray:
    """pyFAI's azimuth chi (radians, (-pi, pi]) of lab positions: 0 at 3 o'clock, clockwise on
    the image displayed with row 0 at the top (see :mod:`gpusaxs.units`)."""
    return np.arctan2(-ty, tx)


def chi(cal: Calibration, oversampling: int = 1) -> FloatArray:
    """pyFAI's chi (radians) of every pixel centre, shape (H, W); chi = phi - pi/2."""
    tx, ty, _ = lab_coordinates(cal, None, oversampling)
    return chi_of_lab(tx, ty)


def solid_angle_rows(cal: Calibration, rows: Rows = None) -> FloatArray:
    """Relative solid angle of the pixels of ``rows`` (pyFAI's definition, tilt included):
    cos(incidence)^3 = (L / |SP|)^3, L the perpendicular distance from the sample to the
    detector plane (D cos(tilt)), |SP| the sample-to-pixel-centre distance; 1 at the point of
    normal incidence.  Intensities are divided by it."""
    tx, ty, tz = lab_coordinates(cal, rows)
    normal = cal.distance_mm * np.cos(np.deg2rad(cal.tilt_angle_deg))
    sa: FloatArray = (normal / np.sqrt(tx * tx + ty * ty + tz * tz)) ** 3
    return sa


def solid_angle(cal: Calibration) -> FloatArray:
    """Relative solid angle of every pixel, shape (H, W); see :func:`solid_angle_rows`."""
    return solid_angle_rows(cal, None)


def two_theta(cal: Calibration, oversampling: int = 1) -> FloatArray:
    """Scattering angle 2theta of every pixel centre.

    Parameters
    ----------
    cal : Calibration
        The detector geometry.
    oversampling : int
        Sub-pixels per pixel side; 1 gives the pixel centres.

    Returns
    -------
    ndarray of float64, shape (H * oversampling, W * oversampling)
        2theta in radians, rows top-down.

    Examples
    --------
    >>> tth = gpusaxs.geometry.two_theta(cal)  # doctest: +SKIP
    >>> q = gpusaxs.geometry.q_from_two_theta(tth, cal.wavelength_A)  # nm^-1  # doctest: +SKIP
    """
    return two_theta_and_azimuth(cal, None, oversampling)[0]


def azimuth(cal: Calibration, oversampling: int = 1) -> FloatArray:
    """Azimuth phi (radians), clockwise from 12 o'clock, of every pixel centre."""
    return two_theta_and_azimuth(cal, None, oversampling)[1]


def q_from_two_theta(tth: ArrayLike, wavelength_angstrom: float) -> FloatArray:
    """q = 4 pi sin(2theta/2) / lambda in nm^-1, lambda in Angstrom."""
    return 4.0 * np.pi * np.sin(0.5 * np.asarray(tth)) / (wavelength_angstrom * 0.1)


def q_map(cal: Calibration, oversampling: int = 1) -> FloatArray:
    """q in nm^-1 of every (sub)pixel centre."""
    return q_from_two_theta(two_theta(cal, oversampling), cal.wavelength_A)


def polarization_of(
    tth: FloatArray, phi: FloatArray, fraction: float, angle_deg: float = 0.0
) -> FloatArray:
    """Polarization factor K (section 4.4, with the '+' the printed formula lacks).

    K = P (1 - sin^2(phi') sin^2(2theta)) + (1 - P)(1 - cos^2(phi') sin^2(2theta)),
    phi' = phi - Angle, P the fraction polarized in the horizontal plane (phi = 90 deg).
    Pixel intensities are divided by K.
    """
    phi_p = phi - np.deg2rad(angle_deg)
    s2 = np.sin(tth) ** 2
    k: FloatArray = fraction * (1.0 - np.sin(phi_p) ** 2 * s2) + (1.0 - fraction) * (
        1.0 - np.cos(phi_p) ** 2 * s2
    )
    return k


def polarization_factor(cal: Calibration, oversampling: int = 1) -> FloatArray:
    """Polarization factor K of every pixel centre (section 4.4); intensities are divided by it.

    Parameters
    ----------
    cal : Calibration
        The geometry and its ``polarization`` (fraction, angle in degrees), or None.
    oversampling : int
        Sub-pixels per pixel side.

    Returns
    -------
    ndarray of float64, shape (H * oversampling, W * oversampling)
        K, dimensionless; all ones without PolarizationCorrection.
    """
    return polarization_factor_rows(cal, None, oversampling)


def polarization_factor_rows(
    cal: Calibration, rows: Rows = None, oversampling: int = 1
) -> FloatArray:
    """K for the pixel centres of ``rows`` (a slice; default all rows)."""
    tth, phi = two_theta_and_azimuth(cal, rows, oversampling)
    if cal.polarization is None:
        return np.ones_like(tth)
    fraction, angle = cal.polarization
    return polarization_of(tth, phi, fraction, angle)


def calc_theta(r: ArrayLike, phi: ArrayLike, d: float, tilt: float, tilt_dir: float) -> FloatArray:
    """Scattering angle (radians) from polar detector coordinates, as SAXS.calc_theta (section 6).

    Parameters
    ----------
    r : float or array_like
        Distance to the beam centre in the detector plane (any length unit, e.g. mm).
    phi : float or array_like
        Polar angle of the point in the detector plane, radians, anticlockwise from +X.
    d : float
        Sample-to-beam-centre distance, same unit as ``r``.
    tilt, tilt_dir : float
        Tilt of the detector and the direction of the tilt, radians.

    Returns
    -------
    ndarray of float64, broadcast shape of ``r`` and ``phi``
        theta (the scattering angle 2theta of the point) in radians.

    Notes
    -----
    The same law of cosines
    as section 4.3: l^2 = d^2 + r^2 - 2 d r cos(pi/2 + alpha), alpha = asin(sin(tilt) sin(phi +
    tilt_dir)), and theta the angle at the sample of the triangle (d, l, r).

    With phi the polar angle of the pixel anticlockwise from +X (Y up, fit2d's frame), the
    calibration's geometry is ``tilt = TiltAngleDeg`` and ``tilt_dir = 90 deg - TiltRotDeg``
    (in radians); :func:`two_theta` is this formula applied to every pixel.

    Examples
    --------
    >>> import numpy as np, gpusaxs
    >>> float(gpusaxs.calc_theta(10.0, 0.0, 1000.0, 0.0, 0.0))  # 10 mm at 1 m: atan(0.01)
    0.009999666686665238
    """
    r = np.asarray(r, dtype=float)
    sin_alpha = np.sin(tilt) * np.sin(np.asarray(phi) + tilt_dir)
    along = d + r * sin_alpha  # l cos(theta)
    across = np.sqrt(np.maximum(r * r - (r * sin_alpha) ** 2, 0.0))  # l sin(theta)
    theta: FloatArray = np.arctan2(across, along)
    return theta
