"""Detector stream end to end against the two-core bound, in paired rounds (issue 22).

``bench_stream.py`` takes each rate as the best of a few runs, measured one after the other; on
a shared machine the bound and the end to end then come from different minutes, and their ratio
moved by 40 % between runs.  This script measures, in each *round*, one right after the other
and each over the same number of PILATUS 1M-size bslz4 frames (``--frames``, batch 16):

* ``decode``: bslz4 decoding on one thread, into a recycled frame (bench_stream's rate);
* ``integrate``: the engine on one thread (``Integrator(threads=1)``), batches in memory;
* ``bound`` = 2 / (1/decode + 1/integrate): decoding and integration overlapped on two cores,
  each core as fast as one core alone (the goal: end to end >= 80 % of it);
* ``work on 2 threads``: the end to end's work alone, without the stream: two threads that each
  decode a batch into their stack and integrate it on their one-thread engine (what the
  consumer's batch workers do), no sockets, no files;
* ``end to end``: a sender process binding as a detector (Stream V2, tag 55799) ->
  ``StreamConsumer`` (defaults: batch workers) -> the live NeXus file.

The order of the four measures rotates from round to round.  Per round: end to end / bound,
end to end / the bound less the sender's CPU (the sender runs on the same two cores), end to
end / work on 2 threads (what the stream itself costs) and work on 2 threads / bound (what the
two cores give for this work together, against twice one core), and the work's CPU per frame
against the consumer's plus the sender's (the stream's own CPU, which other jobs on the machine
affect less than the rates).  The medians over the rounds
are the result.  Writes ``benchmarks/results/stream-rounds-cpu.json``.
"""

import argparse
import os
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

from bench_frames import write_result  # noqa: E402
from bench_saxsdog import machine  # noqa: E402
from bench_stream import CASES, _cpu_s, end_to_end, git_commit  # noqa: E402

from gpusaxs.calibration_model import Calibration  # noqa: E402
from gpusaxs.clients.saxsdetsim import demo_frames  # noqa: E402
from gpusaxs.integrator import Integrator  # noqa: E402
from gpusaxs.server.stream import codecs  # noqa: E402
from gpusaxs.server.stream.workers import one_thread_integrate  # noqa: E402

#: the ratios reported per round and as medians
RATIOS = (
    "e2e_vs_bound",
    "e2e_vs_bound_less_sender",
    "e2e_vs_busy_bound",
    "e2e_vs_work_2_threads",
    "work_2_threads_vs_bound",
    "work_cpu_vs_e2e_cpu",
)

#: the table's columns: header, key of a round, width, decimals
COLUMNS = (
    ("round", None, 5, 0),
    ("decode", "decode_fps", 6, 0),
    ("integ", "integrate_1thread_fps", 5, 0),
    ("bound", "bound_fps", 5, 0),
    ("busy bound", "busy_bound_fps", 10, 0),
    ("work 2t", "work_2_threads_fps", 7, 0),
    ("e2e", "end_to_end_fps", 5, 0),
    ("e2e/bound", "e2e_vs_bound", 9, 2),
    ("e2e/bound-sender", "e2e_vs_bound_less_sender", 16, 2),
    ("e2e/busy", "e2e_vs_busy_bound", 8, 2),
    ("e2e/work", "e2e_vs_work_2_threads", 8, 2),
    ("work/bound", "work_2_threads_vs_bound", 10, 2),
    ("cpu work/e2e", "work_cpu_vs_e2e_cpu", 12, 2),
    ("load", "load_average", 4, 1),
)


class Frames:
    """The series' frames: 4 demo frames encoded as bslz4, sent and decoded round-robin."""

    def __init__(self, cal, batch):
        self.frames = demo_frames(4, np.uint32, seed=0, calibration=cal)
        self.encoded = [codecs.encode_bslz4(f) for f in self.frames]
        self.shape = self.frames[0].shape
        self.batch = batch

    def decode(self, i, out):
        codecs.decode_bslz4(self.encoded[i % 4], self.shape, np.uint32, 4, out=out)

    def stack(self):
        return np.ones((self.batch,) + self.shape, np.uint32)


def decode_fps(src, n):
    """One thread decoding n frames into one recycled frame, frames/s."""
    out = np.empty(src.shape, np.uint32)
    t0 = time.perf_counter()
    for i in range(n):
        src.decode(i, out)
    return n / (time.perf_counter() - t0)


def integrate_fps(integ1, src, n):
    """A one-thread engine integrating n frames in batches (decoded beforehand), frames/s."""
    stack = src.stack()
    for k in range(src.batch):
        src.decode(k, stack[k])
    reps = max(1, n // src.batch)
    t0 = time.perf_counter()
    for _ in range(reps):
        integ1.integrate_batch_error(stack, std=False)
    return reps * src.batch / (time.perf_counter() - t0)


def on_two_threads(target, n):
    """Run target(0) and target(1) on two threads at once: (n / seconds, CPU ms per frame of
    the whole process)."""
    threads = [threading.Thread(target=target, args=(w,)) for w in (0, 1)]
    t0, c0 = time.perf_counter(), _cpu_s()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return n / (time.perf_counter() - t0), 1e3 * (_cpu_s() - c0) / n


def decode_2_threads_fps(src, n):
    """Two threads decoding every other frame at once, each into its recycled frame, frames/s:
    decoding with both cores busy."""

    def half(first):
        codecs.bitshuffle_one_thread()
        out = np.empty(src.shape, np.uint32)
        for i in range(first, n, 2):
            src.decode(i, out)

    return on_two_threads(half, n)[0]


def work_2_threads(integ, src, n):
    """Two threads, each decoding every other batch into its own stack and integrating it on
    its one-thread engine (the consumer's batch workers without the stream): (frames/s, CPU ms
    per frame)."""
    n_batches = max(2, n // src.batch)

    def worker(first):
        codecs.bitshuffle_one_thread()
        integrate = one_thread_integrate(integ)
        stack = src.stack()
        for b in range(first, n_batches, 2):
            for k in range(src.batch):
                src.decode(b * src.batch + k, stack[k])
            integrate(stack)

    return on_two_threads(worker, n_batches * src.batch)


def one_round(k, integ, integ1, src, n, out_dir):
    """The six measures of round k (their order rotated by k) and the round's ratios."""
    measures = [
        ("decode_fps", lambda: decode_fps(src, n)),
        ("integrate_1thread_fps", lambda: integrate_fps(integ1, src, n)),
        ("decode_2threads_fps", lambda: decode_2_threads_fps(src, n)),
        ("integrate_2threads_fps", lambda: integrate_fps(integ, src, n)),
        ("work_2_threads_fps", lambda: work_2_threads(integ, src, n)),
        ("e2e", lambda: end_to_end(integ, src.frames, n, src.batch, 2, out_dir)),
    ]
    row = {}
    for name, fn in measures[k % 6 :] + measures[: k % 6]:
        row[name] = fn()
    e2e, st = row.pop("e2e")
    row["work_2_threads_fps"], work_ms = row["work_2_threads_fps"]
    sender_ms = st["sender_cpu_ms_per_frame"]
    per_frame = 1.0 / row["decode_fps"] + 1.0 / row["integrate_1thread_fps"]
    row.update(
        end_to_end_fps=e2e,
        bound_fps=2.0 / per_frame,
        bound_less_sender_fps=2.0 / (per_frame + 1e-3 * sender_ms),
        busy_bound_fps=1.0
        / (1.0 / row["decode_2threads_fps"] + 1.0 / row["integrate_2threads_fps"]),
        sender_cpu_ms_per_frame=sender_ms,
        consumer_cpu_ms_per_frame=st["cpu_ms_per_frame"],
        work_2_threads_cpu_ms_per_frame=work_ms,
        load_average=os.getloadavg()[0],
    )
    row.update(
        e2e_vs_bound=e2e / row["bound_fps"],
        e2e_vs_bound_less_sender=e2e / row["bound_less_sender_fps"],
        e2e_vs_busy_bound=e2e / row["busy_bound_fps"],
        e2e_vs_work_2_threads=e2e / row["work_2_threads_fps"],
        work_2_threads_vs_bound=row["work_2_threads_fps"] / row["bound_fps"],
        # the stream's own CPU: the work's CPU per frame against the consumer's and the sender's
        work_cpu_vs_e2e_cpu=work_ms / (st["cpu_ms_per_frame"] + sender_ms),
    )
    return row


def main(argv=None):
    p = argparse.ArgumentParser(
        description=__doc__.split("\n")[0],
        epilog="example: python benchmarks/bench_stream_rounds.py --rounds 8 --frames 1600",
    )
    p.add_argument("--rounds", type=int, default=8, help="paired rounds (default 8)")
    p.add_argument("--frames", type=int, default=1600, help="PILATUS 1M frames per measure")
    p.add_argument("--batch", type=int, default=16, help="frames per batch (default 16)")
    p.add_argument("--out", default=str(HERE / "results" / "stream-rounds-cpu.json"))
    args = p.parse_args(argv)
    os.environ.setdefault(
        "GPUSAXS_CACHE_DIR", os.path.join(tempfile.gettempdir(), "gpusaxs-bench-cache")
    )
    cal = Calibration.from_dict(CASES["PILATUS 1M"])
    integ = Integrator(cal, backend="numpy").warm_up(np.uint32)
    integ1 = Integrator(cal, backend="numpy", threads=1).warm_up(np.uint32)
    src = Frames(cal, args.batch)
    codecs.bitshuffle_one_thread()  # one decode thread means one (no OpenMP team inside)
    load0 = os.getloadavg()
    print(" ".join(f"{head:>{w}s}" for head, _, w, _ in COLUMNS) + "   (frames/s)")
    rows = []
    for k in range(args.rounds):
        with tempfile.TemporaryDirectory(prefix="bench-stream-") as out:
            rows.append(one_round(k, integ, integ1, src, args.frames, out))
        print(
            f"{k + 1:>5d} " + " ".join(f"{rows[-1][key]:{w}.{d}f}" for _, key, w, d in COLUMNS[1:])
        )
    medians = {key: statistics.median(r[key] for r in rows) for key in RATIOS}
    spread = {key: [min(r[key] for r in rows), max(r[key] for r in rows)] for key in RATIOS}
    print(
        f"{'median':>5s} "
        + " ".join(
            f"{medians[key]:{w}.{d}f}" if key in RATIOS else " " * w for _, key, w, d in COLUMNS[1:]
        )
    )
    print(
        f"{args.frames} frames per measure, batch {args.batch}, {os.cpu_count()} CPUs "
        f"({machine()['cpu']}); load average {load0[0]:.1f} before, {os.getloadavg()[0]:.1f} "
        f"after (shared machine: the ratios of each round are what to compare)"
    )
    result = {
        "benchmark": "bench_stream_rounds",
        "commit": git_commit(),
        "time": time.time(),
        "machine": machine(),
        "frames_per_measure": args.frames,
        "batch": args.batch,
        "loadavg_before": load0,
        "loadavg_after": os.getloadavg(),
        "median": medians,
        "min_max": spread,
        "rounds": rows,
    }
    write_result(args.out, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
