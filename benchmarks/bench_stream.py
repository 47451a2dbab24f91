"""Detector stream throughput: end to end next to decode-only, in-memory integration and pyFAI.

For PILATUS 1M-size (1043 x 981) and EIGER 4M-size (2167 x 2070) uint32 bslz4 frames (the
demo's synthetic silver behenate), all in the same run on this machine:

* decode, 1 thread: bslz4 -> array, frames/s;
* integrate in memory: ``Integrator.integrate_batch_error`` on batches of decoded frames
  (the CPU engine, all cores), frames/s;
* sequential: 1 / (1/decode + 1/integrate), the rate of decoding then integrating each frame;
* pyFAI: ``integrate1d`` (full/csr/cython) on the same decoded frames;
* end to end: a sender process pushes a Stream V2 series (pre-encoded messages) to a
  :class:`StreamConsumer` (receive, decode and integrate on its 2 batch workers, write the live
  NeXus file); frames/s from the first image to the closed file;
* the two-core bound 2 / (1/decode + 1/integrate on one thread), and the CPU each thread of the
  consumer spends per frame.

The machine is shared with other jobs: the ratios of one run are what to compare, not the
absolute numbers.  For the end to end against the two-core bound (issue 22), the paired rounds
of ``bench_stream_rounds.py`` hold better on a machine whose speed drifts.  Writes
benchmarks/results/stream-cpu.json.
"""

import argparse
import logging
import multiprocessing as mp
import os
import subprocess
import sys
import tempfile
import time
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

from bench_frames import best_rate, write_result

from gpusaxs.calibration_model import Calibration
from gpusaxs.clients.saxsdetsim import demo_frames
from gpusaxs.demo import DEMO_CALIBRATION
from gpusaxs.integrator import Integrator
from gpusaxs.server.stream import codecs, v2

CASES = {
    "PILATUS 1M": dict(DEMO_CALIBRATION, MaskFile=None),
    "EIGER 4M": dict(
        DEMO_CALIBRATION,
        MaskFile=None,
        Imagesize=[2167, 2070],
        PixelSizeMicroM=[75.0],
        BeamCenter=[1100.0, 1000.0],
        Oversampling=2,
        Title="EIGER 4M-size synthetic AgBh",
    ),
}


#: each rate is the best of this many runs (--repeat): the machine is shared, and the best run
#: is the one least disturbed by other jobs
REPEAT = 3
#: the consumer's ZeroMQ receive high-water mark (--hwm; None: the consumer's default)
HWM = None


def rate(n, fn):
    """n / the shortest of REPEAT timed calls of fn (frames/s)."""
    return best_rate(fn, n, REPEAT)


def git_commit():
    try:
        return subprocess.check_output(
            ["git", "rev-parse", "HEAD"], cwd=HERE, text=True, stderr=subprocess.DEVNULL
        ).strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def end_to_end(integ, frames, n, batch, threads, out_dir, batch_workers=True):
    """frames/s of a V2 series through StreamConsumer (sender in another process)."""
    import zmq

    from gpusaxs.server.stream.consumer import StreamConsumer

    shape = frames[0].shape
    px = tuple(p * 1e-6 for p in integ.calibration.pixel_size_um)
    datas = [v2.image_data(f, "bslz4") for f in frames]
    images = [  # as the detector sends them: self-described CBOR (tag 55799)
        v2.dumps(
            {
                "type": "image",
                "series_id": 1,
                "series_unique_id": "bench",
                "image_id": i,
                "data": {"threshold_1": datas[i % len(datas)]},
            }
        )
        for i in range(n)
    ]
    messages = {
        "start": v2.encode_start(1, "bench", shape, px, n),
        "images": images,
        "end": v2.encode_end(1, "bench"),
    }
    ctx = zmq.Context()
    pull_url = f"tcp://127.0.0.1:{_free_port()}"
    # the sender binds, as a detector does; the consumer connects
    ready = mp.get_context("fork").Event()
    sender_cpu = mp.get_context("fork").Value("d", 0.0)
    proc = mp.get_context("fork").Process(
        target=_bind_sender, args=(pull_url, messages, n, ready, sender_cpu)
    )
    proc.start()
    ready.wait(60)
    cons = StreamConsumer(
        pull_url,
        out_dir,
        version=2,
        integrator=integ,
        batch_size=batch,
        decode_threads=threads,
        buffer_frames=256,
        context=ctx,
        batch_workers=batch_workers,
        **({} if HWM is None else {"hwm": HWM}),
    ).start()
    book = cons.book
    assert book.wait(lambda b: (b.get(1) or {}).get("received", 0) >= 1, 120)
    t0, c0, th0 = time.perf_counter(), _cpu_s(), _thread_cpu()
    # polled, not woken at every frame's notify (that would cost the consumer ~0.5 ms/frame)
    ok = _poll(lambda: (book.get(1) or {}).get("state") == "done", 600, 0.01)
    dt, cpu, th1 = time.perf_counter() - t0, _cpu_s() - c0, _thread_cpu()
    st = book.get(1)
    cons.stop()
    proc.join(60)
    ctx.term()
    if not ok or st["integrated"] != n:
        raise RuntimeError(f"end to end incomplete: {st}")
    st["cpu_ms_per_frame"] = 1e3 * cpu / (n - 1)
    # the sender process: all its frames (n) on the same cores
    st["sender_cpu_ms_per_frame"] = 1e3 * sender_cpu.value / n
    st["stages_cpu_ms_per_frame"] = {
        k: round(1e3 * (th1.get(k, 0.0) - th0.get(k, 0.0)) / (n - 1), 3)
        for k in sorted(set(th0) | set(th1))
        if th1.get(k, 0.0) - th0.get(k, 0.0) > 0
    }
    return (n - 1) / dt, st


def _cpu_s():
    """CPU seconds of this process (every thread: the consumer's stages, numba's workers)."""
    import resource

    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def _thread_cpu():
    """CPU seconds per thread group of this process, from /proc/self/task: the consumer's
    stages by their thread names (decode threads summed), numba's workers, ZeroMQ's I/O."""
    import threading

    names = {t.native_id: t.name for t in threading.enumerate()}
    tick = os.sysconf("SC_CLK_TCK")
    out = {}
    for tid in os.listdir("/proc/self/task"):
        try:
            with open(f"/proc/self/task/{tid}/stat") as f:
                stat = f.read()
        except OSError:  # the thread ended
            continue
        comm = stat[stat.index("(") + 1 : stat.rindex(")")]
        fields = stat[stat.rindex(")") + 2 :].split()
        name = names.get(int(tid), comm)
        name = "stream-decode" if name.startswith("stream-decode") else name
        name = "main (polling)" if name == "MainThread" else name
        name = "numba workers" if name == comm and name.startswith("python") else name
        out[name] = out.get(name, 0.0) + (int(fields[11]) + int(fields[12])) / tick
    return out


def _poll(pred, timeout, interval):
    deadline = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > deadline:
            return False
        time.sleep(interval)
    return True


def _bind_sender(url, messages, n, ready, cpu):
    import zmq

    ctx = zmq.Context()
    s = ctx.socket(zmq.PUSH)
    s.setsockopt(zmq.SNDHWM, 1000)
    s.bind(url)
    ready.set()
    c0 = _cpu_s()  # every thread of the sender, its ZeroMQ I/O thread included
    s.send(messages["start"])
    for m in messages["images"]:
        s.send(m, copy=False)
    s.send(messages["end"])
    s.close(linger=-1)
    ctx.term()
    cpu.value = _cpu_s() - c0


def _free_port():
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def pyfai_rate(cal, frames, n_bins):
    logging.disable(logging.WARNING)
    warnings.filterwarnings("ignore")
    sys.path.insert(0, str(HERE.parent / "tests"))
    from helpers import pyfai_integrator

    ai = pyfai_integrator(cal)
    top = float(np.iinfo(frames[0].dtype).max)
    kw = {
        "npt": n_bins,
        "unit": "q_nm^-1",
        "polarization_factor": 2 * 0.95 - 1,
        "method": ("full", "csr", "cython"),
        "correctSolidAngle": False,
        "dummy": top,
        "delta_dummy": 0.5,
    }
    ai.integrate1d(frames[0], **kw)  # builds pyFAI's CSR matrix
    return rate(len(frames), lambda: [ai.integrate1d(f, **kw) for f in frames])


def run_case(name, n_frames, batch, threads, no_pyfai, engine_threads=None, batch_workers=True):
    cal = Calibration.from_dict(CASES[name])
    t0 = time.perf_counter()
    integ = Integrator(cal, backend="numpy").warm_up(np.uint32)
    build_s = time.perf_counter() - t0
    frames = demo_frames(4, np.uint32, seed=0, calibration=cal)
    encoded = [codecs.encode_bslz4(f) for f in frames]
    decoded = [codecs.decode_bslz4(e, frames[0].shape, np.uint32, 4) for e in encoded]
    k = max(n_frames // 4, len(frames))
    buf = np.empty_like(frames[0])

    def dec():  # into a recycled frame, as the consumer decodes
        for i in range(k):
            codecs.decode_bslz4(encoded[i % 4], frames[0].shape, np.uint32, 4, out=buf)

    codecs.bitshuffle_one_thread()  # one thread means one: no OpenMP team inside bitshuffle
    c0 = _cpu_s()
    r_dec = rate(k, dec)
    dec_cpu_ms = 1e3 * (_cpu_s() - c0) / (k * REPEAT)
    # into the frames of 4 recycled (batch, H, W) stacks, as the consumer must (the frames wait
    # there for the integrator): the writes go to memory, not to a cache-resident frame
    stacks = [np.ones((batch,) + frames[0].shape, np.uint32) for _ in range(4)]
    c0 = _cpu_s()
    for i in range(k):
        out = stacks[(i // batch) % 4][i % batch]
        codecs.decode_bslz4(encoded[i % 4], frames[0].shape, np.uint32, 4, out=out)
    dec_stack_cpu_ms = 1e3 * (_cpu_s() - c0) / k

    def decode_half(half):  # every other frame, into the same stacks
        for i in range(half, k, 2):
            out = stacks[(i // batch) % 4][i % batch]
            codecs.decode_bslz4(encoded[i % 4], frames[0].shape, np.uint32, 4, out=out)

    # two threads decoding at once (bitshuffle and LZ4 release the GIL): the decode rate with
    # both cores busy, as they are end to end
    with ThreadPoolExecutor(2) as pool:
        r_dec2 = rate(k, lambda: list(pool.map(decode_half, (0, 1))))
    stacks.clear()
    stack = np.stack([decoded[i % len(decoded)] for i in range(batch)])
    integ.integrate_batch_error(stack, std=False)
    reps = max(1, k // batch)
    r_int = rate(
        reps * batch,
        lambda: [integ.integrate_batch_error(stack, std=False) for _ in range(reps)],
    )
    r_seq = 1.0 / (1.0 / r_dec + 1.0 / r_int)
    # one thread for real: the CPU engine sets numba's thread count itself at every call, so
    # numba.set_num_threads(1) around it (what this script did before) still ran two threads
    integ1 = Integrator(cal, backend="numpy", threads=1).warm_up(np.uint32)
    integ1.integrate_batch_error(stack, std=False)
    c0 = _cpu_s()
    r_int1 = rate(
        reps * batch,
        lambda: [integ1.integrate_batch_error(stack, std=False) for _ in range(reps)],
    )
    int_cpu_ms = 1e3 * (_cpu_s() - c0) / (reps * batch * REPEAT)
    # decode and integration overlapped on the two cores, each at its one-thread rate
    r_bound = 2.0 / (1.0 / r_dec + 1.0 / r_int1)
    # the same formula with the engine's own (two-thread) rate, as this script computed the
    # bound up to 2026-12-07 (labelled "1 thread"): higher than two cores can reach
    r_bound_engine = 2.0 / (1.0 / r_dec + 1.0 / r_int)
    # decoding then integrating, each on both cores at once: per frame 1/r_dec2 + 1/r_int of
    # the whole machine. What two cores reach when both are busy all the time (each core is
    # slower then than alone: shared caches, memory and clock), so end to end's ceiling
    r_bound_busy = 1.0 / (1.0 / r_dec2 + 1.0 / r_int)
    r_pyfai = None if no_pyfai else pyfai_rate(cal, decoded[: max(8, k // 4)], integ.matrix.n_bins)
    e2e_integ = integ
    if engine_threads is not None:
        e2e_integ = Integrator(cal, backend="numpy", threads=engine_threads)
        e2e_integ.warm_up(np.uint32)
    runs = []
    for _ in range(REPEAT):  # each run a new series in a new folder (nothing to resume)
        with tempfile.TemporaryDirectory(prefix="bench-stream-") as out:
            runs.append(end_to_end(e2e_integ, frames, n_frames, batch, threads, out, batch_workers))
    r_e2e, st = max(runs, key=lambda run: run[0])  # the best of REPEAT runs, as the rates
    r_bound_fair = 2.0 / (1.0 / r_dec + 1.0 / r_int1 + 1e-3 * st["sender_cpu_ms_per_frame"])
    # decoding into the frames of batch stacks, as the consumer must (the frames wait there for
    # the integrator), instead of into one cache-resident frame: the bound of that memory path
    r_bound_stacks = 2.0 / (1e-3 * dec_stack_cpu_ms + 1.0 / r_int1)
    comp = np.mean([f.nbytes / len(e) for f, e in zip(frames, encoded, strict=True)])
    return {
        "case": name,
        "shape": list(cal.imagesize),
        "dtype": "uint32",
        "compression": "bslz4",
        "compression_ratio": round(float(comp), 2),
        "oversampling": cal.oversampling,
        "n_bins": int(integ.matrix.n_bins),
        "frames_end_to_end": n_frames,
        "batch": batch,
        "decode_threads": threads,
        "matrix_build_s": round(build_s, 2),
        "decode_1thread_fps": r_dec,
        "integrate_in_memory_fps": r_int,
        "sequential_decode_then_integrate_fps": r_seq,
        "integrate_1thread_fps": r_int1,
        "two_core_bound_fps": r_bound,
        "decode_2threads_fps": r_dec2,
        "two_cores_busy_bound_fps": r_bound_busy,
        "end_to_end_vs_two_cores_busy_bound": r_e2e / r_bound_busy,
        "end_to_end_engine_threads": engine_threads or os.cpu_count(),
        "end_to_end_batch_workers": batch_workers,
        "end_to_end_vs_two_core_bound": r_e2e / r_bound,
        "two_core_bound_engine_threads_fps": r_bound_engine,
        "end_to_end_vs_two_core_bound_engine_threads": r_e2e / r_bound_engine,
        # the sender process runs on the same two cores: its CPU per frame taken from them
        "sender_cpu_ms_per_frame": st["sender_cpu_ms_per_frame"],
        "two_core_bound_less_sender_fps": r_bound_fair,
        "end_to_end_vs_two_core_bound_less_sender": r_e2e / r_bound_fair,
        "two_core_bound_decoding_into_stacks_fps": r_bound_stacks,
        "end_to_end_vs_two_core_bound_decoding_into_stacks": r_e2e / r_bound_stacks,
        "end_to_end_cpu_ms_per_frame_by_thread": st["stages_cpu_ms_per_frame"],
        # CPU the consumer spends per frame, against decoding + integrating on one thread each:
        # the share of the two-core bound that the pipeline's own work allows on idle cores
        "end_to_end_cpu_ms_per_frame": st["cpu_ms_per_frame"],
        "decode_cpu_ms_per_frame": dec_cpu_ms,
        "decode_into_batch_stacks_cpu_ms_per_frame": dec_stack_cpu_ms,
        "integrate_1thread_cpu_ms_per_frame": int_cpu_ms,
        "cpu_limited_vs_two_core_bound": (dec_cpu_ms + int_cpu_ms) / st["cpu_ms_per_frame"],
        "pyfai_fps": r_pyfai,
        "end_to_end_fps": r_e2e,
        "end_to_end_vs_sequential": r_e2e / r_seq,
        "end_to_end_vs_pyfai": None if r_pyfai is None else r_e2e / r_pyfai,
    }


def main(argv=None):
    global REPEAT, HWM
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--frames", type=int, default=400, help="PILATUS 1M frames end to end")
    p.add_argument("--frames-4m", type=int, default=100, help="EIGER 4M frames end to end")
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--threads", type=int, default=2, help="decode threads of the consumer")
    p.add_argument("--no-pyfai", action="store_true")
    p.add_argument(
        "--no-batch-workers",
        action="store_true",
        help="the consumer as before its batch workers: decode threads, then the engine's threads",
    )
    p.add_argument("--hwm", type=int, default=None, help="the consumer's receive high-water mark")
    p.add_argument("--repeat", type=int, default=REPEAT, help="runs of each measure (best)")
    p.add_argument(
        "--engine-threads",
        type=int,
        default=None,
        help="CPU threads of the integrator end to end (default: the engine's, all cores)",
    )
    p.add_argument("--cases", nargs="*", default=list(CASES), choices=list(CASES))
    p.add_argument("--out", default=str(HERE / "results" / "stream-cpu.json"))
    args = p.parse_args(argv)
    REPEAT = max(1, args.repeat)
    HWM = args.hwm
    os.environ.setdefault(
        "GPUSAXS_CACHE_DIR", os.path.join(tempfile.gettempdir(), "gpusaxs-bench-cache")
    )
    load0 = os.getloadavg()
    rows = []
    for name in args.cases:
        n = args.frames if name == "PILATUS 1M" else args.frames_4m
        workers = not args.no_batch_workers
        rows.append(
            run_case(name, n, args.batch, args.threads, args.no_pyfai, args.engine_threads, workers)
        )
    load1 = os.getloadavg()
    print(
        f"{'case':11s} {'decode 1t':>10s} {'integrate':>10s} {'sequential':>10s} "
        f"{'pyFAI':>8s} {'end2end':>8s} {'e2e/seq':>8s} {'e2e/pyFAI':>9s} "
        f"{'integ 1t':>8s} {'2-core':>8s} {'e2e/2core':>9s} {'cpu ms':>7s} {'cpu/2core':>9s}"
        "   (frames/s)"
    )
    for r in rows:
        pf = "-" if r["pyfai_fps"] is None else f"{r['pyfai_fps']:.0f}"
        rp = "-" if r["end_to_end_vs_pyfai"] is None else f"{r['end_to_end_vs_pyfai']:.2f}"
        print(
            f"{r['case']:11s} {r['decode_1thread_fps']:10.0f} {r['integrate_in_memory_fps']:10.0f} "
            f"{r['sequential_decode_then_integrate_fps']:10.0f} {pf:>8s} "
            f"{r['end_to_end_fps']:8.0f} {r['end_to_end_vs_sequential']:8.2f} {rp:>9s} "
            f"{r['integrate_1thread_fps']:8.0f} {r['two_core_bound_fps']:8.0f} "
            f"{r['end_to_end_vs_two_core_bound']:9.2f} {r['end_to_end_cpu_ms_per_frame']:7.2f} "
            f"{r['cpu_limited_vs_two_core_bound']:9.2f}"
        )
    for r in rows:
        stages = ", ".join(
            f"{k} {v:.2f}" for k, v in r["end_to_end_cpu_ms_per_frame_by_thread"].items()
        )
        print(
            f"{r['case']}: CPU ms/frame by thread: {stages}; sender process "
            f"{r['sender_cpu_ms_per_frame']:.2f}; decode into batch stacks "
            f"{r['decode_into_batch_stacks_cpu_ms_per_frame']:.2f}.  "
            f"Two-core bound less the sender's CPU "
            f"{r['two_core_bound_less_sender_fps']:.0f} frames/s (e2e "
            f"{r['end_to_end_vs_two_core_bound_less_sender']:.2f} of it); decoding into "
            f"batch stacks {r['two_core_bound_decoding_into_stacks_fps']:.0f} (e2e "
            f"{r['end_to_end_vs_two_core_bound_decoding_into_stacks']:.2f} of it); with the "
            f"engine's two-thread rate (the bound as computed before) "
            f"{r['two_core_bound_engine_threads_fps']:.0f}; decode on 2 threads "
            f"{r['decode_2threads_fps']:.0f}, both cores busy bound "
            f"{r['two_cores_busy_bound_fps']:.0f} (e2e "
            f"{r['end_to_end_vs_two_cores_busy_bound']:.2f} of it); end to end with "
            f"{r['end_to_end_engine_threads']} engine thread(s)"
            f"{', batch workers (one engine thread each)' if r['end_to_end_batch_workers'] else ''}"
        )
    print(
        f"load average {load0[0]:.1f} before, {load1[0]:.1f} after, {os.cpu_count()} cores: "
        f"the machine is shared, compare the ratios"
    )
    result = {
        "benchmark": "bench_stream",
        "commit": git_commit(),
        "time": time.time(),
        "cpu_count": os.cpu_count(),
        "loadavg_before": load0,
        "loadavg_after": load1,
        "note": "shared machine (other jobs running); compare ratios within this run",
        "cases": rows,
    }
    write_result(args.out, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
