"""Benchmark the whole Saxsdog service: frames/s through saxsdogserver and command latency.

Starts a real saxsdogserver (and, for the feeder mode, a saxsfeeder) on loopback with
PILATUS 1M-size frames (1043 x 981 int32 TIFF, calibration of the specification, Oversampling 3),
then measures

* readdir: N frames already on disk, ``readdir`` -> all curves written (server throughput);
* feeder:  N frames moved into the watched folder while saxsfeeder publishes them
  (end to end: file event -> feeder -> server -> .chi);
* the round-trip time of ``stat`` (signed request, answer) while the server is idle and while it
  integrates at full speed.

Prints a table and writes JSON to benchmarks/results/service-<cpu|gpu>.json.

    python benchmarks/bench_service.py                 # 300 frames, backend auto
    python benchmarks/bench_service.py --frames 1000 --backend cupy --threads 4
"""

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from gpusaxs.server import protocol as P  # noqa: E402

SHAPE = (1043, 981)
CAL = {
    "PixelSizeMicroM": [172.0],
    "Imagesize": list(SHAPE),
    "PixelPerRadialElement": 1,
    "Tilt": {"TiltRotDeg": 0, "TiltAngleDeg": 0},
    "MaskFile": "mask.msk",
    "Oversampling": 3,
    "Wavelength": 1.54,
    "BeamCenter": [808.37, 387.772],
    "DedectorDistanceMM": 1031.657,
    "PolarizationCorrection": {"Fraction": 0.95, "Angle": 0.0},
}


def make_frames(folder, n, unique=16):
    """n int32 TIFF frames; ``unique`` distinct contents, the rest hard links (saves disk)."""
    import tifffile

    folder.mkdir(parents=True, exist_ok=True)
    src = folder.parent / "src"
    src.mkdir(exist_ok=True)
    rng = np.random.default_rng(1)
    originals = []
    for i in range(min(unique, n)):
        img = rng.poisson(40, size=SHAPE).astype(np.int32)
        img[:, 487:494] = -1  # PILATUS module gap
        p = src / f"orig_{i:03d}.tif"
        tifffile.imwrite(p, img)
        originals.append(p)
    return originals


def link_frames(originals, folder, n, start=0, delay=0.0):
    for i in range(start, start + n):
        tmp = folder / f".frame_{i:05d}.tif.part"
        os.link(originals[i % len(originals)], tmp)
        os.replace(tmp, folder / f"frame_{i:05d}.tif")
        if delay:
            time.sleep(delay)


def start(module, args, ready, log, env):
    if ready.exists():
        ready.unlink()
    p = subprocess.Popen(
        [sys.executable, "-m", module, *map(str, args), "--ready-file", str(ready)],
        cwd=str(REPO),
        env=env,
        stdout=open(log, "ab"),
        stderr=subprocess.STDOUT,
    )
    deadline = time.monotonic() + 120
    while not ready.exists():
        if p.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"{module} did not start, see {log}")
        time.sleep(0.05)
    return p, json.loads(ready.read_text())


class LatencyProbe(threading.Thread):
    """Sends stat every ``period`` s and records round-trip times (ms)."""

    def __init__(self, url, secret, period=0.05):
        super().__init__(daemon=True)
        self.client = P.Client(url, secret, timeout=30)
        self.period = period
        self.samples = []
        self.stop = threading.Event()

    def run(self):
        while not self.stop.is_set():
            t0 = time.perf_counter()
            self.client.request("stat", {})
            self.samples.append((time.perf_counter() - t0) * 1e3)
            self.stop.wait(self.period)
        self.client.close()


def lat_summary(samples):
    if not samples:
        return {}
    s = sorted(samples)
    return {
        "n": len(s),
        "median_ms": statistics.median(s),
        "p95_ms": s[min(len(s) - 1, int(0.95 * len(s)))],
        "max_ms": s[-1],
    }


def wait_pics(client, n, timeout):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        d = client.request("stat", {})["data"]
        if d["stat"]["pics"] + d.get("errors", {}).get("count", 0) >= n:
            return d
        time.sleep(0.05)
    raise TimeoutError(f"not all {n} frames done within {timeout} s: {d}")


def run_mode(mode, args, work, originals, secret, cfg, env):
    base = work / f"base-{mode}"
    data = base / "data"
    data.mkdir(parents=True)
    procs = []
    extra = ["-f", "none"]
    try:
        if mode == "feeder":
            fport = _free_port()
            fp, finfo = start(
                "gpusaxs.server.feeder",
                [
                    "--config",
                    cfg,
                    "--bind",
                    "127.0.0.1",
                    "-p",
                    fport,
                    "-d",
                    data,
                    "--heartbeat",
                    "0.2",
                ],
                work / f"feeder-{mode}.ready",
                work / f"feeder-{mode}.log",
                env,
            )
            procs.append(fp)
            extra = ["-f", finfo["url"]]
        sp, sinfo = start(
            "gpusaxs.server.saxsdogserver",
            [
                "--config",
                cfg,
                "--bind",
                "127.0.0.1",
                "-p",
                "0",
                "-t",
                args.threads,
                "-b",
                args.batch,
                "--backend",
                args.backend,
                *extra,
                base,
            ],
            work / f"server-{mode}.ready",
            work / f"server-{mode}.log",
            env,
        )
        procs.append(sp)
        url = sinfo["url"]
        client = P.Client(url, secret, timeout=60)
        mask = (work / "mask.msk").read_bytes()
        # warm-up queue: builds (or loads) the integration matrix once
        t0 = time.perf_counter()
        req, atts = P.new_request(CAL, "data", mask, "mask.msk")
        ans = client.request("new", req["argument"], atts)
        assert ans["result"] == "new queue", ans
        warm = base / "data" / "warm"
        warm.mkdir()
        link_frames(originals, warm, 2)
        client.request("readdir")
        wait_pics(client, 2, 600)
        t_build = time.perf_counter() - t0
        shutil.rmtree(warm)
        if mode == "feeder":
            deadline = time.monotonic() + 30
            while client.request("stat", {})["data"]["feeder"]["messages"] == 0:
                if time.monotonic() > deadline:
                    raise RuntimeError("feeder not connected")
                time.sleep(0.05)
        # idle latency
        idle = []
        for _ in range(50):
            t1 = time.perf_counter()
            client.request("stat", {})
            idle.append((time.perf_counter() - t1) * 1e3)
        # fresh queue (cached integrator), then the measured run
        ans = client.request("new", req["argument"], atts)
        assert ans["data"]["cal"]["cached"], ans
        n = args.frames
        if mode == "readdir":
            link_frames(originals, data, n)
        probe = LatencyProbe(url, secret)
        probe.start()
        t0 = time.perf_counter()
        if mode == "readdir":
            client.request("readdir")
        else:
            link_frames(originals, data, n)
        d = wait_pics(client, n, 1800)
        dt = time.perf_counter() - t0
        probe.stop.set()
        probe.join()
        client.close()
        return {
            "mode": mode,
            "frames": n,
            "seconds": dt,
            "frames_per_sec": n / dt,
            "server_frames_per_sec": d["stat"]["frames per sec"],
            "errors": d["errors"]["count"],
            "backend": d["queue"]["backend"],
            "setup_seconds": t_build,
            "stat_idle": lat_summary(idle),
            "stat_under_load": lat_summary(probe.samples),
        }
    finally:
        for p in procs:
            p.terminate()
            try:
                p.wait(60)
            except subprocess.TimeoutExpired:
                p.kill()


def _free_port():
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main(argv=None):
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--frames", type=int, default=300)
    ap.add_argument("--threads", type=int, default=2, help="server reader threads")
    ap.add_argument("--batch", type=int, default=16, help="server batch size")
    ap.add_argument("--backend", default="auto", choices=["auto", "numpy", "cupy"])
    ap.add_argument("--modes", default="readdir,feeder")
    ap.add_argument(
        "--out",
        default=None,
        help="JSON output (default benchmarks/results/service-<cpu|gpu>.json)",
    )
    ap.add_argument("--workdir", default=None, help="scratch folder (default: a temp folder)")
    args = ap.parse_args(argv)

    from gpusaxs.io.masks import write_fit2d_mask
    from gpusaxs.server.netconfig import write_config

    work = Path(tempfile.mkdtemp(prefix="bench-service-", dir=args.workdir))
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    env.setdefault("GPUSAXS_CACHE_DIR", str(work / "matrix-cache"))
    try:
        cfg = work / "net.json"
        netcfg = write_config(cfg, "tcp://127.0.0.1:7777", "tcp://127.0.0.1:5556")
        m = np.zeros(SHAPE, bool)
        m[:, 487:494] = True
        m[800:830, 370:400] = True
        write_fit2d_mask(work / "mask.msk", m)
        originals = make_frames(work / "frames", args.frames)
        results = []
        for mode in args.modes.split(","):
            r = run_mode(mode.strip(), args, work, originals, netcfg.secret, cfg, env)
            results.append(r)
            print(f"[{mode}] {r['frames_per_sec']:.1f} frames/s", flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)

    backend = results[0]["backend"] if results else "?"
    print()
    print(
        f"Saxsdog service, PILATUS 1M frames {SHAPE[0]}x{SHAPE[1]} int32, backend {backend}, "
        f"{os.cpu_count()} CPU cores, reader threads {args.threads}, batch {args.batch}"
    )
    hdr = (
        f"{'mode':<8} {'frames':>6} {'seconds':>8} {'frames/s':>9} "
        f"{'stat idle med/p95 ms':>21} {'stat under load med/p95/max ms':>31}"
    )
    print(hdr)
    print("-" * len(hdr))
    for r in results:
        i, lo = r["stat_idle"], r["stat_under_load"]
        print(
            f"{r['mode']:<8} {r['frames']:>6} {r['seconds']:>8.2f} {r['frames_per_sec']:>9.1f} "
            f"{i['median_ms']:>10.2f}/{i['p95_ms']:<10.2f} "
            f"{lo.get('median_ms', 0):>12.2f}/{lo.get('p95_ms', 0):.2f}/{lo.get('max_ms', 0):.2f}"
        )
    kind = "gpu" if backend == "cupy" else "cpu"
    out = Path(args.out) if args.out else REPO / "benchmarks" / "results" / f"service-{kind}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    doc = {
        "benchmark": "service",
        "shape": list(SHAPE),
        "oversampling": CAL["Oversampling"],
        "cpu_count": os.cpu_count(),
        "machine": platform.platform(),
        "python": platform.python_version(),
        "threads": args.threads,
        "batch": args.batch,
        "results": results,
        "time": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }
    out.write_text(json.dumps(doc, indent=2) + "\n")
    print(f"\nwritten {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
