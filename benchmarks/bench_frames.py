"""Reading EIGER frames: gpusaxs.io.frames on a bslz4 master file vs plain reads.

Data: an EIGER 1M-like series (1065 x 1030 uint32, Poisson counts around a ring, module gaps),
N frames in two data files behind a master file (external links), chunks of one frame.
Rows (frames/s, one thread, page cache warm, best of --repeats):

* gpusaxs read_frame, bslz4 master (with the pixel mask applied)
* h5py ds[i], bslz4 data file (the decompression alone, hdf5plugin)
* h5py ds[i], uncompressed copy (no decompression)
* fabio, bslz4 master (fabio's EIGER reader, getframe)
* tifffile/read_image, one uncompressed TIFF per frame (the single-file route)

The machine is shared and noisy: compare ratios within one run. Prints a table and writes
benchmarks/results/frames-cpu.json.

    python benchmarks/bench_frames.py [-n 100] [--repeats 3]
"""

import argparse
import datetime
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))


def write_result(path, result):
    """Write a benchmark's result dict as JSON to ``path`` (its folder made) and say so."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(json.dumps(result, indent=2))
    print(f"wrote {path}")


def best_rate(fn, n, repeats):
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return n / best


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("-n", type=int, default=100, help="frames (default 100)")
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args(argv)

    import fabio
    import h5py
    import hdf5plugin  # noqa: F401
    import tifffile
    from test_io_frames import H, W, eiger_frames, write_eiger

    from gpusaxs.io.frames import _cache, frame_sources, read_frame
    from gpusaxs.io.images import read_image

    n1 = args.n * 3 // 5
    counts = (n1, args.n - n1)
    with tempfile.TemporaryDirectory(prefix="bench-frames-") as td:
        td = Path(td)
        master = write_eiger(td, "series", counts=counts)
        plain = td / "plain.h5"
        with h5py.File(plain, "w") as f:
            ds = f.create_dataset("data", shape=(args.n, H, W), dtype=np.uint32, chunks=(1, H, W))
            off = 0
            for c in counts:
                ds[off : off + c] = eiger_frames(c, off)
                off += c
        for k in range(args.n):
            tifffile.imwrite(td / f"f_{k:05d}.tif", eiger_frames(1, k)[0])
        sizes = {
            "bslz4 (data files)": sum(
                (td / f"series_data_{k:06d}.h5").stat().st_size for k in (1, 2)
            ),
            "uncompressed HDF5": plain.stat().st_size,
        }
        refs = frame_sources(master, explicit=True)

        def ours():
            _cache.clear()
            for r in refs:
                read_frame(r)

        def h5_bslz4():
            with (
                h5py.File(td / "series_data_000001.h5", "r") as f1,
                h5py.File(td / "series_data_000002.h5", "r") as f2,
            ):
                for f, c in ((f1, counts[0]), (f2, counts[1])):
                    d = f["entry/data/data"]
                    for i in range(c):
                        d[i]

        def h5_plain():
            with h5py.File(plain, "r") as f:
                d = f["data"]
                for i in range(args.n):
                    d[i]

        def fabio_master():
            img = fabio.open(str(master))
            for i in range(img.nframes):
                _ = img.getframe(i).data  # decode the frame (what is timed)

        tiffs = [td / f"f_{k:05d}.tif" for k in range(args.n)]

        def tiff_files():
            for t in tiffs:
                read_image(t)

        for fn in (ours, h5_bslz4, h5_plain, tiff_files):  # warm the page cache
            fn()
        rows = [
            (
                "gpusaxs read_frame, bslz4 master (+pixel mask)",
                best_rate(ours, args.n, args.repeats),
            ),
            ("h5py ds[i], bslz4 data files", best_rate(h5_bslz4, args.n, args.repeats)),
            ("h5py ds[i], uncompressed HDF5", best_rate(h5_plain, args.n, args.repeats)),
        ]
        try:
            rows.append(
                ("fabio getframe, bslz4 master", best_rate(fabio_master, args.n, args.repeats))
            )
        except Exception as exc:  # fabio's EIGER reader may not know this layout
            rows.append(
                (f"fabio getframe, bslz4 master: failed ({type(exc).__name__})", float("nan"))
            )
        rows.append(
            (
                "read_image, one uncompressed TIFF per frame",
                best_rate(tiff_files, args.n, args.repeats),
            )
        )
    ref = rows[0][1]
    print(f"{args.n} frames of {H}x{W} uint32, one thread, best of {args.repeats} (shared machine)")
    print(f"{'reader':<50}{'frames/s':>10}{'gpusaxs / this':>16}")
    for name, rate in rows:
        print(f"{name:<50}{rate:>10.1f}{ref / rate:>16.2f}")
    for name, size in sizes.items():
        print(f"file size, {name}: {size / 1e6:.1f} MB")
    out = ROOT / "benchmarks" / "results" / "frames-cpu.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(
        json.dumps(
            {
                "date": datetime.datetime.now().isoformat(timespec="seconds"),
                "machine": platform.platform(),
                "cpus": os.cpu_count(),
                "frames": args.n,
                "shape": [H, W],
                "dtype": "uint32",
                "repeats": args.repeats,
                "frames_per_s": {name: rate for name, rate in rows},
                "bytes": sizes,
            },
            indent=1,
        )
        + "\n"
    )
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
