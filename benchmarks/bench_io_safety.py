"""What the reader and cache safety costs on the hot paths: old tree vs this tree, one run.

* saxsdog steady rate (frames/s after set-up, ``-P``) on N copies of the PILATUS 1M reference
  frame, the two trees interleaved, best of ``--repeats``;
* matrix-cache load of the PILATUS 1M matrix (old: ``load_matrix(path)``; new: with the
  calibration bound, CRC-32 and range checks), best of 20, in a fresh process per tree;
* reading 100 bslz4 EIGER 1M frames of a master file (new: every chunk checked first);
* the CPU engine's set-up on a full PILATUS 1M matrix (the demo's): old, the layout made;
  new, loaded from the cache.  Matrix load and engine on that matrix, 25 MB.

    python benchmarks/bench_io_safety.py --old /tmp/io-base [-n 120] [--repeats 3]
"""

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
REFERENCE = Path(os.environ.get("GPUSAXS_REFERENCE_DIR", ROOT.parent / "shared" / "reference"))

_PY_LOAD = """
import inspect, json, sys, time
from gpusaxs.calibration_model import Calibration
from gpusaxs.matrix_cache import get_matrix, load_matrix, _MEMORY
try:  # the one entrance (issue 24) caches the layout; before it, CpuEngine did
    from gpusaxs.engines import make_engine

    def cpu_engine(m):
        return make_engine(m, "numpy")
except ImportError:
    from gpusaxs.cpu_fallback.engine import CpuEngine as cpu_engine

cal = Calibration.from_file(sys.argv[1])
info = {}
get_matrix(cal, info=info)
new = "cal" in inspect.signature(load_matrix).parameters
load = []
for _ in range(20):
    t0 = time.perf_counter()
    load_matrix(info["path"], cal) if new else load_matrix(info["path"])
    load.append(time.perf_counter() - t0)
engine = []
for _ in range(4):  # the first makes (new: and caches) the layout
    _MEMORY.clear()
    m = get_matrix(cal)
    t0 = time.perf_counter()
    cpu_engine(m)
    engine.append(time.perf_counter() - t0)
print(json.dumps({"load_ms": min(load) * 1e3, "engine_ms": min(engine[1:]) * 1e3}))
"""

_PY_FRAMES = """
import sys, time
from gpusaxs.io.frames import frame_sources, read_frame, _cache
best = 1e9
for _ in range(3):
    _cache.clear()
    t0 = time.perf_counter()
    for s in frame_sources(sys.argv[1], explicit=True):
        read_frame(s)
    best = min(best, time.perf_counter() - t0)
print(100 / best)
"""


def _env(root, cache):
    env = dict(os.environ, PYTHONPATH=str(root), GPUSAXS_CACHE_DIR=str(cache))
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    return env


def saxsdog_steady(root, cache, cal, data, out, n):
    shutil.rmtree(out, ignore_errors=True)
    r = subprocess.run(
        [sys.executable, "-m", "gpusaxs.clients.saxsdog", "-c", cal, "-o", out, "-P", data],
        capture_output=True,
        text=True,
        env=_env(root, cache),
        cwd=cache.parent,  # not the source tree: PYTHONPATH picks the tree
    )
    if r.returncode != 0:
        raise SystemExit(r.stderr)
    loop = float(re.search(r"wall \(after setup\)\s+([\d.]+)", r.stderr).group(1))
    return n / loop


def eiger_master(folder):
    import h5py
    import hdf5plugin
    import numpy as np

    rng = np.random.default_rng(0)
    base = rng.poisson(30, size=(1065, 1030)).astype(np.uint32)
    with h5py.File(folder / "e_master.h5", "w") as m:
        m.create_group("entry/data")
        with h5py.File(folder / "e_data_000001.h5", "w") as f:
            ds = f.create_dataset(
                "entry/data/data",
                shape=(100, 1065, 1030),
                dtype="u4",
                chunks=(1, 1065, 1030),
                **hdf5plugin.Bitshuffle(cname="lz4"),
            )
            for i in range(100):
                ds[i] = base + np.uint32(i)
        m["entry/data/data_000001"] = h5py.ExternalLink("e_data_000001.h5", "/entry/data/data")
    return folder / "e_master.h5"


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--old", required=True, help="a checkout of the old tree")
    ap.add_argument("-n", type=int, default=120)
    ap.add_argument("--repeats", type=int, default=3)
    a = ap.parse_args(argv)
    trees = {"old": Path(a.old).resolve(), "new": ROOT}
    work = Path(tempfile.mkdtemp(prefix="bench-io-"))
    try:
        cal_d = json.loads((REFERENCE / "buf1_00000.calibration.json").read_text())
        shutil.copy(REFERENCE / "AAA_integ.msk", work / "AAA_integ.msk")
        cal_d["MaskFile"] = str(work / "AAA_integ.msk")
        cal = work / "cal.json"
        cal.write_text(json.dumps(cal_d))
        data = work / "frames"
        data.mkdir()
        (data / "f_00000.tif").write_bytes((REFERENCE / "buf1_00000.tif").read_bytes())
        for i in range(1, a.n):
            os.link(data / "f_00000.tif", data / f"f_{i:05d}.tif")
        res = {k: {} for k in trees}
        for k, root in trees.items():  # warm-up: matrix cache, kernels, bytecode
            saxsdog_steady(root, work / f"cache-{k}", cal, data, work / "out", a.n)
        for k in trees:
            res[k]["steady_fps"] = 0.0
        for _ in range(a.repeats):
            for k, root in trees.items():
                fps = saxsdog_steady(root, work / f"cache-{k}", cal, data, work / "out", a.n)
                res[k]["steady_fps"] = max(res[k]["steady_fps"], fps)
        from gpusaxs.demo import make_demo_data

        demo_cal, _ = make_demo_data(work / "demo", n_frames=1, seed=1)  # a full PILATUS 1M
        for k, root in trees.items():
            r = subprocess.run(
                [sys.executable, "-c", _PY_LOAD, str(demo_cal)],
                capture_output=True,
                text=True,
                env=_env(root, work / f"cache-{k}"),
                cwd=work,
            )
            res[k].update(json.loads(r.stdout.strip().splitlines()[-1]))
        master = eiger_master(work)
        for k, root in trees.items():
            r = subprocess.run(
                [sys.executable, "-c", _PY_FRAMES, str(master)],
                capture_output=True,
                text=True,
                env=_env(root, work / f"cache-{k}"),
                cwd=work,
            )
            res[k]["bslz4_fps"] = float(r.stdout.strip().splitlines()[-1])
        print(json.dumps(res, indent=1))
        print(f"{'measure':<34}{'old':>10}{'new':>10}{'new/old':>9}")
        for key in ("steady_fps", "load_ms", "engine_ms", "bslz4_fps"):
            o, n = res["old"].get(key), res["new"].get(key)
            if o is not None and n is not None:
                print(f"{key:<34}{o:>10.1f}{n:>10.1f}{n / o:>9.2f}")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
