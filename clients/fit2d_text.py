"""fit2d's text output after a powder calibration (calibration.txt): the refined-geometry lines
saxsconverter reads (:func:`parse_fit2d`), in fit2d's several spellings."""

import re

NUM = r"([-+]?(?:\d+\.?\d*|\.\d+)(?:[EeDd][-+]?\d+)?)"
FIT2D_PATTERNS = {
    "beam": [
        re.compile(
            r"Refined\s+beam\s+cent(?:re|er)\s*=\s*" + NUM + r"\s+" + NUM + r"\s*\(\s*pixels?\s*\)",
            re.I,
        ),
        re.compile(
            r"Best\s+fit\s+beam\s+cent(?:re|er)\s*\(\s*X\s*/\s*Y\s+pixels?\s*\)\s*=\s*"
            + NUM
            + r"\s+"
            + NUM,
            re.I,
        ),
    ],
    "distance": [
        re.compile(
            r"(?:Refined|Best\s+fit)\s+sample\s+to\s+detector\s+distance\s*(?:\(\s*mm\s*\))?\s*=\s*"
            + NUM,
            re.I,
        )
    ],
    "wavelength": [
        re.compile(
            r"(?:Refined|Best\s+fit)\s+wavelength\s*(?:\(\s*Angstroms?\s*\))?\s*=\s*" + NUM, re.I
        )
    ],
    "tilt_rot": [
        re.compile(
            r"Refined\s+tilt\s+plane\s+rotation\s+angle\s*(?:\(\s*degrees\s*\))?\s*=\s*" + NUM, re.I
        ),
        re.compile(
            r"Best\s+fit\s+angle\s+of\s+tilt\s+plane\s+rotation\s*(?:\(\s*degrees\s*\))?\s*=\s*"
            + NUM,
            re.I,
        ),
    ],
    "tilt": [
        re.compile(r"Refined\s+tilt\s+angle\s*(?:\(\s*degrees\s*\))?\s*=\s*" + NUM, re.I),
        re.compile(r"Best\s+fit\s+angle\s+of\s+tilt\s*(?:\(\s*degrees\s*\))?\s*=\s*" + NUM, re.I),
    ],
}
FIT2D_NAMES = {
    "beam": "beam centre",
    "distance": "sample to detector distance",
    "wavelength": "wavelength",
    "tilt_rot": "tilt plane rotation",
    "tilt": "tilt angle",
}


def _f(text):
    return float(text.replace("D", "E").replace("d", "e"))


def parse_fit2d(text):
    """Values found in fit2d output: dict with some of beam (x, y), distance, wavelength,
    tilt_rot, tilt."""
    found = {}
    for line in text.splitlines():
        for key, patterns in FIT2D_PATTERNS.items():
            for pat in patterns:
                m = pat.search(line)
                if m:
                    vals = tuple(_f(g) for g in m.groups())
                    found[key] = vals if key == "beam" else vals[0]
    return found
