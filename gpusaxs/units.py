"""Radial units and the azimuth convention of the pyFAI-style options (pyFAI's names).

| unit | meaning |
| --- | --- |
| ``q_nm^-1`` | q = 4 pi sin(2theta/2) / lambda in nm^-1 (the default, SAXSdog's and fit2d's) |
| ``q_A^-1`` | the same in Angstrom^-1 |
| ``2th_deg`` / ``2th_rad`` | the scattering angle 2theta in degrees / radians |
| ``r_mm`` | distance of the pixel from the beam axis, across the beam, in mm (pyFAI's r_mm) |

Azimuth: ranges and cake bins use pyFAI's chi, in degrees: ``chi = atan2(y, x)`` with x along
the image columns (to the right, 3 o'clock with row 0 at the top) and y along the rows
(downwards), so chi runs clockwise on the displayed image, 0 at 3 o'clock, 90 at 6 o'clock,
-90 at 12 o'clock, +-180 at 9 o'clock.  gpusaxs's own azimuth ``phi``
(:func:`gpusaxs.geometry.azimuth`, used by the polarization correction) is clockwise from
12 o'clock: ``chi = phi - 90 deg``.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ._typing import ArrayLike, FloatArray

__all__ = [
    "RADIAL_UNITS",
    "AZIMUTH_UNITS",
    "parse_azimuth_unit",
    "unit_label",
    "parse_unit",
    "radial_of",
    "in_sector",
    "normalise_sector",
]

#: unit name -> (label, description)
RADIAL_UNITS = {
    "q_nm^-1": ("q (nm^-1)", "scattering vector in inverse nanometres"),
    "q_A^-1": ("q (A^-1)", "scattering vector in inverse Angstroms"),
    "2th_deg": ("2theta (deg)", "scattering angle in degrees"),
    "2th_rad": ("2theta (rad)", "scattering angle in radians"),
    "r_mm": ("r (mm)", "distance from the beam axis, across the beam, in mm"),
}

#: the abscissa units of pyFAI's integrate_radial (chi, pyFAI's convention above)
AZIMUTH_UNITS = {
    "chi_deg": ("chi (deg)", "azimuthal angle in degrees"),
    "chi_rad": ("chi (rad)", "azimuthal angle in radians"),
}

_ALIASES = {
    "q_nm-1": "q_nm^-1",
    "q_a^-1": "q_A^-1",
    "q_a-1": "q_A^-1",
    "q_A-1": "q_A^-1",
    "2th": "2th_deg",
    "r": "r_mm",
}


def parse_unit(unit: Any) -> str:
    """Canonical name of a radial unit (a name above, or a pyFAI Unit object); ValueError else."""
    name = getattr(unit, "name", unit)
    name = str(name).strip()
    name = _ALIASES.get(name, _ALIASES.get(name.lower(), name))
    if name not in RADIAL_UNITS:
        raise ValueError(f"unknown radial unit {unit!r}; valid units: {', '.join(RADIAL_UNITS)}")
    return name


def parse_azimuth_unit(unit: Any) -> str:
    """Canonical name of an azimuthal unit ("chi_deg" or "chi_rad", or a pyFAI Unit)."""
    name = str(getattr(unit, "name", unit)).strip()
    name = {"chi": "chi_deg"}.get(name, name)
    if name not in AZIMUTH_UNITS:
        raise ValueError(
            f"unknown azimuthal unit {unit!r}; valid units: {', '.join(AZIMUTH_UNITS)}"
        )
    return name


def unit_label(unit: str) -> str:
    """Axis label of a radial or azimuthal unit, e.g. 'q (nm^-1)'."""
    return {**RADIAL_UNITS, **AZIMUTH_UNITS}[unit][0]


def radial_of(unit: str, tth: FloatArray, r_mm: FloatArray, wavelength_A: float) -> FloatArray:
    """Radial coordinate in ``unit`` from 2theta (radians) and the distance r (mm) from the beam
    axis across the beam; wavelength in Angstrom."""
    if unit == "q_nm^-1":
        return 4.0 * np.pi * np.sin(0.5 * tth) / (wavelength_A * 0.1)
    if unit == "q_A^-1":
        return 4.0 * np.pi * np.sin(0.5 * tth) / wavelength_A
    if unit == "2th_deg":
        return np.rad2deg(tth)
    if unit == "2th_rad":
        return tth
    if unit == "r_mm":
        return r_mm
    raise ValueError(f"unknown radial unit {unit!r}")


def normalise_sector(azimuth_range: tuple[float, float]) -> tuple[float, float]:
    """(lo, span) in degrees of an azimuth range (lo, hi) in pyFAI's chi convention.

    ``lo < hi`` is the sector from lo to hi (either may lie outside [-180, 180], e.g.
    (170, 190)); ``lo > hi`` wraps through +-180 deg, e.g. (170, -170) is the 20 deg around
    9 o'clock.  The span is in (0, 360].
    """
    lo, hi = (float(v) for v in azimuth_range)
    if not (np.isfinite(lo) and np.isfinite(hi)) or lo == hi:
        raise ValueError(
            f"azimuth_range must be two different finite angles in degrees, got {azimuth_range!r}"
        )
    span = hi - lo if hi > lo else hi - lo + 360.0
    if span > 360.0:
        raise ValueError(f"azimuth_range {azimuth_range!r} spans more than 360 degrees")
    return lo, span


def in_sector(chi_deg: ArrayLike, lo: float, span: float) -> FloatArray:
    """Position of chi (degrees) inside the sector [lo, lo + span), NaN outside: chi - lo
    taken modulo 360 (so every angle has one position, whichever turn it is given in)."""
    pos = np.mod(np.asarray(chi_deg, dtype=np.float64) - lo, 360.0)
    return np.where(pos < span, pos, np.nan)
