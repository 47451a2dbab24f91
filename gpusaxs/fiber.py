"""Grazing-incidence (fiber) coordinates of each sub-pixel and their sparse binning (issue 28).

pyFAI's FiberIntegrator conventions (pyFAI/units.py): the lab frame x, y, z of pyFAI's
geometry (here ``x = tx``, ``y = -ty``, ``z = tz`` of :func:`gpusaxs.geometry.lab_coordinates`),
the sample orientation 1..8 (EXIF) relabelling x and y, the scattering vector rotated into the
sample frame by the incident angle (about the horizontal axis) and the tilt angle (about the
beam), then ``qip = sign(q_horz) * sqrt(q_beam^2 + q_horz^2)`` and ``qoop = q_vert``.
A map is a 2D binning of the same pixels as a cake: bin ``oop * n_ip + ip``
(:class:`gpusaxs.matrix.IntegrationMatrix` with ``q_edges`` the in-plane edges and
``azimuth_edges`` the out-of-plane ones), so every engine integrates it unchanged.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
from numpy.typing import NDArray

from ._typing import ArrayLike, BoolArray, FloatArray
from .geometry import lab_coordinates, polarization_factor_rows
from .matrix import (
    CHUNK_SUBPIXELS,
    BuildCancelled,
    IntegrationMatrix,
    _bin_index,
    _entries_of_index,
    build_mask,
)

if TYPE_CHECKING:
    from .calibration_model import Calibration

__all__ = [
    "FIBER_UNITS",
    "GrazingBinning",
    "parse_fiber_unit",
    "fiber_coordinate",
    "fiber_map",
    "build_grazing_matrix",
]

#: unit name -> (axis label, description); pyFAI's names
FIBER_UNITS = {
    "qip_nm^-1": ("qIP (nm^-1)", "in-plane scattering vector, inverse nanometres"),
    "qoop_nm^-1": ("qOOP (nm^-1)", "out-of-plane scattering vector, inverse nanometres"),
    "qip_A^-1": ("qIP (A^-1)", "in-plane scattering vector, inverse Angstroms"),
    "qoop_A^-1": ("qOOP (A^-1)", "out-of-plane scattering vector, inverse Angstroms"),
    "qtot_nm^-1": ("q (nm^-1)", "modulus of the scattering vector, inverse nanometres"),
    "qtot_A^-1": ("q (A^-1)", "modulus of the scattering vector, inverse Angstroms"),
    "chigi_deg": ("chi (deg)", "polar angle atan2(qip, qoop) from the sample normal, degrees"),
    "chigi_rad": ("chi (rad)", "polar angle atan2(qip, qoop) from the sample normal, radians"),
    "exit_angle_horz_deg": ("horizontal exit angle (deg)", "from the sample horizon, degrees"),
    "exit_angle_horz_rad": ("horizontal exit angle (rad)", "from the sample horizon, radians"),
    "exit_angle_vert_deg": ("vertical exit angle (deg)", "from the sample horizon, degrees"),
    "exit_angle_vert_rad": ("vertical exit angle (rad)", "from the sample horizon, radians"),
}

_ALIASES = {"qip": "qip_nm^-1", "qoop": "qoop_nm^-1", "qtot": "qtot_nm^-1", "chigi": "chigi_deg"}

#: sample orientation (EXIF 1..8) -> (x, y) of pyFAI's lab frame relabelled: ((source, sign), ..)
_ORIENTATIONS = {
    1: (("x", 1), ("y", 1)),
    2: (("x", -1), ("y", 1)),
    3: (("x", -1), ("y", -1)),
    4: (("x", 1), ("y", -1)),
    5: (("y", -1), ("x", -1)),
    6: (("y", -1), ("x", 1)),
    7: (("y", 1), ("x", 1)),
    8: (("y", 1), ("x", -1)),
}


def parse_fiber_unit(unit: Any) -> str:
    """Canonical name of a fiber unit (:data:`FIBER_UNITS`, or a pyFAI unit); ValueError else."""
    name = str(getattr(unit, "name", unit)).strip()
    name = _ALIASES.get(name, name)
    if name not in FIBER_UNITS:
        raise ValueError(f"unknown fiber unit {unit!r}; valid units: {', '.join(FIBER_UNITS)}")
    return name


@dataclass(frozen=True)
class GrazingBinning:
    """The binning of a grazing-incidence map, frozen and hashable (part of an option set).

    Angles in radians; ranges in their unit (None: the extent of the pixel centres).
    ``split``: True splits each pixel into the calibration's Oversampling^2 sub-pixels, False
    bins pixel centres (pyFAI's method "no", the FiberIntegrator's advice).
    """

    npt_ip: int
    npt_oop: int
    unit_ip: str = "qip_nm^-1"
    unit_oop: str = "qoop_nm^-1"
    ip_range: tuple[float, float] | None = None
    oop_range: tuple[float, float] | None = None
    incident_angle: float = 0.0
    tilt_angle: float = 0.0
    sample_orientation: int = 1
    split: bool = True

    def __post_init__(self) -> None:
        if self.sample_orientation not in _ORIENTATIONS:
            raise ValueError(f"sample_orientation must be 1..8, got {self.sample_orientation!r}")
        if self.npt_ip < 1 or self.npt_oop < 1:
            raise ValueError(
                f"npt_ip and npt_oop must be positive, got {self.npt_ip, self.npt_oop}"
            )

    def as_dict(self) -> dict[str, Any]:
        """Plain JSON values, for files and logs."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in self.__dict__.items()}


def _sample_xy(x: FloatArray, y: FloatArray, orientation: int) -> tuple[FloatArray, FloatArray]:
    lab = {"x": x, "y": y}
    (sx, fx), (sy, fy) = _ORIENTATIONS[orientation]
    return fx * lab[sx], fy * lab[sy]


def fiber_coordinate(
    unit: str,
    xyz: tuple[FloatArray, FloatArray, FloatArray],
    wavelength_A: float,
    incident_angle: float = 0.0,
    tilt_angle: float = 0.0,
    sample_orientation: int = 1,
) -> FloatArray:
    """The fiber coordinate ``unit`` of points at pyFAI lab positions ``xyz`` (any length
    unit; x horizontal, y vertical, z along the beam), angles in radians."""
    unit = parse_fiber_unit(unit)
    x, y, z = (np.asarray(a, dtype=np.float64) for a in xyz)
    x, y = _sample_xy(x, y, sample_orientation)
    inv_nm = 0.1 if unit.endswith("A^-1") else 1.0  # nm^-1 -> A^-1
    cos_i, sin_i = np.cos(incident_angle), np.sin(incident_angle)
    cos_t, sin_t = np.cos(tilt_angle), np.sin(tilt_angle)
    if unit.startswith("exit_angle"):
        y1 = cos_i * y + sin_i * z
        z1 = -sin_i * y + cos_i * z
        x2 = cos_t * x - sin_t * y1
        y2 = sin_t * x + cos_t * y1
        angle = np.arctan2(y2, np.hypot(z1, x2)) if "vert" in unit else np.arctan2(x2, z1)
        return np.rad2deg(angle) if unit.endswith("deg") else angle
    k = 2.0 * np.pi / (wavelength_A * 0.1) * inv_nm
    r3 = np.sqrt(x * x + y * y + z * z)
    if unit.startswith("qtot"):
        return 2.0 * k * np.sin(0.5 * np.arctan2(np.hypot(x, y), z))
    q_beam, q_horz, q_vert = k * (z / r3 - 1.0), k * x / r3, k * y / r3
    # into the sample frame: the incident angle about the horizontal axis, then the tilt
    q_beam, q_vert = cos_i * q_beam + sin_i * q_vert, -sin_i * q_beam + cos_i * q_vert
    q_horz, q_vert = cos_t * q_horz + sin_t * q_vert, -sin_t * q_horz + cos_t * q_vert
    qip = np.hypot(q_beam, q_horz) * np.where(q_horz > 0, 1.0, -1.0)
    if unit.startswith("qip"):
        return qip
    if unit.startswith("qoop"):
        return q_vert
    chi = np.arctan2(qip, q_vert)
    return np.rad2deg(chi) if unit.endswith("deg") else chi


def _pyfai_xyz(
    cal: Calibration, rows: slice | None, ov: int
) -> tuple[FloatArray, FloatArray, FloatArray]:
    tx, ty, tz = lab_coordinates(cal, rows, ov)
    return tx, -ty, tz


def fiber_map(cal: Calibration, unit: str, binning: GrazingBinning, ov: int = 1) -> FloatArray:
    """``unit`` of every (sub)pixel centre, shape (H*ov, W*ov), with ``binning``'s angles."""
    return fiber_coordinate(
        unit,
        _pyfai_xyz(cal, None, ov),
        cal.wavelength_A,
        binning.incident_angle,
        binning.tilt_angle,
        binning.sample_orientation,
    )


def _edges(
    cal: Calibration, unit: str, binning: GrazingBinning, npt: int, span: Any, mask: BoolArray
) -> FloatArray:
    """``npt + 1`` uniform edges over ``span``, or over the extent of the unmasked pixel
    centres (pyFAI's default range)."""
    if span is None:
        values = fiber_map(cal, unit, binning)[~mask]
        if not values.size:
            raise ValueError("every pixel is masked: no default range")
        lo, hi = float(np.nanmin(values)), float(np.nanmax(values))
        hi += (hi - lo) * 1e-7  # the extreme pixel inside the last bin, as pyFAI's
    else:
        lo, hi = (float(v) for v in span)
    if not (np.isfinite(lo) and np.isfinite(hi) and hi > lo):
        raise ValueError(f"range must be (low, high) with low < high in {unit}, got {span!r}")
    return np.linspace(lo, hi, int(npt) + 1)


def build_grazing_matrix(
    cal: Calibration,
    binning: GrazingBinning,
    mask: ArrayLike | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> IntegrationMatrix:
    """The sparse matrix of a grazing-incidence map: bins (oop, ip), ``n_bins = npt_oop *
    npt_ip``, built in chunks of rows like :func:`gpusaxs.matrix.build_matrix` (the
    calibration's polarization in ``pixel_scale``, masked pixels without entries)."""
    height, width = (int(v) for v in cal.imagesize)
    mask_arr = build_mask(cal, mask)
    ip_edges = _edges(cal, binning.unit_ip, binning, binning.npt_ip, binning.ip_range, mask_arr)
    oop_edges = _edges(cal, binning.unit_oop, binning, binning.npt_oop, binning.oop_range, mask_arr)
    ov = int(cal.oversampling) if binning.split else 1
    rows_per_chunk = max(1, CHUNK_SUBPIXELS // (width * ov * ov))
    angles = (binning.incident_angle, binning.tilt_angle, binning.sample_orientation)
    counts_per_pixel = np.zeros(height * width, dtype=np.int64)
    bins_parts: list[NDArray[np.int32]] = []
    weight_parts: list[NDArray[np.float32]] = []
    scale = np.ones(height * width, dtype=np.float32)
    for start in range(0, height, rows_per_chunk):
        if should_stop is not None and should_stop():
            raise BuildCancelled(f"build stopped at row {start} of {height}")
        rows = slice(start, min(height, start + rows_per_chunk))
        xyz = _pyfai_xyz(cal, rows, ov)
        ip = fiber_coordinate(binning.unit_ip, xyz, cal.wavelength_A, *angles)
        oop = fiber_coordinate(binning.unit_oop, xyz, cal.wavelength_A, *angles)
        i_ip = _bin_index(ip, ip_edges, True)
        i_oop = _bin_index(oop, oop_edges, True)
        idx = np.where((i_ip >= 0) & (i_oop >= 0), i_oop * binning.npt_ip + i_ip, -1)
        keep = ~mask_arr[rows].ravel()
        pix, bins64, weights64 = _entries_of_index(idx, rows.stop - rows.start, width, ov, keep)
        first = start * width
        counts_per_pixel[first : first + keep.size] = np.bincount(pix, minlength=keep.size)
        bins_parts.append(bins64.astype(np.int32))
        weight_parts.append(weights64.astype(np.float32))
        if getattr(cal, "polarization", None) is not None:
            scale[first : first + keep.size] = (1.0 / polarization_factor_rows(cal, rows)).ravel()
    n_bins = binning.npt_ip * binning.npt_oop
    pixel_ptr = np.zeros(height * width + 1, dtype=np.int64)
    np.cumsum(counts_per_pixel, out=pixel_ptr[1:])
    bins = np.concatenate(bins_parts) if bins_parts else np.zeros(0, np.int32)
    weights = np.concatenate(weight_parts) if weight_parts else np.zeros(0, np.float32)
    norm = np.bincount(bins, weights=weights.astype(np.float64), minlength=n_bins)
    return IntegrationMatrix(
        shape=(height, width),
        q_edges=ip_edges,
        pixel_ptr=pixel_ptr,
        bins=bins,
        weights=weights,
        pixel_scale=scale,
        norm=norm.astype(np.float64, copy=False),
        radial_unit=binning.unit_ip,
        azimuth_edges=oop_edges,
    )
