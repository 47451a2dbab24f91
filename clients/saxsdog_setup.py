"""saxsdog's set-up before the first frame: the output folder's check, the engine's choice
(:func:`choose_engine`), the integration matrix (built with a progress bar, or from the cache)
and the engine's warm-up (its kernels loaded or compiled), each timed for the summary."""

import os
import tempfile
import time

import numpy as np

from gpusaxs.clients.progress import Progress, format_duration
from gpusaxs.clients.saxsdog_parser import PROG, err
from gpusaxs.integrator import Integrator

#: Up to this many frames (and without -w) the NumPy engine is used: it needs no numba import
#: nor compiled-kernel load (about 1-3 s), which a few frames would not repay.
SMALL_JOB_FRAMES = 8


def output_problem(out):
    """Why curves cannot be written below ``out`` (a reason), or None.  Nothing is created."""
    if out.exists() and not out.is_dir():
        return "is a file, not a folder"
    probe = out
    while not probe.exists():  # the nearest existing ancestor is created under
        if probe.parent == probe:
            break
        probe = probe.parent
    if probe.exists() and not probe.is_dir():
        return f"cannot be created: {probe} is a file"
    if not os.access(probe, os.W_OK | os.X_OK):
        return f"not writable ({probe} does not allow creating files)"
    if probe == out:  # root ignores permission bits: try for real
        try:
            fd, tmp = tempfile.mkstemp(prefix=".saxsdog-probe-", suffix=".tmp", dir=out)
            os.close(fd)
            os.unlink(tmp)
        except OSError as exc:
            return f"not writable ({exc.strerror or exc})"
    return None


def choose_engine(args, cal, n_frames, progress):
    """The run's Integrator with the engine saxsdog chose; returns ``(integrator, small_job)``.

    The one place where saxsdog picks its engine: a small job (at most
    :data:`SMALL_JOB_FRAMES` frames, without -w, backend not cupy) asks for the start-up-free
    NumPy engine (``light``, :func:`gpusaxs.engines.make_engine`); otherwise the backend's own
    engine.  When ``--backend auto`` lands on the GPU the GPU engine is used.  ``small_job``
    is True when the small-job engine was asked for: the run then skips the warm-up
    (:func:`warm_up`).  ``progress(done, total)`` follows a matrix
    build.
    """
    light = not args.watch and n_frames <= SMALL_JOB_FRAMES and args.backend != "cupy"
    integrator = Integrator(
        cal,
        backend=args.backend,
        progress=progress,
        cache_dir=False if args.no_cache else None,
        light=light,
    )
    return integrator, light


def make_integrator(args, cal, dog):
    """The Integrator, with "building the integration matrix" and a progress bar on a build."""
    bar = Progress(
        total=int(cal.imagesize[0]),
        silent=args.silent,
        label=f"{PROG}: building the integration matrix",
        unit="rows",
    )

    def progress(done, total):
        bar.total = total
        bar.set_done(done)

    integrator, small_job = choose_engine(args, cal, len(dog.pending), progress)
    info = dog.matrix_info = integrator.matrix_info
    if info["source"] == "built":
        m = integrator.matrix
        where = f"; cached in {info['path']}" if info["path"] and not info["cache_error"] else ""
        bar.finish(
            f"{PROG}: built the integration matrix ({m.n_bins} bins, "
            f"{m.nbytes / 2**20:.0f} MB) in {format_duration(info['seconds'])}{where}"
        )
    else:
        bar.clear()
    if info.get("cache_error") and not args.silent:
        err(f"warning: {info['cache_error']}")
    if not small_job:
        warm_up(integrator, dog, args.silent)
    return integrator


def warm_up(integrator, dog, silent):
    """Make the engine and load (or, once, compile) the kernel the run uses, timing each
    part (seconds) for the summary line."""
    t0 = time.perf_counter()
    eng = integrator.engine  # the CPU engine's layout: from the cache, or made now
    dog.setup_parts["engine"] = time.perf_counter() - t0
    compiled = []

    def notice():
        if not compiled and not silent:
            err("compiling the CPU kernels (first run only)")
        compiled.append(True)

    if hasattr(eng, "on_compile"):
        eng.on_compile = notice  # kept for the run: another pixel type compiles, said too
    t0 = time.perf_counter()
    # the variant the run uses (errors "poisson"), for PILATUS' int32 pixels
    eng.sums(np.zeros((2, *integrator.shape), np.int32), errors="poisson")
    what = "kernels compiled" if compiled else "kernels loaded"
    dog.setup_parts[what] = time.perf_counter() - t0
