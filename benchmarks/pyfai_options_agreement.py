"""Agreement of each integrate1d/integrate2d option with pyFAI: prints a table, writes JSON.

    python benchmarks/pyfai_options_agreement.py [--reference ../shared/reference]

Two set-ups (the same as tests/test_options_pyfai.py):
* "tilted, no split": a real-size tilted synthetic frame (tests/helpers.tilted_synthetic_frame),
  Oversampling 1 against pyFAI's method ("no", "csr", "cython"): same binning, so any
  difference is one of definitions;
* "reference, split": the reference frame and calibration (Oversampling 3) against pyFAI's
  ("full", "csr", "cython"): the two pixel-splitting schemes differ by themselves.
Per option: median and 95th percentile over the bins of |ours - pyFAI| / |pyFAI|.
Writes benchmarks/results/pyfai-options.json.
"""

import argparse
import json
import sys
import tempfile
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

import gpusaxs  # noqa: E402
from tests.helpers import pyfai_integrator, tilted_synthetic_frame  # noqa: E402


def agreement(ours, theirs):
    both = np.isfinite(ours) & np.isfinite(theirs) & (np.abs(theirs) > 0)
    rel = np.abs(ours[both] - theirs[both]) / np.abs(theirs[both])
    return float(np.median(rel)), float(np.percentile(rel, 95)), int(both.sum())


def cases(dark, flat):
    """(name, our keywords, pyFAI keywords, compared attribute)."""
    every = dict(dark=dark, flat=flat, polarization_factor=0.9, normalization_factor=2.5)
    rows = [
        ("no option", {}, {}, "intensity"),
        (
            "correct_solid_angle",
            dict(correct_solid_angle=True),
            dict(correctSolidAngle=True),
            "intensity",
        ),
        ("dark", dict(dark=dark), dict(dark=dark), "intensity"),
        ("flat (+ dark)", dict(flat=flat, dark=dark), dict(flat=flat, dark=dark), "intensity"),
        (
            "polarization_factor 0.9",
            dict(polarization_factor=0.9),
            dict(polarization_factor=0.9),
            "intensity",
        ),
        (
            "normalization_factor 2.5",
            dict(normalization_factor=2.5),
            dict(normalization_factor=2.5),
            "intensity",
        ),
        (
            "all corrections",
            dict(correct_solid_angle=True, **every),
            dict(correctSolidAngle=True, **every),
            "intensity",
        ),
    ]
    for unit in ("q_A^-1", "2th_deg", "2th_rad", "r_mm"):
        rows.append((f"unit {unit}", dict(unit=unit), dict(unit=unit), "intensity"))
    rows += [
        (
            "radial_range",
            dict(radial_range=(0.5, 2.5), npt=400),
            dict(radial_range=(0.5, 2.5), npt=400),
            "intensity",
        ),
        (
            "azimuth_range (60, 120)",
            dict(azimuth_range=(60.0, 120.0)),
            dict(azimuth_range=(60.0, 120.0)),
            "intensity",
        ),
        (
            "sigma, error_model poisson",
            dict(error_model="poisson"),
            dict(error_model="poisson"),
            "sigma",
        ),
        (
            "sigma, error_model azimuthal",
            dict(error_model="azimuthal"),
            dict(error_model="azimuthal"),
            "sigma",
        ),
        (
            "std, error_model azimuthal",
            dict(error_model="azimuthal"),
            dict(error_model="azimuthal"),
            "std",
        ),
    ]
    return rows


def run_setup(name, integ, ai, image, mask, method, dark, flat, npt):
    rows = []
    for label, ours_kw, pyfai_kw, attr in cases(dark, flat):
        kw = dict(ours_kw)
        n = kw.pop("npt", npt)
        ours = integ.integrate1d(image, npt=n, **kw)
        build = {k: v for k, v in kw.items() if k in ("unit", "radial_range", "azimuth_range")}
        edges = integ.option_engine(npt=n, **build)[0].q_edges
        pkw = {k: v for k, v in pyfai_kw.items() if k not in ("npt", "radial_range")}
        pkw.setdefault("correctSolidAngle", False)
        theirs = ai.integrate1d(
            image, n, radial_range=(edges[0], edges[-1]), mask=mask, method=method, **pkw
        )
        med, p95, bins = agreement(getattr(ours, attr), getattr(theirs, attr))
        rows.append(dict(setup=name, option=label, median=med, p95=p95, bins=bins))
    ours = integ.integrate2d(image, 300, 36, unit="2th_deg")
    edges = integ.option_engine(
        npt=300, unit="2th_deg", azimuth_range=(-180.0, 180.0), azimuth_npt=36
    )[0].q_edges
    theirs = ai.integrate2d(
        image,
        300,
        36,
        unit="2th_deg",
        radial_range=(edges[0], edges[-1]),
        azimuth_range=(-180.0, 180.0),
        mask=mask,
        method=method,
        correctSolidAngle=False,
    )
    med, p95, bins = agreement(ours.intensity, theirs.intensity)
    rows.append(
        dict(setup=name, option="integrate2d (36 x 300, 2th_deg)", median=med, p95=p95, bins=bins)
    )
    wrap = integ.integrate1d(image, npt=npt, azimuth_range=(150.0, -150.0))
    if np.isfinite(wrap.intensity).sum() > 100:
        edges = integ.option_engine(npt=npt)[0].q_edges
        ai.setChiDiscAtZero()
        theirs = ai.integrate1d(
            image,
            npt,
            radial_range=(edges[0], edges[-1]),
            mask=mask,
            azimuth_range=(150.0, 210.0),
            method=method,
            correctSolidAngle=False,
        )
        ai.setChiDiscAtPi()
        med, p95, bins = agreement(wrap.intensity, theirs.intensity)
        rows.append(
            dict(
                setup=name,
                option="azimuth_range (150, -150), through 180",
                median=med,
                p95=p95,
                bins=bins,
            )
        )
    return rows


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reference", default=str(HERE.parent.parent / "shared" / "reference"))
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        cal, image, dark, flat = tilted_synthetic_frame(folder)
        rows += run_setup(
            "tilted, no split",
            gpusaxs.Integrator(cal, backend="numpy"),
            pyfai_integrator(cal),
            image,
            image < 0,
            ("no", "csr", "cython"),
            dark,
            flat,
            800,
        )
    ref = Path(args.reference)
    if (ref / "buf1_00000.tif").is_file():
        cal = gpusaxs.Calibration.from_file(ref / "buf1_00000.calibration.json")
        image = gpusaxs.read_image(ref / "buf1_00000.tif")
        rng = np.random.default_rng(4)
        rows += run_setup(
            "reference, split",
            gpusaxs.Integrator(cal, backend="numpy"),
            pyfai_integrator(cal),
            image,
            cal.load_mask() | (image < 0),
            ("full", "csr", "cython"),
            rng.uniform(0, 2, image.shape),
            rng.uniform(0.8, 1.2, image.shape),
            1002,
        )
    print("| set-up | option | median abs(dI)/I | 95th percentile | bins |")
    print("| --- | --- | --- | --- | --- |")
    for r in rows:
        print(
            f"| {r['setup']} | {r['option']} | {r['median']:.1e} | {r['p95']:.1e} | {r['bins']} |"
        )
    out = HERE / "results" / "pyfai-options.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
