"""The grazing-incidence part of a calibration file (``GrazingIncidence``, and SAXS_py3's
``GISAXSmode`` / ``Slices`` where they map), as the keyword arguments of the Integrator's
grazing-incidence methods (docs/grazing.md). The schema checks the fields
(gpusaxs/schemas/calibration.schema.json)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ._typing import BoolArray, PathLike
from .calibration_file import read_calibration_file, validate_dict
from .errors import CalibrationError

__all__ = ["GrazingCut", "GrazingConfig", "grazing_config", "read_grazing_config"]

#: the map SAXS_py3's GISAXSmode asks for when no GrazingIncidence block gives one
DEFAULT_MAP: dict[str, Any] = {"NptIp": 500, "NptOop": 500}


def _range(value: Any) -> tuple[float, float] | None:
    return None if value is None else (float(value[0]), float(value[1]))


@dataclass(frozen=True)
class GrazingCut:
    """One cut: ``kwargs`` for :meth:`gpusaxs.Integrator.integrate1d_grazing_incidence_batch`
    and, for a SAXS_py3 slice, the band of pixels it keeps (``band``: rows or columns,
    ``(axis, start, stop)`` in NumPy indices; None: every pixel)."""

    name: str
    kwargs: dict[str, Any] = field(hash=False)
    band: tuple[int, int, int] | None = None

    def mask(self, shape: tuple[int, int]) -> BoolArray | None:
        """True outside the band (pixels the cut leaves out), or None."""
        if self.band is None:
            return None
        axis, start, stop = self.band
        out = np.ones(shape, dtype=bool)
        index = [slice(None), slice(None)]
        index[axis] = slice(max(0, start), max(0, stop))
        out[tuple(index)] = False
        return out


@dataclass(frozen=True)
class GrazingConfig:
    """The grazing-incidence outputs of a calibration: the angles, the map (or None) and the
    cuts. ``common`` holds the keywords every call shares (angles in degrees, splitting)."""

    common: dict[str, Any] = field(hash=False)
    map: dict[str, Any] | None = field(hash=False)
    cuts: tuple[GrazingCut, ...] = ()

    def map_kwargs(self) -> dict[str, Any]:
        """Keywords of :meth:`gpusaxs.Integrator.integrate2d_grazing_incidence_batch`."""
        assert self.map is not None
        return {**self.common, **self.map}

    def cut_kwargs(self, cut: GrazingCut, shape: tuple[int, int]) -> dict[str, Any]:
        """Keywords of :meth:`gpusaxs.Integrator.integrate1d_grazing_incidence_batch`."""
        kwargs = {**self.common, **cut.kwargs, "error_model": "poisson"}
        band = cut.mask(shape)
        if band is not None:
            kwargs["mask"] = band
        return kwargs


def _map(block: dict[str, Any]) -> dict[str, Any]:
    return dict(
        npt_ip=int(block.get("NptIp", DEFAULT_MAP["NptIp"])),
        npt_oop=int(block.get("NptOop", DEFAULT_MAP["NptOop"])),
        unit_ip=block.get("UnitIp", "qip_nm^-1"),
        unit_oop=block.get("UnitOop", "qoop_nm^-1"),
        ip_range=_range(block.get("IpRange")),
        oop_range=_range(block.get("OopRange")),
    )


def _cut(block: dict[str, Any]) -> GrazingCut:
    vertical = bool(block.get("VerticalIntegration", True))
    npt = int(block.get("Npt", 500))
    kwargs = dict(
        npt_oop=npt if vertical else None,
        npt_ip=None if vertical else npt,
        unit_ip=block.get("UnitIp", "qip_nm^-1"),
        unit_oop=block.get("UnitOop", "qoop_nm^-1"),
        ip_range=_range(block.get("IpRange")),
        oop_range=_range(block.get("OopRange")),
        vertical_integration=vertical,
    )
    return GrazingCut(str(block["Name"]), kwargs)


def _slice(index: int, block: dict[str, Any], shape: tuple[int, int]) -> GrazingCut:
    """SAXS_py3's slice: the pixels of a band (CutPosition +- CutMargin, fit2d's 1-based
    coordinate of the other axis: a column for Direction "y", a row counted from the bottom
    for "x"), binned along qoop (Plane "Vertical") or qip ("InPlane"), one bin per pixel of
    the band's length."""
    height, width = shape
    start = int(block["CutPosition"]) - 1 - int(block["CutMargin"])
    stop = int(block["CutPosition"]) + int(block["CutMargin"])
    if block["Direction"] == "y":  # a band of columns, the cut runs along the rows
        band, length = (1, start, stop), height
    else:  # a band of rows, counted from the bottom edge
        band, length = (0, height - stop, height - start), width
    vertical = block["Plane"] == "Vertical"
    kwargs = dict(
        npt_oop=length if vertical else None,
        npt_ip=None if vertical else length,
        vertical_integration=vertical,
    )
    return GrazingCut(f"slice{index}", kwargs, band)


def grazing_config(d: dict[str, Any], shape: tuple[int, int]) -> GrazingConfig | None:
    """The grazing-incidence outputs of a (validated) calibration dict, flat or nested, for
    frames of ``shape`` (H, W); None when it asks for none."""
    block = d.get("GrazingIncidence")
    slices = d.get("Slices") or []
    if block is None and not slices and not d.get("GISAXSmode"):
        return None
    block = dict(block or {})
    if "IncidentAngleDeg" not in block:
        angles = {float(s["IncidentAngle"]) for s in slices}
        if len(angles) > 1:
            raise CalibrationError(
                f"the Slices give {len(angles)} incident angles; one GrazingIncidence "
                "IncidentAngleDeg is needed",
                None,
                "#/Slices",
            )
        block["IncidentAngleDeg"] = angles.pop() if angles else 0.0
    common = dict(
        incident_angle=float(block["IncidentAngleDeg"]),
        tilt_angle=float(block.get("TiltAngleDeg", 0.0)),
        sample_orientation=int(block.get("SampleOrientation", 1)),
        angle_unit="deg",
        split_pixels=bool(block.get("SplitPixels", True)),
    )
    wants_map = "Map" in block or bool(d.get("GISAXSmode"))
    cuts = [_cut(c) for c in block.get("Cuts", [])]
    cuts += [_slice(i, s, shape) for i, s in enumerate(slices)]
    names = [c.name for c in cuts]
    if len(set(names)) != len(names):
        raise CalibrationError(f"cut names must differ: {names}", None, "#/GrazingIncidence/Cuts")
    return GrazingConfig(common, _map(block.get("Map", {})) if wants_map else None, tuple(cuts))


def read_grazing_config(path: PathLike, shape: tuple[int, int]) -> GrazingConfig | None:
    """:func:`grazing_config` of a calibration file (validated against the schema)."""
    d = read_calibration_file(path)
    validate_dict(d, path)
    return grazing_config(d, shape)
