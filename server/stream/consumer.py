"""StreamConsumer: receive a detector stream, decode, integrate and write one NeXus file per series.

Four stages, each a thread, joined by bounded queues so that receiving, decoding, integrating
and writing overlap::

    receiver ──(buffer: buffer_frames)──> assembler + decode pool ──(2 batches)──> integrator
        ──(4 batches)──> writer

* receiver: the ZeroMQ PULL socket (RCVHWM ``hwm``); parses each message's envelope only
  (CBOR/JSON, the payload stays compressed), accounts for every image id in the
  :class:`~.series.SeriesBook` (duplicates, malformed messages -> error records) and queues it.
  When the buffer is full: ``policy="block"`` waits (ZeroMQ then holds frames up to the
  high-water marks, and a full detector-side buffer is the detector's to report), ``"drop"``
  drops the frame and writes a ``dropped`` error record naming its id.  Start and end messages
  are never dropped.
* assembler: checks each series' start message against the calibration (image size, pixel
  size; a disagreeing series is refused with an error record), groups consecutive frames of a
  series into batches and decodes them on ``decode_threads`` threads (bitshuffle and LZ4 release
  the GIL) straight into a recycled (B, H, W) stack of the frames' own dtype.
* integrator: ``Integrator.integrate_batch_error`` on the stack (mean intensity and Poisson
  error per bin).  With the CPU engine and a plain Integrator (``batch_workers``, the default)
  the assembler does not decode: each of ``decode_threads`` workers (:mod:`.workers`) takes a
  whole batch, decodes it and integrates it on its own one-thread engine, and the integrator
  stage gives their rows to the writer in the order the batches came.
* writer (:class:`~.writer.SeriesWriter`): :class:`gpusaxs.io.nexus.NXazintWriter` in live
  mode, ``series_<series_id>.nxs`` in ``out_dir`` (rows appended as they come, flushed at least
  every second); ``.chi`` per image only with ``chi=True``.

Every per-message failure becomes an error record; a stage that dies anyway (a bug) is named in
``info()["failed"]`` and ``on_fatal`` is called (the server stops with that error).  A series
with no message for ``idle_timeout_s`` is ended as if its end message had come (its missing ids
reported).  Files are written only inside the output folder (:mod:`.files`).
"""

import logging
import os
import queue
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from gpusaxs.frame_batches import NOTHING, gather

from . import v1, v2
from .codecs import bitshuffle_one_thread
from .device_decode import DeviceFrames, StreamDeviceDecode
from .files import output_root
from .gi_series import grazing_stage
from .messages import End, Image, MalformedMessage, Start, check_start
from .resume import latest_file, written_ids
from .series import SeriesBook
from .workers import (
    OrderedWorkers,
    StackPool,
    decode_frame,
    decoded_frames,
    integrated_rows,
    one_thread_integrate,
    runs_on_workers,
)
from .writer import SeriesWriter

log = logging.getLogger("saxsdogserver.stream")

_STOP = ("stop",)
_WAKE = ("wake",)  # a batch worker finished (.workers)
#: default inactivity timeout (s): a receiving series with no message for this long is ended
IDLE_TIMEOUT_S = 300.0


class StreamConsumer:
    """Consume a DECTRIS Stream V2 or V1 and integrate every image of every series.

    Parameters
    ----------
    url : "tcp://HOST:PORT" of the detector's PUSH socket (we connect a PULL socket).
    out_dir : folder of the NeXus files and error logs.
    version : 2 (CBOR, default) or 1 (multipart JSON).
    integrator : an Integrator, a callable returning one, or None (set later with
        :meth:`set_integrator`, e.g. by ``saxsleash new``); a series starting without one is
        refused.
    batch_size : frames per integration call.
    decode_threads : threads decoding frames.
    buffer_frames : frames waiting between receiver and decoder (the bounded buffer).
    hwm : ZeroMQ receive high-water mark (messages; 64: frames wait in ``buffer_frames``, a
        deeper ZeroMQ queue only allocates and frees more, docs/streams.md).
    policy : "block" (default: backpressure, nothing dropped) or "drop" (drop frames that do
        not fit the buffer, each with an error record).
    chi : also write ``series_<id>/image_<id>.chi`` per image.
    context : a zmq.Context to use (default: the process' instance).
    idle_timeout_s : seconds without a message after which a receiving series is ended.
    resume : continue a series whose start was not seen when its file is in ``out_dir``
        (with a fixed calibration, after a restart).
    on_fatal : called with a one-line reason when a stage dies.
    device_decode : bslz4 frames decoded on the device (:mod:`.device_decode`); None: on a
        CuPy DeviceEngine when $GPUSAXS_DEVICE_DECODE is 1 (the pipeline's rule).
    batch_workers : on the CPU engine, decode and integrate each batch on one of
        ``decode_threads`` workers with a one-thread engine (:mod:`.workers`); False: decode on
        the decode threads, integrate on all the engine's threads.
    """

    def __init__(
        self,
        url,
        out_dir,
        version=2,
        integrator=None,
        batch_size=16,
        decode_threads=2,
        buffer_frames=256,
        hwm=64,
        policy="block",
        chi=False,
        context=None,
        idle_timeout_s=IDLE_TIMEOUT_S,
        resume=False,
        on_fatal=None,
        device_decode=None,
        batch_workers=True,
    ):
        if version not in (1, 2):
            raise ValueError(f"stream version must be 1 or 2, not {version!r}")
        if policy not in ("block", "drop"):
            raise ValueError(f"policy must be 'block' or 'drop', not {policy!r}")
        self.url = url
        self.out_dir = output_root(out_dir)
        self.idle_timeout_s = float(idle_timeout_s)
        self.resume = bool(resume)
        self.on_fatal = on_fatal
        self.failed = {}  # stage name -> reason, for a stage that died
        self.version = version
        self.batch_size = max(1, int(batch_size))
        self.decode_threads = max(1, int(decode_threads))
        self.policy = policy
        self.hwm = int(hwm)
        self.chi = bool(chi)
        self.book = SeriesBook(self.out_dir)
        self._writer = SeriesWriter(self.out_dir, url, self.book, chi=self.chi)
        self._integ_lock = threading.Lock()
        self._key = None
        self._integ_source = integrator
        self._integ = (
            None if callable(integrator) and not hasattr(integrator, "integrate") else integrator
        )
        self._ctx = context
        self._buffer = queue.Queue(maxsize=max(1, int(buffer_frames)))
        self._batches = queue.Queue(maxsize=2)
        self._rows = queue.Queue(maxsize=4)
        self._stop = threading.Event()
        self._threads = []
        self._pool = None
        self._workers = None
        self.batch_workers = bool(batch_workers)
        self.connected = threading.Event()
        self._device = StreamDeviceDecode(device_decode)

    # -- calibration ----------------------------------------------------------------------------
    def set_integrator(self, integrator, key=None):
        """Use this Integrator (or a callable returning one) for the series that start from now.

        ``key``: its calibration key (calibration + mask, see ``matrix_key``), stored in the
        NeXus files; default: derived from the integrator.
        """
        with self._integ_lock:
            self._key = key
            self._integ_source = integrator
            self._integ = integrator if hasattr(integrator, "integrate") else None

    def _integrator(self):
        with self._integ_lock:
            if self._integ is None and self._integ_source is not None:
                self._integ = self._integ_source()
            return self._integ, self._key

    # -- life cycle -----------------------------------------------------------------------------
    def start(self):
        self._pool = ThreadPoolExecutor(
            self.decode_threads,
            thread_name_prefix="stream-decode",
            initializer=bitshuffle_one_thread,  # our threads are the parallelism
        )
        if self.batch_workers:
            self._workers = OrderedWorkers(self.decode_threads)
        for name, fn in (
            ("receiver", self._receive_loop),
            ("assembler", self._assemble_loop),
            ("integrator", self._integrate_loop),
            ("writer", self._write_loop),
        ):
            t = threading.Thread(target=self._guard(fn), name=f"stream-{name}", daemon=True)
            t.start()
            self._threads.append(t)
        return self

    def stop(self, timeout=60.0):
        """Stop receiving; frames already received are integrated and written; files closed."""
        self._stop.set()
        deadline = time.monotonic() + timeout
        for t in self._threads:
            t.join(max(0.0, deadline - time.monotonic()))
        if self._pool is not None:
            self._pool.shutdown(wait=True)
        if self._workers is not None:
            self._workers.shutdown()
        return not any(t.is_alive() for t in self._threads)

    def _guard(self, fn):
        def run():
            try:
                fn()
            except BaseException as exc:  # a bug must not hang the others: report, stop
                reason = f"stream stage {fn.__name__} died: {type(exc).__name__}: {exc}"[:300]
                log.exception(reason)
                self.failed[fn.__name__] = reason
                if self.on_fatal is not None:
                    self.on_fatal(reason)
                self._stop.set()
                self._drain(fn.__name__, reason)

        return run

    def _drain(self, stage, reason):
        """After ``stage`` died: take what reaches its input queue (one error record per frame,
        so the stages before it never block) and pass the stop on once it comes."""
        links = {
            "_assemble_loop": (self._buffer, self._batches),
            "_integrate_loop": (self._batches, self._rows),
            "_write_loop": (self._rows, None),
        }
        if stage not in links:  # the receiver: its own finally sent the stop down
            return
        if stage == "_integrate_loop" and self._workers is not None:  # rows never passed on
            for out in self._workers.abandon():
                if isinstance(out, tuple) and out[0] == "rows":
                    for i in out[-1]:
                        self.book.error(out[1], int(i), reason, "failed")
        inbox, outbox = links[stage]
        while True:
            item = inbox.get()
            if item is _STOP:
                if outbox is not None:
                    outbox.put(_STOP)
                return
            if isinstance(item, Image):
                ids = [(item.series_id, item.image_id)]
            elif isinstance(item, tuple) and item[0] == "raw":
                ids = [(item[1], m.image_id) for m in item[2]]
            elif isinstance(item, tuple) and item[0] in ("batch", "rows"):
                ids = [(item[1], int(i)) for i in item[-2 if item[0] == "batch" else -1]]
            else:
                ids = []
            for sid, iid in ids:
                self.book.error(sid, iid, reason, "failed")

    def info(self):
        """The ``streams`` part of ``saxsleash stat``."""
        d = self.book.info()
        d.update(
            {
                "detector": self.url,
                "version": self.version,
                "policy": self.policy,
                "buffered": self._buffer.qsize(),
                "buffer size": self._buffer.maxsize,
                "output": self.out_dir,
                "idle timeout s": self.idle_timeout_s,
                "failed": dict(self.failed),
                "bslz4 decode": self._device.path,
            }
        )
        return d

    # -- stage 1: receiver ----------------------------------------------------------------------
    def _put_control(self, item):
        while True:
            try:
                self._buffer.put(item, timeout=0.2)
                return
            except queue.Full:
                if self._stop.is_set() and item is not _STOP:
                    if isinstance(item, Image):
                        self.book.error(
                            item.series_id,
                            item.image_id,
                            "dropped: the server stopped with the buffer full",
                            "dropped",
                        )
                    return

    def _receive_loop(self):
        import zmq

        ctx = self._ctx or zmq.Context.instance()
        sock = ctx.socket(zmq.PULL)
        sock.setsockopt(zmq.RCVHWM, self.hwm)
        sock.setsockopt(zmq.LINGER, 0)
        sock.connect(self.url)
        self.connected.set()
        decode = v2.decode if self.version == 2 else v1.decode
        next_idle = time.monotonic() + 0.5
        try:
            while not self._stop.is_set():
                if time.monotonic() >= next_idle:
                    next_idle = time.monotonic() + 0.5
                    self._end_idle()
                if not sock.poll(100):
                    continue
                while True:
                    try:
                        if self.version == 2:
                            raw = sock.recv(zmq.NOBLOCK, copy=False).buffer
                        else:
                            raw = [f.buffer for f in sock.recv_multipart(zmq.NOBLOCK, copy=False)]
                    except zmq.Again:
                        break
                    self._on_message_safe(decode, raw)
                    if self._stop.is_set() or time.monotonic() >= next_idle:
                        break
        finally:
            sock.close(linger=0)
            self._put_control(_STOP)

    def _end_idle(self):
        """End the series that received nothing for ``idle_timeout_s`` (missing ids reported)."""
        for sid in self.book.idle(self.idle_timeout_s):
            log.warning("series %s: no message for %.0f s, ended", sid, self.idle_timeout_s)
            self.book.end(sid, by=f"inactivity ({self.idle_timeout_s:g} s without a message)")
            self._put_control(End(sid))

    def _on_message_safe(self, decode, raw):
        try:
            self._on_message(decode, raw)
        except Exception as exc:  # noqa: BLE001 - one message never stops the receiver
            log.exception("stream message failed")
            self.book.error(None, None, f"message failed: {type(exc).__name__}: {exc}", "malformed")

    def _resume(self, sid, unique_id):
        """Continue series ``sid`` after a restart if its file is here; True if resumed."""
        if not self.resume or self.book.is_refused(sid) is not None:
            return False
        name = latest_file(self.out_dir, sid)
        if name is None:
            return False
        rows = written_ids(os.path.join(self.out_dir, name))
        self.book.resume(sid, unique_id, name, rows)
        if self.book.is_refused(sid) is None:
            self._put_control(Start(series_id=sid, unique_id=unique_id))
        return True

    def _on_message(self, decode, raw):
        book = self.book
        try:
            msg = decode(raw)
        except MalformedMessage as exc:
            if (
                exc.series_id is not None
                and exc.image_id is not None
                and not book.receive(exc.series_id, exc.image_id)
            ):
                book.error(
                    exc.series_id,
                    exc.image_id,
                    f"duplicate image_id (and malformed: {exc.reason})",
                    "duplicate",
                )
                return
            book.error(exc.series_id, exc.image_id, exc.reason, "malformed")
            log.warning("malformed stream message: %s", exc.reason)
            return
        except Exception as exc:  # noqa: BLE001 - whatever a hostile message triggers: never stop
            book.error(
                None,
                None,
                f"undecodable message: {type(exc).__name__}: {exc}"[:300],
                "malformed",
            )
            return
        if isinstance(msg, Image):
            sid, iid = msg.series_id, msg.image_id
            if not book.is_started(sid):
                self._resume(sid, msg.unique_id)
            if not book.receive(sid, iid):
                book.error(sid, iid, "duplicate image_id: already received", "duplicate")
                return
            if not book.is_started(sid):
                book.error(
                    sid,
                    iid,
                    "no start message for this series (started before the server?)",
                    "no start",
                )
                return
            reason = book.is_refused(sid)
            if reason is not None:
                book.error(sid, iid, f"series refused: {reason}", "refused")
                return
            if self.policy == "drop":
                try:
                    self._buffer.put_nowait(msg)
                except queue.Full:
                    book.error(
                        sid,
                        iid,
                        f"dropped: stream buffer full ({self._buffer.maxsize} frames)",
                        "dropped",
                    )
            else:
                self._put_control(msg)
        elif isinstance(msg, Start):
            book.start(msg.series_id, msg.unique_id, msg.number_of_images)
            if book.is_refused(msg.series_id) is None:
                self._put_control(msg)
        elif isinstance(msg, End):
            book.end(msg.series_id)
            self._put_control(msg)

    # -- stage 2: assembler + decode pool -------------------------------------------------------
    def _assemble_loop(self):
        integs = {}  # series_id -> integrator
        pools = {}  # shape -> StackPool
        pending = None
        while True:
            item = pending if pending is not None else self._buffer.get()
            pending = None
            if item is _STOP:
                self._batches.put(_STOP)
                return
            if isinstance(item, Start):
                integ, key, reason = None, None, None
                try:
                    integ, key = self._integrator()
                except Exception as exc:  # noqa: BLE001 - reported as the series' refusal
                    reason = f"cannot build the integrator: {exc}"
                if integ is None and reason is None:
                    reason = (
                        "no calibration: start the server with --calibration FILE or "
                        "send one with 'saxsleash new'"
                    )
                if reason is None:
                    reason = check_start(item, integ)
                if reason is not None:
                    self.book.refuse(item.series_id, reason)
                    log.warning("series %s refused: %s", item.series_id, reason)
                    integs.pop(item.series_id, None)
                    continue
                integs[item.series_id] = integ
                self._batches.put(("start", item, integ, key))
                continue
            if isinstance(item, End):
                integs.pop(item.series_id, None)
                self._batches.put(("end", item))
                continue
            # an image: gather a batch of the same series and dtype
            integ = integs.get(item.series_id)
            if integ is None:
                why = self.book.is_refused(item.series_id)
                if why is None:
                    why, kind = "image after the series' end message", "after end"
                else:
                    why, kind = f"series refused: {why}", "refused"
                self.book.error(item.series_id, item.image_id, why, kind)
                continue
            dtype = np.dtype(item.payload.dtype)
            batch, left = gather(
                item,
                self._buffer,
                self.batch_size,
                lambda m, sid=item.series_id, dtype=dtype: (
                    isinstance(m, Image)
                    and m.series_id == sid
                    and np.dtype(m.payload.dtype) == dtype
                ),
            )
            pending = None if left is NOTHING else left
            shape = tuple(integ.shape)
            pool = pools.get(shape)
            if pool is None or pool.batch != self.batch_size:
                pool = pools[shape] = StackPool(self.batch_size, shape)
            try:  # frames the device decodes go compressed to the integrator (issue 26)
                batch = self._device.route(item.series_id, integ, batch, self._batches)
                if batch and self._workers is not None and runs_on_workers(integ):
                    self._batches.put(("raw", item.series_id, batch, pool, shape))
                elif batch:
                    self._decode_batch(item.series_id, batch, pool, shape)
            except Exception as exc:  # noqa: BLE001 - a record per frame, never a dead stage
                log.exception("decoding a batch failed")
                for m in batch:
                    self.book.error(m.series_id, m.image_id, f"decode failed: {exc}", "decode")

    def _decode_batch(self, series_id, batch, pool, shape):
        dtype = np.dtype(batch[0].payload.dtype).newbyteorder("=")
        stack = pool.take(dtype)

        def job(k):
            return decode_frame(batch[k], stack, k, shape)

        results = list(self._pool.map(job, range(len(batch))))
        decoded = decoded_frames(self.book, series_id, batch, stack, results, pool)
        if decoded is not None:
            self._batches.put(("batch", series_id, *decoded, pool))

    def _work_batch(self, series_id, integ, batch, pool, shape):
        """On a worker (.workers): decode ``batch`` one frame after the other, integrate it on
        this worker's one-thread engine; the rows item, or None."""
        try:
            stack = pool.take(np.dtype(batch[0].payload.dtype).newbyteorder("="))
            results = [decode_frame(m, stack, k, shape) for k, m in enumerate(batch)]
            decoded = decoded_frames(self.book, series_id, batch, stack, results, pool)
        except BaseException as exc:  # a bug: every frame of the batch gets its record
            for m in batch:
                self.book.error(series_id, m.image_id, f"batch worker died: {exc!r}", "failed")
            raise
        if decoded is None:
            return None
        return integrated_rows(self.book, series_id, *decoded, pool, one_thread_integrate(integ))

    # -- stage 3: integrator --------------------------------------------------------------------
    def _integrate_loop(self):
        integs = {}
        while True:
            item = self._batches.get()
            if item is _STOP:
                for out in self._workers.drain() if self._workers is not None else ():
                    self._emit_now(out)
                self._rows.put(_STOP)
                return
            kind = item[0]
            if kind == "start":
                integs[item[1].series_id] = item[2]
                stage = grazing_stage(item[2])
                if stage is not None:  # the series file's map and cut axes, before its rows
                    try:
                        stage.prime()
                    except Exception as exc:  # noqa: BLE001 - the writer refuses the series
                        log.error("grazing-incidence axes of series %s: %s", item[1].series_id, exc)
                self._emit(item)
            elif kind == "end":
                self._emit(item)
            elif kind == "raw":  # decoded and integrated on a worker, given back in order
                _, sid, batch, pool, shape = item
                args = (self._work_batch, sid, integs[sid], batch, pool, shape)
                self._workers.submit(*args, on_done=self._wake)
                self._emit(None)
            elif kind == "wake":  # a worker finished: pass on what is ready
                self._emit(None)
            else:
                _, sid, stack, n, ids, pool = item
                integ = integs[sid]
                if isinstance(stack, DeviceFrames):  # bslz4 payloads, decoded on the device
                    self._emit(self._device.integrate(integ, stack, ids, self.book, sid))
                    continue

                def integrate(frames, integ=integ):
                    intensity, _, err = integ.integrate_batch_error(frames, std=False)
                    return intensity, err

                self._emit(integrated_rows(self.book, sid, stack, n, ids, pool, integrate))

    def _wake(self):
        """On a worker that finished a batch: wake the integrator stage (if its queue is full,
        it is busy and collects the batch at its next item anyway)."""
        try:
            self._batches.put_nowait(_WAKE)
        except queue.Full:
            pass

    def _emit(self, out):
        """Pass ``out`` (None: nothing) to the writer after what came before it: behind the
        workers' batches still in flight, in the order they came."""
        if self._workers is None:
            self._emit_now(out)
            return
        if out is not None:
            self._workers.done(out)
        for ready in self._workers.ready():
            self._emit_now(ready)

    def _emit_now(self, out):
        if out is not None:
            self._rows.put(out)

    # -- stage 4: writer (.writer.SeriesWriter) ------------------------------------------------
    def _write_loop(self):
        self._writer.run(self._rows, _STOP)
