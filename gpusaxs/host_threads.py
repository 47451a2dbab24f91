"""Element-wise NumPy work on large arrays split over the host's cores.

A map's results are 10^7 values per stack (16 frames of 1000 x 1000 cells): one NumPy
expression over them runs on one core at its memory rate (~5 GB/s here), longer than the
engine's whole pass. NumPy releases the GIL inside its loops, so slices of the arrays handed to
a few threads run at once. Small arrays (a curve's thousands of bins) stay on the caller's
thread: a thread hand-off would cost more than it saves.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

__all__ = ["PARALLEL_VALUES", "over_slices"]

#: values per slice, and below twice this the caller's thread does all (8 MB of float64)
PARALLEL_VALUES = 1 << 20
_pool: list[ThreadPoolExecutor] = []
_lock = threading.Lock()


def _executor() -> ThreadPoolExecutor:
    with _lock:
        if not _pool:
            affinity = getattr(os, "sched_getaffinity", None)  # Linux; elsewhere all CPUs
            cores = len(affinity(0)) if affinity is not None else (os.cpu_count() or 1)
            workers = max(1, min(8, cores))
            _pool.append(ThreadPoolExecutor(workers, thread_name_prefix="gpusaxs-host"))
        return _pool[0]


def over_slices(work: Callable[[slice], None], n: int) -> None:
    """Call ``work(s)`` for slices ``s`` covering ``range(n)``: all at once for small ``n``,
    else in pieces of PARALLEL_VALUES on the host threads. ``work`` writes only its slice."""
    if n < 2 * PARALLEL_VALUES:
        work(slice(0, n))
        return
    pieces = [slice(i, min(n, i + PARALLEL_VALUES)) for i in range(0, n, PARALLEL_VALUES)]
    for done in _executor().map(work, pieces):
        del done  # map re-raises a piece's exception here
