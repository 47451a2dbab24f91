"""The calibration file: load, validate, convert (SAXS 0.3.0, section 3).

Two JSON forms are accepted (see docs/calibration.md and
``gpusaxs/schemas/calibration.schema.json``):

* the *flat* form of the specification (``Tilt``, ``BeamCenter``,
  ``DedectorDistanceMM``, ``Imagesize``, ``MaskFile``, ...), and
* the *nested* form ``{"Geometry": {...}, "Wavelength": ..., "Masks": [...]}``
  with one geometry and one or more masks.

:class:`Calibration` is the validated, immutable in-memory form (one mask).
A pyFAI ``.poni`` file is accepted wherever a calibration file is (its geometry, with
documented defaults for what it lacks), and a JSON calibration may take its geometry from one
(``"Geometry": "x.poni"``); the conversions are in :mod:`gpusaxs.poni`.

Conventions: ``BeamCenter`` is ``[Y, X]`` in pixels with Y counted from the
*bottom* edge (fit2d); in a NumPy image read top-down the beam sits at row
``imagesize[0] - Y``, column ``X``. ``PixelSizeMicroM`` is ``[size]`` or
``[along rows (Y), along columns (X)]``.
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import functools
import hashlib
import json
import math
import os
import warnings
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, Literal, TypeVar

import numpy as np

from gpusaxs._typing import BoolArray, PathLike
from gpusaxs.errors import CalibrationError
from gpusaxs.io.atomic import atomic_write
from gpusaxs.physical_ranges import MASKED_FRACTION_WARNING, check_physical_ranges

# PONI <-> fit2d conversion lives in gpusaxs.poni; the names stay importable from here
from gpusaxs.poni import fit2d_to_poni, format_poni, poni_to_fit2d, read_poni  # noqa: F401

__all__ = [
    "Calibration",
    "FLAT_DEFAULTS",
    "SCHEMA_PATH",
    "load_schema",
    "read_json",
    "validate_dict",
    "to_flat_dict",
    "to_nested_dict",
    "write_json_atomic",
    "fit2d_to_poni",
    "poni_to_fit2d",
    "read_poni",
    "format_poni",
    "calibration_file_kind",
    "read_calibration_file",
    "expand_poni_reference",
    "LIMITS",
    "check_limits",
    "estimate_matrix_bytes",
    "radial_bin_count",
]

SCHEMA_PATH = Path(__file__).resolve().parent / "schemas" / "calibration.schema.json"

#: Defaults of the specification (section 3.1) for the required flat-form fields;
#: ``saxsconverter`` fills missing fields with them. PolarizationCorrection is optional
#: and deliberately not defaulted (absent = no correction).
FLAT_DEFAULTS = {
    "Tilt": {"TiltRotDeg": 0, "TiltAngleDeg": 0},
    "BeamCenter": [808.37, 387.772],
    "DedectorDistanceMM": 1031.657,
    "Imagesize": [1043, 981],
    "MaskFile": "AAA_integ.msk",
    "Oversampling": 3,
    "PixelSizeMicroM": [172.0],
    "PixelPerRadialElement": 1,
    "Wavelength": 1.54,
}

DISTANCE_KEYS = ("DedectorDistanceMM", "DetectorDistanceMM")
GEOMETRY_KEYS = (
    "Tilt",
    "BeamCenter",
    "DedectorDistanceMM",
    "DetectorDistanceMM",
    "Imagesize",
    "PixelSizeMicroM",
)
MASK_KEYS = ("MaskFile", "Oversampling", "PixelPerRadialElement", "qStart", "qStop")


# ----------------------------------------------------------------------------- schema
@functools.lru_cache(maxsize=1)
def load_schema() -> dict[str, Any]:
    """The calibration JSON schema (draft 2020-12) as a dict."""
    with open(SCHEMA_PATH, encoding="utf-8") as fh:
        schema: dict[str, Any] = json.load(fh)
        return schema


@functools.lru_cache(maxsize=2)
def _validator(form: str) -> Any:
    import jsonschema

    schema = load_schema()
    sub = {"$schema": schema["$schema"], "$defs": schema["$defs"], "$ref": f"#/$defs/{form}"}
    return jsonschema.Draft202012Validator(sub)


def _json_path(parts: Iterable[object]) -> str:
    return "#" + "".join(f"/{p}" for p in parts)


def _error_from_schema(err: Any, path: PathLike | None) -> CalibrationError:
    """Turn a jsonschema ValidationError into a CalibrationError naming the field."""
    parts = list(err.absolute_path)
    inst = err.instance
    if err.validator == "required" and isinstance(inst, dict):
        missing = [k for k in err.validator_value if k not in inst]
        if missing:
            return CalibrationError(
                "required field is missing" + _did_you_mean(missing[0], inst),
                path,
                _json_path(parts + missing[:1]),
            )
    if err.validator == "additionalProperties" and isinstance(inst, dict):
        allowed = list(err.schema.get("properties", {}))
        extra = [k for k in inst if k not in allowed and not str(k).startswith("_")]
        if extra:
            hint = difflib.get_close_matches(extra[0], allowed, n=1)
            reason = "unknown field" + (
                f" (did you mean {hint[0]!r}?)" if hint else f" (allowed: {', '.join(allowed)})"
            )
            return CalibrationError(reason, path, _json_path(parts + extra[:1]))
    if err.validator == "type":
        want = err.validator_value
        want = " or ".join(want) if isinstance(want, list) else want
        return CalibrationError(
            f"expected {want}, got {json.dumps(inst)[:60]}", path, _json_path(parts)
        )
    if err.validator in ("minItems", "maxItems"):
        return CalibrationError(
            f"wrong number of items ({len(inst)}): {err.schema.get('description', err.message)}",
            path,
            _json_path(parts),
        )
    return CalibrationError(err.message, path, _json_path(parts))


def _did_you_mean(missing: str, block: Iterable[object]) -> str:
    """' (found "Wavelenght": did you mean "Wavelength"?)' when a key of ``block`` is a likely
    misspelling of the missing field ``missing``, else ''."""
    unknown = [k for k in block if isinstance(k, str) and k != missing]
    close = difflib.get_close_matches(missing, unknown, n=1, cutoff=0.75)
    return f" (found {close[0]!r}: did you mean {missing!r}?)" if close else ""


def _check_distance_keys(block: object, path: PathLike | None, prefix: list[str]) -> None:
    if not isinstance(block, dict):
        return
    present = [k for k in DISTANCE_KEYS if k in block]
    if len(present) == 2:
        raise CalibrationError(
            "both DedectorDistanceMM and DetectorDistanceMM given; use exactly one",
            path,
            _json_path(prefix + ["DetectorDistanceMM"]),
        )
    if not present:
        hint = _did_you_mean("DetectorDistanceMM", block) or _did_you_mean(
            "DedectorDistanceMM", block
        )
        raise CalibrationError(
            "required field is missing (DetectorDistanceMM is accepted as a synonym)" + hint,
            path,
            _json_path(prefix + ["DedectorDistanceMM"]),
        )


# Schema validation (jsonschema) costs ~0.3 s of imports at every start; its outcome depends
# only on the schema and the document, so a document once found valid is remembered by the
# sha256 of both: in this process, and as an empty marker file in the matrix cache folder.
_VALID: set[str] = set()


def _validated_digest(d: object, form: str) -> str | None:
    try:
        text = json.dumps(d, sort_keys=True, allow_nan=False)
    except (TypeError, ValueError):
        return None  # not plain JSON (e.g. NumPy numbers): always validate
    h = hashlib.sha256(SCHEMA_PATH.read_bytes())
    h.update(form.encode() + b"\0" + text.encode())
    return h.hexdigest()


def _marker_folder() -> Path | None:
    from gpusaxs.cache_dir import default_cache_dir

    folder = default_cache_dir()
    return None if folder is None else folder / "validated"


def _known_valid(digest: str) -> bool:
    """True if ``digest`` was found valid before: in this process, or by a marker this user
    signed in the cache folder (:func:`gpusaxs.matrix_cache.marker_valid`; a planted marker
    does not count)."""
    if digest in _VALID:
        return True
    from gpusaxs.matrix_cache import marker_valid

    folder = _marker_folder()
    if folder is not None and marker_valid(folder, digest):
        _VALID.add(digest)
        return True
    return False


def _remember_valid(digest: str | None) -> None:
    if digest is None:
        return
    _VALID.add(digest)
    from gpusaxs.matrix_cache import write_marker

    folder = _marker_folder()
    if folder is not None:
        write_marker(folder, digest)  # False when it cannot: validated again next time


def validate_dict(d: Any, path: PathLike | None = None) -> Literal["flat", "nested"]:
    """Validate a calibration dict; return its form, ``"flat"`` or ``"nested"``.

    Raises :class:`CalibrationError` naming ``path`` and the JSON path of the first problem.
    """
    if not isinstance(d, dict):
        raise CalibrationError(f"expected a JSON object, got {type(d).__name__}", path, "#")
    form: Literal["flat", "nested"] = "nested" if ("Geometry" in d or "Masks" in d) else "flat"
    if form == "nested":
        _check_distance_keys(d.get("Geometry"), path, ["Geometry"])
    else:
        _check_distance_keys(d, path, [])
    digest = _validated_digest(d, form)
    if digest is None or not _known_valid(digest):
        from jsonschema.exceptions import best_match

        err = best_match(_validator(form).iter_errors(d))
        if err is not None:
            raise _error_from_schema(err, path)
        _remember_valid(digest)
    check_physical_ranges(d, form, path)  # every time: cheap, and never skipped by a marker
    masks = d["Masks"] if form == "nested" else [d]
    for i, m in enumerate(masks):
        if "qStart" in m and "qStop" in m and not m["qStart"] < m["qStop"]:
            prefix = ["Masks", i] if form == "nested" else []
            raise CalibrationError(
                f"qStop ({m['qStop']}) must be larger than qStart ({m['qStart']})",
                path,
                _json_path(prefix + ["qStop"]),
            )
    return form


# ----------------------------------------------------------------------------- JSON files
def _no_duplicates(pairs: Iterable[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in pairs:
        if k in out:
            raise ValueError(f"duplicate key {k!r}")
        out[k] = v
    return out


def _bad_constant(name: str) -> Any:
    raise ValueError(f"{name} is not allowed")


def _read_bytes(path: PathLike, limit: int = -1) -> bytes:
    """The file's bytes (the first ``limit`` of them), or a CalibrationError naming it."""
    try:
        with open(path, "rb") as fh:
            return fh.read(limit)
    except FileNotFoundError:
        raise CalibrationError("file not found", path, "#") from None
    except IsADirectoryError:
        raise CalibrationError("is a directory, not a calibration file", path, "#") from None
    except OSError as exc:
        raise CalibrationError(f"cannot read file: {exc.strerror or exc}", path, "#") from None


def read_json(path: PathLike) -> Any:
    """Parse a JSON file with precise errors (line/column, duplicate keys, NaN) as
    CalibrationError."""
    path = os.fspath(path)
    raw = _read_bytes(path)
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise CalibrationError(f"not UTF-8 text (byte {exc.start})", path, "#") from None
    try:
        return json.loads(text, object_pairs_hook=_no_duplicates, parse_constant=_bad_constant)
    except json.JSONDecodeError as exc:
        # some messages end in "at" ("Unterminated string starting at"): no second "at"
        where = "" if exc.msg.endswith(" at") else " at"
        raise CalibrationError(
            f"not valid JSON: {exc.msg}{where} line {exc.lineno}, column {exc.colno}", path, "#"
        ) from None
    except ValueError as exc:
        raise CalibrationError(f"not valid JSON: {exc}", path, "#") from None


def write_json_atomic(path: PathLike, data: Any) -> None:
    """Write ``data`` as indented JSON to ``path`` atomically (temp file in the same folder +
    os.replace)."""
    with atomic_write(path, "w", fsync=True) as fh:
        json.dump(data, fh, indent=2)
        fh.write("\n")


# ----------------------------------------------------------------------------- file kinds
EXPECTED_KINDS = "expected a JSON calibration file (docs/calibration.md) or a pyFAI .poni file"


def calibration_file_kind(path: PathLike) -> Literal["json", "poni"]:
    """``"json"`` or ``"poni"``, judged from the suffix and the content.

    Raises CalibrationError for a missing file or one of another kind (an image, an HDF5 file,
    other text), saying what was expected.
    """
    path = os.fspath(path)
    head = _read_bytes(path, 1 << 16)
    if head.startswith(b"\x89HDF"):
        raise CalibrationError(f"an HDF5 file, not a calibration file; {EXPECTED_KINDS}", path, "#")
    if b"\0" in head:
        raise CalibrationError(
            f"a binary file (an image?), not a calibration file; {EXPECTED_KINDS}", path, "#"
        )
    from gpusaxs.poni import looks_like_poni

    text = head.decode("utf-8-sig", errors="replace")
    if path.lower().endswith(".poni") or looks_like_poni(text):
        return "poni"
    if path.lower().endswith(".json") or text.lstrip().startswith(("{", "[")):
        return "json"
    raise CalibrationError(f"not a calibration file; {EXPECTED_KINDS}", path, "#")


def read_calibration_file(path: PathLike) -> Any:
    """The calibration dict of a JSON calibration or a .poni file (PONI references expanded)."""
    path = os.fspath(path)
    from gpusaxs.poni import calibration_dict_from_poni

    if calibration_file_kind(path) == "poni":
        return calibration_dict_from_poni(path)
    d = read_json(path)
    if isinstance(d, dict) and isinstance(d.get("Geometry"), str):
        d = expand_poni_reference(d, os.path.dirname(os.path.abspath(path)), path)
    return d


def expand_poni_reference(
    d: dict[str, Any], base_dir: PathLike, path: PathLike | None = None
) -> dict[str, Any]:
    """A calibration dict whose ``"Geometry"`` names a .poni file (relative to ``base_dir``)
    with the geometry filled in from it: the flat form, or the nested form when ``Masks`` is
    given. The other fields (MaskFile, Oversampling, PolarizationCorrection, Wavelength, ...)
    are kept; what neither gives gets ``gpusaxs.poni.PONI_DEFAULTS``."""
    from gpusaxs.poni import PONI_DEFAULTS, calibration_dict_from_poni

    rest = {k: copy.deepcopy(v) for k, v in d.items() if k != "Geometry"}
    poni_path = os.path.join(os.fspath(base_dir), os.path.expanduser(d["Geometry"]))
    try:
        if "Masks" not in rest:
            return calibration_dict_from_poni(poni_path, overrides=rest)
        flat = calibration_dict_from_poni(
            poni_path, overrides={k: v for k, v in rest.items() if k in ("Wavelength", "Imagesize")}
        )
    except CalibrationError as exc:
        raise CalibrationError(f"Geometry {d['Geometry']!r}: {exc}", path, "#/Geometry") from None
    out = dict(rest)
    out["Geometry"] = {k: flat[k] for k in GEOMETRY_KEYS if k in flat}
    out["Wavelength"] = flat["Wavelength"]
    for m in out["Masks"]:
        if isinstance(m, dict):
            for k, v in PONI_DEFAULTS.items():
                m.setdefault(k, v)
    return out


# ----------------------------------------------------------------------------- form conversion
def to_flat_dict(
    d: dict[str, Any], mask_index: int = 0, path: PathLike | None = None
) -> dict[str, Any]:
    """Flat-form copy of a (validated) calibration dict; a nested one gives mask ``mask_index``.

    Unknown-to-flat fields of the nested form (Directory, Threads) are dropped.
    """
    if "Geometry" not in d and "Masks" not in d:
        return copy.deepcopy(d)
    masks = d.get("Masks", [])
    if not -len(masks) <= mask_index < len(masks):
        raise CalibrationError(
            f"mask index {mask_index} out of range ({len(masks)} mask(s))", path, "#/Masks"
        )
    out: dict[str, Any] = {}
    if "Title" in d:
        out["Title"] = d["Title"]
    out.update(copy.deepcopy(d["Geometry"]))
    out["Wavelength"] = d["Wavelength"]
    out.update(copy.deepcopy(masks[mask_index]))
    if "PolarizationCorrection" in d:
        out["PolarizationCorrection"] = copy.deepcopy(d["PolarizationCorrection"])
    return out


def to_nested_dict(d: dict[str, Any]) -> dict[str, Any]:
    """Nested-form copy of a (validated) calibration dict (a nested one is returned as a copy)."""
    if "Geometry" in d or "Masks" in d:
        return copy.deepcopy(d)
    out: dict[str, Any] = {}
    if "Title" in d:
        out["Title"] = d["Title"]
    out["Geometry"] = {k: copy.deepcopy(d[k]) for k in GEOMETRY_KEYS if k in d}
    out["Wavelength"] = d["Wavelength"]
    out["Masks"] = [{k: d[k] for k in MASK_KEYS if k in d}]
    if "PolarizationCorrection" in d:
        out["PolarizationCorrection"] = copy.deepcopy(d["PolarizationCorrection"])
    for k, v in d.items():  # keep "_comment" keys
        if k.startswith("_"):
            out[k] = copy.deepcopy(v)
    return out


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
        from gpusaxs.io.masks import read_mask

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


# ----------------------------------------------------------------------------- size limits
#: Bounds on what a calibration may make the matrix builder do (checked before building).
#: ``pixels``: Imagesize rows x columns (an 8192 x 8192 frame; EIGER2 16M has 18 M pixels);
#: ``subpixels``: pixels x Oversampling^2, the builder's work (about a minute on 2 cores);
#: ``bins``: radial bins (a .chi of 100 000 rows is 4.5 MB); ``matrix_bytes``: the estimated
#: memory of the built matrix (:func:`estimate_matrix_bytes`).
LIMITS = {"pixels": 1 << 26, "subpixels": 1 << 28, "bins": 100_000, "matrix_bytes": 2 << 30}


def _largest_q(cal: Calibration) -> float:
    """Largest q (nm^-1) at the four detector corners (the matrix's q range is up to this)."""
    from gpusaxs.geometry import _offsets, q_from_two_theta, two_theta_of_offsets

    height, width = (float(v) for v in cal.imagesize)
    dx, dy = _offsets(cal, np.array([0.0, height]), np.array([0.0, width]))
    return float(q_from_two_theta(two_theta_of_offsets(cal, dx, dy).max(), cal.wavelength_A))


def radial_bin_count(cal: Calibration, q_edges: Any = None) -> int:
    """Number of radial bins the matrix of ``cal`` will have (as ``matrix.default_q_edges``),
    without building anything: the corner distance in pixels / PixelPerRadialElement over
    [0, q_max], scaled to [qStart, qStop] when given."""
    if q_edges is not None:
        return max(len(q_edges) - 1, 0)
    from gpusaxs.matrix import max_radius_mm

    pixel_mm = float(np.mean(cal.pixel_size_um)) * 1e-3
    n_full = max(1, int(max_radius_mm(cal) / pixel_mm / cal.pixel_per_radial_element))
    q_start, q_stop = getattr(cal, "q_start", None), getattr(cal, "q_stop", None)
    if q_start is None and q_stop is None:
        return n_full
    q_hi = _largest_q(cal)
    lo = 0.0 if q_start is None else q_start
    hi = q_hi if q_stop is None else q_stop
    return max(1, int(math.ceil((hi - lo) / (q_hi / n_full) - 1e-9))) if q_hi > 0 else 1


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
        q_hi = _largest_q(cal)
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
        elif q_stop is not None and q_stop > 2 * _largest_q(cal):
            field, why = (
                "#/qStop",
                (
                    f"qStop {q_stop:g} nm^-1 is far beyond the largest q on the "
                    f"detector, {_largest_q(cal):.4g} nm^-1"
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
