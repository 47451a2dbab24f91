"""CPU cost of the pyFAI-style options, next to pyFAI's same call, in one run on this machine.

    python benchmarks/bench_options.py [--reference ../shared/reference] [--frames 16]

The reference frame (PILATUS 1M, Poisson-resampled to a stack of int32 frames), its calibration
(mask, Oversampling 3).  Rows: integrate1d_batch with the options off; with solid angle + flat +
polarization + a 60 deg sector (all folded into the matrix); the same plus a dark (applied by
the engine once it implements ``pixel_offset``; here it says which engine ran it); pyFAI's
integrate1d (full/csr/cython) per frame with the same options.  Frames/s are per frame; the
machine is shared and noisy, so compare the ratios of one run.  Matrix builds are not timed
(cached per option set).  Writes benchmarks/results/options-cpu.json.
"""

import argparse
import json
import logging
import sys
import warnings
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

import gpusaxs  # noqa: E402
from benchmarks.bench_cpu import best_of  # noqa: E402
from tests.helpers import pyfai_integrator  # noqa: E402


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reference", default=str(HERE.parent.parent / "shared" / "reference"))
    parser.add_argument("--frames", type=int, default=16)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    logging.disable(logging.WARNING)
    warnings.filterwarnings("ignore")
    ref = Path(args.reference)
    cal = gpusaxs.Calibration.from_file(ref / "buf1_00000.calibration.json")
    image = gpusaxs.read_image(ref / "buf1_00000.tif")
    rng = np.random.default_rng(0)
    stack = np.stack(
        [np.where(image < 0, image, rng.poisson(np.maximum(image, 0))) for _ in range(args.frames)]
    ).astype(np.int32)
    flat = rng.uniform(0.9, 1.1, image.shape)
    dark = rng.uniform(0.0, 2.0, image.shape)
    integ = gpusaxs.Integrator(cal, backend="numpy")
    n_bins = integ.matrix.n_bins
    options = dict(
        correct_solid_angle=True, flat=flat, polarization_factor=0.9, azimuth_range=(60.0, 120.0)
    )
    ai = pyfai_integrator(cal)
    mask = cal.load_mask() | (image < 0)
    pyfai_kw = dict(
        unit="q_nm^-1",
        mask=mask,
        method=("full", "csr", "cython"),
        radial_range=(integ.q_edges[0], integ.q_edges[-1]),
    )
    rows = []

    def ours(name, **kw):
        engine = integ.option_engine(
            **{k: v for k, v in kw.items() if k not in ("normalization_factor",)}
        )[1]
        t = best_of(lambda: integ.integrate1d_batch(stack, **kw), args.repeat) / args.frames
        rows.append(dict(case=name, engine=engine.name, frames_per_s=1.0 / t))

    def theirs(name, **kw):
        t = best_of(lambda: [ai.integrate1d(f, n_bins, **pyfai_kw, **kw) for f in stack[:4]], 1) / 4
        rows.append(dict(case=name, engine="pyFAI", frames_per_s=1.0 / t))

    ours("gpusaxs, options off (poisson sigma)")
    ours("gpusaxs, solid angle + flat + polarization + sector", **options)
    ours("gpusaxs, the same + dark", dark=dark, **options)
    theirs("pyFAI, options off (poisson sigma)", correctSolidAngle=False, error_model="poisson")
    theirs(
        "pyFAI, solid angle + flat + polarization + sector",
        correctSolidAngle=True,
        flat=flat,
        polarization_factor=0.9,
        azimuth_range=(60.0, 120.0),
        error_model="poisson",
    )
    theirs(
        "pyFAI, the same + dark",
        correctSolidAngle=True,
        flat=flat,
        dark=dark,
        polarization_factor=0.9,
        azimuth_range=(60.0, 120.0),
        error_model="poisson",
    )
    base = {r["case"].split(", ", 1)[1]: r["frames_per_s"] for r in rows if r["engine"] == "pyFAI"}
    print(f"{args.frames} PILATUS 1M int32 frames, {n_bins} bins (shared machine: compare ratios)")
    print("| case | engine | frames/s | x pyFAI's same call |")
    print("| --- | --- | --- | --- |")
    for r in rows:
        r["vs_pyfai"] = r["frames_per_s"] / base[r["case"].split(", ", 1)[1]]
        print(f"| {r['case']} | {r['engine']} | {r['frames_per_s']:.0f} | {r['vs_pyfai']:.1f} |")
    out = HERE / "results" / "options-cpu.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(dict(frames=args.frames, n_bins=n_bins, rows=rows), indent=1))


if __name__ == "__main__":
    main()
