"""The options of one pyFAI-style integration as one frozen, hashable value (issue 24).

:class:`IntegrationOptions` is what :meth:`gpusaxs.Integrator.integrate1d` and friends fold
into the sparse matrix: the radial unit and bins, the sector or the cake's chi bins, and the
per-pixel corrections. It keys the integrator's cache of option matrices and is recorded in
:attr:`gpusaxs.IntegrationResult.options`. Per-pixel arrays (dark, flat, mask) are kept
read-only and compared by the SHA-256 of their content.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ._typing import AnyArray, ArrayLike
from .fiber import GrazingBinning
from .radial_bins import RADIAL_SPACINGS
from .units import parse_unit

__all__ = ["IntegrationOptions", "PixelArray"]


@dataclass(frozen=True)
class PixelArray:
    """A per-pixel array (H, W), read-only, that compares and hashes by its content."""

    array: AnyArray = field(compare=False, repr=False)
    digest: str

    @classmethod
    def of(cls, value: ArrayLike | PixelArray | None) -> PixelArray | None:
        """``value`` frozen (a read-only copy) with its digest; None stays None."""
        if value is None or isinstance(value, PixelArray):
            return value
        arr = np.array(value, copy=True, order="C")
        arr.setflags(write=False)
        h = hashlib.sha256(str((arr.shape, arr.dtype.str)).encode())
        h.update(arr.tobytes())
        return cls(arr, h.hexdigest())


def _pair(value: Any, name: str) -> tuple[float, float] | None:
    if value is None:
        return None
    lo, hi = (float(v) for v in value)
    return (lo, hi)


def _spacing(value: str) -> str:
    if value not in RADIAL_SPACINGS:
        raise ValueError(f"radial_spacing must be one of {RADIAL_SPACINGS}, got {value!r}")
    return value


@dataclass(frozen=True)
class IntegrationOptions:
    """One option set of :meth:`gpusaxs.Integrator.integrate1d` / ``integrate2d``.

    Attributes
    ----------
    npt : int or None
        Radial bins; None: the calibration's bins (default unit and range), else as many.
    unit : str
        Radial unit, canonical name (:data:`gpusaxs.units.RADIAL_UNITS`).
    radial_range : (float, float) or None
        In ``unit``.
    azimuth_range : (float, float) or None
        chi sector in degrees (pyFAI's convention).
    azimuth_npt : int or None
        chi bins of a cake; None for a curve.
    correct_solid_angle : bool
    polarization_factor : float or None
        None: the calibration's PolarizationCorrection.
    dark, flat, mask : PixelArray or None
        Per-pixel arrays (H, W); mask True = excluded.
    grazing : GrazingBinning or None
        A grazing-incidence map's binning (:mod:`gpusaxs.fiber`); it replaces the radial and
        azimuth bins.
    radial_spacing : {"linear", "log"}
        Radial bins uniform in ``unit`` or in its log (over ``radial_range``, low > 0).
    """

    npt: int | None = None
    unit: str = "q_nm^-1"
    radial_range: tuple[float, float] | None = None
    azimuth_range: tuple[float, float] | None = None
    azimuth_npt: int | None = None
    correct_solid_angle: bool = False
    polarization_factor: float | None = None
    dark: PixelArray | None = None
    flat: PixelArray | None = None
    mask: PixelArray | None = None
    grazing: GrazingBinning | None = None
    radial_spacing: str = "linear"

    @classmethod
    def make(
        cls,
        npt: int | None = None,
        unit: str = "q_nm^-1",
        radial_range: Any = None,
        azimuth_range: Any = None,
        azimuth_npt: int | None = None,
        correct_solid_angle: bool = False,
        polarization_factor: float | None = None,
        dark: ArrayLike | PixelArray | None = None,
        flat: ArrayLike | PixelArray | None = None,
        mask: ArrayLike | PixelArray | None = None,
        grazing: GrazingBinning | None = None,
        radial_spacing: str = "linear",
    ) -> IntegrationOptions:
        """The option set of these arguments (pyFAI's names), normalised: the unit by its
        canonical name, ranges as float pairs, arrays frozen."""
        return cls(
            npt=None if npt is None else int(npt),
            unit=parse_unit(unit),
            radial_range=_pair(radial_range, "radial_range"),
            azimuth_range=_pair(azimuth_range, "azimuth_range"),
            azimuth_npt=None if azimuth_npt is None else int(azimuth_npt),
            correct_solid_angle=bool(correct_solid_angle),
            polarization_factor=None if polarization_factor is None else float(polarization_factor),
            dark=PixelArray.of(dark),
            flat=PixelArray.of(flat),
            mask=PixelArray.of(mask),
            grazing=grazing,
            radial_spacing=_spacing(radial_spacing),
        )

    def array(self, name: str) -> AnyArray | None:
        """The per-pixel array ``name`` ("dark", "flat" or "mask"), or None."""
        value: PixelArray | None = getattr(self, name)
        return None if value is None else value.array

    def as_dict(self) -> dict[str, Any]:
        """The options as plain JSON values (arrays by their SHA-256), for files and logs."""
        out: dict[str, Any] = {}
        for name in self.__dataclass_fields__:
            value = getattr(self, name)
            if isinstance(value, PixelArray):
                value = {"sha256": value.digest, "shape": list(value.array.shape)}
            elif isinstance(value, GrazingBinning):
                value = value.as_dict()
            elif isinstance(value, tuple):
                value = list(value)
            out[name] = value
        return out
