"""The calibration file format (SAXS 0.3.0, section 3): schema, validation, file kinds, the
flat and nested JSON forms, and PONI references; no geometry, no matrix (issue 24).

Two JSON forms are accepted (see docs/calibration.md and
``gpusaxs/schemas/calibration.schema.json``):

* the *flat* form of the specification (``Tilt``, ``BeamCenter``,
  ``DedectorDistanceMM``, ``Imagesize``, ``MaskFile``, ...), and
* the *nested* form ``{"Geometry": {...}, "Wavelength": ..., "Masks": [...]}``
  with one geometry and one or more masks.

A pyFAI ``.poni`` file is accepted wherever a calibration file is (its geometry, with
documented defaults for what it lacks), and a JSON calibration may take its geometry from one
(``"Geometry": "x.poni"``); the conversions are in :mod:`gpusaxs.poni`. The validated object
is :class:`gpusaxs.calibration_model.Calibration`.
"""

from __future__ import annotations

import copy
import difflib
import functools
import hashlib
import json
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any, Literal

from gpusaxs._typing import PathLike
from gpusaxs.cache_dir import default_cache_dir, marker_valid, write_marker
from gpusaxs.errors import CalibrationError
from gpusaxs.io.atomic import atomic_write
from gpusaxs.physical_ranges import check_physical_ranges
from gpusaxs.poni import PONI_DEFAULTS, calibration_dict_from_poni, looks_like_poni

__all__ = [
    "FLAT_DEFAULTS",
    "SCHEMA_PATH",
    "load_schema",
    "read_json",
    "validate_dict",
    "to_flat_dict",
    "to_nested_dict",
    "write_json_atomic",
    "calibration_file_kind",
    "read_calibration_file",
    "expand_poni_reference",
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
    folder = default_cache_dir()
    return None if folder is None else folder / "validated"


def _known_valid(digest: str) -> bool:
    """True if ``digest`` was found valid before: in this process, or by a marker this user
    signed in the cache folder (:func:`gpusaxs.cache_dir.marker_valid`; a planted marker
    does not count)."""
    if digest in _VALID:
        return True
    folder = _marker_folder()
    if folder is not None and marker_valid(folder, digest):
        _VALID.add(digest)
        return True
    return False


def _remember_valid(digest: str | None) -> None:
    if digest is None:
        return
    _VALID.add(digest)
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
    text = head.decode("utf-8-sig", errors="replace")
    if path.lower().endswith(".poni") or looks_like_poni(text):
        return "poni"
    if path.lower().endswith(".json") or text.lstrip().startswith(("{", "[")):
        return "json"
    raise CalibrationError(f"not a calibration file; {EXPECTED_KINDS}", path, "#")


def read_calibration_file(path: PathLike) -> Any:
    """The calibration dict of a JSON calibration or a .poni file (PONI references expanded)."""
    path = os.fspath(path)
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
