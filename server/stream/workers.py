"""The stream's batch workers: each decodes a whole batch and integrates it on one engine thread.

With the CPU engine, the consumer used to decode each batch on its decode threads and integrate
it on all the engine's threads: both shared the cores, and a parallel kernel waits at its end
for its slower thread, which shares a core with a decoder.  Here each of N workers takes a batch
in turn, decodes its frames one after the other into a stack and integrates that stack on its
own one-thread copy of the engine (:meth:`cpu_fallback.engine.CpuEngine.with_threads`); nothing
waits for another thread.  Batches finish out of order; :class:`OrderedWorkers` gives the
results back in the order the batches came, so the writer sees rows (and a series' start and end)
in order.  docs/streams.md has the measurements.
"""

import copy
import logging
import threading
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor

import numpy as np

from gpusaxs.frame_batches import integrate_once
from gpusaxs.integrator import Integrator

from .codecs import bitshuffle_one_thread
from .gi_series import grazing_stage

log = logging.getLogger("saxsdogserver.stream")

__all__ = [
    "decoded_frames",
    "integrated_rows",
    "OrderedWorkers",
    "StackPool",
    "decode_frame",
    "one_thread_integrate",
    "runs_on_workers",
]


class StackPool:
    """Recycled (B, H, W) stacks per dtype, so that batches do not allocate."""

    def __init__(self, batch, shape):
        self.batch, self.shape = batch, tuple(shape)
        self._free = {}
        self._lock = threading.Lock()

    def take(self, dtype):
        dtype = np.dtype(dtype)
        with self._lock:
            lst = self._free.get(dtype.str)
            if lst:
                return lst.pop()
        return np.empty((self.batch,) + self.shape, dtype=dtype)

    def give(self, stack):
        with self._lock:
            lst = self._free.setdefault(stack.dtype.str, [])
            if len(lst) < 4:
                lst.append(stack)


def decode_frame(msg, stack, k, shape):
    """Decode image message ``msg`` into ``stack[k]``; None, or why it cannot be (a str)."""
    p = msg.payload
    if tuple(p.shape) != shape:
        return (
            f"image of {p.shape[0]} x {p.shape[1]} pixels, the calibration needs "
            f"{shape[0]} x {shape[1]}"
        )
    if np.dtype(p.dtype).kind not in "uif":
        return f"unsupported pixel dtype {np.dtype(p.dtype)}"
    try:
        view = stack[k]
        frame = p.decode(out=view)
        if frame is not view:  # not decoded in place
            view[...] = frame
    except (ValueError, TypeError, OverflowError, MemoryError) as exc:
        return f"cannot decode ({p.compression}): {exc}"
    return None


def decoded_frames(book, series_id, batch, stack, results, pool):
    """(stack, n, ids) of the frames that decoded (moved to the front), each other frame an
    error record; None if none did (the stack given back)."""
    good = [k for k, r in enumerate(results) if r is None]
    for k, r in enumerate(results):
        if r is not None:
            book.error(series_id, batch[k].image_id, r, "decode")
    if not good:
        pool.give(stack)
        return None
    if len(good) != len(batch):  # compact the good frames to the front
        for j, k in enumerate(good):
            if j != k:
                stack[j] = stack[k]
    return stack, len(good), np.array([batch[k].image_id for k in good], dtype=np.int64)


def integrated_rows(book, sid, stack, n, ids, pool, integrate):
    """The rows item of the n frames of ``stack`` (None if none integrated), each frame that
    fails alone an error record; the stack given back."""
    try:
        intensity, err, failed = integrate_once(stack[:n], integrate)
    except BaseException as exc:  # the stage dies: its frames still get a record
        for i in ids:
            book.error(sid, int(i), f"integrator stage died: {exc!r}", "failed")
        raise
    finally:
        pool.give(stack)
    for k, why in failed.items():  # one bad frame fails alone
        log.error("integration of image %s failed: %s", int(ids[k]), why)
        book.error(sid, int(ids[k]), f"integration failed: {why}", "integrate")
    if failed:
        good = np.array([k for k in range(n) if k not in failed], dtype=np.int64)
        if intensity is None or not len(good):
            return None
        intensity, ids = intensity[good], ids[good]
        err = None if err is None else err[good]
    return ("rows", sid, intensity, err, ids)


def runs_on_workers(integ):
    """True if ``integ``'s batches can go to the workers: a plain Integrator (not an averaging
    or grazing-incidence one, its method not replaced) on an engine that can make one-thread
    copies (the CPU engine)."""
    return (
        getattr(integ.integrate_batch_error, "__func__", None) is Integrator.integrate_batch_error
        and grazing_stage(integ) is None
        and hasattr(integ.engine, "with_threads")
    )


_local = threading.local()


def one_thread_integrate(integ):
    """``frames -> (intensity, err)`` as ``integ.integrate_batch_error(frames, std=False)``, on
    this thread's one-thread copy of ``integ``'s engine (made at its first use here)."""
    engines = getattr(_local, "engines", None)
    if engines is None:
        engines = _local.engines = {}
    engine = integ.engine
    mine = engines.get(id(engine))
    if mine is None or mine[0] is not engine:
        if len(engines) >= 4:  # a few calibrations at most: forget the oldest
            engines.pop(next(iter(engines)))
        view = copy.copy(integ)  # the same Integrator, its engine one thread of its own
        view.engine = engine.with_threads(1)
        mine = engines[id(engine)] = (engine, view)

    def integrate(frames):
        intensity, _, err = mine[1].integrate_batch_error(frames, std=False)
        return intensity, err

    return integrate


class OrderedWorkers:
    """``n`` worker threads; results given back in the order the work was submitted.

    :meth:`submit` runs ``fn(*args)`` on a worker, :meth:`done` queues a value that needs no
    work (a series' start or end); :meth:`ready` yields the results whose turn has come, and
    waits for the oldest while more than ``n + 1`` are in flight; :meth:`drain` waits for all.
    A result that raised raises there (its frames already have their records); :meth:`abandon`
    gives what was never collected after the collector died. One thread submits and collects;
    it learns that a result is ready from ``on_done`` (the consumer puts a wake-up item in its
    own input queue).
    """

    def __init__(self, n, name="stream-worker"):
        self.n = max(1, int(n))
        self._pool = ThreadPoolExecutor(
            self.n,
            thread_name_prefix=name,
            initializer=bitshuffle_one_thread,  # the workers are the parallelism
        )
        self._pending = deque()

    def submit(self, fn, *args, on_done=None):
        """Run ``fn(*args)`` on a worker; ``on_done()`` is called (on the worker) when it ends."""
        future = self._pool.submit(fn, *args)
        if on_done is not None:
            future.add_done_callback(lambda _: on_done())
        self._pending.append(future)

    def done(self, value):
        future = Future()
        future.set_result(value)
        self._pending.append(future)

    def ready(self):
        while self._pending and (self._pending[0].done() or len(self._pending) > self.n + 1):
            yield self._pending.popleft().result()

    def drain(self):
        while self._pending:
            yield self._pending.popleft().result()

    def abandon(self):
        """After the collecting thread died: wait for what is in flight and yield each result
        that was never collected (None for one that raised), so its frames can be recorded."""
        while self._pending:
            future = self._pending.popleft()
            yield None if future.exception() is not None else future.result()

    def shutdown(self):
        self._pool.shutdown(wait=True)
