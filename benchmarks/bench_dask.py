"""saxsdog on a Dask cluster vs a local run, on this machine: files/s and the per-task overhead.

    python benchmarks/bench_dask.py [--frames 240] [--frames-per-task 60]

Writes benchmarks/results/dask-cpu.json.  Rows:

* local saxsdog (the batched FramePipeline in one process), as a user runs it;
* saxsdog --scheduler local:1 and local:2 (LocalCluster of 1 or 2 worker processes), as a
  user runs it: wall time includes starting the cluster;
* the same work through ``gpusaxs.distributed.integrate_files`` on an already running cluster
  (the steady state of a facility cluster, where the scheduler outlives the job);
* the scheduler's round trip per task (1000 empty tasks), the overhead that sets the task size.

PILATUS 1M int32 frames (the demo data set) from the page cache, so this measures compute
and scheduling, not a shared filesystem.  The machine has 2 cores, shared: compare rows of
one run only.
"""

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def saxsdog(args):
    """(wall seconds, frames/s after set-up as saxsdog's summary line reports it)."""
    import re

    env = dict(os.environ, PYTHONPATH=str(ROOT))
    t0 = time.perf_counter()
    r = subprocess.run(
        [sys.executable, "-m", "gpusaxs.clients.saxsdog", *map(str, args)],
        capture_output=True,
        text=True,
        env=env,
        timeout=1800,
    )
    wall = time.perf_counter() - t0
    if r.returncode != 0:
        raise SystemExit(f"saxsdog failed ({r.returncode}): {r.stderr[-2000:]}")
    m = re.search(r"([0-9.]+) frames/s after set-up", r.stderr)
    return wall, float(m.group(1)) if m else None


def noop(x):
    return x


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--frames", type=int, default=240, help="number of files (default 240)")
    p.add_argument("--frames-per-task", type=int, default=60)
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "dask-cpu.json"))
    a = p.parse_args(argv)

    from gpusaxs.demo import make_demo_data
    from gpusaxs.distributed import close_client, connect, integrate_files

    tmp = Path(tempfile.mkdtemp(prefix="bench-dask-"))
    cal, frames = make_demo_data(tmp, n_frames=16)
    for i in range(16, a.frames):  # hard links: distinct files, 16 distinct frames
        os.link(frames / f"frame_{i % 16:05d}.tif", frames / f"frame_{i:05d}.tif")
    n = a.frames
    rows = []

    wall, steady = saxsdog(["-c", cal, "-o", tmp / "local", frames])
    rows.append(
        {
            "run": "saxsdog, local (1 process, 2 engine threads)",
            "workers": 0,
            "wall_s": wall,
            "files_per_s": n / wall,
            "steady_files_per_s": steady,
        }
    )
    for workers in (1, 2):
        wall, steady = saxsdog(
            [
                "-c",
                cal,
                "-o",
                tmp / f"cli{workers}",
                "--scheduler",
                f"local:{workers}",
                "--frames-per-task",
                a.frames_per_task,
                frames,
            ]
        )
        rows.append(
            {
                "run": f"saxsdog --scheduler local:{workers} (cluster start included)",
                "workers": workers,
                "wall_s": wall,
                "files_per_s": n / wall,
                "steady_files_per_s": steady,
            }
        )

    files = sorted(frames.glob("*.tif"))
    overhead = {}
    for workers in (1, 2):
        t0 = time.perf_counter()
        client = connect(f"local:{workers}")
        start_s = time.perf_counter() - t0
        integrate_files(
            client, files[:32], cal, out_dir=tmp / "warm", frames_per_task=16, threads=1
        )
        s = integrate_files(
            client,
            files,
            cal,
            out_dir=tmp / f"api{workers}",
            frames_per_task=a.frames_per_task,
            threads=1,
        )
        rows.append(
            {
                "run": f"integrate_files on a running cluster of {workers}",
                "workers": workers,
                "wall_s": s["seconds"],
                "files_per_s": n / s["seconds"],
                "steady_files_per_s": n / s["seconds"],
                "cluster_start_s": start_s,
                "tasks": s["tasks"],
            }
        )
        if workers == 2:
            t0 = time.perf_counter()
            futures = client.map(noop, range(1000), pure=False)
            client.gather(futures)
            overhead["per_task_ms"] = 1000 * (time.perf_counter() - t0) / 1000
        close_client(client)

    local, local_steady = rows[0]["files_per_s"], rows[0]["steady_files_per_s"]
    print(f"{n} PILATUS 1M files, {a.frames_per_task} frames per task, {os.cpu_count()} cores")
    print(f"{'run':<62}{'wall s':>8}{'files/s':>9}{'vs local':>9}{'steady/s':>10}{'vs local':>9}")
    for r in rows:
        r["ratio_vs_local"] = r["files_per_s"] / local
        st = r.get("steady_files_per_s")
        r["steady_ratio_vs_local"] = st / local_steady if st and local_steady else None
        print(
            f"{r['run']:<62}{r['wall_s']:>8.2f}{r['files_per_s']:>9.1f}"
            f"{r['ratio_vs_local']:>8.2f}x{st or float('nan'):>10.1f}"
            f"{r['steady_ratio_vs_local'] or float('nan'):>8.2f}x"
        )
    print(
        f"scheduler round trip per task (1000 empty tasks, 2 workers): "
        f"{overhead['per_task_ms']:.2f} ms"
    )

    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True
    ).stdout.strip()
    result = {
        "benchmark": "bench_dask",
        "date": time.strftime("%Y-%m-%d"),
        "commit": commit,
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
        "frames": n,
        "frames_per_task": a.frames_per_task,
        "rows": rows,
        **overhead,
    }
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(result, indent=1) + "\n")
    print(f"wrote {a.out}")


if __name__ == "__main__":
    main()
