"""saxsdog vs a pyFAI script doing the same job, side by side on the same frames.

Job: N PILATUS 1M frames (copies of the reference frame buf1_00000.tif) in a folder ->
one text curve per frame (q, I, error), with the reference geometry, its mask and a
polarization correction (fraction 0.95).

* saxsdog: the command as a user runs it (subprocess ``python -m gpusaxs.clients.saxsdog -P``).
* pyFAI: a script (subprocess) doing fabio.open, ai.integrate1d(method=("full", "csr",
  "cython"), npt=n_bins, unit="q_nm^-1", mask, polarization_factor, error_model="poisson")
  and np.savetxt per frame; geometry via ai.setFit2D as in the reference README.  A second
  pyFAI run without the error model (2 columns) is reported too.

Each tool is timed from start to exit (wall, including its setup) and per frame after setup
(steady state).  The frames are flushed to disk and read once before (page cache warm for
both); the tools run interleaved ``--repeats`` times and the best wall time of each is kept.
saxsdog uses its on-disk matrix cache (a private folder, warmed by a first run, as a user's
second run finds it).  The start-up is measured too: a one-file saxsdog run (warm cache, best of
``--repeats-one``), beside ``python -c "import numpy"`` and a one-file pyFAI script in the same
run, and a one-file run with ``--no-cache`` (matrix built).
Prints a table and writes benchmarks/results/saxsdog-cpu.json.

    python benchmarks/bench_saxsdog.py [-n 120] [--keep DIR]
"""

import argparse
import datetime
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
REFERENCE = Path(os.environ.get("GPUSAXS_REFERENCE_DIR", ROOT.parent / "shared" / "reference"))

PYFAI_SCRIPT = r"""
import sys, time, json
from pathlib import Path
import numpy as np
t0 = time.perf_counter()
import fabio
from pyFAI.integrator.azimuthal import AzimuthalIntegrator
p = json.loads(sys.argv[1])
ai = AzimuthalIntegrator()
ai.setFit2D(p["D"], centerX=p["X"], centerY=p["H"] - p["Y"], tilt=p["tilt"],
            tiltPlanRotation=-p["rot"], pixelX=172, pixelY=172,
            wavelength=p["wavelength_A"])   # setFit2D takes Angstrom (pyFAI stores metres)
mask = np.load(p["mask"])
out = Path(p["out"]); out.mkdir(parents=True, exist_ok=True)
files = sorted(Path(p["data"]).glob("*.tif"))
kw = dict(npt=p["npt"], unit="q_nm^-1", method=("full", "csr", "cython"), mask=mask,
          polarization_factor=2 * 0.95 - 1,  # pyFAI's factor is 2P - 1
          correctSolidAngle=False,           # as saxsdog and fit2d's reference curve
          radial_range=tuple(p["range"]))
if p["errors"]:
    kw["error_model"] = "poisson"
# setup: the first integration builds the CSR matrix (as pyFAI does on first use)
res = ai.integrate1d(fabio.open(str(files[0])).data, **kw)
t1 = time.perf_counter()
for f in files:
    data = fabio.open(str(f)).data
    res = ai.integrate1d(data, **kw)
    cols = [res.radial, res.intensity] + ([res.sigma] if p["errors"] else [])
    np.savetxt(out / (f.stem + ".dat"), np.column_stack(cols), fmt="%14.7E")
t2 = time.perf_counter()
print(json.dumps({"setup_s": t1 - t0, "loop_s": t2 - t1, "n": len(files)}))
"""


def git_commit():
    try:
        return (
            subprocess.run(
                ["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True, timeout=10
            ).stdout.strip()
            or None
        )
    except OSError:
        return None


def machine():
    cpu = platform.processor() or ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "platform": platform.platform(),
    }


def run_saxsdog(cal, data, out, backend, extra=()):
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    # run from the source tree as an installed package runs: with its modules' bytecode cached
    # (written by the first, warm-up run), not recompiled at every start
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    t0 = time.perf_counter()
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "gpusaxs.clients.saxsdog",
            "-c",
            str(cal),
            "-o",
            str(out),
            "-P",
            "--backend",
            backend,
            *extra,
            str(data),
        ],
        capture_output=True,
        text=True,
        env=env,
    )
    wall = time.perf_counter() - t0
    if r.returncode != 0:
        raise SystemExit(f"saxsdog failed ({r.returncode}):\n{r.stderr}")
    setup = float(re.search(r"setup \(operator \+ engine\)\s+([\d.]+)", r.stderr).group(1))
    loop = float(re.search(r"wall \(after setup\)\s+([\d.]+)", r.stderr).group(1))
    engine = re.search(r"integrate \(([^)]*)\)", r.stderr).group(1)
    return {
        "wall_s": wall,
        "setup_s": setup,
        "loop_s": loop,
        "engine": engine,
        "profile": r.stderr.strip().splitlines()[-8:],
    }


def wall_of(cmd, repeats):
    """Best wall time (s) of a command run ``repeats`` times."""
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        subprocess.run(cmd, capture_output=True, check=True)
        best = min(best, time.perf_counter() - t0)
    return best


def startup(cal_path, frame_bytes, work, params, backend, repeats):
    """One-file runs: saxsdog (warm cache, and --no-cache), pyFAI script, python+numpy."""
    one = work / "one"
    one.mkdir(exist_ok=True)
    (one / "frame_00000.tif").write_bytes(frame_bytes)
    run_saxsdog(cal_path, one, work / "one_out", backend)  # warms the cache
    runs = [run_saxsdog(cal_path, one, work / "one_out", backend) for _ in range(repeats)]
    best = min(runs, key=lambda r: r["wall_s"])
    cold = run_saxsdog(cal_path, one, work / "one_out_cold", backend, extra=("--no-cache",))
    pyfai = min(
        (
            run_pyfai(dict(params, data=str(one), out=str(work / "one_pyfai")), True)
            for _ in range(2)
        ),
        key=lambda r: r["wall_s"],
    )
    numpy_s = wall_of([sys.executable, "-c", "import numpy"], repeats)
    python_s = wall_of([sys.executable, "-c", "pass"], repeats)
    return {
        "saxsdog_warm_cache_wall_s": best["wall_s"],
        "saxsdog_warm_all_wall_s": [r["wall_s"] for r in runs],
        "saxsdog_engine": best["engine"],
        "saxsdog_no_cache_wall_s": cold["wall_s"],
        "pyfai_script_wall_s": pyfai["wall_s"],
        "python_import_numpy_wall_s": numpy_s,
        "python_empty_wall_s": python_s,
        "saxsdog_profile": best["profile"],
    }


def run_pyfai(params, errors):
    p = dict(params, errors=errors)
    t0 = time.perf_counter()
    r = subprocess.run(
        [sys.executable, "-c", PYFAI_SCRIPT, json.dumps(p)], capture_output=True, text=True
    )
    wall = time.perf_counter() - t0
    if r.returncode != 0:
        raise SystemExit(f"pyFAI script failed:\n{r.stderr[-3000:]}")
    res = json.loads(r.stdout.strip().splitlines()[-1])
    return {"wall_s": wall, "setup_s": res["setup_s"], "loop_s": res["loop_s"]}


def agreement(ours_chi, pyfai_dat):
    """Median and 95th percentile of |I_ours - I_pyFAI| / I_pyFAI where both are > 0."""
    from gpusaxs.io.chi import read_chi

    c = read_chi(ours_chi)
    ref = np.loadtxt(pyfai_dat)
    n = min(len(c.q), len(ref))
    a, b = c.intensity[:n], ref[:n, 1]
    ok = np.isfinite(a) & (a > 0) & (b > 0)
    rel = np.abs(a[ok] - b[ok]) / b[ok]
    return {
        "q_max_abs_diff": float(np.max(np.abs(c.q[:n] - ref[:n, 0]))),
        "median_rel": float(np.median(rel)),
        "p95_rel": float(np.percentile(rel, 95)),
    }


def main(argv=None):
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("-n", "--frames", type=int, default=120)
    ap.add_argument("--repeats-one", type=int, default=5, help="one-file runs (best kept)")
    ap.add_argument("--backend", default="auto")
    ap.add_argument("--repeats", type=int, default=2, help="interleaved runs per tool (best kept)")
    ap.add_argument("--keep", metavar="DIR", help="work in DIR and keep it")
    ap.add_argument("--json", default=str(ROOT / "benchmarks" / "results" / "saxsdog-cpu.json"))
    args = ap.parse_args(argv)

    from gpusaxs.calibration_model import Calibration
    from gpusaxs.integrator import Integrator

    src_cal = REFERENCE / "buf1_00000.calibration.json"
    if not src_cal.is_file():
        raise SystemExit(f"reference data not found in {REFERENCE}")
    work = Path(args.keep or tempfile.mkdtemp(prefix="bench_saxsdog_"))
    work.mkdir(parents=True, exist_ok=True)
    os.environ["GPUSAXS_CACHE_DIR"] = str(work / "matrix-cache")  # private, warmed below
    try:
        cal_d = json.loads(src_cal.read_text())
        cal_d["MaskFile"] = str(REFERENCE / cal_d["MaskFile"])
        cal_d["PolarizationCorrection"] = {"Fraction": 0.95, "Angle": 0.0}
        cal_path = work / "cal.json"
        cal_path.write_text(json.dumps(cal_d, indent=1))
        cal = Calibration.from_file(cal_path)
        integ = Integrator(cal, backend="numpy")
        edges = integ.q_edges
        np.save(work / "mask.npy", cal.load_mask())

        data = work / "frames"
        if data.exists():
            shutil.rmtree(data)
        data.mkdir()
        raw = (REFERENCE / "buf1_00000.tif").read_bytes()
        for k in range(args.frames):
            (data / f"frame_{k:05d}.tif").write_bytes(raw)  # real files, in page cache
        params = {
            "D": cal.distance_mm,
            "X": cal.beam_center[1],
            "Y": cal.beam_center[0],
            "H": cal.imagesize[0],
            "tilt": cal.tilt_angle_deg,
            "rot": cal.tilt_rot_deg,
            "wavelength_A": cal.wavelength_A,
            "mask": str(work / "mask.npy"),
            "data": str(data),
            "npt": len(integ.q),
            "range": [float(edges[0]), float(edges[-1])],
        }

        os.sync()  # no write-back of the new frames during the runs
        for f in sorted(data.iterdir()):
            f.read_bytes()  # both tools start with the frames in the page cache
        print(
            f"{args.frames} frames {cal.imagesize[0]}x{cal.imagesize[1]}, "
            f"{len(integ.q)} bins, {os.cpu_count()} cores",
            flush=True,
        )
        results = {}
        one = startup(cal_path, raw, work, params, args.backend, args.repeats_one)
        print(
            f"one file: saxsdog {one['saxsdog_warm_cache_wall_s']:.2f} s (warm cache), "
            f"pyFAI script {one['pyfai_script_wall_s']:.2f} s, python -c 'import numpy' "
            f"{one['python_import_numpy_wall_s']:.2f} s",
            flush=True,
        )
        runs = {"pyfai": [], "pyfai_no_errors": [], "saxsdog": []}
        for rep in range(args.repeats):  # interleaved; the best run of each is kept
            runs["pyfai"].append(run_pyfai(dict(params, out=str(work / "pyfai")), errors=True))
            runs["pyfai_no_errors"].append(
                run_pyfai(dict(params, out=str(work / "pyfai2")), errors=False)
            )
            runs["saxsdog"].append(run_saxsdog(cal_path, data, work / "saxsdog", args.backend))
            os.sync()
            print(
                f"round {rep + 1}/{args.repeats}: "
                + ", ".join(f"{k} {v[-1]['wall_s']:.2f} s" for k, v in runs.items()),
                flush=True,
            )
        for k, v in runs.items():
            results[k] = dict(
                min(v, key=lambda r: r["wall_s"]), all_wall_s=[r["wall_s"] for r in v]
            )
        n = args.frames
        for r in results.values():
            r["files_per_s_wall"] = n / r["wall_s"]
            r["files_per_s_steady"] = n / r["loop_s"]
        results["agreement_vs_pyfai"] = agreement(
            work / "saxsdog" / "frame_00000.chi", work / "pyfai" / "frame_00000.dat"
        )
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)

    s, p, p2 = results["saxsdog"], results["pyfai"], results["pyfai_no_errors"]
    rows = [
        ("saxsdog (" + s["engine"] + ", q,I,err)", s),
        ("pyFAI csr full (q,I,sigma)", p),
        ("pyFAI csr full (q,I)", p2),
    ]
    print()
    print(
        f"{'tool':<34}{'setup s':>9}{'loop s':>9}{'wall s':>9}{'files/s wall':>14}"
        f"{'files/s steady':>16}"
    )
    for name, r in rows:
        print(
            f"{name:<34}{r['setup_s']:>9.2f}{r['loop_s']:>9.2f}{r['wall_s']:>9.2f}"
            f"{r['files_per_s_wall']:>14.1f}{r['files_per_s_steady']:>16.1f}"
        )
    ratio = {
        "wall_vs_pyfai": s["files_per_s_wall"] / p["files_per_s_wall"],
        "steady_vs_pyfai": s["files_per_s_steady"] / p["files_per_s_steady"],
        "wall_vs_pyfai_no_errors": s["files_per_s_wall"] / p2["files_per_s_wall"],
        "steady_vs_pyfai_no_errors": s["files_per_s_steady"] / p2["files_per_s_steady"],
    }
    print(
        f"\nsaxsdog / pyFAI (same job, with errors): {ratio['wall_vs_pyfai']:.2f}x wall, "
        f"{ratio['steady_vs_pyfai']:.2f}x steady state  (goal >= 3x)"
    )
    print(
        f"saxsdog / pyFAI without error model:      {ratio['wall_vs_pyfai_no_errors']:.2f}x "
        f"wall, {ratio['steady_vs_pyfai_no_errors']:.2f}x steady state"
    )
    print(
        f"\none file, whole process (best of {args.repeats_one}): saxsdog "
        f"{one['saxsdog_warm_cache_wall_s']:.2f} s with a warm matrix cache "
        f"({one['saxsdog_engine']}), {one['saxsdog_no_cache_wall_s']:.2f} s with --no-cache; "
        f"pyFAI script {one['pyfai_script_wall_s']:.2f} s; python -c 'import numpy' "
        f"{one['python_import_numpy_wall_s']:.2f} s, python -c pass "
        f"{one['python_empty_wall_s']:.2f} s  (goal: saxsdog < 0.5 s)"
    )
    ratio["one_file_pyfai_over_saxsdog"] = (
        one["pyfai_script_wall_s"] / one["saxsdog_warm_cache_wall_s"]
    )
    a = results["agreement_vs_pyfai"]
    print(
        f"curve agreement with pyFAI on frame 0: median |dI|/I = {100 * a['median_rel']:.2f} %,"
        f" 95th percentile {100 * a['p95_rel']:.2f} %"
    )

    import pyFAI

    record = {
        "benchmark": "saxsdog vs pyFAI script",
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "commit": git_commit(),
        "machine": machine(),
        "n_frames": args.frames,
        "frame_shape": list(cal.imagesize),
        "n_bins": len(integ.q),
        "repeats": args.repeats,
        "pyfai_version": pyFAI.version,
        "results": results,
        "one_file": one,
        "ratio": ratio,
        "load_average_at_end": os.getloadavg(),
        "note": "shared 2-core machine (other jobs running): compare the ratios, measured in "
        "the same run, not the absolute times",
    }
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(record, indent=1) + "\n")
    print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
