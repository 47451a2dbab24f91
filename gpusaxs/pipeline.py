"""Frame pipeline: image files in, one curve file per frame out, stages overlapped.

``FramePipeline`` runs three stages in threads so the integration engine never waits on a
single file:

* a pool of reader threads decodes images (``gpusaxs.io.images.read_image``);
* one integration thread takes whatever frames are ready (up to ``batch_size``) and makes one
  ``integrate_batch_error`` call per batch;
* one writer thread writes each curve atomically (temporary name + rename) and reports it.

Every submitted frame ends in exactly one of ``processed``, ``failed`` (``on_error`` is called
with the exception) or ``dropped`` (``close(abort=True)`` before it was read); nothing is lost
silently.  Used by the ``saxsdog`` tool and the network server.
"""

import collections
import queue
import threading
import time
import traceback
from pathlib import Path

import numpy as np

from gpusaxs.engine_contract import error_model, mean_intensity
from gpusaxs.errors import ImageReadError
from gpusaxs.gpu_decode import device_decode_enabled
from gpusaxs.io.chi import write_chi
from gpusaxs.io.direct_chunks import ChunkSources
from gpusaxs.io.images import read_image

from .frame_batches import FrameLedger, gather, integrate_once, sums_batch_call

__all__ = ["curve_path", "FramePipeline", "write_curve"]

_STOP = object()


def curve_path(image_path, in_root, out_dir=None, inplace=False, suffix=".chi"):
    """Output path of the curve of ``image_path``.

    In place: beside the image.  Otherwise the tree below ``in_root`` is mirrored into
    ``out_dir`` (default ``./out``); an image outside ``in_root`` goes to ``out_dir`` itself.
    """
    if hasattr(image_path, "curve_name"):  # a frame of a stack: <name>_<index>.chi
        name = image_path.curve_name(suffix)
        image_path = Path(image_path.file)
    else:
        image_path = Path(image_path)
        name = image_path.with_suffix(suffix).name
    if inplace:
        return image_path.parent / name
    out_dir = Path("out" if out_dir is None else out_dir)
    try:
        rel = image_path.resolve().parent.relative_to(Path(in_root).resolve())
    except ValueError:
        rel = Path()
    return out_dir / rel / name


def write_curve(image_path, out_path, q, intensity, error, calibration_key=None):
    """Default writer: a .chi file (q, I[, err]) titled with the image name (and the
    calibration key), written atomically."""
    Path(out_path).parent.mkdir(parents=True, exist_ok=True)
    write_chi(
        out_path,
        q,
        intensity,
        error=error,
        title=Path(image_path).name,
        calibration_key=calibration_key,
    )


class _Item:
    __slots__ = ("image_path", "out_path", "image", "chunk")

    def __init__(self, image_path, out_path):
        self.image_path = image_path
        self.out_path = out_path
        self.image = None
        self.chunk = None  # (DirectChunkReader, stored bytes) on the compressed path


class FramePipeline:
    """Read, integrate (batched) and write frames in overlapping threads.

    integrator: an ``Integrator`` (``integrate_batch_error``, ``integrate_batch``, ``q``).
    batch_size: most frames per engine call; the engine takes what is ready, never waits to
    fill a batch.  read_threads: reader pool size.  errors: write the error column (Poisson
    error) and use ``integrate_batch_error``; else ``integrate_batch`` and two columns.
    writer: ``writer(image_path, out_path, q, I, err)`` replacing the .chi writer
    (``err`` is None when ``errors=False``); it should write atomically.
    on_done(image_path, out_path, q, I) / on_error(image_path, exc): called from the
    pipeline's threads after a frame is written / has failed.
    overlap: queue batches on the GPU engine without waiting (``DeviceEngine.submit``:
    pinned staging, copies of batch k+1 overlapped with the integration of batch k); default
    True when the integrator's engine is a DeviceEngine on CuPy (a plain Integrator: not an
    averaging or grazing-incidence one).  Results still leave in order
    and as soon as no further frame is ready.
    compressed: frames of EIGER HDF5 files stored as bitshuffle-LZ4 chunks are read as stored
    and decoded on the device (``DeviceEngine.sums_compressed``, issue 26); default: on a CuPy
    DeviceEngine when $GPUSAXS_DEVICE_DECODE is 1. Opt-in until the device check has run the
    decoder on a real GPU (docs/gpu.md); other frames take the host path.
    """

    def __init__(
        self,
        integrator,
        *,
        batch_size=16,
        read_threads=2,
        on_done=None,
        on_error=None,
        errors=True,
        writer=None,
        overlap=None,
        compressed=None,
    ):
        if batch_size < 1 or read_threads < 1:
            raise ValueError("batch_size and read_threads must be >= 1")
        self.integrator = integrator
        self.batch_size = int(batch_size)
        self.errors = bool(errors)
        self.on_done = on_done
        self.on_error = on_error
        key = getattr(integrator, "matrix_key", None)
        self.writer = writer or (lambda *a: write_curve(*a, calibration_key=key))
        self.shape = _image_shape(integrator)
        engine = getattr(integrator, "engine", None)
        # by default the engine's own calls only for a plain Integrator: an averaging or
        # grazing-incidence integrator's rows are not the engine's sums alone
        plain = sums_batch_call(integrator)
        if overlap is None:
            on_device = getattr(engine, "name", None) == "cupy"
            overlap = plain and on_device and hasattr(engine, "submit")
        self._async_engine = engine if overlap else None
        if compressed is None and not plain:
            compressed = False
        compressed = device_decode_enabled(engine, compressed)  # opt-in (docs/gpu.md)
        self._engine = engine
        self._chunks = ChunkSources() if compressed else None
        self._q = np.asarray(integrator.q)

        self._ledger = FrameLedger()  # every frame ends once: processed, failed or dropped
        self._cond = self._ledger.cond  # one lock for the ledger and the read queue
        self._closed = False
        self._abort = False
        self._timings = {"read": 0.0, "integrate": 0.0, "write": 0.0}

        self._stack_buffer = None  # owned by the integration thread
        self._read_q = collections.deque()  # guarded by _cond
        # bounded: at most ~2 batches of decoded frames wait for the engine
        self._ready_q = queue.Queue(maxsize=2 * self.batch_size)
        self._write_q = queue.Queue(maxsize=4)
        self._readers = [
            threading.Thread(target=self._read_loop, name=f"pipeline-read-{i}", daemon=True)
            for i in range(int(read_threads))
        ]
        self._integ = threading.Thread(
            target=self._integrate_loop, name="pipeline-integrate", daemon=True
        )
        self._writer = threading.Thread(target=self._write_loop, name="pipeline-write", daemon=True)
        self._readers_alive = len(self._readers)
        for t in self._readers + [self._integ, self._writer]:
            t.start()

    # -- public API --------------------------------------------------------------------------
    def submit(self, image_path, out_path):
        """Queue one frame (thread-safe).  Raises RuntimeError after ``close``."""
        item = _Item(image_path, out_path)
        with self._cond:
            if self._closed:
                raise RuntimeError("FramePipeline is closed")
            self._ledger.submit()
            self._read_q.append(item)
            self._cond.notify_all()

    def wait_idle(self, timeout=None):
        """Block until every submitted frame is done; False if ``timeout`` (s) ran out."""
        return self._ledger.wait_idle(timeout)

    def close(self, abort=False):
        """Stop the pipeline and join its threads; returns the number of dropped frames.

        Without ``abort`` every submitted frame is finished first.  With ``abort`` the frames
        being read or already read are integrated and written; frames not yet started are
        dropped (counted in ``stats["dropped"]``).
        """
        with self._cond:
            if self._closed and not self._threads_alive():
                return self._ledger.counts["dropped"]
            self._closed = True
            if abort:
                self._abort = True
                self._ledger.end("dropped", len(self._read_q))
                self._read_q.clear()
            self._cond.notify_all()
        # readers exit when the read queue is empty and the pipeline is closed; the last one
        # out sends the stop marker down the chain (integrate -> write).
        for t in self._readers:
            t.join()
        self._integ.join()
        self._writer.join()
        if self._chunks is not None:
            self._chunks.close()
        return self._ledger.counts["dropped"]

    @property
    def stats(self):
        """Counters and cumulative stage times (seconds) so far."""
        with self._cond:
            ledger, elapsed = self._ledger, 0.0
            if ledger.first is not None and ledger.last is not None:
                elapsed = ledger.last - ledger.first
            processed = ledger.counts["processed"]
            return {
                "processed": processed,
                "failed": ledger.counts["failed"],
                "queued": ledger.pending,
                "dropped": ledger.counts["dropped"],
                "frames_per_sec": processed / elapsed if elapsed > 0 else 0.0,
                "elapsed": elapsed,
                "timings": dict(self._timings),
            }

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        self.close(abort=exc_type is not None)

    # -- internals ---------------------------------------------------------------------------
    def _threads_alive(self):
        return any(t.is_alive() for t in self._readers + [self._integ, self._writer])

    def _finish(self, n_done=0, n_failed=0, seconds=None, stage=None):
        with self._cond:
            if stage is not None:
                self._timings[stage] += seconds
            if n_done:
                self._ledger.end("processed", n_done)
            if n_failed:
                self._ledger.end("failed", n_failed)

    def _fail(self, item, exc):
        # callback first: when wait_idle() returns, every callback has run
        self._call(self.on_error, item.image_path, exc)
        self._finish(n_failed=1)

    @staticmethod
    def _call(callback, *args):
        if callback is None:
            return
        try:
            callback(*args)
        except Exception:  # a broken callback must not stop the pipeline
            traceback.print_exc()

    def _read_loop(self):
        while True:
            with self._cond:
                while not self._read_q and not self._closed:
                    self._cond.wait()
                if not self._read_q:  # closed and drained
                    self._readers_alive -= 1
                    last = self._readers_alive == 0
                    break
                item = self._read_q.popleft()
            t0 = time.perf_counter()
            try:
                if self._chunks is not None:  # stored bslz4 chunk, decoded on the device
                    item.chunk = self._chunks.read(item.image_path, self.shape)
                if item.chunk is None:
                    item.image = read_image(item.image_path, shape=self.shape)
            except Exception as exc:  # ImageReadError and anything unexpected: per frame
                self._fail(item, exc)
                continue
            finally:
                with self._cond:
                    self._timings["read"] += time.perf_counter() - t0
            self._ready_q.put(item)
        if last:
            self._ready_q.put(_STOP)

    def _integrate_loop(self):
        stop = False
        inflight = collections.deque()  # batches queued on the GPU engine, oldest first
        while not stop:
            if inflight and self._ready_q.empty():
                while inflight:  # nothing else ready: hand out what the device has
                    self._collect(inflight.popleft())
            first = self._ready_q.get()
            if first is _STOP:
                break
            batch, left = gather(first, self._ready_q, self.batch_size, lambda x: x is not _STOP)
            stop = left is _STOP
            packed = [it for it in batch if it.chunk is not None]
            if packed:
                batch = [it for it in batch if it.chunk is None]
                while inflight:  # keep the order
                    self._collect(inflight.popleft())
                self._integrate_compressed(packed)
                if not batch:
                    continue
            if self._async_engine is not None:
                self._submit_async(batch, inflight)
            else:
                self._integrate(batch)
        while inflight:
            self._collect(inflight.popleft())
        self._write_q.put(_STOP)

    def _submit_async(self, batch, inflight):
        """Queue a batch on the GPU engine; collect the oldest when every stream is busy."""
        engine = self._async_engine
        t0 = time.perf_counter()
        try:
            engine.submit([it.image for it in batch], errors="poisson" if self.errors else False)
        except Exception:
            while inflight:  # keep the order: finish what is queued, then retry synchronously
                self._collect(inflight.popleft())
            self._integrate(batch)
            return
        with self._cond:
            self._timings["integrate"] += time.perf_counter() - t0
        inflight.append(batch)
        if len(inflight) >= max(1, int(getattr(engine, "n_streams", 2))):
            self._collect(inflight.popleft())

    def _collect(self, batch):
        """Wait for the oldest queued batch, turn its sums into curves, pass them on."""
        t0 = time.perf_counter()
        try:
            sums = self._async_engine.collect()
            if self.errors:
                intensity, _, err = error_model(sums)
            else:
                intensity, err = mean_intensity(sums), None
        except Exception:
            self._integrate(batch)  # synchronous retry, isolates a bad frame
            return
        self._emit(batch, intensity, err, t0)

    def _integrate(self, batch):
        t0 = time.perf_counter()
        try:
            stack = self._stack([it.image for it in batch])
        except Exception as exc:  # frames that do not stack: each on its own
            intensity, err, failed = None, None, dict.fromkeys(range(len(batch)), exc)
            if len(batch) > 1:
                for it in batch:
                    self._integrate([it])
                return
        else:
            intensity, err, failed = integrate_once(stack, self._integrate_stack)
        for k, why in failed.items():  # a bad frame fails alone (gpusaxs.frame_batches)
            batch[k].image = None
            self._fail(batch[k], why)
        if len(failed) == len(batch):
            with self._cond:
                self._timings["integrate"] += time.perf_counter() - t0
            return
        if failed:
            good = [k for k in range(len(batch)) if k not in failed]
            batch = [batch[k] for k in good]
            intensity = intensity[good]
            err = None if err is None else err[good]
        self._emit(batch, intensity, err, t0)

    def _integrate_compressed(self, items):
        """Frames read as stored chunks: decoded and integrated on the device, per file; a
        refused chunk fails its frame alone; a failing call retries the frames on the host."""
        groups = {}
        for it in items:
            groups.setdefault(id(it.chunk[0]), []).append(it)
        errors = "poisson" if self.errors else False
        for group in groups.values():
            t0 = time.perf_counter()
            reader = group[0].chunk[0]
            try:
                res = self._engine.sums_compressed(
                    [it.chunk[1] for it in group],
                    reader.shape,
                    reader.dtype,
                    errors,
                    list(range(len(group))),
                    reader.mask_index,
                )
                if self.errors:
                    intensity, _, err = error_model(res.sums)
                else:
                    intensity, err = mean_intensity(res.sums), None
            except Exception:
                for it in group:  # the host path, frame by frame
                    it.chunk = None
                    try:
                        it.image = read_image(it.image_path, shape=self.shape)
                    except Exception as exc:
                        self._fail(it, exc)
                        continue
                    self._integrate([it])
                continue
            for rec in res.errors:
                it = group[rec["id"]]
                it.chunk = None
                self._fail(it, ImageReadError(str(it.image_path), f"bslz4: {rec['reason']}"))
            good = [group[k] for k in res.ids]
            for it in good:
                it.chunk = None
            if good:
                self._emit(good, intensity, err, t0)

    def _integrate_stack(self, stack):
        """(intensity, Poisson error or None) of a stack, (B, n_bins) each."""
        if self.errors:
            intensity, _, err = self.integrator.integrate_batch_error(stack, std=False)
            return intensity, err
        return self.integrator.integrate_batch(stack), None

    def _emit(self, batch, intensity, err, t0):
        """Count the integration time since t0, free the frames, pass the curves on."""
        with self._cond:
            self._timings["integrate"] += time.perf_counter() - t0
        for it in batch:
            it.image = None
        self._write_q.put((batch, intensity, err))

    def _stack(self, images):
        """(B, H, W) stack of the batch's frames.

        A single frame is a view; several are copied into one reused buffer per dtype (the
        integration thread owns it), so no batch pays for a fresh 64 MB allocation.
        """
        if len(images) == 1:
            return images[0][np.newaxis]
        first = images[0]
        if any(im.dtype != first.dtype or im.shape != first.shape for im in images):
            return np.stack(images)
        buf = self._stack_buffer
        if (
            buf is None
            or buf.dtype != first.dtype
            or buf.shape[1:] != first.shape
            or buf.shape[0] < len(images)
        ):
            buf = self._stack_buffer = np.empty((self.batch_size,) + first.shape, first.dtype)
        out = buf[: len(images)]
        np.stack(images, out=out)
        return out

    def _write_loop(self):
        while True:
            job = self._write_q.get()
            if job is _STOP:
                break
            batch, intensity, err = job
            for k, it in enumerate(batch):
                e = None if err is None else err[k]
                t0 = time.perf_counter()
                try:
                    if it.out_path is not None:
                        self.writer(it.image_path, it.out_path, self._q, intensity[k], e)
                except Exception as exc:
                    with self._cond:
                        self._timings["write"] += time.perf_counter() - t0
                    self._fail(it, exc)
                    continue
                seconds = time.perf_counter() - t0
                self._call(self.on_done, it.image_path, it.out_path, self._q, intensity[k])
                self._finish(n_done=1, seconds=seconds, stage="write")


def _image_shape(integrator):
    """(H, W) of the integrator's frames, or None if it does not say."""
    for attr in ("shape", "image_shape"):
        shape = getattr(integrator, attr, None)
        if shape is not None:
            return tuple(int(s) for s in shape)
    cal = getattr(integrator, "cal", None) or getattr(integrator, "calibration", None)
    size = getattr(cal, "imagesize", None)
    if size is not None:
        return tuple(int(s) for s in size)
    return None
