"""Grazing-incidence maps and cuts of a stack against pyFAI's FiberIntegrator frame by frame,
in one run on this machine (issue 28).

    python benchmarks/bench_grazing.py [--reference ../shared/reference] [--frames 16]
                                       [--npt 200,500,1000] [--repeat 3]

The reference frame (PILATUS 1M, Poisson-resampled to a stack of int32 frames), its calibration
(mask, Oversampling 3), incident angle 0.5 deg, tilt 3.0 deg, (npt x npt) qip/qoop maps of
each size asked (1000 is pyFAI's default).
gpusaxs: ``integrate2d_grazing_incidence_batch`` of the whole stack in one engine pass (the
engine the Integrator picks: numba on the CPU), split (Oversampling^2 sub-pixels) and not;
the vertical cut (``integrate1d_grazing_incidence_batch``). pyFAI: ``FiberIntegrator``'s
``integrate2d_grazing_incidence`` / ``integrate1d_grazing_incidence`` frame by frame with the
same mask, without pixel splitting (its advice) by histogram and by CSR (its fastest).
Both warm (best of ``--repeat`` after one call; matrix builds timed apart). The machine is
shared: the load average is recorded, compare the ratios of one run. The numba engine's cost
per frame grows with the cells (each thread sums into its own copy of all of them, then the
copies are added): the ratio to pyFAI falls as the map grows.
Prints a table and writes benchmarks/results/grazing-cpu.json.
"""

import argparse
import json
import logging
import os
import platform
import sys
import time
import warnings
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

import gpusaxs  # noqa: E402
from benchmarks.bench_cpu import best_of  # noqa: E402
from tests.helpers import pyfai_integrator  # noqa: E402

INCIDENT, TILT = 0.5, 3.0  # degrees


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reference", default=str(HERE.parent.parent / "shared" / "reference"))
    parser.add_argument("--frames", type=int, default=16)
    parser.add_argument("--npt", default="200,500,1000", help="map sizes, comma-separated")
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    logging.disable(logging.WARNING)
    warnings.filterwarnings("ignore")
    load_before = os.getloadavg()
    ref = Path(args.reference)
    cal = gpusaxs.Calibration.from_file(ref / "buf1_00000.calibration.json")
    image = gpusaxs.read_image(ref / "buf1_00000.tif")
    rng = np.random.default_rng(0)
    stack = np.stack(
        [np.where(image < 0, image, rng.poisson(np.maximum(image, 0))) for _ in range(args.frames)]
    ).astype(np.int32)
    gaps = image < 0
    integ = gpusaxs.Integrator(cal)
    angles = dict(incident_angle=INCIDENT, tilt_angle=TILT, angle_unit="deg")
    fi = pyfai_integrator(cal, fiber=True)
    mask = cal.load_mask() | gaps
    rows = []

    def ours(npt, case, method, split=True, cut=False):
        kw = dict(npt_ip=npt, npt_oop=npt, mask=gaps, split_pixels=split, **angles)
        if cut:
            kw.update(ip_range=(-0.5, 0.5), vertical_integration=True)
            call = integ.integrate1d_grazing_incidence_batch
        else:
            call = integ.integrate2d_grazing_incidence_batch
        t0 = time.perf_counter()
        call(stack[:1], **kw)  # builds the option set's matrix
        build = time.perf_counter() - t0
        t = best_of(lambda: call(stack, **kw), args.repeat) / args.frames
        engine = integ.engine.name  # the backend's engine kind, as for every option set
        rows.append(
            dict(
                npt=npt,
                case=case,
                method=method,
                engine=engine,
                frames_per_s=1 / t,
                build_s=build,
            )
        )

    def theirs(npt, case, method, cut=False):
        # angles in radians: pyFAI 2026.9's 1D method does not pass angle_unit on
        kw = dict(
            npt_ip=npt,
            npt_oop=npt,
            mask=mask,
            correctSolidAngle=False,
            method=method,
            incident_angle=np.deg2rad(INCIDENT),
            tilt_angle=np.deg2rad(TILT),
        )
        if cut:
            kw.update(ip_range=(-0.5, 0.5), vertical_integration=True)
            call = fi.integrate1d_grazing_incidence
        else:
            call = fi.integrate2d_grazing_incidence
        t = best_of(lambda: [call(f, **kw) for f in stack], max(1, args.repeat - 1)) / args.frames
        rows.append(
            dict(npt=npt, case=case, method="/".join(method), engine="pyFAI", frames_per_s=1 / t)
        )

    sizes = [int(v) for v in args.npt.split(",")]
    for npt in sizes:
        ours(npt, "map", "split (Oversampling^2)")
        ours(npt, "map", "no split", split=False)
        theirs(npt, "map", ("no", "histogram", "cython"))
        theirs(npt, "map", ("no", "csr", "cython"))
    npt = sizes[0]
    ours(npt, "vertical cut", "split (Oversampling^2)", cut=True)
    theirs(npt, "vertical cut", ("no", "histogram", "cython"), cut=True)
    theirs(npt, "vertical cut", ("no", "csr", "cython"), cut=True)
    best = {}
    for r in rows:
        if r["engine"] == "pyFAI":
            key = (r["npt"], r["case"])
            best[key] = max(best.get(key, 0.0), r["frames_per_s"])
    load_after = os.getloadavg()
    print(
        f"{args.frames} PILATUS 1M int32 frames, npt x npt qip/qoop cells, incident "
        f"{INCIDENT} deg, tilt {TILT} deg; {platform.processor() or platform.machine()}, "
        f"{os.cpu_count()} cores, load {load_before[0]:.1f} -> {load_after[0]:.1f} "
        "(shared machine: compare ratios)"
    )
    print("| npt | case | method | engine | frames/s | x pyFAI's fastest | matrix build (s) |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for r in rows:
        r["vs_pyfai_fastest"] = r["frames_per_s"] / best[(r["npt"], r["case"])]
        build = f"{r['build_s']:.1f}" if "build_s" in r else "-"
        print(
            f"| {r['npt']} | {r['case']} | {r['method']} | {r['engine']} | "
            f"{r['frames_per_s']:.1f} | {r['vs_pyfai_fastest']:.1f} | {build} |"
        )
    out = HERE / "results" / "grazing-cpu.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(
        json.dumps(
            dict(
                frames=args.frames,
                npt=sizes,
                incident_deg=INCIDENT,
                tilt_deg=TILT,
                cores=os.cpu_count(),
                load_before=load_before,
                load_after=load_after,
                rows=rows,
            ),
            indent=1,
        )
    )


if __name__ == "__main__":
    main()
