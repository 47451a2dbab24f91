"""Compressed frames end to end, for bench_gpu.py (issue 26): bslz4 chunks from a Stream V2-style
list of payloads ("stream") and from an HDF5 file read as stored ("hdf5", h5py's direct chunk
read) go to DeviceEngine.sums_compressed / sums_hdf5: staged in pinned memory, sent over PCIe
compressed, decoded on the device, integrated where they lie.  One record per case and source
(benchmarks/gpu_result_schema.json, "decode_records"): end_to_end_frames_per_s,
uncompressed_host_fed_frames_per_s (the same frames already decoded, from pinned memory, the
same engine), compression_ratio, host_decode (False on a device), decode_path, path,
fallbacks, refused_frames, max_rel_diff_vs_cpu (first batch against the CPU engine),
host_cpu_s_per_frame (the process's CPU time per frame in the end-to-end loop), and the
compressed bytes per second over PCIe as a fraction of the H2D bandwidth measured in the run.

``python benchmarks/bench_gpu_decode.py --model`` prints the bytes model of docs/gpu.md.
"""

import functools
import struct
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

#: bitshuffle block size DECTRIS detectors write (bytes)
BLOCK_BYTES = 8192
#: HDF5 filter id of bitshuffle
BSLZ4_FILTER = 32008
SOURCES = ("stream", "hdf5")


def encode(frame, block_bytes=BLOCK_BYTES):
    """One frame -> bslz4 bytes with the HDF5 filter framing (the bitshuffle package)."""
    import bitshuffle

    frame = np.ascontiguousarray(frame)
    elems = block_bytes // frame.dtype.itemsize
    body = bitshuffle.compress_lz4(frame.reshape(-1), elems)
    return struct.pack(">QI", frame.nbytes, elems * frame.dtype.itemsize) + body.tobytes()


def write_hdf5(path, stack, chunks):
    """An EIGER-style data file: one bslz4 chunk per frame (``chunks``, bitshuffle's bytes, what
    the HDF5 filter writes) stored with write_direct_chunk under filter 32008 with the cd_values
    hdf5plugin's filter records, so no HDF5 plugin is needed to write it (the device has none)."""
    import h5py

    item = stack.dtype.itemsize
    nelems = BLOCK_BYTES // item
    # a registered filter (hdf5plugin imported) takes the user's values and adds its own in
    # front; an unregistered one stores them as given: then give the stored form
    registered = h5py.h5z.filter_avail(BSLZ4_FILTER)
    opts = (nelems, 2) if registered else (0, 4, item, nelems, 2)
    with h5py.File(path, "w") as f:
        ds = f.create_dataset(
            "entry/data/data",
            shape=stack.shape,
            dtype=stack.dtype,
            chunks=(1, *stack.shape[1:]),
            compression=BSLZ4_FILTER,
            compression_opts=opts,
            allow_unknown_filter=True,
        )
        for k, c in enumerate(chunks):
            ds.id.write_direct_chunk((k, 0, 0), c)


def measure(name, stack, matrix, xp, batch, meta, bw, helpers, repeats=3):
    """Records (one per source) for ``stack`` (n, H, W) frames of case ``name``.

    helpers: bench_gpu's engine_for, pinned_copy, median_wall, sums_diff (passed in: this
    module is imported by bench_gpu)."""
    from gpusaxs.engines import make_engine

    engine_for, pinned_copy = helpers["engine_for"], helpers["pinned_copy"]
    median_wall, sums_diff = helpers["median_wall"], helpers["sums_diff"]
    n = int(stack.shape[0])
    shape, dtype = stack.shape[1:], stack.dtype
    chunks = [encode(f) for f in stack]
    compressed = sum(len(c) for c in chunks)
    ref = make_engine(matrix, "numpy").sums(stack[:batch])
    records = []
    with tempfile.TemporaryDirectory() as tmp:
        h5 = Path(tmp) / f"{name}_data_000001.h5"
        write_hdf5(h5, stack, chunks)
        for source in SOURCES:
            eng = engine_for(matrix, xp, "pixel", batch, dtype)
            eng.sums_compressed(chunks[:batch], shape, dtype)  # warm-up: compile the decoder

            def run(eng=eng, source=source):
                if source == "stream":
                    return [
                        eng.sums_compressed(chunks[i : i + batch], shape, dtype)
                        for i in range(0, n, batch)
                    ]
                return list(eng.sums_hdf5(h5, batch_size=batch))

            best, parts = None, None
            for _ in range(max(1, repeats)):
                t0, c0 = time.perf_counter(), time.process_time()
                parts = run()
                wall, cpu = time.perf_counter() - t0, time.process_time() - c0
                if best is None or wall < best[0]:
                    best = (wall, cpu)
            wall, cpu = best
            refused = sum(len(p.errors) for p in parts)
            first = parts[0].sums
            pinned = pinned_copy(xp, stack)
            t_plain = median_wall(functools.partial(eng.sums, pinned), max(1, repeats))
            dec = eng.decoder()
            r = dict(
                meta,
                case=name,
                source=source,
                batch_size=batch,
                frames=n,
                end_to_end_frames_per_s=n / wall,
                uncompressed_host_fed_frames_per_s=n / t_plain,
                compression_ratio=stack.nbytes / compressed,
                compressed_gb_per_s=compressed / wall / 1e9,
                compressed_fraction_of_h2d=compressed / wall / (bw["h2d"] * 1e9),
                host_decode=bool(dec.host_decode),
                decode_path=dec.path,
                path=eng.path,
                fallbacks=[dict(f) for f in eng.fallbacks],
                refused_frames=refused,
                max_rel_diff_vs_cpu=sums_diff(first, ref) if first.signal.shape[0] else 1.0,
                host_cpu_s_per_frame=cpu / n,
            )
            records.append(r)
            del pinned
            eng.close()
    return records


def wrong(records, on_device):
    """Lines naming records that did not run as measured (host decode on a device, a fallback,
    a refused frame, curves off)."""
    out = []
    for r in records:
        bad = []
        if on_device and r["host_decode"]:
            bad.append("decoded on the host")
        if r["fallbacks"] or r["path"] != "kernel":
            bad.append(f"path {r['path']} {r['fallbacks']}")
        if r["refused_frames"]:
            bad.append(f"{r['refused_frames']} frames refused")
        if r["max_rel_diff_vs_cpu"] > 1e-5:
            bad.append(f"rel diff {r['max_rel_diff_vs_cpu']:.1e}")
        if bad:
            out.append(f"{r['case']} {r['source']}/{r['batch_size']}: " + ", ".join(bad))
    return out


def print_table(records):
    head = ("case", "source/B", "decode", "ratio", "fps e2e", "fps plain", "GB/s cmp", "of H2D")
    print("\ncompressed frames (bslz4) end to end")
    print("  ".join(f"{h:>11}" for h in head))
    for r in records:
        cells = [
            r["case"],
            f"{r['source']}/{r['batch_size']}",
            r["decode_path"],
            f"{r['compression_ratio']:.2f}",
            f"{r['end_to_end_frames_per_s']:.0f}",
            f"{r['uncompressed_host_fed_frames_per_s']:.0f}",
            f"{r['compressed_gb_per_s']:.2f}",
            f"{r['compressed_fraction_of_h2d']:.0%}",
        ]
        print("  ".join(f"{c:>11}" for c in cells))


# ----------------------------------------------------------------------------- the model
#: H100 SXM: PCIe 5 x16 pinned H2D (the H200 run measured 55.4 GB/s), 132 SMs, 1.755 GHz
MACHINE = dict(h2d_gb_s=50.0, sms=132, clock_ghz=1.755)
#: assumed device cost of one LZ4 sequence (token parse by every lane, broadcast loads from L1,
#: the match copy in rounds): cycles per sequence for one warp, and warps an SM keeps resident
#: (shared memory: 2 x 16 KiB per block of 2 warps -> 7 blocks, 14 warps on 228 KiB)
DECODE = dict(cycles_per_sequence=120, bytes_per_sequence=24, warps_per_sm=14, overlap=0.5)


def model(frame_bytes, ratio, machine=MACHINE, dec=DECODE):
    """Frames/s bounds of one detector frame: PCIe carrying decoded frames, PCIe carrying
    compressed ones, and the device decode (sequences per SM per second)."""
    pcie_plain = machine["h2d_gb_s"] * 1e9 / frame_bytes
    pcie_comp = pcie_plain * ratio
    seq_per_frame = frame_bytes / dec["bytes_per_sequence"]
    warp_seq_per_s = machine["clock_ghz"] * 1e9 / dec["cycles_per_sequence"]
    decode = machine["sms"] * dec["warps_per_sm"] * dec["overlap"] * warp_seq_per_s / seq_per_frame
    return dict(pcie_plain=pcie_plain, pcie_compressed=pcie_comp, device_decode=decode)


def model_table():
    rows = [
        "| detector | frame MB | ratio | PCIe decoded fps | PCIe compressed fps | decode fps "
        "| predicted fps |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for det, fb in (("EIGER2 4M uint32", 2167 * 2070 * 4), ("EIGER2 16M uint32", 4362 * 4148 * 4)):
        for ratio in (2.5, 6.0, 20.0):
            m = model(fb, ratio)
            pred = min(m["pcie_compressed"], m["device_decode"])
            rows.append(
                f"| {det} | {fb / 1e6:.1f} | {ratio} | {m['pcie_plain']:.0f} | "
                f"{m['pcie_compressed']:.0f} | {m['device_decode']:.0f} | {pred:.0f} |"
            )
    return "\n".join(rows)


if __name__ == "__main__":
    if "--model" in sys.argv:
        print(model_table())
        sys.exit(0)
    print("run through benchmarks/bench_gpu.py (decode records are on by default)")
    sys.exit(2)
