"""The Calibration object: one validated geometry and mask, immutable (SAXS 0.3.0, section 3).

Conventions: ``BeamCenter`` is ``[Y, X]`` in pixels with Y counted from the
*bottom* edge (fit2d); in a NumPy image read top-down the beam sits at row
``imagesize[0] - Y``, column ``X``. ``PixelSizeMicroM`` is ``[size]`` or
``[along rows (Y), along columns (X)]``. The file format (schema, forms, PONI) is
:mod:`gpusaxs.calibration_file`; the limits on the matrix it makes, :mod:`gpusaxs.matrix_limits`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import warnings
from collections.abc import Callable
from typing import Any, TypeVar

import numpy as np

from gpusaxs._typing import BoolArray, PathLike
from gpusaxs.calibration_file import (
    read_calibration_file,
    to_flat_dict,
    to_nested_dict,
    validate_dict,
    write_json_atomic,
)
from gpusaxs.errors import CalibrationError
from gpusaxs.io.masks import read_mask
from gpusaxs.matrix_limits import check_limits
from gpusaxs.physical_ranges import MASKED_FRACTION_WARNING
from gpusaxs.poni import fit2d_to_poni

__all__ = ["Calibration", "as_calibration"]

# ----------------------------------------------------------------------------- Calibration
_T = TypeVar("_T")


def _tuple(value: Any, n: int, conv: Callable[[Any], _T], name: str) -> tuple[_T, ...]:
    try:
        t = tuple(conv(v) for v in value)
    except (TypeError, ValueError):
        raise CalibrationError(f"expected {n} numbers, got {value!r}", None, name) from None
    if len(t) != n:
        raise CalibrationError(f"expected {n} numbers, got {len(t)}", None, name)
    return t


def _num(value: Any, conv: Callable[[Any], _T], name: str) -> _T:
    if isinstance(value, bool):
        raise CalibrationError(f"expected a number, got {value!r}", None, name)
    try:
        return conv(value)
    except (TypeError, ValueError):
        raise CalibrationError(f"expected a number, got {value!r}", None, name) from None


def _strict_int(value: Any) -> int:
    if float(value) != int(value):
        raise ValueError(value)
    return int(value)


def _hash_file(path: PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


@dataclasses.dataclass(frozen=True, kw_only=True)
class Calibration:
    """A validated calibration (one geometry, one mask); immutable.

    Build it with :meth:`from_file` or :meth:`from_dict` (the keyword constructor validates
    the same way); :meth:`key` is the digest that names its integration matrix.

    Attributes
    ----------
    title : str or None
        Free text.
    beam_center : (float, float)
        (Y from the bottom edge, X) in pixels, fit2d convention.
    distance_mm : float
        Sample-to-detector distance along the beam, mm.
    imagesize : (int, int)
        (H, W) = (rows, columns) in pixels.
    pixel_size_um : (float, float)
        Pixel size along rows (Y) and along columns (X), micrometre.
    wavelength_A : float
        Wavelength, Angstrom.
    tilt_angle_deg, tilt_rot_deg : float
        fit2d tilt angle and tilt-plane rotation, degrees.
    oversampling : int
        Sub-pixels per pixel edge (>= 1).
    pixel_per_radial_element : float
        Radial bin width in pixels.
    mask_file : str or None
        Absolute path of the mask file, or None (no mask).
    polarization : (float, float) or None
        (fraction 0..1, plane angle in degrees), or None.
    q_start, q_stop : float or None
        The q range in nm^-1 (nested form's Masks), or None.
    source : str or None
        The file it was read from (not compared, not in :meth:`key`).

    Examples
    --------
    >>> cal = gpusaxs.Calibration.from_file("calibration.json")  # doctest: +SKIP
    >>> cal.replace(oversampling=2).to_json("coarse.json")  # doctest: +SKIP
    """

    title: str | None = None
    beam_center: tuple[float, float]
    distance_mm: float
    imagesize: tuple[int, int]
    pixel_size_um: tuple[float, float]
    wavelength_A: float
    tilt_angle_deg: float = 0.0
    tilt_rot_deg: float = 0.0
    oversampling: int = 3
    pixel_per_radial_element: float = 1.0
    mask_file: str | None = None
    polarization: tuple[float, float] | None = None
    q_start: float | None = None
    q_stop: float | None = None
    source: str | None = dataclasses.field(default=None, compare=False)

    def __post_init__(self) -> None:
        s = object.__setattr__
        try:
            s(self, "beam_center", _tuple(self.beam_center, 2, float, "#/BeamCenter"))
            s(self, "distance_mm", _num(self.distance_mm, float, "#/DedectorDistanceMM"))
            s(self, "imagesize", _tuple(self.imagesize, 2, int, "#/Imagesize"))
            px = self.pixel_size_um
            if isinstance(px, (int, float)) and not isinstance(px, bool):
                px = (px, px)
            s(self, "pixel_size_um", _tuple(px, 2, float, "#/PixelSizeMicroM"))
            s(self, "wavelength_A", _num(self.wavelength_A, float, "#/Wavelength"))
            s(self, "tilt_angle_deg", _num(self.tilt_angle_deg, float, "#/Tilt/TiltAngleDeg"))
            s(self, "tilt_rot_deg", _num(self.tilt_rot_deg, float, "#/Tilt/TiltRotDeg"))
            s(self, "oversampling", _num(self.oversampling, _strict_int, "#/Oversampling"))
            s(
                self,
                "pixel_per_radial_element",
                _num(self.pixel_per_radial_element, float, "#/PixelPerRadialElement"),
            )
            if self.mask_file is not None:
                s(self, "mask_file", os.path.abspath(os.fspath(self.mask_file)))
            if self.polarization is not None:
                s(
                    self,
                    "polarization",
                    _tuple(self.polarization, 2, float, "#/PolarizationCorrection"),
                )
            for name, jp in (("q_start", "#/qStart"), ("q_stop", "#/qStop")):
                if getattr(self, name) is not None:
                    s(self, name, _num(getattr(self, name), float, jp))
            if self.source is not None:
                s(self, "source", os.fspath(self.source))
        except CalibrationError as exc:
            raise CalibrationError(exc.reason, self.source, exc.json_path) from None
        # everything else (ranges, finiteness) by the schema, on the flat form
        for v in (
            *self.beam_center,
            self.distance_mm,
            *self.pixel_size_um,
            self.wavelength_A,
            self.tilt_angle_deg,
            self.tilt_rot_deg,
            self.pixel_per_radial_element,
        ):
            if not math.isfinite(v):
                raise CalibrationError(f"non-finite value {v}", self.source, "#")
        validate_dict(self.to_dict("flat"), self.source)

    # -- construction ---------------------------------------------------------------
    @classmethod
    def from_dict(
        cls,
        d: dict[str, Any],
        base_dir: PathLike | None = None,
        mask_index: int = 0,
        source: PathLike | None = None,
    ) -> Calibration:
        """Build from a flat or nested calibration dict (docs/calibration.md).

        Parameters
        ----------
        d : dict
            The flat or nested form, as read from a calibration JSON file.
        base_dir : str or path-like, optional
            Folder a relative MaskFile is resolved against (default: the folder of
            ``source``, else the current directory).
        mask_index : int
            Which mask of a nested dict's ``Masks`` list.
        source : str or path-like, optional
            The file ``d`` came from, named in errors.

        Returns
        -------
        Calibration

        Raises
        ------
        CalibrationError
            Naming ``source`` and the JSON path of the first invalid field.

        Examples
        --------
        >>> cal = gpusaxs.Calibration.from_dict(
        ...     {  # doctest: +SKIP
        ...         "BeamCenter": [500.0, 400.0],
        ...         "DedectorDistanceMM": 1000.0,
        ...         "Imagesize": [1043, 981],
        ...         "PixelSizeMicroM": [172.0],
        ...         "Wavelength": 1.54,
        ...         "Tilt": {"TiltAngleDeg": 0.0, "TiltRotDeg": 0.0},
        ...         "Oversampling": 3,
        ...         "PixelPerRadialElement": 1.0,
        ...         "MaskFile": None,
        ...     }
        ... )
        """
        if isinstance(d, dict) and isinstance(d.get("Geometry"), str):
            raise CalibrationError(
                "a PONI file reference is only read from a calibration file "
                "(Calibration.from_file); give the geometry itself here",
                source,
                "#/Geometry",
            )
        validate_dict(d, source)
        flat = to_flat_dict(d, mask_index, source)
        if base_dir is None:
            base_dir = (
                os.path.dirname(os.path.abspath(source)) if source is not None else os.getcwd()
            )
        mask = flat.get("MaskFile")
        if mask is not None:
            mask = os.path.normpath(os.path.join(os.fspath(base_dir), os.path.expanduser(mask)))
        dist: Any = flat.get("DedectorDistanceMM", flat.get("DetectorDistanceMM"))
        px = flat["PixelSizeMicroM"]
        pol = flat.get("PolarizationCorrection")
        return cls(
            title=flat.get("Title"),
            beam_center=flat["BeamCenter"],
            distance_mm=dist,
            imagesize=flat["Imagesize"],
            pixel_size_um=(px[0], px[0]) if len(px) == 1 else px,
            wavelength_A=flat["Wavelength"],
            tilt_angle_deg=flat["Tilt"]["TiltAngleDeg"],
            tilt_rot_deg=flat["Tilt"]["TiltRotDeg"],
            oversampling=flat["Oversampling"],
            pixel_per_radial_element=flat["PixelPerRadialElement"],
            mask_file=mask,
            polarization=None if pol is None else (pol["Fraction"], pol["Angle"]),
            q_start=flat.get("qStart"),
            q_stop=flat.get("qStop"),
            source=None if source is None else os.fspath(source),
        )

    @classmethod
    def from_file(cls, path: PathLike, mask_index: int = 0) -> Calibration:
        """Load a calibration file.

        Parameters
        ----------
        path : str or path-like
            JSON (flat or nested form; ``"Geometry": "x.poni"`` takes the geometry from a PONI
            file) or a pyFAI .poni file (its geometry, ``gpusaxs.poni.PONI_DEFAULTS`` for the
            rest).  A relative MaskFile is resolved against the file's folder.
        mask_index : int
            Which mask of a nested file's ``Masks`` list.

        Returns
        -------
        Calibration

        Raises
        ------
        CalibrationError
            Naming the file and the JSON path of the first invalid field.

        Examples
        --------
        >>> cal = gpusaxs.Calibration.from_file("calibration.json")  # doctest: +SKIP
        >>> cal.distance_mm, cal.wavelength_A  # doctest: +SKIP
        (1000.0, 1.54)
        """
        path = os.fspath(path)
        return cls.from_dict(
            read_calibration_file(path),
            base_dir=os.path.dirname(os.path.abspath(path)),
            mask_index=mask_index,
            source=path,
        )

    @classmethod
    def all_from_file(cls, path: PathLike) -> list[Calibration]:
        """One Calibration per mask of a nested file (a flat file gives a one-element list).

        Parameters
        ----------
        path : str or path-like
            The calibration file (JSON or .poni).

        Returns
        -------
        list of Calibration
        """
        path = os.fspath(path)
        d = read_calibration_file(path)
        form = validate_dict(d, path)
        n = len(d["Masks"]) if form == "nested" else 1
        base = os.path.dirname(os.path.abspath(path))
        return [cls.from_dict(d, base_dir=base, mask_index=i, source=path) for i in range(n)]

    def replace(self, **changes: Any) -> Calibration:
        """A copy with some attributes changed (validated again).

        Parameters
        ----------
        **changes
            Attribute names and their new values, e.g. ``oversampling=2``.

        Returns
        -------
        Calibration
        """
        return dataclasses.replace(self, **changes)

    # -- output ---------------------------------------------------------------------
    def to_dict(self, form: str = "flat", relative_to: PathLike | None = None) -> dict[str, Any]:
        """The calibration as a JSON-ready dict, ``form`` = ``"flat"`` or ``"nested"``.

        ``PixelSizeMicroM`` is always written as ``[y, x]``, the distance as
        ``DedectorDistanceMM`` (the specification's spelling). MaskFile is absolute unless
        ``relative_to`` (a folder) is given and the mask lies inside it.

        Parameters
        ----------
        form : {"flat", "nested"}
            The form of docs/calibration.md.
        relative_to : str or path-like, optional
            Folder MaskFile is written relative to, when the mask lies inside it.

        Returns
        -------
        dict
            Plain JSON types.
        """
        if form not in ("flat", "nested"):
            raise ValueError(f"form must be 'flat' or 'nested', not {form!r}")
        mask = self.mask_file
        if mask is not None and relative_to is not None:
            rel = os.path.relpath(mask, os.path.abspath(os.fspath(relative_to)))
            if not rel.startswith(os.pardir):
                mask = rel
        d: dict[str, Any] = {}
        if self.title is not None:
            d["Title"] = self.title
        d["Tilt"] = {"TiltRotDeg": self.tilt_rot_deg, "TiltAngleDeg": self.tilt_angle_deg}
        d["BeamCenter"] = list(self.beam_center)
        d["DedectorDistanceMM"] = self.distance_mm
        d["Imagesize"] = list(self.imagesize)
        d["MaskFile"] = mask
        d["Oversampling"] = self.oversampling
        d["PixelSizeMicroM"] = list(self.pixel_size_um)
        d["PixelPerRadialElement"] = self.pixel_per_radial_element
        d["Wavelength"] = self.wavelength_A
        if self.polarization is not None:
            d["PolarizationCorrection"] = {
                "Fraction": self.polarization[0],
                "Angle": self.polarization[1],
            }
        if self.q_start is not None:
            d["qStart"] = self.q_start
        if self.q_stop is not None:
            d["qStop"] = self.q_stop
        return d if form == "flat" else to_nested_dict(d)

    def to_json(self, path: PathLike, form: str = "flat") -> None:
        """Write the calibration file atomically; MaskFile relative to its folder when inside it.

        Parameters
        ----------
        path : str or path-like
            The JSON file.
        form : {"flat", "nested"}
            As :meth:`to_dict`.
        """
        path = os.fspath(path)
        write_json_atomic(
            path, self.to_dict(form, relative_to=os.path.dirname(os.path.abspath(path)))
        )

    def load_mask(self) -> BoolArray:
        """The calibration's mask.

        Returns
        -------
        ndarray of bool, shape ``imagesize``
            True = excluded; all False without a mask file.
        """
        if self.mask_file is None:
            return np.zeros(self.imagesize, dtype=bool)
        mask = np.asarray(read_mask(self.mask_file, shape=self.imagesize), dtype=bool)
        hidden = float(mask.mean()) if mask.size else 0.0
        if hidden > MASKED_FRACTION_WARNING:
            warnings.warn(
                f"{self.mask_file}: the mask hides {100 * hidden:.1f} % of the pixels; "
                "is its convention inverted? (non-zero = masked, as fit2d's .msk)",
                UserWarning,
                stacklevel=2,
            )
        return mask

    def key(self) -> str:
        """Stable sha256 hex digest of the geometry, binning, polarization, q range and mask.

        Title and source do not enter.

        Returns
        -------
        str
            64 lower-case hex digits; names the matrix in the cache and is written into every
            curve.

        Raises
        ------
        CalibrationError
            If the mask file is unreadable.
        """
        fields: dict[str, Any] = {
            "beam_center": [v.hex() for v in self.beam_center],
            "distance_mm": self.distance_mm.hex(),
            "imagesize": list(self.imagesize),
            "pixel_size_um": [v.hex() for v in self.pixel_size_um],
            "wavelength_A": self.wavelength_A.hex(),
            "tilt_angle_deg": self.tilt_angle_deg.hex(),
            "tilt_rot_deg": self.tilt_rot_deg.hex(),
            "oversampling": self.oversampling,
            "pixel_per_radial_element": self.pixel_per_radial_element.hex(),
            "polarization": None
            if self.polarization is None
            else [v.hex() for v in self.polarization],
            "q_start": None if self.q_start is None else self.q_start.hex(),
            "q_stop": None if self.q_stop is None else self.q_stop.hex(),
        }
        if self.mask_file is None:
            fields["mask_sha256"] = None
        else:
            try:
                fields["mask_sha256"] = _hash_file(self.mask_file)
            except OSError as exc:
                raise CalibrationError(
                    f"cannot read mask file {self.mask_file}: {exc.strerror or exc}",
                    self.source,
                    "#/MaskFile",
                ) from None
        blob = json.dumps({"gpusaxs-calibration-key": 1, **fields}, sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()

    def check_limits(self, q_edges: Any = None, **limits: int) -> dict[str, int]:
        """Check that building this calibration's matrix stays within memory and time limits.

        Parameters
        ----------
        q_edges : array_like, optional
            Radial bin edges, when not the calibration's own.
        **limits : int
            ``pixels=``, ``subpixels=``, ``bins=`` or ``matrix_bytes=`` overrides a limit of
            ``LIMITS``.

        Returns
        -------
        dict
            The estimates checked: pixels, subpixels, bins, matrix_bytes.

        Raises
        ------
        CalibrationError
            Naming the field and the limit (see :func:`check_limits`).
        """
        return check_limits(self, q_edges=q_edges, **limits)

    # -- pyFAI ----------------------------------------------------------------------
    def to_poni(self) -> dict[str, Any]:
        """The geometry as pyFAI's PONI (SI units).

        Returns
        -------
        dict
            dist, poni1, poni2 (m), rot1, rot2, rot3 (rad), pixel1, pixel2 (m), max_shape
            (rows, columns), wavelength (m).
        """
        py, px = self.pixel_size_um
        g: dict[str, Any] = fit2d_to_poni(
            self.distance_mm,
            self.beam_center[1],
            self.imagesize[0] - self.beam_center[0],
            self.tilt_angle_deg,
            -self.tilt_rot_deg,
            px,
            py,
        )
        g["max_shape"] = list(self.imagesize)
        g["wavelength"] = self.wavelength_A / 1e10
        return g


def as_calibration(cal: Any, base_dir: PathLike | None = None) -> Calibration:
    """``cal`` as a Calibration: itself, or loaded from a dict or a file (JSON or .poni)."""
    if isinstance(cal, Calibration):
        return cal
    if isinstance(cal, dict):
        return Calibration.from_dict(cal, base_dir=base_dir)
    if isinstance(cal, (str, os.PathLike)):
        return Calibration.from_file(cal)
    raise TypeError(f"expected a Calibration, a dict or a path, not {type(cal).__name__}")
