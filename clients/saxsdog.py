"""saxsdog: integrate folders of detector images into curves (specification section 2.1).

Walks the given folders (and files), integrates every image with the batched engine
(gpusaxs.pipeline.FramePipeline: reading, integrating and writing overlap) and writes one
.chi curve per frame, optionally a NeXus/HDF5 file per folder.  With -w it then watches the
folders (recursively, new subfolders included) and integrates new images once complete.

This module is ``main``: one run from the command line to the exit status.  Its parts: the
options (:mod:`.saxsdog_parser`), the set-up and the engine's choice (:mod:`.saxsdog_setup`),
the run's state (:mod:`.saxsdog_state`), the outputs (:mod:`.saxsdog_outputs`,
:mod:`.saxsdog_nexus`), the live window (:mod:`.saxsdog_monitor`), watch mode
(:mod:`.saxsdog_watch`), the Dask mode (:mod:`.saxsdog_dask`) and the signals
(:mod:`.saxsdog_signals`).
"""

import json
import signal
import sys
import threading
import time
from pathlib import Path

from gpusaxs.calibration_model import Calibration
from gpusaxs.clients.saxsdog_average import (
    AveragedIntegrator,
    average_key,
    average_params,
)
from gpusaxs.clients.saxsdog_dask import dask_pipeline
from gpusaxs.clients.saxsdog_monitor import LiveMonitor
from gpusaxs.clients.saxsdog_parser import PROG, build_parser, err
from gpusaxs.clients.saxsdog_setup import make_integrator, output_problem
from gpusaxs.clients.saxsdog_signals import install_signal_handlers
from gpusaxs.clients.saxsdog_state import Saxsdog
from gpusaxs.clients.saxsdog_watch import start_watch
from gpusaxs.distributed import close_client
from gpusaxs.errors import GpusaxsError
from gpusaxs.grazing_config import read_grazing_config
from gpusaxs.grazing_outputs import GrazingStage
from gpusaxs.io.images import IMAGE_SUFFIXES
from gpusaxs.matrix_cache import matrix_key
from gpusaxs.pipeline import FramePipeline

__all__ = ["Saxsdog", "build_parser", "main"]


def main(argv=None):
    """Run saxsdog; returns the exit status (0 ok, 1 failures, 2 usage error, 130 Ctrl-C)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.threads < 1:
        parser.error("-t/--threads must be at least 1")
    if args.batch_size < 1:
        parser.error("--batch-size must be at least 1")
    if args.nowalk and not args.watch:
        err("warning: -n without -w: nothing to do")
    t_start = time.perf_counter()

    roots = []
    for p in args.paths:
        path = Path(p)
        if path.is_dir():
            roots.append((path, path))
        elif path.exists() or ("::" in p and Path(p.split("::")[0]).is_file()):
            roots.append((path, path.parent))  # a file, or file.h5::/dataset[::N]
        else:
            err(f"error: {p}: no such file or folder")
            return 2
    if args.scheduler and (args.watch or args.png or args.plotmonitor):
        err("error: --scheduler works on a fixed set of files: not with -w, -p or -m")
        return 2
    if args.frames_per_task < 1:
        parser.error("--frames-per-task must be at least 1")
    try:
        params = average_params(args)
    except ValueError as exc:
        parser.error(str(exc))
    if params is not None and args.scheduler:
        err("error: --average sigma-clip / median: not with --scheduler")
        return 2
    if args.watch and not any(p.is_dir() for p, _ in roots):
        err("error: -w needs at least one folder to watch")
        return 2

    if not args.inplace:
        problem = output_problem(Path(args.out))
        if problem:
            err(f"error: -o {args.out}: {problem}")
            return 2

    try:
        cal = Calibration.from_file(args.calibration)
        cal.check_limits()  # before anything is read or built
        # the Integrator's matrix_key (resume checks), with the averaging when not the mean
        key = average_key(matrix_key(cal), params)
        calibration_text = json.dumps(cal.to_dict("flat"), indent=1)
        grazing = read_grazing_config(args.calibration, cal.imagesize)  # maps and cuts
    except GpusaxsError as exc:
        err(f"error: {exc}")
        return 2
    except OSError as exc:
        err(f"error: {args.calibration}: {exc.strerror or exc}")
        return 2

    dog = Saxsdog(args, cal, None, calibration_text, calibration_key=key)
    if args.plotmonitor:
        try:
            dog.monitor = LiveMonitor()
        except Exception as exc:
            err(f"warning: -m: no live plot window ({exc})")
    caught = install_signal_handlers()
    observer = None
    try:
        if args.watch:
            dog.start_settler(args.wait_timeout)
            observer = start_watch(dog, roots)  # before the walk: no gap
        if not args.nowalk:
            dog.walk(roots)  # frames are kept until the pipeline exists
        if not args.watch and not dog.pending and not dog.skipped and not dog.failed_early:
            err(
                "warning: no image found in "
                + ", ".join(args.paths)
                + " (suffixes: "
                + " ".join(IMAGE_SUFFIXES)
                + "); nothing to do"
            )
            return 1
        integrator = make_integrator(args, cal, dog)
        if params is not None:
            integrator = AveragedIntegrator(integrator, params)
    except KeyboardInterrupt:
        if observer is not None:
            observer.stop()
        if dog.settler is not None:
            dog.settler.stop()
        err("interrupted during set-up")
        return 128 + caught.get("signum", signal.SIGINT)
    except (GpusaxsError, MemoryError) as exc:
        if observer is not None:
            observer.stop()
        if dog.settler is not None:
            dog.settler.stop()
        err(f"error: {exc}" if str(exc) else f"error: {type(exc).__name__}")
        return 2
    dog.setup_seconds = time.perf_counter() - t_start
    t_start = time.perf_counter()

    client = None
    if grazing is not None and args.scheduler:
        err("warning: --scheduler writes the curves only, not the grazing-incidence outputs")
    elif grazing is not None:
        dog.grazing = GrazingStage(integrator, grazing)
    if args.scheduler:
        try:
            client, pipeline = dask_pipeline(args, dog, integrator)
        except Exception as exc:
            err(f"error: --scheduler {args.scheduler}: {exc}")
            return 2
    else:
        pipeline = FramePipeline(
            integrator if dog.grazing is None else dog.grazing,
            batch_size=args.batch_size,
            read_threads=args.threads,
            on_done=dog.on_done,
            on_error=dog.on_error,
            errors=True,
            writer=dog.write,
            overlap=False if params is not None else None,
        )
    dog.attach(integrator, pipeline)
    interrupted = False
    try:
        if args.watch:
            forever = threading.Event()
            while True:
                if dog.monitor is not None:
                    dog.monitor.refresh(0.2)
                else:
                    forever.wait()
        else:
            while not dog.pipeline.wait_idle(timeout=None if dog.monitor is None else 0.2):
                dog.monitor.refresh(0.05)
    except KeyboardInterrupt:
        interrupted = True
    finally:
        try:
            if observer is not None:
                observer.stop()
                observer.join(timeout=5)
            if dog.settler is not None:
                dog.stop_settler()
            dog.pipeline.close(abort=interrupted)
        except KeyboardInterrupt:  # second Ctrl-C: leave now (outputs stay atomic)
            err("interrupted again: stopping without waiting")
            return 130
    if client is not None:
        close_client(client)
    written_h5 = []
    if dog.hdf5 is not None:
        try:
            written_h5 = dog.hdf5.write_all()
        except Exception as exc:
            err(f"error: writing the HDF5 file failed: {exc}")
            dog.failed_early += 1
    elapsed = time.perf_counter() - t_start
    stats = dog.pipeline.stats
    dog.progress.finish(dog.summary(stats, interrupted, elapsed))
    if not args.silent:
        for p in written_h5:
            sys.stderr.write(f"{PROG}: wrote {p}\n")
    if args.profile:
        sys.stderr.write(dog.profile(stats, elapsed) + "\n")
    if interrupted:
        return 128 + caught.get("signum", signal.SIGINT)
    return 1 if stats["failed"] + dog.failed_early else 0


if __name__ == "__main__":
    sys.exit(main())
