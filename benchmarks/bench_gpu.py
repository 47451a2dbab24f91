"""GPU benchmark of DeviceEngine (issue 4): one command, prints a table, writes JSON.

    python benchmarks/bench_gpu.py [--kind nvidia-h100] [--cases pilatus1m,eiger4m,eiger16m]

Cases: PILATUS 1M (1043x981, int32, -1 gaps / -2 bad pixels, module-gap mask, polarization,
the reference tilt), EIGER 4M-size (2167x2070) and EIGER 16M-size (4362x4148) (uint32, gap
flag 2**32-1 in the data, untilted).  Per case: device-resident batched throughput (CUDA
events, GPix/s, fraction of the HBM bandwidth measured in the same run by a large
device-to-device copy), host-fed throughput from pageable and from pinned host memory with
results back on the host (frames/s, wall clock: it includes the host's share), the naive way
(one cupyx SpMV per frame, float conversion on the host), pyFAI's CPU engine if importable
(PILATUS only), the CPU engine, and max_rel_diff_vs_cpu.  Writes
benchmarks/results/gpu-<kind>.json.  Exits with code 2 and a message without CuPy or a device.
"""
import argparse
import ctypes
import datetime
import json
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

CASES = {
    # name: image (H, W), pixel um, distance mm, beam centre (Y from bottom, X) px, tilt
    # (angle, rotation) deg, wavelength A, dtype, module grid (module H, W, gap H, gap W),
    # polarization, batch size, host frames, oversampling
    "pilatus1m": dict(shape=(1043, 981), pixel_um=172.0, distance_mm=1031.657,
                      beam_center=(808.37, 387.772), tilt=(-0.56, 73.569), wavelength=1.54,
                      dtype=np.int32, modules=(195, 487, 17, 7), polarization=(0.95, 0.0),
                      mask_gaps=True, batch=32, host_frames=256, oversampling=3),
    "eiger4m": dict(shape=(2167, 2070), pixel_um=75.0, distance_mm=1500.0,
                    beam_center=(1100.5, 1020.5), tilt=(0.0, 0.0), wavelength=1.0,
                    dtype=np.uint32, modules=(514, 1030, 37, 10), polarization=None,
                    mask_gaps=False, batch=32, host_frames=64, oversampling=2),
    "eiger16m": dict(shape=(4362, 4148), pixel_um=75.0, distance_mm=2500.0,
                     beam_center=(2200.5, 2050.5), tilt=(0.0, 0.0), wavelength=1.0,
                     dtype=np.uint32, modules=(514, 1030, 37, 10), polarization=None,
                     mask_gaps=False, batch=16, host_frames=32, oversampling=2),
}


def fail(msg, code=2):
    print(f"bench_gpu: {msg}", file=sys.stderr)
    sys.exit(code)


def git_commit():
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True,
                             text=True, timeout=10)
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


def median_events(cp, fn, repeats):
    """Median seconds of fn() on the current stream, timed with CUDA events (after warm-up)."""
    fn()
    cp.cuda.get_current_stream().synchronize()
    start, end = cp.cuda.Event(), cp.cuda.Event()
    times = []
    for _ in range(repeats):
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(cp.cuda.get_elapsed_time(start, end) * 1e-3)
    return statistics.median(times)


def median_wall(fn, repeats):
    fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def measure_hbm(cp, nbytes=2 << 30, repeats=5):
    """Device-to-device copy bandwidth in GB/s counting bytes read + written."""
    src = cp.ones(nbytes // 4, cp.float32)
    dst = cp.empty_like(src)
    t = median_events(cp, lambda: dst.data.copy_from_device_async(src.data, src.nbytes),
                      repeats)
    del src, dst
    return 2 * nbytes / t / 1e9


def measure_h2d(cp, nbytes=1 << 30, repeats=5):
    """Pinned host-to-device copy bandwidth in GB/s (and pageable, for reference)."""
    import cupyx

    host = cupyx.empty_pinned((nbytes,), np.uint8)
    host[...] = 1
    dev = cp.empty((nbytes,), cp.uint8)
    ptr = ctypes.c_void_p(host.ctypes.data)
    pinned = median_events(cp, lambda: dev.data.copy_from_host_async(ptr, nbytes), repeats)
    pageable_host = np.ones(nbytes, np.uint8)
    pageable = median_wall(lambda: dev.set(pageable_host), 3)
    del host, dev, pageable_host
    return nbytes / pinned / 1e9, nbytes / pageable / 1e9


def rel_diff(a, b):
    """max |a-b| / max(|b|, 1e-12 * max|b| of the frame): relative, robust to empty bins."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    floor = 1e-12 * np.abs(b).max(axis=-1, keepdims=True) + 1e-300
    return float((np.abs(a - b) / np.maximum(np.abs(b), floor)).max(initial=0.0))


def run_case(name, case, cp, hbm, h2d, args):
    import cupyx
    import cupyx.scipy.sparse as csp

    from gpusaxs.calibration import Calibration
    from gpusaxs.gpu_engine import DeviceEngine, valid_mask
    from gpusaxs.matrix import build_matrix

    res = {"case": name}
    rng = np.random.default_rng(2024)
    h, w = case["shape"]
    frames, gaps = synthetic_frames(case, 4, rng)
    cal = Calibration(beam_center=case["beam_center"], distance_mm=case["distance_mm"],
                      imagesize=case["shape"], pixel_size_um=(case["pixel_um"],) * 2,
                      wavelength_A=case["wavelength"], tilt_angle_deg=case["tilt"][0],
                      tilt_rot_deg=case["tilt"][1], oversampling=case["oversampling"],
                      polarization=case["polarization"])
    mask = gaps if case["mask_gaps"] else np.zeros((h, w), bool)
    t0 = time.perf_counter()
    matrix = build_matrix(cal, mask=mask)
    res["build_s"] = time.perf_counter() - t0
    itemsize = np.dtype(case["dtype"]).itemsize
    n_pix = h * w
    frame_bytes = n_pix * itemsize
    batch = args.batch or case["batch"]
    n_host = max(batch, (args.host_frames or case["host_frames"]) // batch * batch)
    res.update(frame_shape=[h, w], dtype=np.dtype(case["dtype"]).name, n_pixels=n_pix,
               n_bins=matrix.n_bins, nnz=matrix.nnz, entries_per_pixel=matrix.nnz / n_pix,
               batch_size=batch, host_frames=n_host, oversampling=case["oversampling"],
               polarization=case["polarization"] is not None, mask_gaps=case["mask_gaps"])
    stack = frames[np.arange(n_host) % len(frames)]

    eng = DeviceEngine(matrix, xp=cp, batch_size=batch, n_streams=args.streams)
    res["matrix_device_bytes"] = eng.device_nbytes
    # device-resident, one launch per batch
    dev = cp.asarray(stack[:batch])
    t = median_events(cp, lambda: eng.sums_device(dev), args.repeats)
    res["device_resident_s_per_batch"] = t
    res["device_resident_gpix_per_s"] = batch * n_pix / t / 1e9
    res["device_resident_frames_per_s"] = batch / t
    res["device_resident_fraction_of_hbm"] = batch * frame_bytes / t / (hbm * 1e9)
    res["device_resident_fraction_of_hbm_with_matrix"] = \
        (batch * frame_bytes + eng.device_nbytes) / t / (hbm * 1e9)
    t = median_events(cp, lambda: eng.sums_device(dev, errors=True), args.repeats)
    res["device_resident_errors_gpix_per_s"] = batch * n_pix / t / 1e9
    if name == "pilatus1m" and not args.no_sweep:  # tuning data: frames per CUDA block
        sweep = {}
        for fb in (1, 2, 4, 8, 16):
            e = DeviceEngine(matrix, xp=cp, batch_size=batch, frames_per_block=fb)
            sweep[str(fb)] = batch * n_pix / median_events(cp, lambda: e.sums_device(dev),
                                                           args.repeats) / 1e9
        res["frames_per_block_sweep_gpix_per_s"] = sweep
    spmm = DeviceEngine(matrix, xp=cp, batch_size=batch, method="spmm", spmm_dtype="float32")
    t = median_events(cp, lambda: spmm.sums_device(dev), args.repeats)
    res["spmm_device_resident_gpix_per_s"] = batch * n_pix / t / 1e9
    kern_dev = eng.sums_device(dev, errors=True)
    spmm_dev = spmm.sums_device(dev, errors=True)
    res["max_rel_diff_spmm32_vs_kernel"] = max(
        rel_diff(cp.asnumpy(getattr(spmm_dev, f)), cp.asnumpy(getattr(kern_dev, f)))
        for f in ("signal", "norm", "variance", "squares"))
    del dev, spmm, spmm_dev, kern_dev
    cp.get_default_memory_pool().free_all_blocks()

    # host-fed, results on host
    t = median_wall(lambda: eng.sums(stack), max(1, args.repeats // 3))
    res["host_fed_pageable_frames_per_s"] = n_host / t
    pinned = cupyx.empty_pinned(stack.shape, stack.dtype)
    pinned[...] = stack
    t = median_wall(lambda: eng.sums(pinned), max(1, args.repeats // 3))
    res["host_fed_pinned_frames_per_s"] = n_host / t
    res["host_fed_frames_per_s"] = res["host_fed_pinned_frames_per_s"]
    res["host_fed_gb_per_s"] = res["host_fed_frames_per_s"] * frame_bytes / 1e9
    res["host_fed_fraction_of_h2d"] = res["host_fed_gb_per_s"] / h2d
    res["pcie_bound_frames_per_s"] = h2d * 1e9 / frame_bytes
    res["hbm_bound_frames_per_s"] = hbm * 1e9 / frame_bytes
    del pinned

    # naive: one SpMV per frame, float conversion and validity on the host
    row_ptr, pix, wts = matrix.bin_major()
    ws = wts * matrix.pixel_scale[pix]
    a_ws = csp.csr_matrix((cp.asarray(ws.astype(np.float32)), cp.asarray(pix),
                           cp.asarray(row_ptr.astype(np.int32))), shape=(matrix.n_bins, n_pix))
    a_w = csp.csr_matrix((cp.asarray(wts.astype(np.float32)), cp.asarray(pix),
                          cp.asarray(row_ptr.astype(np.int32))), shape=(matrix.n_bins, n_pix))
    n_naive = min(args.naive_frames, n_host)

    def naive():
        for frame in stack[:n_naive]:
            x = frame.reshape(-1)
            valid = valid_mask(x)
            xf = np.where(valid, x, 0).astype(np.float32)
            xd, vd = cp.asarray(xf), cp.asarray(valid.astype(np.float32))
            (a_ws @ xd).get(), (a_w @ vd).get()
    t = median_wall(naive, max(1, args.repeats // 3))
    res["naive_frames_per_s"] = n_naive / t
    del a_ws, a_w

    # CPU engine: speed and agreement
    n_cpu = min(args.cpu_frames, n_host)
    try:
        from gpusaxs.cpu_fallback.engine import CpuEngine
        cpu = CpuEngine(matrix)
        cpu.sums(stack[:1], errors=True)  # numba compile
        t0 = time.perf_counter()
        ref = cpu.sums(stack[:n_cpu], errors=True)
        res["cpu_frames_per_s"] = n_cpu / (time.perf_counter() - t0)
        got = eng.sums(stack[:n_cpu], errors=True)
        res["max_rel_diff_vs_cpu"] = max(rel_diff(getattr(got, f), getattr(ref, f))
                                         for f in ("signal", "norm", "variance", "squares"))
    except Exception as exc:
        res["cpu_error"] = f"{type(exc).__name__}: {exc}"
        res["max_rel_diff_vs_cpu"] = None

    if name == "pilatus1m" and not args.no_pyfai:
        res.update(bench_pyfai(case, cal, matrix, stack, mask, args))
    eng.close()
    cp.get_default_memory_pool().free_all_blocks()
    return res


def bench_pyfai(case, cal, matrix, stack, mask, args):
    """pyFAI integrate1d (full pixel splitting, CSR, cython) frames/s on the same frames."""
    try:
        from pyFAI.integrator.azimuthal import AzimuthalIntegrator
    except Exception:
        try:
            from pyFAI.azimuthalIntegrator import AzimuthalIntegrator
        except Exception as exc:
            return {"pyfai_frames_per_s": None, "pyfai_error": f"not importable: {exc}"}
    try:
        import pyFAI
        ai = AzimuthalIntegrator()
        ai.setFit2D(case["distance_mm"], centerX=case["beam_center"][1],
                    centerY=case["beam_center"][0], tilt=case["tilt"][0],
                    tiltPlanRotation=case["tilt"][1], pixelX=case["pixel_um"],
                    pixelY=case["pixel_um"])
        ai.wavelength = case["wavelength"] * 1e-10
        pol = case["polarization"][0] if case["polarization"] else None
        full_mask = mask | (stack[0] < 0)
        kw = dict(npt=matrix.n_bins, unit="q_nm^-1", method=("full", "csr", "cython"),
                  mask=full_mask, polarization_factor=pol, dummy=-1, delta_dummy=0.5)
        ai.integrate1d(stack[0], **kw)  # builds the CSR matrix
        n = min(args.pyfai_frames, len(stack))
        t0 = time.perf_counter()
        for frame in stack[:n]:
            ai.integrate1d(frame, **kw)
        return {"pyfai_frames_per_s": n / (time.perf_counter() - t0),
                "pyfai_version": pyFAI.version}
    except Exception as exc:
        return {"pyfai_frames_per_s": None, "pyfai_error": f"{type(exc).__name__}: {exc}"}


def print_table(report):
    cols = [("case", "case", "{}"), ("GPix/s dev", "device_resident_gpix_per_s", "{:.1f}"),
            ("of HBM", "device_resident_fraction_of_hbm", "{:.0%}"),
            ("spmm GPix/s", "spmm_device_resident_gpix_per_s", "{:.1f}"),
            ("fps pageable", "host_fed_pageable_frames_per_s", "{:.0f}"),
            ("fps pinned", "host_fed_pinned_frames_per_s", "{:.0f}"),
            ("of H2D", "host_fed_fraction_of_h2d", "{:.0%}"),
            ("fps naive", "naive_frames_per_s", "{:.0f}"),
            ("fps cpu", "cpu_frames_per_s", "{:.1f}"),
            ("fps pyFAI", "pyfai_frames_per_s", "{:.1f}"),
            ("rel diff cpu", "max_rel_diff_vs_cpu", "{:.1e}")]
    print(f"\n{report['device']}  HBM {report['hbm_gb_per_s']:.0f} GB/s (r+w)  "
          f"H2D pinned {report['h2d_gb_per_s']:.1f} GB/s, pageable "
          f"{report['h2d_pageable_gb_per_s']:.1f} GB/s")
    print("  ".join(f"{c[0]:>12}" for c in cols))
    for res in report["cases"].values():
        cells = []
        for _, key, fmt in cols:
            v = res.get(key)
            cells.append(f"{'-' if v is None else fmt.format(v):>12}")
        print("  ".join(cells))


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--kind", help="result name suffix (default: from the device name)")
    p.add_argument("--cases", default=",".join(CASES), help="comma list of " + ", ".join(CASES))
    p.add_argument("--batch", type=int, default=None, help="batch size (default per case)")
    p.add_argument("--streams", type=int, default=2)
    p.add_argument("--host-frames", type=int, default=None)
    p.add_argument("--repeats", type=int, default=9)
    p.add_argument("--naive-frames", type=int, default=16)
    p.add_argument("--cpu-frames", type=int, default=4)
    p.add_argument("--pyfai-frames", type=int, default=8)
    p.add_argument("--no-pyfai", action="store_true")
    p.add_argument("--no-sweep", action="store_true", help="skip the frames-per-block sweep")
    p.add_argument("--out-dir", default=str(ROOT / "benchmarks" / "results"))
    args = p.parse_args(argv)
    cases = [c.strip() for c in args.cases.split(",") if c.strip()]
    unknown = [c for c in cases if c not in CASES]
    if unknown:
        fail(f"unknown case(s) {unknown}; valid: {', '.join(CASES)}")

    try:
        import cupy as cp
    except Exception as exc:
        fail(f"CuPy is not available ({type(exc).__name__}: {exc}); this benchmark needs a "
             f'CUDA device and CuPy: pip install ".[gpu]"')
    try:
        n_dev = cp.cuda.runtime.getDeviceCount()
    except Exception as exc:
        fail(f"no CUDA device usable ({type(exc).__name__}: {exc})")
    if n_dev < 1:
        fail("no CUDA device visible")
    props = cp.cuda.runtime.getDeviceProperties(0)
    device = props["name"].decode() if isinstance(props["name"], bytes) else str(props["name"])
    kind = args.kind or kind_from_name(device)

    t_start = time.perf_counter()
    hbm = measure_hbm(cp)
    h2d, h2d_pageable = measure_h2d(cp)
    report = {"device": device, "kind": kind,
              "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
              "commit": git_commit(), "cupy_version": cp.__version__,
              "cuda_runtime_version": cp.cuda.runtime.runtimeGetVersion(),
              "compute_capability": f"{props['major']}.{props['minor']}",
              "hbm_gb_per_s": hbm, "h2d_gb_per_s": h2d, "h2d_pageable_gb_per_s": h2d_pageable,
              "cases": {}}
    for name in cases:
        print(f"... {name}", flush=True)
        report["cases"][name] = run_case(name, CASES[name], cp, hbm, h2d, args)
    head = report["cases"].get("pilatus1m") or next(iter(report["cases"].values()))
    for key in ("frame_shape", "batch_size", "device_resident_gpix_per_s",
                "host_fed_frames_per_s", "host_fed_fraction_of_h2d", "naive_frames_per_s",
                "max_rel_diff_vs_cpu", "pyfai_frames_per_s", "cpu_frames_per_s"):
        report[key] = head.get(key)
    report["headline_case"] = head["case"]
    report["total_s"] = time.perf_counter() - t_start
    print_table(report)
    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"gpu-{kind}.json"
    path.write_text(json.dumps(report, indent=2, default=float) + "\n")
    print(f"\nwrote {path}  ({report['total_s']:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
