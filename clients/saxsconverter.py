"""saxsconverter: fit2d calibration output / pyFAI .poni / calibration file conversions.

    saxsconverter [options] INPUT OUTPUT

INPUT is fit2d's refined-geometry text (calibration.txt), a pyFAI .poni file or a
calibration JSON file; OUTPUT is a calibration JSON file or a .poni file.
See ``saxsconverter --help`` and docs/calibration.md.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import os
import sys

from gpusaxs.calibration_file import (
    DISTANCE_KEYS,
    FLAT_DEFAULTS,
    read_json,
    to_flat_dict,
    to_nested_dict,
    validate_dict,
    write_json_atomic,
)
from gpusaxs.calibration_model import Calibration
from gpusaxs.clients.fit2d_text import FIT2D_NAMES, parse_fit2d
from gpusaxs.errors import CalibrationError, ImageReadError
from gpusaxs.io.atomic import atomic_write
from gpusaxs.io.images import read_image
from gpusaxs.poni import format_poni, poni_geometry, read_poni

EPILOG = """\
INPUT kinds (detected): a pyFAI .poni file (suffix .poni or --from-poni), a calibration
JSON file (flat or nested form), otherwise fit2d's text output after a powder calibration.
OUTPUT kinds: a .poni file (suffix .poni or --to-poni), otherwise a calibration JSON file.

fit2d lines understood (the last occurrence wins; fit2d prints X before Y):
  INFO: Refined Beam centre =      388.277     807.874 (pixels)
  INFO: Best fit beam centre (X/Y pixels) = 388.2765 807.8745
  INFO: Refined sample to detector distance =     1031.657 mm
  INFO: Refined wavelength =      1.54000 Angstroms
  INFO: Refined tilt plane rotation angle =       73.595 degrees
  INFO: Best fit angle of tilt plane rotation (degrees) = 73.59509
  INFO: Refined tilt angle =      -10.006 degrees
  INFO: Best fit angle of tilt (degrees) = -10.00601
They become BeamCenter = [Y, X], DedectorDistanceMM, Wavelength and
Tilt {TiltRotDeg, TiltAngleDeg}. A beam centre line is required; other values not found
are kept from the base file (with a warning on stderr).

The base that supplies all other fields is, in this order: OUTPUT if it exists and is a
valid calibration (it is then updated in place, atomically), else the --template file,
else nothing. saxsconverter invents no measurement: the detector (Imagesize,
PixelSizeMicroM) comes from the base, a PONI file, --image/--imagesize and --pixel-size;
the geometry from INPUT or the base; the mask from the base or --mask (none otherwise:
MaskFile null). A missing one is an error that says how to give it. Only settings are
filled with the specification's defaults (Tilt 0, Oversampling 3, PixelPerRadialElement
1); PolarizationCorrection is never added. A relative MaskFile is rewritten so that it
still points to the same file from OUTPUT's folder.

Examples:
  saxsconverter --image buf1_00000.tif --pixel-size 172 --mask AAA_integ.msk \
      calibration.txt cal.json                      # fit2d -> new cal.json
  saxsconverter calibration.txt cal.json            # fit2d -> update an existing cal.json
  saxsconverter -t old.json calibration.txt new.json
  saxsconverter cal.json cal.poni                   # calibration -> pyFAI PONI
  saxsconverter -t cal.json pyfai.poni new.json     # PONI geometry + cal.json's mask etc.
  saxsconverter --nested flat.json nested.json      # flat -> nested form
  saxsconverter --flat --mask-index 1 nested.json second.json

Exit status: 0 on success, 2 on any error (the message names the file and the field).
"""


class ConvertError(Exception):
    """A user error: printed as one line, exit status 2."""


# ------------------------------------------------------------------------------- dict helpers
def _geometry_block(d):
    """The dict holding the geometry fields (top level of a flat dict, Geometry of a nested one)."""
    return d["Geometry"] if "Geometry" in d else d


def _mask_blocks(d):
    return d["Masks"] if "Masks" in d else [d]


def _set_distance(block, value):
    key = next((k for k in DISTANCE_KEYS if k in block), "DedectorDistanceMM")
    for k in DISTANCE_KEYS:
        block.pop(k, None)
    block[key] = value


#: settings (not measurements) that a new calibration may take from the specification's
#: defaults; the detector (Imagesize, PixelSizeMicroM), the geometry (BeamCenter, distance,
#: Wavelength) and the mask are never invented (issue 22.6)
SETTING_DEFAULTS = {k: FLAT_DEFAULTS[k] for k in ("Tilt", "Oversampling", "PixelPerRadialElement")}
#: fields a calibration needs that only the user's data can supply -> how to give them
REQUIRED_FROM_USER = {
    "Imagesize": "-t TEMPLATE, --image FRAME or --imagesize H W",
    "PixelSizeMicroM": "-t TEMPLATE or --pixel-size UM [UM]",
    "BeamCenter": "the input's beam centre",
    "distance": "the input's sample to detector distance or -t TEMPLATE",
    "Wavelength": "the input's wavelength or -t TEMPLATE",
}


def _fill_defaults(d):
    """Add the specification's defaults for missing *settings* (in place): Tilt (none),
    Oversampling, PixelPerRadialElement. A new file without a mask gets ``MaskFile: null``."""
    geo = _geometry_block(d)
    for k, v in SETTING_DEFAULTS.items():
        if k in ("Oversampling", "PixelPerRadialElement"):
            if "Masks" in d:
                if not d["Masks"]:
                    d["Masks"].append({})
                for m in d["Masks"]:
                    if isinstance(m, dict):
                        m.setdefault(k, v)
            else:
                d.setdefault(k, v)
        else:
            geo.setdefault(k, copy.deepcopy(v))
    if isinstance(geo.get("Tilt"), dict):
        for k, v in FLAT_DEFAULTS["Tilt"].items():
            geo["Tilt"].setdefault(k, v)
    for m in _mask_blocks(d):
        if isinstance(m, dict):
            m.setdefault("MaskFile", None)
    return d


def _fill_for_check(d):
    """A copy of ``d`` with the specification's defaults in the fields it lacks: only for
    validating the fields ``d`` has, never written."""
    d = copy.deepcopy(d)
    geo = _geometry_block(d)
    for k, v in FLAT_DEFAULTS.items():
        if k == "DedectorDistanceMM":
            if not any(dk in geo for dk in DISTANCE_KEYS):
                geo[k] = v
        elif k == "Wavelength":
            d.setdefault(k, v)
        elif k not in ("MaskFile", "Oversampling", "PixelPerRadialElement"):
            geo.setdefault(k, copy.deepcopy(v))
    return d


def _missing_fields(d):
    """Names (of REQUIRED_FROM_USER) that ``d`` lacks."""
    geo = _geometry_block(d)
    missing = []
    for k in REQUIRED_FROM_USER:
        if k == "distance":
            if not any(dk in geo for dk in DISTANCE_KEYS):
                missing.append(k)
        elif k == "Wavelength":
            if k not in d:
                missing.append(k)
        elif k not in geo:
            missing.append(k)
    return missing


def _detector_updates(args):
    """Detector fields given on the command line: --image / --imagesize, --pixel-size."""
    upd = {}
    if args.imagesize:
        upd["Imagesize"] = list(args.imagesize)
    elif args.image:
        try:
            upd["Imagesize"] = list(read_image(args.image).shape[-2:])
        except (ImageReadError, OSError) as exc:
            raise ConvertError(f"--image {args.image}: cannot read: {exc}") from None
    if args.pixel_size:
        upd["PixelSizeMicroM"] = list(args.pixel_size)
    return upd


def _rebase_masks(d, from_dir, to_dir):
    """Rewrite relative MaskFile entries so they point to the same file from ``to_dir``."""
    from_dir, to_dir = os.path.abspath(from_dir), os.path.abspath(to_dir)
    if from_dir == to_dir:
        return d
    for m in _mask_blocks(d):
        mf = m.get("MaskFile")
        if isinstance(mf, str) and not os.path.isabs(os.path.expanduser(mf)):
            target = os.path.normpath(os.path.join(from_dir, mf))
            try:
                m["MaskFile"] = os.path.relpath(target, to_dir)
            except ValueError:  # other drive (Windows)
                m["MaskFile"] = target
    return d


def _closest_representation(tilt, rot, ref_tilt):
    """fit2d's (tilt, rot) equals (-tilt, rot + 180): keep the sign of the base file's tilt."""
    if ref_tilt is not None and ref_tilt < 0 < tilt:
        tilt, rot = -tilt, rot + 180.0
        if rot > 180.0:
            rot -= 360.0
    return tilt, rot


def _load_base(args, out_is_poni, warn):
    """(dict, folder) that supplies the fields the input does not."""
    if not out_is_poni and os.path.exists(args.output):
        try:
            d = read_json(args.output)
            validate_dict(d, args.output)
            return d, os.path.dirname(os.path.abspath(args.output)), args.output
        except CalibrationError as exc:
            if not args.force:
                raise ConvertError(
                    f"{exc} (OUTPUT exists and is not a valid calibration; "
                    "fix or remove it, or pass --force to overwrite)"
                ) from None
            warn(f"overwriting invalid {args.output}: {exc.reason}")
    if args.template:
        d = read_json(args.template)
        if not isinstance(d, dict):
            raise CalibrationError("expected a JSON object", args.template, "#")
        _fill_defaults(d)
        # the fields it has are checked now (naming the template); the geometry it may lack
        # comes from INPUT, so the specification's defaults stand in for the check alone
        validate_dict(_fill_for_check(d), args.template)
        return d, os.path.dirname(os.path.abspath(args.template)), args.template
    return _fill_defaults({}), os.getcwd(), None


# ------------------------------------------------------------------------------- main
def build_parser():
    p = argparse.ArgumentParser(
        prog="saxsconverter",
        usage="saxsconverter [options] INPUT OUTPUT",
        description="Put fit2d's refined geometry (calibration.txt) into a SAXS calibration file, "
        "and convert between calibration files (flat/nested) and pyFAI .poni files.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "input",
        metavar="INPUT",
        help="fit2d calibration output (e.g. calibration.txt), a .poni file or a calibration "
        "JSON file",
    )
    p.add_argument(
        "output",
        metavar="OUTPUT",
        help="calibration JSON file to create or update in place (e.g. cal.json), or a .poni file",
    )
    p.add_argument(
        "-t",
        "--template",
        metavar="FILE",
        help="calibration file supplying the fields INPUT does not (mask, image size, ...), "
        "used when OUTPUT does not exist yet; e.g. -t beamline.json",
    )
    p.add_argument(
        "--mask",
        metavar="FILE",
        help="mask file to name in OUTPUT (fit2d .msk or image; stored relative to OUTPUT's "
        "folder); without it a new calibration has no mask (MaskFile null); e.g. --mask "
        "AAA_integ.msk",
    )
    p.add_argument(
        "--image",
        metavar="FRAME",
        help="a detector frame whose shape gives Imagesize (fit2d's output holds no image "
        "size); e.g. --image buf1_00000.tif",
    )
    p.add_argument(
        "--imagesize",
        nargs=2,
        type=int,
        metavar=("H", "W"),
        help="Imagesize [rows, columns] in pixels instead of --image; e.g. --imagesize 1043 981",
    )
    p.add_argument(
        "--pixel-size",
        type=_pixel_size,
        metavar="UM[,UM]",
        help="pixel size in micrometre, one value (square) or two (along rows, along columns); "
        "e.g. --pixel-size 172 or --pixel-size 75,100",
    )
    p.add_argument(
        "--to-poni",
        action="store_true",
        help="write OUTPUT as a pyFAI PONI (version 2) file whatever its suffix; "
        "e.g. saxsconverter --to-poni cal.json geometry.txt",
    )
    p.add_argument(
        "--from-poni",
        action="store_true",
        help="read INPUT as a pyFAI .poni file whatever its suffix; "
        "e.g. saxsconverter --from-poni -t cal.json geometry.txt new.json",
    )
    form = p.add_mutually_exclusive_group()
    form.add_argument(
        "--nested",
        action="store_true",
        help="write OUTPUT in the nested form (Geometry + Masks); "
        "e.g. --nested flat.json nested.json",
    )
    form.add_argument(
        "--flat",
        action="store_true",
        help="write OUTPUT in the flat form of the specification (one mask, see --mask-index); "
        "e.g. --flat nested.json flat.json",
    )
    p.add_argument(
        "--mask-index",
        type=int,
        default=0,
        metavar="N",
        help="which entry of a nested file's Masks to use for --flat (default 0); "
        "e.g. --mask-index 1",
    )
    p.add_argument(
        "-f",
        "--force",
        action="store_true",
        help="overwrite OUTPUT even when it exists but is not a valid calibration file",
    )
    p.add_argument("-q", "--quiet", action="store_true", help="print nothing but errors")
    return p


def _pixel_size(text):
    """``"172"`` -> [172.0]; ``"75,100"`` -> [75.0, 100.0] (micrometre, > 0)."""
    try:
        values = [float(v) for v in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number or two: {text!r}") from None
    if not 1 <= len(values) <= 2 or not all(v > 0 for v in values):
        raise argparse.ArgumentTypeError(f"one or two sizes > 0 in micrometre, not {text!r}")
    return values


def _input_kind(args):
    if args.from_poni or args.input.lower().endswith(".poni"):
        return "poni"
    if args.input.lower().endswith(".json"):
        return "json"
    try:
        with open(args.input, encoding="utf-8-sig") as fh:
            head = fh.read(1 << 16)
    except FileNotFoundError:
        raise ConvertError(f"{args.input}: file not found") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConvertError(f"{args.input}: cannot read: {exc}") from None
    return "json" if head.lstrip().startswith("{") else "fit2d"


def _updates_from_fit2d(args, warn):
    try:
        with open(args.input, encoding="utf-8", errors="replace") as fh:
            text = fh.read()
    except FileNotFoundError:
        raise ConvertError(f"{args.input}: file not found") from None
    except OSError as exc:
        raise ConvertError(f"{args.input}: cannot read: {exc.strerror or exc}") from None
    found = parse_fit2d(text)
    if "beam" not in found:
        raise ConvertError(
            f"{args.input}: no beam centre line found (expected e.g. "
            "'INFO: Refined Beam centre = 388.277 807.874 (pixels)')"
        )
    if ("tilt" in found) != ("tilt_rot" in found):
        have, miss = ("tilt", "tilt_rot") if "tilt" in found else ("tilt_rot", "tilt")
        raise ConvertError(
            f"{args.input}: {FIT2D_NAMES[have]} line found but no {FIT2D_NAMES[miss]} line"
        )
    for key in ("distance", "wavelength", "tilt"):
        if key not in found:
            warn(f"{args.input}: no {FIT2D_NAMES[key]} line found; keeping the base value")
    x, y = found["beam"]
    upd = {"BeamCenter": [y, x]}
    if "distance" in found:
        upd["distance"] = found["distance"]
    if "wavelength" in found:
        upd["Wavelength"] = found["wavelength"]
    if "tilt" in found:
        upd["Tilt"] = {"TiltRotDeg": found["tilt_rot"], "TiltAngleDeg": found["tilt"]}
    return upd


def _updates_from_poni(args, base, warn):
    try:
        p = read_poni(args.input)
    except FileNotFoundError:
        raise ConvertError(f"{args.input}: file not found") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConvertError(f"{args.input}: cannot read: {exc}") from None
    except ValueError as exc:
        raise ConvertError(f"{args.input}: {exc}") from None
    geo = _geometry_block(base)
    imagesize = _detector_updates(args).get("Imagesize", geo.get("Imagesize"))
    try:  # any pyFAI orientation; the image shape from the base file when the PONI has none
        g = poni_geometry(p, imagesize=imagesize)
    except ValueError as exc:
        raise ConvertError(f"{args.input}: {exc}") from None
    upd = {"Imagesize": g["Imagesize"]}
    py, px = (round(v, 9) for v in g["PixelSizeMicroM"])  # strip m -> um noise
    upd["PixelSizeMicroM"] = (
        [py] if py == px and len(geo.get("PixelSizeMicroM", [])) == 1 else [py, px]
    )
    if abs(g["twist_rad"]) > 1e-9:
        warn(
            f"{args.input}: Rot3 includes a rotation of {math.degrees(g['twist_rad']):.6g} degree "
            "about the beam that fit2d's geometry cannot hold; dropped (changes only the azimuth)"
        )
    if p["orientation"] != 3:
        warn(
            f"{args.input}: detector orientation {p['orientation']} converted to the image as read "
            "(2theta exact; the azimuth is measured on the image as read)"
        )
    ref_tilt = (
        geo.get("Tilt", {}).get("TiltAngleDeg") if isinstance(geo.get("Tilt"), dict) else None
    )
    tilt, rot = _closest_representation(
        g["Tilt"]["TiltAngleDeg"], g["Tilt"]["TiltRotDeg"], ref_tilt
    )
    if tilt == 0:
        rot = 0.0
    upd["Tilt"] = {"TiltRotDeg": _clean(rot), "TiltAngleDeg": _clean(tilt)}
    upd["BeamCenter"] = [_clean(v) for v in g["BeamCenter"]]
    upd["distance"] = _clean(g["DedectorDistanceMM"])
    if g["Wavelength"]:
        upd["Wavelength"] = _clean(g["Wavelength"])
    else:
        warn(f"{args.input}: no Wavelength; keeping the base value")
    return upd


def _with_user_fields(d, args, in_dir):
    """``d`` with the command line's --image/--imagesize, --pixel-size and --mask applied (a
    relative --mask is taken from the current folder and stored relative to ``in_dir``)."""
    d = _apply(d, _detector_updates(args))
    if args.mask is not None:
        mask = os.path.expanduser(args.mask)
        if not os.path.isabs(mask):
            mask = os.path.relpath(os.path.abspath(mask), in_dir)
        for m in _mask_blocks(d):
            m["MaskFile"] = mask
    return d


def _clean(value):
    """Strip unit-conversion noise: 12 significant digits (1e-12 relative, far below any
    precision)."""
    return float(f"{value:.12g}") + 0.0


def _apply(base, upd):
    d = copy.deepcopy(base)
    geo = _geometry_block(d)
    for k, v in upd.items():
        if k == "distance":
            _set_distance(geo, v)
        elif k == "Wavelength":
            d[k] = v
        else:
            geo[k] = v
    return d


def run(args, warn):
    out_is_poni = args.to_poni or args.output.lower().endswith(".poni")
    kind = _input_kind(args)
    out_dir = os.path.dirname(os.path.abspath(args.output))
    os.makedirs(out_dir, exist_ok=True)  # an output folder that does not exist yet
    if kind == "json":
        d = read_json(args.input)
        validate_dict(d, args.input)
        in_dir = os.path.dirname(os.path.abspath(args.input))
        d = _with_user_fields(d, args, in_dir)
        source = args.input
    else:
        if kind == "poni" and out_is_poni:
            raise ConvertError("both INPUT and OUTPUT are .poni files; nothing to convert")
        base, in_dir, base_path = _load_base(args, out_is_poni, warn)
        upd = (
            _updates_from_fit2d(args, warn)
            if kind == "fit2d"
            else _updates_from_poni(args, base, warn)
        )
        d = _with_user_fields(_apply(base, upd), args, in_dir)
        missing = _missing_fields(d)
        if missing:
            raise ConvertError(
                f"{args.input}: the calibration needs "
                + "; ".join(f"{k} (give {REQUIRED_FROM_USER[k]})" for k in missing)
                + ". saxsconverter invents no detector or geometry values"
            )
        validate_dict(d, base_path or args.output)
        source = args.input
    if out_is_poni:
        cal = Calibration.from_dict(d, base_dir=in_dir, mask_index=args.mask_index, source=source)
        text = format_poni(
            cal.to_poni(), comment=f"written by saxsconverter from {os.path.basename(source)}"
        )
        _write_text_atomic(args.output, text)
        return cal
    if args.flat:
        d = to_flat_dict(d, args.mask_index, args.input)
    elif args.nested:
        d = to_nested_dict(d)
    _rebase_masks(d, in_dir, out_dir)
    validate_dict(d, args.output)
    write_json_atomic(args.output, d)
    return d


def _write_text_atomic(path, text):
    with atomic_write(path, "w") as fh:
        fh.write(text)


def main(argv=None):
    """Console entry point; returns the exit status (0 ok, 2 error)."""
    args = build_parser().parse_args(argv)

    def warn(msg):
        if not args.quiet:
            print(f"saxsconverter: warning: {msg}", file=sys.stderr)

    try:
        result = run(args, warn)
    except (ConvertError, CalibrationError) as exc:
        print(f"saxsconverter: error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"saxsconverter: error: {exc}", file=sys.stderr)
        return 2
    if not args.quiet:
        if isinstance(result, Calibration):
            print(f"wrote {args.output} (PONI)")
        else:
            geo = _geometry_block(result)
            dist = next(geo[k] for k in DISTANCE_KEYS if k in geo)
            print(
                f"wrote {args.output}: BeamCenter {json.dumps(geo['BeamCenter'])}, "
                f"distance {dist} mm, "
                f"Tilt {json.dumps(geo['Tilt'])}, Wavelength {result['Wavelength']} A"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
