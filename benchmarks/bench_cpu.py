"""CPU engine against pyFAI, in one run on this machine: frames/s, ratios, memory-bound fraction.

    python benchmarks/bench_cpu.py [--reference ../shared/reference] [--frames 64] [--repeat 5]
                                   [--skip-eiger]

PILATUS 1M int32 frames (the reference frame with Poisson resampling), mask and polarization on.
pyFAI runs its best CPU method, integrate1d with method=("full", "csr", "cython") and the same
mask, polarization factor and number of bins.  "Options on" adds solid angle + flat (folded into
the pixel scale), a dark (the matrix's pixel_offset) and an azimuthal sector (-60..60 deg, pixels
outside masked), next to pyFAI's integrate1d with correctSolidAngle, dark, flat and
azimuth_range.  The read bound: two threads summing the same (B, H, W) int32 stack, in the same
run; each stack row gives its fraction of that rate, the read alternating with the row's own
calls (so a drift of the shared host's memory bandwidth hits both alike), in ``--rounds``
rounds whose median the table shows.  Also measured: the
matrix build of a PILATUS 1M and of an EIGER 16M (4362 x 4148) at Oversampling 3, with its peak
traced memory.
Prints a table and writes benchmarks/results/cpu.json.
"""

import argparse
import logging
import os
import platform
import subprocess
import sys
import time
import tracemalloc
import warnings
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

from bench_frames import write_result  # noqa: E402

import gpusaxs  # noqa: E402
from gpusaxs.matrix import build_matrix  # noqa: E402


def best_of(fn, repeat):
    """Smallest wall time (s) of ``repeat`` calls after one warm-up."""
    fn()
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def read_stack(stack):
    """A function that makes the engine's threads (all cores) read (sum) every value of
    ``stack`` once."""
    from numba import njit, prange

    @njit(parallel=True, cache=False)
    def total(a):
        s = 0
        for i in prange(a.size):
            s += a[i]
        return s

    flat = stack.reshape(-1)
    return lambda: total(flat)


def read_stack_seconds(stack, repeat):
    """Best time (s) for the engine's threads to read ``stack`` once."""
    return best_of(read_stack(stack), repeat)


def best_of_paired(fn, read, repeat):
    """(best time of fn, best time of read) with the two calls alternating ``repeat`` times
    after a warm-up: the ratio holds on a machine whose speed drifts (shared host)."""
    fn()
    read()
    t_fn, t_read = [], []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        t1 = time.perf_counter()
        read()
        t_fn.append(t1 - t0)
        t_read.append(time.perf_counter() - t1)
    return min(t_fn), min(t_read)


def options_matrix(matrix, cal, image_shape, rng):
    """The matrix with solid angle + flat folded into pixel_scale, a dark offset, and a sector.

    Returns (matrix, solid_angle, flat, dark, sector_mask) (float32 (H, W) arrays, bool mask True
    = outside the sector, chi in pyFAI's convention from -60 to 60 degrees)."""
    import dataclasses

    sys.path.insert(0, str(HERE.parent / "tests"))
    from helpers import pyfai_integrator

    ai = pyfai_integrator(cal)
    solid = ai.solidAngleArray(image_shape).astype(np.float32)
    chi = np.degrees(ai.chiArray(image_shape))
    outside = (chi < -60) | (chi > 60)
    flat = rng.uniform(0.9, 1.1, image_shape).astype(np.float32)
    dark = rng.uniform(0.0, 2.0, image_shape).astype(np.float32)
    counts = np.diff(matrix.pixel_ptr)
    keep = np.repeat(~outside.ravel(), counts)
    pixel_ptr = np.zeros_like(matrix.pixel_ptr)
    np.cumsum(np.where(outside.ravel(), 0, counts), out=pixel_ptr[1:])
    bins, weights = matrix.bins[keep], matrix.weights[keep]
    scale = (matrix.pixel_scale / (solid * flat).ravel()).astype(np.float32)
    norm = np.bincount(bins, weights=weights.astype(np.float64), minlength=matrix.n_bins)
    m = dataclasses.replace(
        matrix,
        pixel_ptr=pixel_ptr,
        bins=bins,
        weights=weights,
        pixel_scale=scale,
        norm=norm,
        pixel_offset=dark.ravel(),
    )
    return m, solid, flat, dark, outside


def read_bandwidth(n_bytes=256 << 20, repeat=5):
    """Memory read bandwidth (bytes/s) of this machine: summing a large int32 array, 2 threads."""
    return n_bytes / read_stack_seconds(np.ones(n_bytes // 4, dtype=np.int32), repeat)


def git_commit():
    try:
        return subprocess.check_output(
            ["git", "rev-parse", "HEAD"], cwd=HERE, text=True, stderr=subprocess.DEVNULL
        ).strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def pyfai_setup(cal, mask, n_bins):
    logging.disable(logging.WARNING)
    warnings.filterwarnings("ignore")
    sys.path.insert(0, str(HERE.parent / "tests"))
    from helpers import pyfai_integrator

    ai = pyfai_integrator(cal)
    kwargs = dict(
        npt=n_bins,
        unit="q_nm^-1",
        mask=mask,
        polarization_factor=2 * 0.95 - 1,
        method=("full", "csr", "cython"),
        correctSolidAngle=False,
        dummy=-1,
        delta_dummy=0.5,
    )
    return ai, kwargs


def build_case(name, cal, mask):
    tracemalloc.start()
    t0 = time.perf_counter()
    matrix = build_matrix(cal, mask=mask)
    seconds = time.perf_counter() - t0
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    return {
        "case": name,
        "shape": list(cal.imagesize),
        "oversampling": cal.oversampling,
        "n_bins": matrix.n_bins,
        "nnz": matrix.nnz,
        "build_s": seconds,
        "peak_traced_mb": peak / 1e6,
        "matrix_mb": matrix.nbytes / 1e6,
    }


def main(argv=None):
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--reference", default=str(HERE.parent.parent / "shared" / "reference"))
    parser.add_argument("--frames", type=int, default=64, help="stack size (default 64)")
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument(
        "--rounds",
        type=int,
        default=5,
        help="rounds of the three paired stack rows; the table shows the median round of each "
        "row (by fraction of read), the JSON all of them (default 5)",
    )
    parser.add_argument("--skip-eiger", action="store_true", help="skip the EIGER 16M build")
    parser.add_argument("--out", default=str(HERE / "results" / "cpu.json"))
    args = parser.parse_args(argv)

    ref = Path(args.reference)
    cal = gpusaxs.Calibration.from_file(ref / "buf1_00000.calibration.json")
    cal = cal.replace(polarization=(0.95, 0.0))
    mask = cal.load_mask()
    image = gpusaxs.read_image(ref / "buf1_00000.tif")
    rng = np.random.default_rng(0)
    stack = np.stack(
        [np.where(image < 0, image, rng.poisson(np.maximum(image, 0))) for _ in range(args.frames)]
    ).astype(np.int32)

    integ = gpusaxs.Integrator(cal, backend="numpy")
    n_bins = integ.matrix.n_bins
    ai, kw = pyfai_setup(cal, mask, n_bins)
    from gpusaxs.cpu_fallback.engine import CpuEngine
    from gpusaxs.engine_contract import mean_intensity

    opt_matrix, solid, flat, dark, outside = options_matrix(integ.matrix, cal, image.shape, rng)
    opt_engine = CpuEngine(opt_matrix)
    kw_on = dict(kw, correctSolidAngle=True, dark=dark, flat=flat, azimuth_range=(-60, 60))

    t_pyfai_one = best_of(lambda: ai.integrate1d(image, **kw), args.repeat)
    t_pyfai_stack = best_of(lambda: [ai.integrate1d(f, **kw) for f in stack[:16]], 1) / 16
    t_pyfai_on = best_of(lambda: [ai.integrate1d(f, **kw_on) for f in stack[:16]], 1) / 16
    t_one = best_of(lambda: integ.integrate(image), args.repeat)
    # each stack row alternates with the read of the same stack: its "of read" is against the
    # read rate of its own moments (the host's memory bandwidth drifts between rows)
    read = read_stack(stack)
    n = args.frames
    stack_rows = {
        "stack": lambda: integ.integrate_batch(stack),
        "on": lambda: mean_intensity(opt_engine.sums(stack)),
        "err": lambda: integ.integrate_batch_error(stack),
    }
    rounds = {k: [] for k in stack_rows}  # (row s/frame, paired read s/frame) per round
    for _ in range(args.rounds):
        for key, fn in stack_rows.items():
            t, r = best_of_paired(fn, read, args.repeat)
            rounds[key].append((t / n, r / n))
    median = {k: sorted(v, key=lambda tr: tr[1] / tr[0])[len(v) // 2] for k, v in rounds.items()}
    (t_stack, r_stack), (t_on, r_on), (t_stack_err, r_err) = (
        median["stack"],
        median["on"],
        median["err"],
    )
    paired_read = {"stack": r_stack, "on": r_on, "err": r_err}
    t_read = min(paired_read.values())
    bandwidth = read_bandwidth()
    frame_bytes = image.nbytes
    bound_fps = bandwidth / frame_bytes

    rows = [
        ("pyFAI full/csr/cython, one frame", t_pyfai_one, t_pyfai_one, t_read),
        ("pyFAI full/csr/cython, stack (per frame)", t_pyfai_stack, t_pyfai_stack, t_read),
        ("pyFAI, options on (per frame)", t_pyfai_on, t_pyfai_on, t_read),
        (f"read bound: 2 threads sum the stack of {args.frames}", t_read, None, t_read),
        ("gpusaxs numba, one frame", t_one, t_pyfai_one, t_read),
        (f"gpusaxs numba, stack of {n}", t_stack, t_pyfai_stack, paired_read["stack"]),
        (f"gpusaxs numba, stack of {n}, options on", t_on, t_pyfai_on, paired_read["on"]),
        (
            f"gpusaxs numba, stack of {n} with errors",
            t_stack_err,
            t_pyfai_stack,
            paired_read["err"],
        ),
    ]
    print(
        f"PILATUS 1M int32 {image.shape}, {n_bins} bins, mask + polarization, "
        f"{os.cpu_count()} cores; options on = solid angle + flat + dark + sector -60..60 deg"
    )
    print(f"{'method':52s} {'ms/frame':>9s} {'frames/s':>9s} {'vs pyFAI':>9s} {'of read':>8s}")
    for name, t, base, read_t in rows:
        ratio = f"{base / t:8.1f}x" if base else f"{'':9s}"
        print(f"{name:52s} {t * 1e3:9.3f} {1 / t:9.0f} {ratio} {read_t / t:7.1%}")
    print(
        "(stack rows: against the read of the same stack alternating with the row's calls, "
        f"best of {args.repeat} each; the median of {args.rounds} rounds; the read bound row is "
        "the best of those reads)"
    )
    print(
        f"memory read bandwidth {bandwidth / 1e9:.1f} GB/s (256 MB array) -> "
        f"{bound_fps:.0f} frames/s ({frame_bytes / 1e6:.1f} MB per frame read once)"
    )

    builds = [build_case("PILATUS 1M", cal, mask)]
    if not args.skip_eiger:
        eiger = cal.replace(
            imagesize=(4362, 4148),
            beam_center=(2200.0, 2100.0),
            pixel_size_um=(75.0, 75.0),
            distance_mm=2000.0,
            tilt_angle_deg=0.3,
            polarization=(0.95, 0.0),
        )
        builds.append(build_case("EIGER 16M", eiger, np.zeros(eiger.imagesize, bool)))
    print(
        f"\n{'matrix build':12s} {'shape':>12s} {'ov':>3s} {'nnz':>11s} {'seconds':>8s} "
        f"{'peak MB':>8s} {'matrix MB':>9s}"
    )
    for b in builds:
        print(
            f"{b['case']:12s} {str(tuple(b['shape'])):>12s} {b['oversampling']:3d} "
            f"{b['nnz']:11d} {b['build_s']:8.1f} {b['peak_traced_mb']:8.0f} "
            f"{b['matrix_mb']:9.0f}"
        )

    result = {
        "benchmark": "bench_cpu",
        "date": time.strftime("%Y-%m-%d %H:%M:%S"),
        "commit": git_commit(),
        "machine": platform.processor() or platform.machine(),
        "cores": os.cpu_count(),
        "frame_shape": list(image.shape),
        "dtype": "int32",
        "n_bins": n_bins,
        "stack_frames": args.frames,
        "pyfai_version": __import__("pyFAI").version,
        "ms_per_frame": {name: t * 1e3 for name, t, _, _ in rows},
        "fraction_of_read": {name: read_t / t for name, t, _, read_t in rows},
        "paired_read_ms_per_frame": {k: v * 1e3 for k, v in paired_read.items()},
        "rounds_fraction_of_read": {k: [r / t for t, r in v] for k, v in rounds.items()},
        "rounds_ms_per_frame": {k: [t * 1e3 for t, _ in v] for k, v in rounds.items()},
        "read_bound_frames_per_s": 1 / t_read,
        "speedup_one_frame": t_pyfai_one / t_one,
        "speedup_stack": t_pyfai_stack / t_stack,
        "speedup_options_on": t_pyfai_on / t_on,
        "speedup_stack_with_errors": t_pyfai_stack / t_stack_err,
        "stack_fraction_of_read": paired_read["stack"] / t_stack,
        "options_on_fraction_of_read": paired_read["on"] / t_on,
        "errors_fraction_of_read": paired_read["err"] / t_stack_err,
        "read_bandwidth_gb_per_s": bandwidth / 1e9,
        "bound_frames_per_s": bound_fps,
        "builds": builds,
    }
    write_result(args.out, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
