"""gpusaxs-demo: make the demo data, integrate it with saxsdog, plot and check the rings.

``gpusaxs-demo demo/`` writes a calibration, a fit2d mask and a few Poisson-noisy frames with
the PILATUS 1M module gaps (-1) and some bad pixels (-2) (:mod:`gpusaxs.demo`), integrates
them with ``saxsdog`` into ``demo/out/*.chi``, plots the first curve to ``demo/demo.png`` and
checks that the calibrant's rings come out where they must.
"""

import argparse
import sys
from pathlib import Path

import numpy as np

from gpusaxs.clients import saxsdog
from gpusaxs.demo import AGBH_D_NM, make_demo_data
from gpusaxs.io.chi import read_chi
from gpusaxs.plotting import plot_curve


def ring_positions(q, intensity, n_rings=6):
    """q (nm^-1) of the intensity maximum near each expected AgBh ring."""
    found = []
    for n in range(1, n_rings + 1):
        q_n = 2 * np.pi * n / AGBH_D_NM
        near = (q > q_n - 0.05) & (q < q_n + 0.05) & np.isfinite(intensity)
        if near.any():
            found.append(float(q[near][np.argmax(intensity[near])]))
    return found


def main(argv=None):
    """gpusaxs-demo: make demo data, integrate it with saxsdog, plot and check the rings."""
    parser = argparse.ArgumentParser(
        prog="gpusaxs-demo",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Make a synthetic PILATUS 1M silver-behenate data set and integrate it.",
        epilog="example:\n  gpusaxs-demo demo/ --frames 50\n"
        "  -> demo/calibration.json, demo/mask.msk, demo/frames/*.tif,\n"
        "     demo/out/*.chi (one curve per frame) and demo/demo.png",
    )
    parser.add_argument("folder", nargs="?", default="demo", help="where to write (default: demo)")
    parser.add_argument("--frames", type=int, default=20, help="number of frames (default: 20)")
    parser.add_argument(
        "--backend",
        default="auto",
        choices=["auto", "numpy", "cupy"],
        help="integration engine (default: auto)",
    )
    args = parser.parse_args(argv)

    folder = Path(args.folder)
    print(f"writing {args.frames} synthetic PILATUS 1M frames to {folder}/frames ...")
    cal_path, frames_dir = make_demo_data(folder, args.frames)
    out_dir = folder / "out"
    status = saxsdog.main(
        ["-c", str(cal_path), "-o", str(out_dir), "--backend", args.backend, str(frames_dir)]
    )
    if status != 0:
        print(f"saxsdog failed with exit status {status}", file=sys.stderr)
        return status
    curve = read_chi(out_dir / "frame_00000.chi")
    plot_curve(
        curve.q,
        curve.intensity,
        err=curve.error,
        outputfile=str(folder / "demo.png"),
        title="gpusaxs demo: silver behenate, frame 0",
    )
    found = ring_positions(curve.q, curve.intensity)
    expected = [2 * np.pi * n / AGBH_D_NM for n in range(1, len(found) + 1)]
    print("AgBh ring   expected q (nm^-1)   found q (nm^-1)")
    for n, (e, f) in enumerate(zip(expected, found, strict=True), start=1):
        print(f"{n:9d}   {e:18.4f}   {f:15.4f}")
    worst = max(abs(e - f) for e, f in zip(expected, found, strict=True))
    print(
        f"curves in {out_dir}/, plot in {folder / 'demo.png'}; "
        f"largest ring offset {worst:.4f} nm^-1 (bin width {curve.q[1] - curve.q[0]:.4f})"
    )
    return 0 if worst < 2 * (curve.q[1] - curve.q[0]) else 1


if __name__ == "__main__":
    sys.exit(main())
