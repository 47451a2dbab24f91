"""Physical ranges of the calibration's measured fields: values in the wrong unit are refused.

A PONI file holds metres (``Wavelength: 1.54e-10``, ``Distance: 1.03``, ``pixel1: 0.000172``);
the calibration file holds angstrom, millimetres and micrometres. A value pasted across gives
q off by many orders of magnitude, so each measured field must lie in a range wide enough for
any X-ray scattering set-up, and a refusal names the field, its unit and the likely cause
(docs/calibration.md, "Units and ranges").
"""

from __future__ import annotations

from typing import Any

from ._typing import PathLike
from .errors import CalibrationError

__all__ = ["RANGES", "check_physical_ranges", "MASKED_FRACTION_WARNING"]

#: field -> (low, high, unit): inclusive bounds of a plausible value
RANGES: dict[str, tuple[float, float, str]] = {
    # 0.01 A (1.2 MeV) to 50 A (0.25 keV): hard to soft X-rays
    "Wavelength": (0.01, 50.0, "angstrom"),
    # 5 mm (WAXS close to the sample) to 100 m (the longest SAXS/USAXS flight tubes)
    "distance": (5.0, 100_000.0, "mm"),
    # 1 um (imaging detectors) to 10 mm (wire detectors)
    "PixelSizeMicroM": (1.0, 10_000.0, "micrometre"),
}

#: a mask hiding more than this fraction of the pixels is probably inverted (warning)
MASKED_FRACTION_WARNING = 0.9

#: other units a value may have been written in: name -> factor to the field's unit
_MISTAKES: dict[str, tuple[tuple[str, float], ...]] = {
    "Wavelength": (("metres", 1e10), ("nanometres", 10.0)),
    "distance": (("metres", 1e3), ("centimetres", 10.0)),
    "PixelSizeMicroM": (("metres", 1e6), ("millimetres", 1e3)),
}


def _likely_cause(field: str, value: float) -> str:
    lo, hi, unit = RANGES[field]
    for name, factor in _MISTAKES[field]:
        if lo <= value * factor <= hi:
            return f"; this looks like {name}: {value:g} {name} = {value * factor:g} {unit}"
    return ""


def _check(field: str, value: Any, path: PathLike | None, json_path: str, name: str) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return  # the schema names the wrong type
    lo, hi, unit = RANGES[field]
    if not lo <= value <= hi:
        raise CalibrationError(
            f"{value:g} is outside {lo:g}-{hi:g} {unit} ({name} is in {unit}"
            f"{_likely_cause(field, float(value))})",
            path,
            json_path,
        )


def check_physical_ranges(d: dict[str, Any], form: str, path: PathLike | None = None) -> None:
    """Refuse a measured value outside :data:`RANGES` (a schema-valid dict of either form).

    Raises
    ------
    CalibrationError
        Naming ``path``, the JSON path of the field, its unit and a likely cause
        (e.g. ``#/Wavelength: 1.54e-10 is outside 0.01-50 angstrom (Wavelength is in
        angstrom; this looks like metres: 1.54e-10 metres = 1.54 angstrom)``).
    """
    geo = d.get("Geometry", d) if form == "nested" else d
    prefix = "#/Geometry" if form == "nested" else "#"
    if not isinstance(geo, dict):
        return
    _check("Wavelength", d.get("Wavelength"), path, "#/Wavelength", "Wavelength")
    for key in ("DedectorDistanceMM", "DetectorDistanceMM"):
        if key in geo:
            _check("distance", geo[key], path, f"{prefix}/{key}", key)
    sizes = geo.get("PixelSizeMicroM")
    if isinstance(sizes, list):
        for i, v in enumerate(sizes):
            _check("PixelSizeMicroM", v, path, f"{prefix}/PixelSizeMicroM/{i}", "PixelSizeMicroM")
