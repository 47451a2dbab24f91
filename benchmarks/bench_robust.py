"""Sigma clipping of a stack (issue 27) next to pyFAI's sigma_clip_ng frame by frame, in one run.

    python benchmarks/bench_robust.py [--reference ../shared/reference] [--frames 32]

The reference frame (PILATUS 1M, mask, Oversampling 1: no pixel splitting, as sigma_clip_ng
wants) Poisson-resampled to a stack of int32 frames with zingers on 1 % of the pixels; 500
bins in q_nm^-1, thres 5, max_iter 5. Rows: ``Integrator.sigma_clip_batch`` of the whole stack
(the numba kernel; the NumPy path of gpusaxs.robust with $GPUSAXS_NO_NUMBA, timed once on 4
frames and scaled), pyFAI's
``sigma_clip_ng`` (no/csr/cython) on each frame; then ``medfilt1d_batch`` (10, 90) and
``medfilt1d_ng`` (full splitting, Oversampling 3) on a few frames. Ours and pyFAI's calls
alternate (best of --repeat), so the ratios hold on a shared machine; the load average is
recorded. Writes benchmarks/results/robust-cpu.json.
"""

import argparse
import json
import logging
import os
import sys
import time
import warnings
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

from bench_saxsdog import machine  # noqa: E402

import gpusaxs  # noqa: E402
from tests.helpers import pyfai_integrator  # noqa: E402

NPT = 500


def paired(fns, repeat):
    """Best wall time (s) of each function, calls alternating ``repeat`` times after a warm-up."""
    for fn in fns:
        fn()
    times = [[] for _ in fns]
    for _ in range(repeat):
        for fn, t in zip(fns, times, strict=True):
            t0 = time.perf_counter()
            fn()
            t.append(time.perf_counter() - t0)
    return [min(t) for t in times]


def set_up(ref, oversampling, frames, seed):
    d = json.loads((ref / "buf1_00000.calibration.json").read_text())
    d["Oversampling"] = oversampling
    cal = gpusaxs.Calibration.from_dict(d, base_dir=ref)
    image = gpusaxs.read_image(ref / "buf1_00000.tif")
    rng = np.random.default_rng(seed)
    stack = np.stack(
        [np.where(image < 0, image, rng.poisson(np.maximum(image, 0))) for _ in range(frames)]
    ).astype(np.int32)
    hit = (rng.random(stack.shape) < 0.01) & (stack >= 0)
    stack[hit] += rng.integers(100, 1000, int(hit.sum())).astype(np.int32)
    integ = gpusaxs.Integrator(cal, backend="numpy")
    edges = integ.option_engine(npt=NPT)[0].q_edges
    kw = dict(
        unit="q_nm^-1",
        radial_range=(edges[0], edges[-1]),
        mask=cal.load_mask() | (image < 0),
        correctSolidAngle=False,
    )
    return integ, pyfai_integrator(cal), stack, kw


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reference", default=str(HERE.parent.parent / "shared" / "reference"))
    parser.add_argument("--frames", type=int, default=32)
    parser.add_argument("--median-frames", type=int, default=4)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    logging.disable(logging.WARNING)
    warnings.filterwarnings("ignore")
    ref = Path(args.reference)
    load_before = os.getloadavg()
    rows = []
    integ, ai, stack, kw = set_up(ref, 1, args.frames, 0)
    for model in ("poisson", "azimuthal"):

        def ours(model=model):
            integ.sigma_clip_batch(stack, NPT, thres=5, max_iter=5, error_model=model)

        def numpy_path(model=model):
            os.environ["GPUSAXS_NO_NUMBA"] = "1"
            try:
                integ.sigma_clip_batch(stack[:4], NPT, thres=5, max_iter=5, error_model=model)
            finally:
                del os.environ["GPUSAXS_NO_NUMBA"]

        def theirs(model=model):
            for frame in stack:
                ai.sigma_clip_ng(
                    frame,
                    NPT,
                    method=("no", "csr", "cython"),
                    error_model=model,
                    thres=5,
                    max_iter=5,
                    **kw,
                )

        t_ours, t_theirs = paired([ours, theirs], args.repeat)
        t_numpy = paired([numpy_path], 1)[0] * args.frames / 4  # 4 frames, scaled
        case = f"sigma_clip {model}, no splitting"
        for engine, t in (
            ("gpusaxs numba", t_ours),
            ("gpusaxs numpy", t_numpy),
            ("pyFAI", t_theirs),
        ):
            rows.append(
                dict(case=case, engine=engine, frames=args.frames, seconds=t, vs_pyfai=t_theirs / t)
            )
    integ, ai, stack, kw = set_up(ref, 3, args.median_frames, 1)

    def med_ours():
        integ.medfilt1d_batch(stack, NPT, percentile=(10, 90))

    def med_theirs():
        for frame in stack:
            ai.medfilt1d_ng(frame, NPT, method=("full", "csr", "cython"), percentile=(10, 90), **kw)

    t_ours, t_theirs = paired([med_ours, med_theirs], args.repeat)
    case = "medfilt1d (10, 90), splitting"
    n = args.median_frames
    rows.append(
        dict(
            case=case, engine="gpusaxs numba", frames=n, seconds=t_ours, vs_pyfai=t_theirs / t_ours
        )
    )
    rows.append(dict(case=case, engine="pyFAI", frames=n, seconds=t_theirs, vs_pyfai=1.0))
    load_after = os.getloadavg()
    print(
        f"PILATUS 1M int32 frames, {NPT} bins, {os.cpu_count()} CPUs ({machine()['cpu']}), "
        f"load average "
        f"{load_before[0]:.1f} before, {load_after[0]:.1f} after (shared machine: compare ratios)"
    )
    print("| case | engine | frames | s | frames/s | x pyFAI (frame by frame) |")
    print("| --- | --- | --- | --- | --- | --- |")
    for r in rows:
        r["frames_per_s"] = r["frames"] / r["seconds"]
        print(
            f"| {r['case']} | {r['engine']} | {r['frames']} | {r['seconds']:.3f} | "
            f"{r['frames_per_s']:.0f} | {r['vs_pyfai']:.1f} |"
        )
    out = HERE / "results" / "robust-cpu.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(
        json.dumps(
            dict(
                npt=NPT,
                cpus=os.cpu_count(),
                machine=machine(),
                load_average=[load_before, load_after],
                rows=rows,
            ),
            indent=1,
        )
    )


if __name__ == "__main__":
    main()
