"""GPU benchmark of DeviceEngine: one command, prints a table, writes JSON.

    python benchmarks/bench_gpu.py [--kind nvidia-h100] [--cases pilatus1m,eiger16m]
    python benchmarks/bench_gpu.py --xp numpy --cases tiny     # the logic, without a GPU (CI)
    python benchmarks/bench_gpu.py --model                     # the bytes-moved predictions

Cases: PILATUS 1M (1043x981, int32, -1 gaps / -2 bad pixels, module-gap mask, polarization,
the reference tilt), EIGER 4M-size and EIGER2 16M-size (uint32, gap flag 2**32-1, untilted).
First the curves are CHECKED, on Poisson frames (sums not exact in float64) at full batches
and a ragged tail, errors on and off, host-fed and device-resident: the GPU sums of every
layout must agree with the CPU engine's within 1e-5 (relative), else the benchmark prints the
differences, no throughput, and exits with code 3.  Then per layout ("pixel": pixel-major
stack, "frame": frame-major, "spmm": the cupyx sparse reference path) and batch size (32, 64):
device-resident GPix/s (CUDA events around back-to-back calls; for "pixel" both a stack
already pixel-major and a (B, H, W) stack transposed on the device, the transposition
counted) as a fraction of the HBM read bound (bytes the batch must read: frames once, matrix
once, over the read bandwidth measured in the same run), host-fed frames/s from pinned memory
as a fraction of the H2D bandwidth measured in the same run, the spmm path against bare
cuSPARSE products on the same matrix and frames, which path ran and every fallback; plus
pyFAI's best method (OpenCL CSR when available, else Cython CSR) and the CPU engine on the same
frames.  Writes benchmarks/results/gpu-<kind>.json: "records", one per case, layout and batch,
with the fields of benchmarks/gpu_result_schema.json.  Exits with code 2 and a message without
CuPy or a device, 4 when a layout did not run on its own path (a fallback).
"""

import argparse
import ctypes
import datetime
import functools
import importlib
import json
import os
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))
#: compressed (bslz4) frames end to end, issue 26: benchmarks/bench_gpu_decode.py
bench_gpu_decode = importlib.import_module("bench_gpu_decode")

CASES = {
    # name: image (H, W), pixel um, distance mm, beam centre (Y from bottom, X) px, tilt
    # (angle, rotation) deg, wavelength A, dtype, module grid (module H, W, gap H, gap W),
    # polarization, batch size, host frames, oversampling
    "pilatus1m": dict(
        shape=(1043, 981),
        pixel_um=172.0,
        distance_mm=1031.657,
        beam_center=(808.37, 387.772),
        tilt=(-0.56, 73.569),
        wavelength=1.54,
        dtype=np.int32,
        modules=(195, 487, 17, 7),
        polarization=(0.95, 0.0),
        mask_gaps=True,
        batch=32,
        host_frames=256,
        oversampling=3,
    ),
    "eiger4m": dict(
        shape=(2167, 2070),
        pixel_um=75.0,
        distance_mm=1500.0,
        beam_center=(1100.5, 1020.5),
        tilt=(0.0, 0.0),
        wavelength=1.0,
        dtype=np.uint32,
        modules=(514, 1030, 37, 10),
        polarization=(0.99, 0.0),  # a pixel scale that makes the sums inexact in float64
        mask_gaps=False,
        batch=32,
        host_frames=64,
        oversampling=2,
    ),
    "eiger16m": dict(
        shape=(4362, 4148),
        pixel_um=75.0,
        distance_mm=2500.0,
        beam_center=(2200.5, 2050.5),
        tilt=(0.0, 0.0),
        wavelength=1.0,
        dtype=np.uint32,
        modules=(514, 1030, 37, 10),
        polarization=(0.99, 0.0),  # a pixel scale that makes the sums inexact in float64
        mask_gaps=False,
        batch=16,
        host_frames=32,
        oversampling=2,
    ),
    # a few-pixel detector for running the benchmark's logic on the NumPy module (CI)
    "tiny": dict(
        shape=(67, 59),
        pixel_um=172.0,
        distance_mm=300.0,
        beam_center=(60.5, 20.5),
        tilt=(-0.56, 73.569),
        wavelength=1.54,
        dtype=np.int32,
        modules=(30, 25, 3, 2),
        polarization=(0.95, 0.0),
        mask_gaps=True,
        batch=8,
        host_frames=16,
        oversampling=2,
    ),
}

#: Batch sizes measured per layout.
BATCHES = (32, 64)
#: Layouts measured: the kernel's two stack layouts and the sparse reference path.
LAYOUTS = ("pixel", "frame", "spmm")
#: Distinct Poisson frames of the accuracy check (tiled; odd, so frame groups of 8 differ).
N_DISTINCT = 11
#: Frames beyond the largest batch in the accuracy check (a ragged last batch).
TAIL = 5
#: Largest relative difference to the CPU engine before the benchmark refuses to time.
MAX_REL_DIFF = 1e-5


def fail(msg, code=2):
    print(f"bench_gpu: {msg}", file=sys.stderr)
    sys.exit(code)


def git_commit():
    """HEAD of the checkout, or $GPUSAXS_COMMIT (a device machine gets no .git: the device
    check passes the commit its wheels were prepared at)."""
    if os.environ.get("GPUSAXS_COMMIT"):
        return os.environ["GPUSAXS_COMMIT"]
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True, timeout=10
        )
        return out.stdout.strip() or "unknown" if out.returncode == 0 else "unknown"
    except Exception:
        return "unknown"


def kind_from_name(name):
    """'NVIDIA H100 80GB HBM3' -> 'nvidia-h100'."""
    words = re.findall(r"[a-z0-9]+", name.lower())
    return "-".join(words[:2]) if words else "unknown"


def gap_mask(shape, modules):
    """True on the inter-module gaps of a module grid (module h, w, gap h, gap w)."""
    mh, mw, gh, gw = modules
    rows = (np.arange(shape[0]) % (mh + gh)) >= mh
    cols = (np.arange(shape[1]) % (mw + gw)) >= mw
    return rows[:, None] | cols[None, :]


def synthetic_frames(case, n_distinct, rng):
    """(n_distinct, H, W) frames: Poisson rings around the beam, invalid pixels flagged."""
    h, w = case["shape"]
    yc = h - case["beam_center"][0]
    xc = case["beam_center"][1]
    yy, xx = np.ogrid[0:h, 0:w]
    r = np.hypot(yy - yc, xx - xc).astype(np.float32)
    base = 50.0 + 2000.0 * np.exp(-r / 150.0) + 400.0 * (1.0 + np.cos(r / 9.0))
    gaps = gap_mask((h, w), case["modules"])
    flag = -1 if np.dtype(case["dtype"]).kind == "i" else np.iinfo(case["dtype"]).max
    frames = np.empty((n_distinct, h, w), case["dtype"])
    for i in range(n_distinct):
        f = rng.poisson(base).astype(case["dtype"])
        f[gaps] = flag
        bad = rng.random((h, w)) < 1e-4
        f[bad] = -2 if flag == -1 else flag
        frames[i] = f
    return frames, gaps


class Clock:
    """Seconds per call of fn(): CUDA events around ``repeats`` back-to-back calls on the
    current stream (after a warm-up call), no host synchronisation between them; the wall
    clock on NumPy."""

    def __init__(self, xp):
        self.xp = xp
        self.cuda = xp.__name__ == "cupy"

    def sync(self):
        if self.cuda:
            self.xp.cuda.get_current_stream().synchronize()

    def device(self, fn, repeats):
        fn()
        self.sync()
        repeats = max(1, repeats)
        if not self.cuda:
            t0 = time.perf_counter()
            for _ in range(repeats):
                fn()
            return (time.perf_counter() - t0) / repeats
        start, end = self.xp.cuda.Event(), self.xp.cuda.Event()
        start.record()
        for _ in range(repeats):
            fn()
        end.record()
        end.synchronize()
        return self.xp.cuda.get_elapsed_time(start, end) * 1e-3 / repeats


def median_wall(fn, repeats):
    fn()
    times = []
    for _ in range(max(1, repeats)):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def measure_hbm(xp, clock, nbytes=2 << 30, repeats=5):
    """Device-to-device copy bandwidth in GB/s counting bytes read + written."""
    src = xp.ones(nbytes // 4, xp.float32)
    dst = xp.empty_like(src)
    t = clock.device(functools.partial(xp.copyto, dst, src), repeats)
    del src, dst
    return 2 * nbytes / t / 1e9


def measure_hbm_read(xp, clock, nbytes=2 << 30, repeats=5):
    """Device read bandwidth in GB/s: a sum over nbytes of float32 (reads only)."""
    src = xp.ones(nbytes // 4, xp.float32)
    out = xp.empty((), xp.float32)
    t = clock.device(functools.partial(xp.sum, src, out=out), repeats)
    del src, out
    return nbytes / t / 1e9


def measure_h2d(xp, clock, nbytes=1 << 30, repeats=5):
    """Pinned host-to-device copy bandwidth in GB/s (NumPy: a host memcpy)."""
    if not clock.cuda:
        host = np.ones(nbytes, np.uint8)
        dev = np.empty_like(host)
        return nbytes / median_wall(functools.partial(np.copyto, dev, host), repeats) / 1e9
    import cupyx

    host = cupyx.empty_pinned((nbytes,), np.uint8)
    host[...] = 1
    dev = xp.empty((nbytes,), xp.uint8)
    ptr = ctypes.c_void_p(host.ctypes.data)
    t = clock.device(functools.partial(dev.data.copy_from_host_async, ptr, nbytes), repeats)
    del host, dev
    return nbytes / t / 1e9


def pinned_copy(xp, stack):
    """A page-locked copy of stack on CuPy (the host-fed path's best case), stack on NumPy."""
    if xp.__name__ != "cupy":
        return stack
    import cupyx

    pinned = cupyx.empty_pinned(stack.shape, stack.dtype)
    pinned[...] = stack
    return pinned


def rel_diff(a, b):
    """max |a-b| / max(|b|, 1e-12 * max|b| of the frame): relative, robust to empty bins."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    floor = 1e-12 * np.abs(b).max(axis=-1, keepdims=True) + 1e-300
    return float((np.abs(a - b) / np.maximum(np.abs(b), floor)).max(initial=0.0))


def sums_diff(got, ref):
    """Largest rel_diff over the fields got has (errors=False: signal and norm)."""
    return max(
        rel_diff(getattr(got, f), getattr(ref, f))
        for f in ("signal", "norm", "variance", "squares")
        if getattr(got, f) is not None
    )


def engine_for(matrix, xp, layout, batch, dtype, **kw):
    """DeviceEngine of a measured layout ("spmm": the sparse path, frame-major batches)."""
    from gpusaxs.gpu_engine import DeviceEngine

    method = "spmm" if layout == "spmm" else "kernel"
    eng = DeviceEngine(
        matrix,
        xp=xp,
        batch_size=batch,
        method=method,
        layout="frame" if layout == "spmm" else layout,
        **kw,
    )
    eng.warm_up((dtype,))  # compile now, not inside a timing
    return eng


def check_frames(frames, n):
    """n frames: the N_DISTINCT Poisson frames tiled."""
    return frames[np.arange(n) % len(frames)]


def make_matrix(case):
    from gpusaxs.calibration_model import Calibration
    from gpusaxs.matrix import build_matrix

    h, w = case["shape"]
    rng = np.random.default_rng(2024)
    frames, gaps = synthetic_frames(case, N_DISTINCT, rng)
    cal = Calibration(
        beam_center=case["beam_center"],
        distance_mm=case["distance_mm"],
        imagesize=case["shape"],
        pixel_size_um=(case["pixel_um"],) * 2,
        wavelength_A=case["wavelength"],
        tilt_angle_deg=case["tilt"][0],
        tilt_rot_deg=case["tilt"][1],
        oversampling=case["oversampling"],
        polarization=case["polarization"],
    )
    mask = gaps if case["mask_gaps"] else np.zeros((h, w), bool)
    return cal, build_matrix(cal, mask=mask), frames, mask


def check_curves(name, matrix, frames, xp, batches):
    """Max relative difference to the CPU engine per layout and batch size, errors on and
    off, host-fed and device-resident, on max(batches) + TAIL Poisson frames (full batches
    and a ragged one); and the CPU engine's frames/s.  {"pixel/32": {"errors": d, "no_errors":
    d}, ...}.  The benchmark refuses to time anything above MAX_REL_DIFF."""
    from gpusaxs.engines import make_engine

    cpu = make_engine(matrix, "numpy")
    x = check_frames(frames, max(batches) + TAIL)
    cpu.sums(x[:1], errors=True)  # compile
    t0 = time.perf_counter()
    ref = cpu.sums(x, errors=True)
    cpu_fps = len(x) / (time.perf_counter() - t0)
    diffs = {}
    dev = xp.asarray(x)
    for layout in LAYOUTS:
        for batch in batches:
            eng = engine_for(matrix, xp, layout, batch, x.dtype)
            d = {}
            for key, errors in (("errors", True), ("no_errors", False)):
                host = sums_diff(eng.sums(x, errors=errors), ref)
                res = eng.sums_device(dev, errors=errors)
                on_dev = sums_diff(
                    type(ref)(*(None if a is None else eng._ops.to_host(a) for a in res)), ref
                )
                d[key] = max(host, on_dev)
            diffs[f"{layout}/{batch}"] = d
            eng.close()
    del dev
    return diffs, cpu_fps


def bare_cusparse_seconds(eng, xp, clock, stack, repeats):
    """Seconds of the products the spmm path needs (signal and norm: two CSR @ dense) done
    bare on the same matrix and frames, already float on the device, in the column-major
    (n_pixels, B) layout cuSPARSE reads without a copy."""
    mats = eng._sparse_matrices()
    x = stack.reshape(len(stack), -1).astype(eng.spmm_dtype)  # (B, n_pixels), C order
    xd = xp.asarray(x).T  # (n_pixels, B), F-contiguous: what SpMM reads without a copy
    vd = xp.asarray((x >= 0).astype(eng.spmm_dtype)).T

    def products():
        mats["ws"] @ xd
        mats["w"] @ vd

    return clock.device(products, repeats)


def run_case(name, case, xp, clock, bw, args, meta):
    """Measure one case: per layout and batch size a record (gpu_result_schema.json)."""
    res = {"case": name}
    t0 = time.perf_counter()
    cal, matrix, frames, mask = make_matrix(case)
    res["build_s"] = time.perf_counter() - t0
    h, w = case["shape"]
    n_pix = h * w
    dtype = np.dtype(case["dtype"])
    frame_bytes = n_pix * dtype.itemsize
    res.update(
        frame_shape=[h, w],
        dtype=dtype.name,
        n_pixels=n_pix,
        n_bins=matrix.n_bins,
        nnz=matrix.nnz,
        entries_per_pixel=matrix.nnz / n_pix,
    )
    batches = [args.batch] if args.batch else list(BATCHES) if name != "tiny" else [8]
    diffs, res["cpu_frames_per_s"] = check_curves(name, matrix, frames, xp, batches)
    res["max_rel_diff_vs_cpu_check"] = diffs
    if max(max(d.values()) for d in diffs.values()) > MAX_REL_DIFF:
        res["failed"] = True
        return res, []
    records = []
    res["layouts"] = {}
    for batch in batches:
        n_host = max(batch, (args.host_frames or case["host_frames"]) // batch * batch)
        stack = check_frames(frames, max(n_host, batch))
        dev = xp.asarray(stack[:batch])
        spmm_eng = engine_for(matrix, xp, "spmm", batch, dtype)
        t_bare = bare_cusparse_seconds(spmm_eng, xp, clock, stack[:batch], args.repeats)
        t_spmm = clock.device(functools.partial(spmm_eng.sums_device, dev), args.repeats)
        spmm_eng.close()
        for layout in LAYOUTS:
            eng = engine_for(matrix, xp, layout, batch, dtype, n_streams=args.streams)
            r = dict(meta, case=name, layout=layout, batch_size=batch, host_frames=n_host)
            t = clock.device(functools.partial(eng.sums_device, dev), args.repeats)
            must_read = batch * frame_bytes + eng.device_nbytes
            r["device_resident_gpix_per_s"] = batch * n_pix / t / 1e9  # (B, H, W) input
            r["hbm_read_gb_per_s"] = bw["hbm_read"]
            r["bytes_per_pixel_read"] = must_read / (batch * n_pix)
            r["fraction_of_hbm_read_bound"] = must_read / t / (bw["hbm_read"] * 1e9)
            if layout == "pixel":  # frames already pixel-major on the device: no transpose
                pm = xp.ascontiguousarray(dev.reshape(batch, -1).T)
                t_pm = clock.device(
                    functools.partial(eng.sums_device, pm, pixel_major=True), args.repeats
                )
                r["device_resident_pixel_major_input_gpix_per_s"] = batch * n_pix / t_pm / 1e9
                r["pixel_major_input_fraction_of_hbm_read_bound"] = (
                    must_read / t_pm / (bw["hbm_read"] * 1e9)
                )
                del pm
            t = clock.device(functools.partial(eng.sums_device, dev, errors=True), args.repeats)
            r["device_resident_errors_gpix_per_s"] = batch * n_pix / t / 1e9
            pinned = pinned_copy(xp, stack)
            t = median_wall(functools.partial(eng.sums, pinned), max(1, args.repeats // 3))
            r["host_fed_frames_per_s"] = n_host / t
            r["host_fed_fraction_of_h2d"] = n_host * frame_bytes / t / (bw["h2d"] * 1e9)
            r["spmm_fraction_of_cusparse"] = t_bare / t_spmm
            r["max_rel_diff_vs_cpu"] = max(diffs[f"{layout}/{batch}"].values())
            r["max_rel_diff_vs_cpu_by_errors"] = diffs[f"{layout}/{batch}"]
            r["path"] = eng.path
            r["fallbacks"] = [dict(f) for f in eng.fallbacks]
            del pinned
            eng.close()
            res["layouts"][f"{layout}/{batch}"] = r
            records.append(r)
            if clock.cuda:
                xp.get_default_memory_pool().free_all_blocks()
        del dev
    kernel = [r for r in records if r["layout"] != "spmm"]
    best = max(kernel, key=lambda r: r["device_resident_gpix_per_s"])
    res["device_resident_gpix_per_s"] = best["device_resident_gpix_per_s"]
    res["host_fed_fraction_of_h2d"] = max(r["host_fed_fraction_of_h2d"] for r in kernel)
    res["max_rel_diff_vs_cpu"] = max(r["max_rel_diff_vs_cpu"] for r in records)
    if not args.no_decode:  # bslz4 chunks end to end (issue 26)
        b = batches[0]
        n_dec = max(b, (args.host_frames or case["host_frames"]) // b * b)
        helpers = dict(
            engine_for=engine_for,
            pinned_copy=pinned_copy,
            median_wall=median_wall,
            sums_diff=sums_diff,
        )
        res["decode_records"] = bench_gpu_decode.measure(
            name, check_frames(frames, n_dec), matrix, xp, b, meta, bw, helpers,
            repeats=max(1, args.repeats // 3),
        )  # fmt: skip
    if not args.no_pyfai:
        res.update(bench_pyfai(case, matrix, frames, mask, args))
    return res, records


def bench_pyfai(case, matrix, frames, mask, args):
    """pyFAI integrate1d frames/s on the same frames with its best available method:
    OpenCL CSR (GPU) when pyopencl works, else Cython CSR (CPU); full pixel splitting."""
    try:
        from pyFAI.integrator.azimuthal import AzimuthalIntegrator
    except Exception:
        try:
            from pyFAI.azimuthalIntegrator import AzimuthalIntegrator
        except Exception as exc:
            return {"pyfai_frames_per_s": None, "pyfai_error": f"not importable: {exc}"}
    import pyFAI

    ai = AzimuthalIntegrator()
    ai.setFit2D(
        case["distance_mm"],
        centerX=case["beam_center"][1],
        centerY=case["beam_center"][0],
        tilt=case["tilt"][0],
        tiltPlanRotation=case["tilt"][1],
        pixelX=case["pixel_um"],
        pixelY=case["pixel_um"],
    )
    ai.wavelength = case["wavelength"] * 1e-10
    pol = case["polarization"][0] if case["polarization"] else None
    best = {"pyfai_frames_per_s": None, "pyfai_version": pyFAI.version, "pyfai_tried": {}}
    for method in (("full", "csr", "opencl"), ("full", "csr", "cython")):
        try:
            kw = dict(
                npt=matrix.n_bins,
                unit="q_nm^-1",
                method=method,
                mask=mask | (frames[0] < 0),
                polarization_factor=pol,
                dummy=-1,
                delta_dummy=0.5,
            )
            first = ai.integrate1d(frames[0], **kw)  # builds the CSR matrix / OpenCL context
            used = str(getattr(first, "method", method))
            if method[2] not in used.lower():  # pyFAI substituted another implementation
                best["pyfai_tried"]["/".join(method)] = f"not available (pyFAI used {used})"
                continue
            n = min(args.pyfai_frames, len(frames))
            t0 = time.perf_counter()
            for k in range(n):
                ai.integrate1d(frames[k % len(frames)], **kw)
            fps = n / (time.perf_counter() - t0)
            best["pyfai_tried"]["/".join(method)] = fps
            if best["pyfai_frames_per_s"] is None or fps > best["pyfai_frames_per_s"]:
                best.update(pyfai_frames_per_s=fps, pyfai_method="/".join(method))
        except Exception as exc:
            best["pyfai_tried"]["/".join(method)] = f"{type(exc).__name__}: {exc}"[:200]
    return best


def print_failures(report):
    print(
        f"bench_gpu: GPU curves differ from the CPU engine by more than {MAX_REL_DIFF:g}; "
        "no throughput reported",
        file=sys.stderr,
    )
    for res in report["cases"].values():
        for key, by_errors in res.get("max_rel_diff_vs_cpu_check", {}).items():
            for errors, value in by_errors.items():
                flag = "  <-- FAIL" if value > MAX_REL_DIFF else ""
                print(
                    f"  {res['case']:>10} {key:>10} {errors:>9}: max rel diff {value:.2e}{flag}",
                    file=sys.stderr,
                )


def print_table(report):
    print(
        f"\n{report['device']}  HBM read {report['hbm_read_gb_per_s']:.0f} GB/s, copy "
        f"{report['hbm_gb_per_s']:.0f} GB/s (r+w)  H2D pinned {report['h2d_gb_per_s']:.1f} GB/s"
    )
    head = (
        "case",
        "layout/B",
        "path",
        "GPix/s dev",
        "pm input",
        "of read bd",
        "spmm/bare",
        "fps host",
        "of H2D",
        "rel diff",
        "fps cpu",
        "fps pyFAI",
    )
    print("  ".join(f"{h:>11}" for h in head))
    for res in report["cases"].values():
        for key, r in res["layouts"].items():
            pm = r.get("device_resident_pixel_major_input_gpix_per_s")
            cells = [
                res["case"],
                key,
                r["path"] + ("!" if r["fallbacks"] else ""),
                f"{r['device_resident_gpix_per_s']:.1f}",
                "-" if pm is None else f"{pm:.1f}",
                f"{r['fraction_of_hbm_read_bound']:.0%}",
                f"{r['spmm_fraction_of_cusparse']:.0%}",
                f"{r['host_fed_frames_per_s']:.0f}",
                f"{r['host_fed_fraction_of_h2d']:.0%}",
                f"{r['max_rel_diff_vs_cpu']:.1e}",
                f"{res['cpu_frames_per_s']:.1f}",
                "-"
                if res.get("pyfai_frames_per_s") is None
                else f"{res['pyfai_frames_per_s']:.1f}",
            ]
            print("  ".join(f"{c:>11}" for c in cells))


# ----------------------------------------------------------------------------- the model
#: H100 SXM figures the model assumes: HBM3 bandwidth, achievable fraction of it, L2->SM
#: bandwidth (an assumption: ~2x HBM; to be measured), 32-byte sectors.
H100 = dict(hbm_tb_s=3.35, efficiency=0.85, l2_tb_s=7.0)
DETECTORS = {
    "PILATUS 1M": dict(
        pixels=1043 * 981, itemsize=4, entries_per_pixel=1.72, sectors_per_read=13.5
    ),
    "EIGER2 16M": dict(
        pixels=4148 * 4362, itemsize=4, entries_per_pixel=1.8, sectors_per_read=15.3
    ),
}


def bytes_model(layout, batch, det, fb=8, transpose=False):
    """Bytes per pixel-frame: (HBM, L2->SM).  Frame data is read from HBM once (its other
    uses hit L2); the matrix (12 B/entry) once per batch from HBM and once per frame group of
    fb from L2.  Frame-major gathers fetch sectors_per_read 32-byte sectors per 32-lane read of
    4-byte values; pixel-major reads one sector per lane for 8 int32 frames.  transpose: a
    (B, H, W) stack made pixel-major on the device first (read + write of the stack)."""
    e = det["entries_per_pixel"]
    b = det["itemsize"]
    hbm = b + 12.0 * e / batch + (2 * b if transpose else 0)
    if layout == "frame":
        gather = e * det["sectors_per_read"] * 32 / 32  # bytes per value read by a lane
    else:
        gather = e * b  # fb values of b bytes in fb*b contiguous bytes: no waste
    l2 = gather + 12.0 * e / fb + (2 * b if transpose else 0)
    return hbm, l2


def predict(layout, batch, det, machine=H100, transpose=False):
    """Predicted GPix/s: the tighter of the HBM and L2 bounds, times the efficiency."""
    hbm, l2 = bytes_model(layout, batch, det, transpose=transpose)
    bound_hbm = machine["hbm_tb_s"] * 1e12 / hbm / 1e9
    bound_l2 = machine["l2_tb_s"] * 1e12 / l2 / 1e9
    return dict(
        hbm_bytes=hbm,
        l2_bytes=l2,
        hbm_bound=bound_hbm,
        l2_bound=bound_l2,
        predicted=machine["efficiency"] * min(bound_hbm, bound_l2),
    )


def model_table():
    """Markdown table of the predictions (docs/gpu.md)."""
    rows = [
        "| detector | layout | B | HBM B/px | L2 B/px | HBM bound | L2 bound | predicted GPix/s |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for name, det in DETECTORS.items():
        for layout, transpose, label in (
            ("frame", False, "frame-major"),
            ("pixel", True, "pixel-major, (B,H,W) transposed"),
            ("pixel", False, "pixel-major input"),
        ):
            for batch in BATCHES:
                p = predict(layout, batch, det, transpose=transpose)
                rows.append(
                    f"| {name} | {label} | {batch} | {p['hbm_bytes']:.1f} | "
                    f"{p['l2_bytes']:.1f} | {p['hbm_bound']:.0f} | {p['l2_bound']:.0f} "
                    f"| {p['predicted']:.0f} |"
                )
    return "\n".join(rows)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--kind", help="result name suffix (default: from the device name)")
    p.add_argument(
        "--cases", default="pilatus1m,eiger16m", help="comma list of " + ", ".join(CASES)
    )
    p.add_argument(
        "--xp",
        choices=("cupy", "numpy"),
        default="cupy",
        help="array module (numpy: the logic without a GPU, for CI)",
    )
    p.add_argument("--batch", type=int, default=None, help="one batch size (default 32, 64)")
    p.add_argument("--streams", type=int, default=2)
    p.add_argument("--host-frames", type=int, default=None)
    p.add_argument("--repeats", type=int, default=9)
    p.add_argument("--pyfai-frames", type=int, default=8)
    p.add_argument("--no-pyfai", action="store_true")
    p.add_argument("--no-decode", action="store_true", help="skip the compressed (bslz4) records")
    p.add_argument("--model", action="store_true", help="print the predictions and exit")
    p.add_argument("--out-dir", default=str(ROOT / "benchmarks" / "results"))
    args = p.parse_args(argv)
    if args.model:
        print(model_table())
        return 0
    cases = [c.strip() for c in args.cases.split(",") if c.strip()]
    unknown = [c for c in cases if c not in CASES]
    if unknown:
        fail(f"unknown case(s) {unknown}; valid: {', '.join(CASES)}")

    if args.xp == "numpy":
        xp, device, extra = np, "numpy (no GPU: logic check only)", {}
        nbytes = 64 << 20
    else:
        try:
            import cupy as xp
        except Exception as exc:
            fail(
                f"CuPy is not available ({type(exc).__name__}: {exc}); this benchmark needs a "
                f'CUDA device and CuPy: pip install ".[gpu]"'
            )
        try:
            n_dev = xp.cuda.runtime.getDeviceCount()
        except Exception as exc:
            fail(f"no CUDA device usable ({type(exc).__name__}: {exc})")
        if n_dev < 1:
            fail("no CUDA device visible")
        props = xp.cuda.runtime.getDeviceProperties(0)
        device = props["name"].decode() if isinstance(props["name"], bytes) else str(props["name"])
        extra = {
            "cupy_version": xp.__version__,
            "cuda_runtime_version": xp.cuda.runtime.runtimeGetVersion(),
            "compute_capability": f"{props['major']}.{props['minor']}",
        }
        nbytes = 1 << 30
    kind = args.kind or kind_from_name(device)
    clock = Clock(xp)
    t_start = time.perf_counter()
    bw = {
        "hbm_read": measure_hbm_read(xp, clock, 2 * nbytes),
        "hbm_copy": measure_hbm(xp, clock, 2 * nbytes),
        "h2d": measure_h2d(xp, clock, nbytes),
    }
    meta = {
        "device": device,
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "commit": git_commit(),
    }
    report = {
        **meta,
        "kind": kind,
        **extra,
        "hbm_read_gb_per_s": bw["hbm_read"],
        "hbm_gb_per_s": bw["hbm_copy"],
        "h2d_gb_per_s": bw["h2d"],
        "max_rel_diff_allowed": MAX_REL_DIFF,
        "timing": f"CUDA events around {args.repeats} back-to-back calls (device-resident); "
        "wall clock (host-fed)",
        "spmm_reference": "two bare CSR @ dense products (signal, norm) on float pixel-major "
        "frames already on the device",
        "cases": {},
        "records": [],
        "decode_records": [],
    }
    for name in cases:
        print(f"... {name}", flush=True)
        res, records = run_case(name, CASES[name], xp, clock, bw, args, meta)
        report["cases"][name] = res
        report["records"] += records
        report["decode_records"] += res.pop("decode_records", [])
    if any(r.get("failed") for r in report["cases"].values()):
        print_failures(report)
        return 3
    head = report["cases"].get("pilatus1m") or next(iter(report["cases"].values()))
    for key in (
        "frame_shape",
        "device_resident_gpix_per_s",
        "host_fed_fraction_of_h2d",
        "max_rel_diff_vs_cpu",
        "pyfai_frames_per_s",
        "pyfai_method",
        "cpu_frames_per_s",
    ):
        report[key] = head.get(key)
    report["headline_case"] = head["case"]
    report["total_s"] = time.perf_counter() - t_start
    print_table(report)
    if report["decode_records"]:
        bench_gpu_decode.print_table(report["decode_records"])
    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"gpu-{kind}.json"
    path.write_text(json.dumps(report, indent=2, default=float) + "\n")
    print(f"\nwrote {path}  ({report['total_s']:.0f} s)")
    wrong = [
        f"{r['case']} {r['layout']}/{r['batch_size']}: path {r['path']}, {r['fallbacks']}"
        for r in report["records"]
        if r["path"] != ("spmm" if r["layout"] == "spmm" else "kernel") or r["fallbacks"]
    ]
    wrong += bench_gpu_decode.wrong(report["decode_records"], on_device=clock.cuda)
    if wrong:
        print("bench_gpu: not on the measured path:\n  " + "\n  ".join(wrong), file=sys.stderr)
        return 4
    return 0


if __name__ == "__main__":
    sys.exit(main())
