"""pyFAI PONI geometry: read .poni files (versions 1, 2, 2.1, 3), convert to and from fit2d's.

A PONI file describes the detector by its point of normal incidence (Poni1, Poni2 in m, along
rows and columns), the distance sample-PONI (m) and three rotations (rad); ``Detector_config``
gives the pixel size, the image shape and (version 2.1) the *orientation* of the detector.
The calibration file (fit2d's convention) describes the same 2theta map by the beam centre,
the distance along the beam and a tilt (angle and tilt-plane rotation).

Orientation (pyFAI's values, version 2.1): 3 (and 0, unspecified) is pyFAI's native one, the
first image row at the smallest Poni1 coordinate. 1 flips rows and columns, 2 flips the rows,
4 flips the columns (the position of pixel ``(i, j)`` is computed from ``H-1-i`` and/or
``W-1-j``). :func:`to_orientation3` turns any of them into the native orientation with the
same 2theta for every pixel of the image as read; the conversion to fit2d then keeps 2theta
exact. What fit2d's geometry cannot hold is dropped: a rotation about the beam (the twist part
of Rot3) and, for orientations 1, 2, 4, the mirror of the azimuth; both change only the
azimuth, never 2theta. gpusaxs measures the azimuth on the image as read (docs/calibration.md).
"""

from __future__ import annotations

import json
import math
import os
from typing import Any

import numpy as np

from gpusaxs.errors import CalibrationError

__all__ = [
    "read_poni",
    "format_poni",
    "fit2d_to_poni",
    "poni_to_fit2d",
    "to_orientation3",
    "poni_geometry",
    "calibration_dict_from_poni",
    "looks_like_poni",
    "PONI_DEFAULTS",
]

#: What a PONI file does not say, and the calibration fields it then gets (docs/calibration.md).
PONI_DEFAULTS = {"MaskFile": None, "Oversampling": 3, "PixelPerRadialElement": 1}

SUPPORTED_VERSIONS = (1.0, 2.0, 2.1, 3.0)
GENERIC_DETECTORS = ("detector", "none", "")


# ----------------------------------------------------------------------------- rotations
def _rotation_to(k):
    """Rotation matrix R (no twist) with R @ e3 = k, for a unit vector k with k3 > -1."""
    k = np.asarray(k, dtype=float)
    s = math.hypot(k[0], k[1])
    c = k[2]
    if s == 0.0:
        return np.eye(3)
    ux, uy = -k[1] / s, k[0] / s  # unit axis e3 x k, in the detector plane
    kx = np.array([[0.0, 0.0, uy], [0.0, 0.0, -ux], [-uy, ux, 0.0]])
    return np.eye(3) + s * kx + (1.0 - c) * (kx @ kx)


def _pyfai_matrix(rot1, rot2, rot3):
    """pyFAI's detector-to-lab rotation: lab = M @ (p1, p2, L) (axis 3 along the beam)."""
    c1, c2, c3 = math.cos(rot1), math.cos(rot2), math.cos(rot3)
    s1, s2, s3 = math.sin(rot1), math.sin(rot2), math.sin(rot3)
    return np.array(
        [
            [c2 * c3, c3 * s1 * s2 - c1 * s3, -(c1 * c3 * s2 + s1 * s3)],
            [c2 * s3, c1 * c3 + s1 * s2 * s3, c3 * s1 - c1 * s2 * s3],
            [s2, -c2 * s1, c1 * c2],
        ]
    )


def _angles_of(m):
    """(rot1, rot2, rot3) of a pyFAI detector-to-lab matrix."""
    rot2 = math.asin(max(-1.0, min(1.0, m[2, 0])))
    rot1 = math.atan2(-m[2, 1], m[2, 2])
    rot3 = math.atan2(m[1, 0], m[0, 0])
    return rot1, rot2, rot3


# ----------------------------------------------------------------------------- fit2d <-> PONI
def fit2d_to_poni(
    distance_mm: float,
    center_x_px: float,
    center_y_px: float,
    tilt_deg: float,
    tilt_plane_rot_deg: float,
    pixel_x_um: float,
    pixel_y_um: float,
) -> dict[str, float]:
    """fit2d geometry (as pyFAI's setFit2D takes it: centre Y counted top-down) -> PONI.

    Returns dict(dist, poni1, poni2 [m], rot1, rot2, rot3 [rad], pixel1, pixel2 [m]).
    In the detector frame (axis 1 = rows, axis 2 = columns, axis 3 = normal) the beam
    direction is k = (sin t sin r, sin t cos r, cos t); the detector is turned by the
    pure tilt rotation taking the beam axis to k (no twist about the beam).
    """
    t, r = math.radians(tilt_deg), math.radians(tilt_plane_rot_deg)
    k = np.array([math.sin(t) * math.sin(r), math.sin(t) * math.cos(r), math.cos(t)])
    d = distance_mm / 1e3
    p1, p2 = pixel_y_um / 1e6, pixel_x_um / 1e6
    rot1, rot2, rot3 = _angles_of(_rotation_to(k).T)  # detector -> lab, m @ k = e3
    return {
        "dist": float(d * k[2]),
        "poni1": float(center_y_px * p1 - d * k[0]),
        "poni2": float(center_x_px * p2 - d * k[1]),
        "rot1": float(rot1),
        "rot2": float(rot2),
        "rot3": float(rot3),
        "pixel1": float(p1),
        "pixel2": float(p2),
    }


def poni_to_fit2d(dist, poni1, poni2, rot1, rot2, rot3, pixel1, pixel2):
    """PONI (m, rad; orientation 3) -> fit2d geometry as setFit2D takes it.

    Returns dict(distance_mm, center_x_px, center_y_px (top-down), tilt_deg (>= 0),
    tilt_plane_rot_deg in (-180, 180], pixel_x_um, pixel_y_um, twist_rad). ``twist_rad`` is the
    part of rot3 that fit2d cannot express (rotation about the beam; changes only the azimuth).
    """
    m = _pyfai_matrix(rot1, rot2, rot3)
    k = [float(v) for v in m[2]]  # beam direction in the detector frame
    if k[2] <= 0:
        raise ValueError("detector does not face the beam (tilt >= 90 degree)")
    tilt = math.atan2(math.hypot(k[0], k[1]), k[2])  # precise also for tiny tilts
    rot = math.atan2(k[0], k[1]) if math.hypot(k[0], k[1]) > 1e-15 else 0.0
    direct = dist / k[2]
    b1 = poni1 + direct * k[0]
    b2 = poni2 + direct * k[1]
    pure = _rotation_to(k).T
    twist_m = m @ pure.T  # rotation about the beam axis
    twist = float(math.atan2(twist_m[1, 0], twist_m[0, 0]))
    rot_deg = math.degrees(rot)
    if rot_deg <= -180.0:
        rot_deg += 360.0
    return {
        "distance_mm": direct * 1e3,
        "center_x_px": b2 / pixel2,
        "center_y_px": b1 / pixel1,
        "tilt_deg": math.degrees(tilt),
        "tilt_plane_rot_deg": rot_deg,
        "pixel_x_um": pixel2 * 1e6,
        "pixel_y_um": pixel1 * 1e6,
        "twist_rad": twist,
    }


def to_orientation3(p):
    """A PONI dict (as :func:`read_poni` returns) in orientation 3 with the same 2theta map.

    With F = diag(f1, f2, 1) (f = -1 on a flipped axis) a pixel of the image as read sits at
    F (x - poni') in pyFAI's frame, poni'_k = f_k (poni_k - c_k), c_k = size of the flipped
    axis (shape * pixel) else 0; 2theta is the angle between that vector, turned by M, and the
    beam, i.e. between (x - poni') and F k (k = the beam in the detector frame): the native
    geometry with the beam direction F k, taken as a pure tilt (no twist).
    """
    o = p.get("orientation") or 3
    if o == 3:
        return dict(p)
    if o not in (1, 2, 4):
        raise ValueError(f"detector orientation {o} is not supported (pyFAI's 1, 2, 3, 4)")
    if p.get("max_shape") is None:
        raise ValueError(f"orientation {o} needs the image shape (max_shape in Detector_config)")
    f1 = -1.0 if o in (1, 2) else 1.0
    f2 = -1.0 if o in (1, 4) else 1.0
    h, w = p["max_shape"]
    c1 = h * p["pixel1"] if f1 < 0 else 0.0
    c2 = w * p["pixel2"] if f2 < 0 else 0.0
    k = _pyfai_matrix(p["rot1"], p["rot2"], p["rot3"])[2] * np.array([f1, f2, 1.0])
    rot1, rot2, rot3 = _angles_of(_rotation_to(k).T)
    out = dict(p)
    out.update(
        poni1=f1 * (p["poni1"] - c1),
        poni2=f2 * (p["poni2"] - c2),
        rot1=rot1,
        rot2=rot2,
        rot3=rot3,
        orientation=3,
    )
    return out


# ----------------------------------------------------------------------------- files
def format_poni(poni, comment=None):
    """PONI version 2 text for a dict as returned by :meth:`Calibration.to_poni`."""
    cfg = {"pixel1": poni["pixel1"], "pixel2": poni["pixel2"], "max_shape": list(poni["max_shape"])}
    lines = ["# Nota: C-Order, 1 refers to the Y axis, 2 to the X axis"]
    if comment:
        lines += [f"# {c}" for c in str(comment).splitlines()]
    lines += [
        "poni_version: 2",
        "Detector: Detector",
        f"Detector_config: {json.dumps(cfg)}",
        f"Distance: {poni['dist']!r}",
        f"Poni1: {poni['poni1']!r}",
        f"Poni2: {poni['poni2']!r}",
        f"Rot1: {poni['rot1']!r}",
        f"Rot2: {poni['rot2']!r}",
        f"Rot3: {poni['rot3']!r}",
    ]
    if poni.get("wavelength"):
        lines.append(f"Wavelength: {poni['wavelength']!r}")
    return "\n".join(lines) + "\n"


def _key_values(text):
    keys = {}
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#") or ":" not in line:
            continue
        k, v = line.split(":", 1)
        keys[k.strip().lower()] = v.strip()  # the last occurrence wins (as in pyFAI)
    return keys


def looks_like_poni(text: str) -> bool:
    """True if ``text`` has the lines every PONI file has (Distance/Poni1/Poni2/Rot1)."""
    keys = _key_values(text)
    return all(k in keys for k in ("poni1", "poni2", "rot1")) and (
        "distance" in keys or "dist" in keys
    )


def _named_detector(name, cfg):
    """pixel1, pixel2, shape, orientation of a detector pyFAI knows by name (needs pyFAI)."""
    try:
        from pyFAI.detectors import detector_factory
    except ImportError:
        raise ValueError(
            f"detector {name!r}: its pixel size and shape are not in the file; "
            "install pyFAI (which knows it) or write Detector: Detector with "
            "pixel1, pixel2 and max_shape in Detector_config"
        ) from None
    try:
        det = detector_factory(name, cfg or None)
    except Exception as exc:  # pyFAI raises many kinds for an unknown name
        raise ValueError(f"detector {name!r} unknown to pyFAI: {exc}") from None
    shape = det.shape if det.shape is not None else det.max_shape
    return (
        float(det.pixel1),
        float(det.pixel2),
        None if shape is None else [int(s) for s in shape],
        int(getattr(det, "orientation", 3) or 3),
    )


def read_poni(path):
    """Parse a pyFAI .poni file (versions 1, 2, 2.1 and 3).

    Returns dict(version, dist, poni1, poni2, rot1, rot2, rot3, wavelength (m or None), pixel1,
    pixel2 (m), max_shape ([rows, cols] or None), orientation (1..4), detector (name)).
    Raises ValueError with a message on a malformed or unsupported file, OSError if unreadable.
    """
    with open(path, encoding="utf-8") as fh:
        keys = _key_values(fh.read())
    try:
        version = float(keys.get("poni_version", 1))
    except ValueError:
        raise ValueError(f"bad poni_version {keys['poni_version']!r}") from None
    if version > max(SUPPORTED_VERSIONS):
        raise ValueError(f"PONI version {keys['poni_version']} is not supported (1, 2, 2.1, 3)")
    for name in ("poni1", "poni2", "rot1", "rot2", "rot3"):
        if name not in keys:
            raise ValueError(f"no {name.capitalize()} line")
    dist = keys.get("distance", keys.get("dist"))
    if dist is None:
        raise ValueError("no Distance line")
    out = {"version": version, "detector": keys.get("detector", "Detector")}
    try:
        out["dist"] = float(dist)
        for name in ("poni1", "poni2", "rot1", "rot2", "rot3"):
            out[name] = float(keys[name])
        wl = keys.get("wavelength")
        out["wavelength"] = float(wl) if wl not in (None, "", "None") else None
    except ValueError as exc:
        raise ValueError(f"bad number: {exc}") from None
    cfg = {}
    if "detector_config" in keys:
        try:
            cfg = json.loads(keys["detector_config"])
        except json.JSONDecodeError as exc:
            raise ValueError(f"Detector_config is not JSON: {exc.msg}") from None
        if not isinstance(cfg, dict):
            raise ValueError("Detector_config is not a JSON object")
    if keys.get("parallax", "false").lower() == "true":
        raise ValueError("Parallax: True (parallax correction) is not supported")
    spline = cfg.get("splineFile") or cfg.get("splinefile") or keys.get("splinefile")
    if spline and str(spline).lower() != "none":
        raise ValueError("spline (distortion) files are not supported")
    p1 = cfg.get("pixel1", keys.get("pixelsize1"))
    p2 = cfg.get("pixel2", keys.get("pixelsize2"))
    shape = cfg.get("max_shape")
    orientation = cfg.get("orientation")
    generic = out["detector"].lower() in GENERIC_DETECTORS
    if not generic:
        # a named detector (Pilatus1M, Eiger4M, ...): pyFAI knows its pixels, shape, binning
        # and default orientation, with the file's Detector_config applied
        p1, p2, nshape, orientation = _named_detector(out["detector"], cfg)
        shape = nshape if nshape is not None else shape
    if p1 is None or p2 is None:
        raise ValueError("no pixel size (pixel1/pixel2 in Detector_config, or PixelSize1/2)")
    try:
        out["pixel1"], out["pixel2"] = float(p1), float(p2)
        out["max_shape"] = None if shape is None else [int(shape[0]), int(shape[1])]
        out["orientation"] = int(orientation or 3)
    except (TypeError, ValueError, IndexError):
        raise ValueError("bad pixel size, max_shape or orientation in Detector_config") from None
    if out["orientation"] not in (0, 1, 2, 3, 4):
        raise ValueError(
            f"detector orientation {out['orientation']} is not supported (pyFAI's 1, 2, 3, 4)"
        )
    out["orientation"] = out["orientation"] or 3
    return out


# ----------------------------------------------------------------------------- to a calibration
def poni_geometry(p, imagesize=None):
    """The fit2d-convention geometry of a PONI dict (any orientation).

    Returns dict(BeamCenter [Y from the bottom, X] px, DedectorDistanceMM, Tilt {TiltAngleDeg,
    TiltRotDeg}, Imagesize [H, W], PixelSizeMicroM [y, x], Wavelength (Angstrom or None),
    twist_rad). ``imagesize`` is used when the PONI has no max_shape.
    """
    shape = p.get("max_shape") or (None if imagesize is None else list(imagesize))
    if shape is None:
        raise ValueError("no image shape (max_shape in Detector_config)")
    q = to_orientation3({**p, "max_shape": shape})
    f = poni_to_fit2d(
        q["dist"], q["poni1"], q["poni2"], q["rot1"], q["rot2"], q["rot3"], q["pixel1"], q["pixel2"]
    )
    tilt, rot = f["tilt_deg"], -f["tilt_plane_rot_deg"]
    if tilt == 0:
        rot = 0.0
    return {
        "BeamCenter": [shape[0] - f["center_y_px"], f["center_x_px"]],
        "DedectorDistanceMM": f["distance_mm"],
        "Tilt": {"TiltAngleDeg": tilt, "TiltRotDeg": rot},
        "Imagesize": [int(shape[0]), int(shape[1])],
        "PixelSizeMicroM": [q["pixel1"] * 1e6, q["pixel2"] * 1e6],
        "Wavelength": None if not p.get("wavelength") else p["wavelength"] * 1e10,
        "twist_rad": f["twist_rad"],
    }


def calibration_dict_from_poni(
    path: str | os.PathLike[str], overrides: dict[str, Any] | None = None
) -> dict[str, Any]:
    """A flat calibration dict from a .poni file: its geometry, PONI_DEFAULTS for the rest.

    ``overrides``: calibration fields given next to the PONI (e.g. by a JSON file with
    ``"Geometry": "x.poni"``), applied on top; they must supply Wavelength when the PONI has
    none. Raises CalibrationError naming the file.
    """
    path = os.fspath(path)
    try:
        p = read_poni(path)
        imagesize = (overrides or {}).get("Imagesize")
        g = poni_geometry(p, imagesize)
    except FileNotFoundError:
        raise CalibrationError("PONI file not found", path, "#") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise CalibrationError(
            f"cannot read PONI file: {getattr(exc, 'strerror', None) or exc}", path, "#"
        ) from None
    except ValueError as exc:
        raise CalibrationError(f"not a usable pyFAI PONI file: {exc}", path, "#") from None
    d = dict(PONI_DEFAULTS)
    d.update({k: v for k, v in g.items() if k not in ("twist_rad", "Wavelength")})
    if g["Wavelength"] is not None:
        d["Wavelength"] = g["Wavelength"]
    d.update(overrides or {})
    if "Wavelength" not in d:
        raise CalibrationError(
            "the PONI file has no Wavelength; give one next to it "
            '(a calibration file with "Geometry": "x.poni", "Wavelength")',
            path,
            "#/Wavelength",
        )
    return d
