"""Scale out on a Dask cluster: integrate whole experiments on many workers, CPU or GPU.

Two entry points (``pip install "gpusaxs[dask]"``):

* :func:`integrate_files` sends image files to a ``distributed.Client``: files are grouped
  into tasks of ``frames_per_task`` frames; the integration matrix is built once on the client
  and shipped once to every worker (``client.scatter(..., broadcast=True)``); each worker keeps
  one engine per calibration (the GPU engine on a worker that has a CUDA device, else the CPU
  engine) and writes each ``.chi`` atomically itself, exactly as a local ``saxsdog`` run does.
* :func:`integrate_array` maps the batch integration over a Dask array of frames
  ``(B, H, W)`` and returns a lazy Dask array of curves ``(B, n_bins)``.

Nothing is lost: the scheduler re-runs the tasks of a worker that dies on another one; a task
only writes complete files under their final name (temporary name + rename), so a re-run
rewrites the same bytes and never duplicates a curve.  Every input ends as exactly one curve
or one error record.  ``saxsdog --scheduler ADDRESS`` uses :class:`DaskPipeline`, which has
the interface of :class:`gpusaxs.pipeline.FramePipeline`.
"""

from __future__ import annotations

import logging
import os
import pickle
import threading
import time
import traceback
from pathlib import Path

import numpy as np

from .distributed_decode import chunk_sources, integrate_stored
from .errors import GpusaxsError
from .frame_batches import FrameLedger, integrate_once
from .integrator import Integrator
from .io.chi import write_chi as _write_chi
from .io.frames import FrameRef, frame_sources, read_frame
from .io.hdf5_checks import register_hdf5_filters
from .io.images import read_image
from .matrix_cache import matrix_key, remember_matrix
from .pipeline import curve_path

__all__ = ["DaskPipeline", "connect", "frames_array", "integrate_array", "integrate_files"]

#: frames per task: large enough that the scheduler's ~1 ms per task is < 1 % of the work
#: (a PILATUS 1M frame is ~1.5 ms to read and integrate on one core), small enough that a
#: lost worker costs little and a run of a few thousand frames still spreads over the cluster.
DEFAULT_FRAMES_PER_TASK = 200

# -- worker side ------------------------------------------------------------------------------
_WORKER_INTEGRATORS: dict = {}  # (matrix key, backend, threads) -> Integrator
_WORKER_LOCK = threading.Lock()


def _worker_integrator(calibration, matrix, key, backend, threads):
    """The worker process's Integrator for ``key``: built once from the shipped matrix."""
    ident = (key, backend, threads)
    with _WORKER_LOCK:
        integ = _WORKER_INTEGRATORS.get(ident)
        if integ is None:
            remember_matrix(key, matrix)  # Integrator finds it in the memory cache
            integ = Integrator(calibration, backend=backend, threads=threads)
            _WORKER_INTEGRATORS[ident] = integ
        return integ


def _integrate_task(
    items,
    calibration,
    matrix,
    key,
    *,
    backend="auto",
    threads=None,
    batch_size=16,
    write_chi=True,
    return_curves=False,
    device_decode=None,
):
    """Run on a worker: read, integrate (batches) and write the curves of ``items``.

    items: list of (image path, curve path or None).  Returns one record per item:
    ``(image, curve, exception or None, (I, err) or None)``.  device_decode: frames of EIGER
    masters read as stored chunks and decoded on the device (:mod:`.distributed_decode`);
    None: the worker's rule (CuPy and $GPUSAXS_DEVICE_DECODE=1).
    """
    integ = _worker_integrator(calibration, matrix, key, backend, threads)
    shape = tuple(int(s) for s in integ.shape)
    out = (integ, write_chi, return_curves)
    records = []
    sources = chunk_sources(integ, device_decode)
    try:
        for start in range(0, len(items), batch_size):
            chunk = items[start : start + batch_size]
            if sources is not None:  # stored bslz4 chunks: decoded on the device
                chunk, rows = integrate_stored(integ, chunk, sources, shape)
                records += [_record(out, *row) for row in rows]
            _integrate_host(out, chunk, shape, records)
    finally:
        if sources is not None:
            sources.close()
    return records


def _integrate_host(out, chunk, shape, records):
    """Frames read on the host (read_image), integrated in one batch call per dtype (a stack
    of mixed dtypes would be promoted, and a uint32 frame's invalid pixels, 2**32 - 1, counted
    as counts); a frame that fails fails alone.  Their records appended to ``records``."""
    integ = out[0]
    by_dtype = {}
    for image, curve in chunk:
        try:
            x = read_image(image, shape=shape)
        except Exception as exc:  # one bad file is one error record
            records.append((image, curve, _message(image, exc), None))
            continue
        by_dtype.setdefault(x.dtype.str, []).append((image, curve, x))

    def integrate(stack):
        intensity, _, err = integ.integrate_batch_error(stack, std=False)
        return intensity, err

    for group in by_dtype.values():
        intensity, err, failed = integrate_once(np.stack([g[2] for g in group]), integrate)
        for k, (image, curve, _) in enumerate(group):
            if k in failed:  # one bad frame fails alone (gpusaxs.frame_batches)
                records.append(_record(out, image, curve, failed[k], None, None))
            else:
                records.append(_record(out, image, curve, None, intensity[k], err[k]))


def _record(out, image, curve, error, intensity, err):
    """The task's record of one frame: its curve written (``.chi``) when asked for."""
    integ, write_chi, return_curves = out
    if error is not None:
        return (image, curve, _message(image, error), None)
    try:
        if write_chi and curve is not None:
            Path(curve).parent.mkdir(parents=True, exist_ok=True)
            _write_chi(
                curve,
                integ.q,
                intensity,
                error=err,
                title=Path(image).name,
                calibration_key=getattr(integ, "matrix_key", None),
            )
    except Exception as exc:
        return (image, curve, _message(curve, exc), None)
    return (image, curve, None, (intensity, err) if return_curves else None)


def _message(path, exc):
    """The exception itself when it pickles (the client reports it as a local run does),
    else a GpusaxsError with its text."""
    try:
        pickle.loads(pickle.dumps(exc))
        return exc
    except Exception:
        msg = str(exc)
        return GpusaxsError(msg if str(path) in msg else f"{path}: {msg}")


def _integrate_block(block, calibration, matrix, key, backend, threads):
    """map_blocks body: (b, H, W) frames -> (b, n_bins) mean intensity."""
    register_hdf5_filters()  # an HDF5 block read here needs the bslz4/LZ4 filters
    integ = _worker_integrator(calibration, matrix, key, backend, threads)
    return np.asarray(integ.integrate_batch(np.asarray(block)), dtype=np.float64)


# -- client side ------------------------------------------------------------------------------
def connect(address, *, threads_per_worker=1, silent=False):
    """A ``distributed.Client`` for ``address``: ``tcp://host:8786`` (a running scheduler) or
    ``local:N`` (a ``LocalCluster`` of N worker processes on this machine, loopback only)."""
    try:
        from distributed import Client, LocalCluster
    except ImportError as exc:  # pragma: no cover - the [dask] extra is missing
        raise RuntimeError('--scheduler needs Dask: pip install "gpusaxs[dask]"') from exc
    if address.startswith("local:"):
        try:
            n = int(address.split(":", 1)[1])
        except ValueError:
            raise ValueError(f"--scheduler {address!r}: expected local:N, N workers") from None
        if n < 1:
            raise ValueError(f"--scheduler {address!r}: N must be at least 1")
        cluster = LocalCluster(
            n_workers=n,
            threads_per_worker=threads_per_worker,
            processes=True,
            host="127.0.0.1",
            dashboard_address="127.0.0.1:0",
            silence_logs=logging.ERROR,
        )
        client = Client(cluster)
        client._gpusaxs_cluster = cluster  # closed with the client (see close_client)
        return client
    return Client(address, timeout="30s")


def _quiet_shutdown():
    """Run on a worker of our LocalCluster just before it is closed: its logger no longer
    reports a heartbeat that the closing cut off (distributed logs that race as an ERROR with a
    traceback, which reached saxsdog's output after every curve was written)."""
    logging.getLogger("distributed.worker").setLevel(logging.CRITICAL)


def close_client(client):
    """Close a client from :func:`connect` and the LocalCluster it started, if any."""
    cluster = getattr(client, "_gpusaxs_cluster", None)
    if cluster is not None:  # the work is done: a worker's shutdown races are no news
        try:
            client.run(_quiet_shutdown)
        except Exception:  # noqa: BLE001 - a worker already gone: close all the same
            pass
    client.close()
    if cluster is not None:
        cluster.close()


def dashboard_link(client):
    """The Dask dashboard's address, or None when the cluster has none (no bokeh)."""
    try:
        link = client.dashboard_link
    except Exception:
        return None
    return link or None


class _Shipped:
    """The matrix and calibration, scattered once to every worker."""

    def __init__(self, client, integrator):
        self.key = getattr(integrator, "matrix_key", None) or matrix_key(integrator.calibration)
        self.calibration = client.scatter(integrator.calibration, broadcast=True, hash=False)
        self.matrix = client.scatter(integrator.matrix, broadcast=True, hash=False)


class DaskPipeline:
    """:class:`gpusaxs.pipeline.FramePipeline`'s interface, with the work done on a cluster.

    Submitted frames are grouped into tasks of ``frames_per_task``; ``wait_idle`` and
    ``close`` send the last, partial task.  Workers write the ``.chi`` files (``write_chi``);
    ``client_writer(image, curve, q, I, err)``, when given, runs on the client for every
    integrated frame (for outputs gathered on the client: HDF5, SVG, the live plot).
    ``on_done(image, curve, q, I)`` (I is None unless curves come back) and
    ``on_error(image, exc)`` run on the client.
    """

    def __init__(
        self,
        client,
        integrator,
        *,
        frames_per_task=DEFAULT_FRAMES_PER_TASK,
        batch_size=16,
        write_chi=True,
        client_writer=None,
        on_done=None,
        on_error=None,
        backend="auto",
        threads=None,
    ):
        if frames_per_task < 1:
            raise ValueError("frames_per_task must be >= 1")
        self.client = client
        self.q = np.asarray(integrator.q)
        self.frames_per_task = int(frames_per_task)
        self.on_done, self.on_error, self.client_writer = on_done, on_error, client_writer
        self._task_kw = dict(
            backend=backend,
            threads=threads,
            batch_size=int(batch_size),
            write_chi=write_chi,
            return_curves=client_writer is not None,
        )
        self._shipped = _Shipped(client, integrator)
        self._ledger = FrameLedger()  # every frame ends once: processed, failed or dropped
        self._cond = self._ledger.cond
        self._batch = []
        self._futures = set()
        self._closed = False
        self._aborting = False  # only a cancel of ours drops frames; any other loss fails them
        self.tasks = 0

    # -- FramePipeline interface -----------------------------------------------------------
    def submit(self, image_path, out_path):
        """Queue one frame; a full group is sent to the cluster as one task."""
        with self._cond:
            if self._closed:
                raise RuntimeError("DaskPipeline is closed")
            self._ledger.submit()
            self._batch.append((str(image_path), None if out_path is None else str(out_path)))
            if len(self._batch) >= self.frames_per_task:
                self._send_locked()

    def wait_idle(self, timeout=None):
        """Send the partial task and wait until every frame is done (False on timeout)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            self._send_locked()
            while self._ledger.pending:
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    return False
                self._cond.wait(left)
        return True

    def close(self, abort=False):
        """Finish (or, with ``abort``, cancel the tasks not yet done); returns dropped frames."""
        with self._cond:
            self._closed = True
            if abort:
                self._aborting = True
                self._ledger.end("dropped", len(self._batch))
                self._batch = []
                futures = list(self._futures)
            else:
                futures = []
        if abort and futures:
            self.client.cancel(futures)
        self.wait_idle()
        return self._ledger.counts["dropped"]

    @property
    def stats(self):
        ledger = self._ledger
        with self._cond:
            c, queued = dict(ledger.counts), ledger.pending
            elapsed = (ledger.last - ledger.first) if ledger.first and ledger.last else 0.0
        return {
            "processed": c["processed"],
            "failed": c["failed"],
            "queued": queued,
            "dropped": c["dropped"],
            "elapsed": elapsed,
            "frames_per_sec": c["processed"] / elapsed if elapsed > 0 else 0.0,
            "timings": {"read": 0.0, "integrate": 0.0, "write": 0.0},
            "tasks": self.tasks,
        }

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        self.close(abort=exc_type is not None)

    # -- internals -------------------------------------------------------------------------
    def _send_locked(self):
        if not self._batch:
            return
        items, self._batch = self._batch, []
        s = self._shipped
        fut = self.client.submit(
            _integrate_task, items, s.calibration, s.matrix, s.key, pure=False, **self._task_kw
        )
        self.tasks += 1
        self._futures.add(fut)
        fut.add_done_callback(lambda f, items=items: self._collect(f, items))

    def _collect(self, fut, items):
        """Runs in the client's thread when a task ends: callbacks, then counters."""
        try:
            records = fut.result()
        except BaseException as exc:  # cancelled (abort), lost or failed on every retry
            # a task is also cancelled by the scheduler when a dead worker took the shipped
            # matrix with it: its frames are errors then, not silently dropped
            cancelled = fut.status == "cancelled" and self._aborting
            why = (
                "task lost on the cluster (a worker died with the data it needed)"
                if fut.status == "cancelled"
                else "task failed on the cluster (its worker died or it raised on every retry)"
            )
            if not cancelled:
                for image, _ in items:
                    self._call(self.on_error, Path(image), GpusaxsError(f"{image}: {why}: {exc!r}"))
            self._finish(
                items,
                fut,
                dropped=len(items) if cancelled else 0,
                failed=0 if cancelled else len(items),
            )
            return
        done = failed = 0
        for image, curve, error, curves in records:
            if error is not None:
                failed += 1
                self._call(self.on_error, Path(image), error)
                continue
            intensity, err = curves if curves is not None else (None, None)
            if self.client_writer is not None:
                try:
                    self.client_writer(
                        Path(image), None if curve is None else Path(curve), self.q, intensity, err
                    )
                except Exception as exc:
                    failed += 1
                    self._call(self.on_error, Path(image), exc)
                    continue
            done += 1
            self._call(
                self.on_done, Path(image), None if curve is None else Path(curve), self.q, intensity
            )
        self._finish(items, fut, done=done, failed=failed)

    def _finish(self, items, fut, done=0, failed=0, dropped=0):
        with self._cond:
            self._futures.discard(fut)
            for kind, n in (("processed", done), ("failed", failed), ("dropped", dropped)):
                if n:
                    self._ledger.end(kind, n)

    @staticmethod
    def _call(callback, *args):
        if callback is None:
            return
        try:
            callback(*args)
        except Exception:  # a broken callback must not lose the counters
            traceback.print_exc()


def integrate_files(
    client,
    files,
    calibration,
    *,
    out_dir="out",
    in_root=None,
    frames_per_task=DEFAULT_FRAMES_PER_TASK,
    backend="auto",
    threads=None,
    resume=False,
    on_progress=None,
    **integrator_options,
):
    """Integrate image ``files`` on the cluster of ``client``; one ``.chi`` per file.

    Parameters
    ----------
    client : distributed.Client
    files : iterable of paths of images
    calibration : Calibration, dict or path of a calibration file
    out_dir : folder of the curves; the tree below ``in_root`` (default: the files' common
        folder) is mirrored there, as ``saxsdog -o``.
    frames_per_task : frames per Dask task (default 200).
    backend : the workers' engine, "auto" (GPU where present), "numpy" or "cupy".
    resume : skip files whose curve already exists (``saxsdog -r``).
    on_progress : optional callable(done, failed, total) called on the client.

    Returns
    -------
    dict with ``processed``, ``failed``, ``skipped``, ``errors`` (list of (file, message)),
    ``tasks``, ``seconds`` and ``frames_per_sec``.
    """
    files = [Path(os.path.abspath(f)) for f in files]  # workers have their own cwd
    if out_dir is not None:
        out_dir = os.path.abspath(out_dir)
    if in_root is None:
        in_root = (
            Path(os.path.commonpath([str(f.resolve().parent) for f in files]))
            if files
            else Path(".")
        )
    integ = Integrator(calibration, **integrator_options)
    errors, lock = [], threading.Lock()
    progress = {"done": 0, "failed": 0}

    def tick(failed):
        with lock:
            progress["failed" if failed else "done"] += 1
            d, f = progress["done"], progress["failed"]
        if on_progress is not None:
            on_progress(d, f, total)

    def on_error(image, exc):
        with lock:
            errors.append((str(image), str(exc)))
        tick(True)

    todo, skipped = [], 0
    for f in files:
        out = curve_path(f, in_root, out_dir=out_dir)
        if resume and out.is_file():
            skipped += 1
        else:
            todo.append((f, out))
    total = len(todo)
    t0 = time.perf_counter()
    pipe = DaskPipeline(
        client,
        integ,
        frames_per_task=frames_per_task,
        backend=backend,
        threads=threads,
        on_done=lambda *a: tick(False),
        on_error=on_error,
    )
    with pipe:
        for f, out in todo:
            pipe.submit(f, out)
        pipe.wait_idle()
    seconds = time.perf_counter() - t0
    st = pipe.stats
    return {
        "processed": st["processed"],
        "failed": st["failed"],
        "skipped": skipped,
        "errors": sorted(errors),
        "tasks": pipe.tasks,
        "seconds": seconds,
        "frames_per_sec": st["processed"] / seconds if seconds > 0 else 0.0,
    }


def _read_block(path, start, stop, shape):
    """Run on a worker: frames ``start:stop`` of the stack ``path`` as one (b, H, W) array."""
    sources = frame_sources(path, explicit=True)
    return np.stack([read_frame(src, shape) for src in sources[start:stop]])


def frames_array(path, chunks=64):
    """Lazy ``(B, H, W)`` Dask array of the frames of a stack, read on the workers.

    ``path``: an EIGER/DECTRIS master file (its ``data_NNNNNN`` links followed, bslz4
    decoded, the pixel mask applied as in :func:`gpusaxs.io.frames.read_frame`), any HDF5 file
    or ``file.h5::/dataset``, or a multi-frame EDF/TIFF; ``chunks``: frames per block.  Only
    the path travels in the graph (an open h5py file cannot be sent to a worker).
    """
    import dask
    import dask.array as da

    path = os.path.abspath(path)  # workers have their own working folder
    sources = frame_sources(path, explicit=True)
    if not sources or not isinstance(sources[0], FrameRef):
        raise ValueError(f"{path}: not a stack of frames")
    first = read_frame(sources[0])
    shape = tuple(int(v) for v in first.shape)
    n, step = len(sources), max(1, int(chunks))
    blocks = [
        da.from_delayed(
            dask.delayed(_read_block, pure=True)(str(path), a, min(a + step, n), shape),
            shape=(min(a + step, n) - a, *shape),
            dtype=first.dtype,
        )
        for a in range(0, n, step)
    ]
    return da.concatenate(blocks, axis=0)


def integrate_array(stack, calibration, *, backend="auto", threads=None, **integrator_options):
    """Lazy curves of a Dask array of frames: ``(B, H, W)`` -> ``(B, n_bins)`` float64.

    The matrix is built once here and enters the graph once (one key every block depends on),
    so a cluster ships it once per worker.  Each block of frames is one batch engine call.

    >>> frames = frames_array("master.h5", chunks=64)
    >>> curves = integrate_array(frames, "cal.json")  # nothing computed yet
    >>> curves[:100].compute()
    """
    import dask
    import dask.array as da

    if stack.ndim != 3:
        raise ValueError(f"expected a (B, H, W) Dask array of frames, got shape {stack.shape}")
    integ = Integrator(calibration, backend="numpy", **integrator_options)
    if tuple(stack.shape[1:]) != tuple(integ.shape):
        raise ValueError(
            f"frames of shape {tuple(stack.shape[1:])} do not match the "
            f"calibration's Imagesize {tuple(integ.shape)}"
        )
    key = getattr(integ, "matrix_key", None) or matrix_key(integ.calibration)
    stack = stack.rechunk({1: -1, 2: -1})
    matrix = dask.delayed(integ.matrix, pure=True, name=f"gpusaxs-matrix-{key[:16]}")
    cal = dask.delayed(integ.calibration, pure=True, name=f"gpusaxs-calibration-{key[:16]}")
    n_bins = len(integ.q)
    return da.map_blocks(
        _integrate_block,
        stack,
        cal,
        matrix,
        key,
        backend,
        threads,
        dtype=np.float64,
        drop_axis=2,
        chunks=(stack.chunks[0], (n_bins,)),
        meta=np.empty((0, n_bins), dtype=np.float64),
    )
