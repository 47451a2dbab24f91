"""The server's processing queue: one directory, one integrator, a FramePipeline, bookkeeping.

All work happens off the command loop: ``file_event``/``readdir``/``close``/``abort`` only put a
marker into a FIFO; a dispatcher thread builds the integrator (cached by the server), feeds the
:class:`gpusaxs.pipeline.FramePipeline` (reader threads, batched integration, atomic writes) and
keeps the books.  Every file event for the queue's directory ends in exactly one of

* a curve (``pics``), written atomically by the pipeline,
* an error record (``errors``: unreadable image, vanished file, ...; reported by stat/plot),
* an error record too for an image whose curve would be another image's (same stem in the
  same folder: ``s1.tif`` + ``s1.edf``; the first one seen owns the curve),
* skipped: the curve exists, is newer than the image and was made with the queue's calibration
  key (restart-safe ``readdir``; a curve with another key is redone, counted in ``redone``), or
  the same version of the file is already queued (duplicate events),
* dropped: ``abort`` (or shutdown) came before the frame was started.

A file that cannot be read yet because it is still being written (its time stamp is recent or
changed) is retried with back-off for up to ``settle`` seconds before it becomes an error.
"""

import heapq
import logging
import os
import queue as _queue
import threading
import time
from collections import deque
from pathlib import Path

from gpusaxs.curve_claims import CurveClaims, clash_message
from gpusaxs.errors import ImageReadError
from gpusaxs.grazing_outputs import GrazingStage
from gpusaxs.io.chi import read_chi_key
from gpusaxs.io.images import is_image_file
from gpusaxs.matrix import BuildCancelled
from gpusaxs.pipeline import FramePipeline

from .curves import CurveWriter, inside, sweep_tmp
from .ratelimit import RateLimitedLog

log = logging.getLogger("saxsdogserver")

MAX_RECENT_ERRORS = 50


class _Entry:
    __slots__ = ("sig", "out", "dirty", "tries")

    def __init__(self, sig, out):
        self.sig = sig
        self.out = out
        self.dirty = False
        self.tries = 0


def _sig(st):
    return (st.st_mtime_ns, st.st_size)


class ProcessingQueue:
    """One queue of the server (see module doc).

    integrator_factory: callable returning an Integrator (called in the dispatcher thread), or a
    :class:`server.builds.Build` future (waited on; state "building" meanwhile).
    out_dir: None -> curves go to ``<image folder>/work/<name>.chi``; else the tree below
    ``directory`` is mirrored into ``out_dir``.  on_finished(n, failed=0): called for every
    frame that ends as a curve (n, server-wide "images processed") or an error record
    (failed, "images failed").  predecessor: a queue being
    aborted; this one waits for it before writing (so no two pipelines write the same curve).
    """

    def __init__(
        self,
        directory,
        integrator_factory,
        out_dir=None,
        batch_size=16,
        read_threads=2,
        settle=10.0,
        on_finished=None,
        predecessor=None,
        pipeline_factory=None,
        calibration_key=None,
        write_root=None,
        grazing=None,
    ):
        self.directory = os.path.realpath(directory)
        self.out_dir = None if out_dir is None else os.path.realpath(out_dir)
        self.calibration_key = calibration_key
        # every curve is written below the real path of write_root (server base folder or -o)
        self.write_root = os.path.realpath(write_root or self.out_dir or self.directory)
        self._factory = integrator_factory
        self.batch_size = int(batch_size)
        self.read_threads = int(read_threads)
        self.settle = float(settle)
        self._on_finished = on_finished or (lambda n, failed=0: None)
        self._predecessor = predecessor
        self._pipeline_factory = pipeline_factory
        self.grazing = grazing  # a GrazingConfig: maps and cuts written with the curves

        self._events = _queue.Queue()
        self._lock = threading.Lock()
        self._pending = {}  # image path -> _Entry (submitted, not finished)
        self._retries = []  # heap of (due monotonic, path)
        self._accepting = True
        self._n_events = 0  # file events waiting in self._events
        self._abort = threading.Event()
        self.state = "starting"  # starting | running | closing | closed | aborted | failed
        self.failure = None
        self.backend = None
        self.pipeline = None

        self.pics = 0
        self.errors = 0
        self.skipped = 0
        self.redone = 0  # curves made with another calibration key, done again
        self.tmp_removed = 0  # leftover temporary files of a killed writer removed
        self.dropped = 0
        self.recent_errors = deque(maxlen=MAX_RECENT_ERRORS)
        self._claims = CurveClaims()  # curve path -> the one image it belongs to
        self._error_log = RateLimitedLog(log, per_s=2.0, burst=20)  # a flood of bad files
        self.latest = None  # (image path, out path, q, I)
        self.t_created = time.time()
        self._t_first = None  # monotonic, first frame submitted
        self._t_last = None  # monotonic, last frame finished
        self._finished = threading.Event()
        self._thread = threading.Thread(target=self._run, name="queue-dispatcher", daemon=True)

    # -- commands (called from the server thread; never block) --------------------------------
    def start(self):
        self._thread.start()
        return self

    @property
    def accepting(self):
        return self._accepting

    def _put_file(self, kind, path):
        with self._lock:
            self._n_events += 1
        self._events.put((kind, path))

    def file_event(self, path):
        """A new/changed file somewhere; ignored unless the queue accepts files."""
        if self._accepting:
            self._put_file("file", path)

    def readdir(self):
        if not self._accepting:
            raise RuntimeError("the queue is closed; start a new one with 'new'")
        self._events.put(("readdir", None))

    def close(self):
        """Process what is queued, then stop; new files are ignored from now on."""
        if self._accepting:
            self._accepting = False
            self._events.put(("close", None))

    def abort(self):
        """Finish frames in flight, drop the rest."""
        self._accepting = False
        self._abort.set()
        self._events.put(("abort", None))

    def join(self, timeout=None):
        return self._finished.wait(timeout)

    @property
    def finished(self):
        return self._finished.is_set()

    # -- statistics -----------------------------------------------------------------------------
    def queue_length(self):
        with self._lock:
            return len(self._pending) + self._n_events

    def stat(self, images_processed, images_failed=0):
        with self._lock:
            n_pending = len(self._pending) + self._n_events
            pics = self.pics
            if self._t_first is None:
                interval = 0.0
            else:
                end = time.monotonic() if (n_pending or self._t_last is None) else self._t_last
                interval = max(0.0, end - self._t_first)
        return {
            "time interval": interval,
            "queue length": int(n_pending),
            "frames per sec": pics / interval if interval > 0 else 0.0,
            "images processed": int(images_processed),
            "images failed": int(images_failed),
            "pics": int(pics),
        }

    def info(self, rel):
        with self._lock:
            return {
                "directory": rel(self.directory),
                "state": self.state,
                "errors": self.errors,
                "skipped": self.skipped,
                "dropped": self.dropped,
                "redone": self.redone,
                "tmp removed": self.tmp_removed,
                "backend": self.backend,
                "failure": self.failure,
                "output": None if self.out_dir is None else rel(self.out_dir),
            }

    def errors_report(self, rel):
        with self._lock:
            return {
                "count": self.errors,
                "recent": [{"file": rel(f), "error": e} for f, e in self.recent_errors],
            }

    # -- internals ------------------------------------------------------------------------------
    def out_path(self, image):
        image = Path(image)
        name = image.with_suffix(".chi").name
        if self.out_dir is None:
            return image.parent / "work" / name
        try:
            rel = image.parent.relative_to(self.directory)
        except ValueError:
            rel = Path()
        return Path(self.out_dir) / rel / name

    def _record_error(self, path, message):
        # called with self._lock held
        self.errors += 1
        self.recent_errors.append((str(path), str(message)))
        self._t_last = time.monotonic()
        self._error_log.warning("%s: %s", path, message)

    def _drain_file_events(self):
        """Empty the event queue; return the paths of its file events (others are dropped).

        The caller settles ``_n_events`` for them, under the lock.
        """
        paths = []
        while True:
            try:
                kind, path = self._events.get_nowait()
            except _queue.Empty:
                return paths
            if kind in ("file", "force"):
                paths.append(path)

    def _fail_all(self, message):
        paths = self._drain_file_events()
        with self._lock:
            self._n_events -= len(paths)
            for path in paths:
                self._record_error(path, message)
        if paths:
            self._on_finished(0, len(paths))

    def _run(self):
        try:
            self._run_inner()
        except Exception as exc:  # never leave the queue hanging
            log.exception("queue dispatcher failed")
            with self._lock:
                self.state = "failed"
                self.failure = f"{type(exc).__name__}: {exc}"
            self._fail_all(f"queue failed: {self.failure}")
        finally:
            self._finished.set()

    def _obtain_integrator(self):
        """The integrator: from a Build (a future, waited on while not aborted) or a factory."""
        if hasattr(self._factory, "result"):
            with self._lock:
                self.state = "building"
            return self._factory.result(should_stop=self._abort.is_set)
        return self._factory()

    def _run_inner(self):
        try:
            integrator = self._obtain_integrator()
        except BuildCancelled:
            self._shutdown_aborted()
            return
        except Exception as exc:
            with self._lock:
                self.state = "failed"
                self.failure = f"{type(exc).__name__}: {exc}"
            log.error("cannot build the integrator: %s", self.failure)
            self._fail_all(f"queue failed: {self.failure}")
            return
        self.backend = getattr(integrator, "backend_name", None)
        # the key the library records in curves (docs/ARCHITECTURE.md), when it exposes one
        self.calibration_key = getattr(integrator, "matrix_key", None) or self.calibration_key
        if self._predecessor is not None:
            self._predecessor.join()
            self._predecessor = None
        self._sweep(self.directory)  # leftovers of a killed server in the queue's folder
        if self._abort.is_set():
            self._shutdown_aborted()
            return
        factory = FramePipeline if self._pipeline_factory is None else self._pipeline_factory
        stage = None if self.grazing is None else GrazingStage(integrator, self.grazing)
        self.pipeline = factory(
            integrator if stage is None else stage,
            batch_size=self.batch_size,
            read_threads=self.read_threads,
            on_done=self._done,
            on_error=self._error,
            writer=CurveWriter(
                self.write_root,
                self.calibration_key,
                grazing=stage,
                title=getattr(integrator, "curve_title", ""),
            ),
        )
        with self._lock:
            if self.state in ("starting", "building"):
                self.state = "running"
        closing = False
        while True:
            if self._abort.is_set():
                self._shutdown_aborted()
                return
            timeout = 0.2
            with self._lock:
                if self._retries:
                    timeout = min(timeout, max(0.0, self._retries[0][0] - time.monotonic()))
                idle = not self._pending and not self._retries
            if closing and idle and self._events.empty():
                self.pipeline.close()
                with self._lock:
                    self.state = "closed"
                return
            try:
                kind, path = self._events.get(timeout=timeout)
            except _queue.Empty:
                kind = None
            if kind in ("file", "force"):
                with self._lock:
                    self._n_events -= 1
            self._due_retries()
            if kind == "file":
                self._consider(path)
            elif kind == "force":
                self._consider(path, force=True)
            elif kind == "readdir":
                self._walk()
            elif kind == "close":
                closing = True
                with self._lock:
                    self.state = "closing"

    def _shutdown_aborted(self):
        dropped = 0
        if self.pipeline is not None:
            dropped = self.pipeline.close(abort=True)
        with self._lock:
            # frames still pending were dropped by the pipeline or were waiting for a retry
            left = len(self._pending)
            self._pending.clear()
            self._retries.clear()
            queued = self._drain_file_events()
            left += len(queued)
            self._n_events -= len(queued)
            self.dropped += max(left, dropped)
            self.state = "aborted"
        log.info("queue aborted, %d frames dropped", self.dropped)

    def _due_retries(self):
        now = time.monotonic()
        due = []
        with self._lock:
            while self._retries and self._retries[0][0] <= now:
                due.append(heapq.heappop(self._retries)[1])
        for path in due:
            with self._lock:
                ent = self._pending.get(path)
            if ent is None:
                continue
            try:
                ent.sig = _sig(os.stat(path))
            except OSError:
                pass
            self._submit(path, ent.out)

    def _submit(self, path, out):
        try:
            self.pipeline.submit(path, out)
        except RuntimeError as exc:  # pipeline closed under us (abort)
            with self._lock:
                if self._pending.pop(path, None) is not None:
                    self.dropped += 1
            log.debug("not submitted %s: %s", path, exc)

    def _consider(self, path, force=False):
        if not isinstance(path, str) or not path or "\x00" in path:
            return
        p = path if os.path.isabs(path) else os.path.join(self.directory, path)
        p = os.path.realpath(p)
        if not inside(p, self.directory) or not is_image_file(p):
            return
        if self.out_dir is not None and inside(p, self.out_dir):
            return
        try:
            st = os.stat(p)
        except OSError as exc:
            with self._lock:
                self._record_error(p, f"cannot access file: {exc.strerror}")
            self._on_finished(0, 1)
            return
        sig = _sig(st)
        out = self.out_path(p)
        owner = self._claims.claim(str(out), p)
        if owner is not None:  # same stem in the same folder (s1.tif + s1.edf)
            with self._lock:
                self._record_error(p, clash_message(out, owner))
            self._on_finished(0, 1)
            return
        with self._lock:
            ent = self._pending.get(p)
            if ent is not None:
                if ent.sig != sig:
                    ent.dirty = True  # changed while queued/in flight: do it again after
                return
        if not force:
            try:
                newer = os.stat(out).st_mtime_ns >= st.st_mtime_ns
            except OSError:
                newer = False
            if (
                newer
                and self.calibration_key is not None
                and read_chi_key(out) != self.calibration_key
            ):
                with self._lock:
                    self.redone += 1  # made with another calibration: do it again
            elif newer:
                with self._lock:
                    self.skipped += 1
                return
        with self._lock:
            self._pending[p] = _Entry(sig, out)
            if self._t_first is None:
                self._t_first = time.monotonic()
        self._submit(p, out)

    def _walk(self):
        for root, dirs, files in os.walk(self.directory):
            if self._abort.is_set():
                return
            keep = []
            for d in sorted(dirs):
                full = os.path.join(root, d)
                if d.startswith(".") or (
                    self.out_dir is not None and os.path.realpath(full) == self.out_dir
                ):
                    continue
                keep.append(d)
            dirs[:] = keep
            self._sweep(root)
            for f in sorted(files):
                if self._abort.is_set():
                    return
                if is_image_file(f):
                    self._consider(os.path.join(root, f))
            self._due_retries()

    def _sweep(self, image_folder):
        """Remove temporary files left by a killed writer in the curve folder of a folder."""
        folder = self.out_path(os.path.join(image_folder, "x.tif")).parent
        n = sweep_tmp(folder)
        if n:
            with self._lock:
                self.tmp_removed += n
            log.info("removed %d leftover temporary file(s) in %s", n, folder)

    # -- pipeline callbacks (pipeline threads) ---------------------------------------------------
    def _done(self, image_path, out_path, q, intensity):
        p = str(image_path)
        with self._lock:
            ent = self._pending.pop(p, None)
            self.pics += 1
            self._t_last = time.monotonic()
            self.latest = (p, str(out_path), q, intensity[: len(q)])  # the curve of a row
        self._on_finished(1)
        if ent is not None and ent.dirty and not self._abort.is_set():
            self._put_file("force", p)

    def _error(self, image_path, exc):
        p = str(image_path)
        now_wall = time.time()
        with self._lock:
            ent = self._pending.get(p)
            if ent is None:
                return
            retry = False
            if isinstance(exc, ImageReadError) and not self._abort.is_set():
                try:
                    st = os.stat(p)
                    recent = (now_wall - st.st_mtime) < self.settle or _sig(st) != ent.sig
                    retry = recent and ent.tries < 12
                except OSError:
                    retry = False
            if retry:
                ent.tries += 1
                delay = min(2.0, 0.05 * (2**ent.tries))
                heapq.heappush(self._retries, (time.monotonic() + delay, p))
                return
            del self._pending[p]
            self._record_error(p, str(exc))
        self._on_finished(0, 1)
