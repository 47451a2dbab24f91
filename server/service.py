"""The Saxsdog service (sections 5.2, 5.4): the state of the server and its answers.

:class:`SaxsdogService` holds everything but the sockets: it checks and answers the signed
commands (new, close, abort, plot, readdir, stat, get, listdir), runs the current
:class:`~.processing_queue.ProcessingQueue`, builds integrators beside the command loop and takes
"new file" events from a saxsfeeder or the -w watcher.  The command line, the sockets and the
start-up are in :mod:`.saxsdogserver`.
"""

import base64
import binascii
import logging
import os
import tempfile
import threading
import time
from functools import partial
from pathlib import Path

import numpy as np

from gpusaxs.calibration_model import Calibration
from gpusaxs.errors import GpusaxsError
from gpusaxs.gpu_engine import fallback_lines
from gpusaxs.gpu_fallbacks import decode_lines
from gpusaxs.grazing_config import grazing_config
from gpusaxs.grazing_outputs import GrazingStage
from gpusaxs.integrator import Integrator
from gpusaxs.io.chi import read_chi
from gpusaxs.io.images import is_image_file
from gpusaxs.io.masks import read_mask
from gpusaxs.matrix_cache import matrix_key
from gpusaxs.matrix_limits import check_limits
from gpusaxs.robust_curves import AveragedIntegrator, average_key

from . import protocol as P
from .auth import DEFAULT_WINDOW_S, AuthenticationError, Authenticator
from .builds import BuildCancelled, BuildManager
from .processing_queue import ProcessingQueue, inside
from .ratelimit import RateLimitedLog
from .redact import PathRedactor

log = logging.getLogger("saxsdogserver")

DEFAULT_PORT = 7777
MAX_PIXELS = 64 * 1024 * 1024
MAX_OVERSAMPLING = 16
MAX_LISTDIR = 10_000


def _grazing_stage(build, grazing):
    """The stream's integrator with grazing-incidence outputs: the build's, wrapped."""
    return GrazingStage(build.result(), grazing)


def prepare_out_dir(out_dir):
    """Real path of ``-o OUTDIR``, created (with its parents) when it does not exist yet."""
    try:
        os.makedirs(out_dir, mode=0o755, exist_ok=True)
    except OSError as exc:
        raise ValueError(f"{out_dir}: cannot create the output folder: {exc.strerror}") from None
    real = os.path.realpath(out_dir)
    if not os.path.isdir(real):
        raise ValueError(f"{out_dir}: output folder is not a folder")
    return real


class SaxsdogService:
    """Everything but the sockets: request handling, queue, feeder/watch events.

    ``handle(frames)`` takes the frames of one request and returns the answer (a dict); it
    never raises.  Thread-safe for one command thread plus any number of event threads.
    """

    def __init__(
        self,
        base_dir,
        secret,
        window=DEFAULT_WINDOW_S,
        out_dir=None,
        threads=2,
        batch_size=16,
        backend="auto",
        settle=10.0,
        max_request=P.MAX_REQUEST_BYTES,
        max_attachment=P.MAX_ATTACHMENT_BYTES,
        max_attachments=P.MAX_ATTACHMENTS,
        replay_capacity=100_000,
        cache_size=4,
        integrator_class=None,
        pipeline_factory=None,
        average=None,
    ):
        self.base = os.path.realpath(base_dir)
        if not os.path.isdir(self.base):
            raise ValueError(f"{base_dir}: base folder does not exist")
        self.auth = Authenticator(secret, window=window, replay_capacity=replay_capacity)
        # feeder events are signed like requests; their own replay cache
        self.feeder_auth = Authenticator(secret, window=window, replay_capacity=replay_capacity)
        self.out_dir = None if out_dir is None else prepare_out_dir(out_dir)
        self.threads = int(threads)
        self.batch_size = int(batch_size)
        self.backend = backend
        self.settle = float(settle)
        self.max_request = int(max_request)
        self.max_attachment = int(max_attachment)
        self.max_attachments = int(max_attachments)
        self.builds = BuildManager(cache_size)  # integrators, built beside the command loop
        self._integrator_class = integrator_class
        # sigma-clipped or median curves (gpusaxs.robust_curves.average_params), None: the mean
        self.average = None if average is None else dict(average)
        self._pipeline_factory = pipeline_factory
        self.queue = None
        self.build = None  # the Build (future) of the current queue's integrator
        self._processed = 0  # frames that ended as a curve
        self._failed = 0  # frames that ended as an error record
        self._plock = threading.Lock()
        self.on_new_queue = None  # callback(directory) for the -w watcher
        self.feeder = {"messages": 0, "files": 0, "rejected": 0, "last": None}
        self._feeder_log = RateLimitedLog(log, per_s=1.0, burst=5)
        self.requests = 0
        self.stream = None  # a StreamConsumer with --detector (docs/streams.md)
        self.redactor = PathRedactor(self.base, [self.out_dir] if self.out_dir else [])

    # -- helpers --------------------------------------------------------------------------------
    def _count(self, n, failed=0):
        with self._plock:
            self._processed += n
            self._failed += failed

    @property
    def images_processed(self):
        with self._plock:
            return self._processed

    @property
    def images_failed(self):
        with self._plock:
            return self._failed

    def rel(self, path):
        """A server path as shown to clients: relative to the base folder."""
        try:
            r = os.path.relpath(path, self.base)
        except ValueError:
            return os.path.basename(path)
        return "." if r == "." else r

    def resolve(self, path, what="path"):
        """Real path of ``path`` (relative to the base folder, or absolute) inside the base
        folder."""
        if not isinstance(path, str) or "\x00" in path:
            raise P.ProtocolError(f"{what} must be a string")
        cand = os.path.join(self.base, path)
        real = os.path.realpath(cand)
        if not inside(real, self.base):
            raise P.ProtocolError(f"{what} {path!r} is outside the server's base folder")
        return real

    def stat(self):
        # issue 25: GPU fallbacks are visible
        extra = {"engine fallbacks": lines} if (lines := fallback_lines()) else {}
        if decoded := decode_lines():  # issue 26: where bslz4 frames were decoded
            extra["bslz4 decode"] = decoded
        if self.queue is None:
            return {
                "time interval": 0.0,
                "queue length": 0,
                "frames per sec": 0.0,
                "images processed": self.images_processed,
                "images failed": self.images_failed,
                "pics": 0,
                **extra,
            }
        return {**self.queue.stat(self.images_processed, self.images_failed), **extra}

    def _data(self, **extra):
        d = {"stat": self.stat(), "builds": self.builds.running()}
        if self.stream is not None:
            d["streams"] = info = self.stream.info()
            if isinstance(info.get("output"), str):  # relative to the base, like every path
                info["output"] = self.rel(os.path.realpath(info["output"]))
        if self.queue is not None:
            d["queue"] = self.queue.info(self.rel)
            d["errors"] = self.queue.errors_report(self.rel)
        d.update(extra)
        return d

    # -- the request handler --------------------------------------------------------------------
    def handle(self, frames):
        """The answer to one request, with server paths relative to the base folder."""
        return self.redactor.answer(self._handle_safely(frames))

    def _handle_safely(self, frames):
        self.requests += 1
        try:
            return self._handle(frames)
        except AuthenticationError as exc:
            log.warning("authentication failed: %s", exc)
            return P.error_response(exc, P.R_AUTH)
        except (P.ProtocolError, GpusaxsError) as exc:
            log.info("error answer: %s", exc)
            return P.error_response(exc)
        except MemoryError:
            log.error("out of memory while handling a request")
            return P.error_response("out of memory while handling the request; try again later")
        except Exception as exc:  # never die of a request
            log.exception("internal error while handling a request")
            return P.error_response(f"internal error: {type(exc).__name__}: {str(exc)[:200]}")

    def _handle(self, frames):
        if not frames:
            raise P.ProtocolError("empty message")
        attachments = frames[1:]
        if len(attachments) > self.max_attachments:
            raise P.ProtocolError(
                f"too many attachments ({len(attachments)}, limit {self.max_attachments})"
            )
        for a in attachments:
            if memoryview(a).nbytes > self.max_attachment:
                raise P.ProtocolError(
                    f"attachment too large ({memoryview(a).nbytes} bytes, "
                    f"limit {self.max_attachment})"
                )
        size = memoryview(frames[0]).nbytes
        if size > self.max_request:
            raise P.ProtocolError(f"request too large ({size} bytes, limit {self.max_request})")
        # the signature over the raw bytes, before any parsing (server/auth.py)
        req = self.auth.verify_frame(frames[0], attachments, self._parse_request)
        P.validate_request(req)
        cmd = P.COMMANDS[req["command"]]
        arg = req.get("argument") or {}
        log.debug("command %s", cmd)
        return getattr(self, "cmd_" + cmd)(arg, attachments)

    def _parse_request(self, frame):
        req = P.parse_json(frame, self.max_request)
        if not isinstance(req, dict):
            raise P.ProtocolError("malformed request: not a JSON object")
        return req

    # -- commands -------------------------------------------------------------------------------
    def cmd_stat(self, arg, attachments):
        return {"result": P.R_STAT, "data": self._data(feeder=self._feeder_info())}

    def _need_queue(self):
        if self.queue is None:
            raise P.ProtocolError("no queue; start one with 'new'")
        return self.queue

    def cmd_close(self, arg, attachments):
        self._need_queue().close()
        return {"result": P.R_CLOSED, "data": self._data()}

    def cmd_abort(self, arg, attachments):
        self._need_queue().abort()
        if self.build is not None:
            self.build.cancel()  # stops at its next chunk of rows (no effect when built)
        return {"result": P.R_ABORTED, "data": self._data()}

    def cmd_readdir(self, arg, attachments):
        q = self._need_queue()
        try:
            q.readdir()
        except RuntimeError as exc:
            raise P.ProtocolError(str(exc)) from None
        return {"result": P.R_READDIR, "data": self._data()}

    def cmd_plot(self, arg, attachments):
        q = self._need_queue()
        latest = q.latest
        if latest is None:
            raise P.ProtocolError("no curve yet in this queue")
        image, out, qv, iv = latest
        return {
            "result": P.R_PLOT,
            "data": self._data(filename=self.rel(image), array=self._curve_rows(out, qv, iv)),
        }

    @staticmethod
    def _curve_rows(out_path, q=None, intensity=None):
        try:
            c = read_chi(out_path)
            rows = [c.q, c.intensity] + ([c.error] if c.error is not None else [])
            return P.array_rows(*rows)
        except Exception:
            if q is None:
                raise
            return P.array_rows(q, intensity)

    def cmd_get(self, arg, attachments):
        path = self.resolve(arg["path"], "path")
        if is_image_file(path):
            if self.queue is not None and inside(path, self.queue.directory):
                chi = self.queue.out_path(path)
            else:
                chi = Path(path).parent / "work" / Path(path).with_suffix(".chi").name
            image = path
        else:
            chi, image = path, path
        chi = os.path.realpath(chi)
        if not inside(chi, self.base):
            raise P.ProtocolError("curve is outside the server's base folder")
        if not os.path.isfile(chi):
            raise P.ProtocolError(f"no curve for {arg['path']!r} (yet)")
        try:
            rows = self._curve_rows(chi)
        except GpusaxsError as exc:
            raise P.ProtocolError(f"cannot read the curve: {exc}") from None
        return {"result": P.R_PLOT, "data": self._data(filename=self.rel(image), array=rows)}

    def cmd_listdir(self, arg, attachments):
        folder = self.resolve(arg.get("directory", "."), "directory")
        if not os.path.isdir(folder):
            raise P.ProtocolError(f"{arg.get('directory', '.')!r} is not a folder")
        entries = []
        with os.scandir(folder) as it:
            for e in sorted(it, key=lambda e: e.name):
                if len(entries) >= MAX_LISTDIR:
                    break
                if e.name.startswith("."):
                    continue
                try:
                    st = e.stat()
                    kind = "dir" if e.is_dir() else "file" if e.is_file() else "other"
                except OSError:
                    continue
                ent = {"name": e.name, "type": kind, "mtime": st.st_mtime}
                if kind == "file":
                    ent["size"] = st.st_size
                entries.append(ent)
        return {
            "result": P.R_LISTDIR,
            "data": {"directory": self.rel(folder), "entries": entries, "stat": self.stat()},
        }

    def cmd_new(self, arg, attachments):
        directory = self.resolve(arg["directory"], "directory")
        if not os.path.isdir(directory):
            raise P.ProtocolError(
                f"directory {arg['directory']!r} does not exist in the base folder"
            )
        cal = Calibration.from_dict(arg["calibration"], base_dir=directory)
        grazing = grazing_config(arg["calibration"], cal.imagesize)  # maps and cuts, or None
        check_limits(cal)  # the build's time and memory bounds, before anything is built
        h, w = cal.imagesize
        if h * w > MAX_PIXELS:
            raise P.ProtocolError(
                f"Imagesize {h}x{w} exceeds the server limit of {MAX_PIXELS} pixels"
            )
        if cal.oversampling > MAX_OVERSAMPLING:
            raise P.ProtocolError(
                f"Oversampling {cal.oversampling} exceeds the server limit of {MAX_OVERSAMPLING}"
            )
        mask_bytes = None
        if attachments:
            mask_bytes = bytes(attachments[0])
        elif arg.get("maskbin"):
            try:
                mask_bytes = base64.b64decode(arg["maskbin"], validate=True)
            except (binascii.Error, ValueError):
                raise P.ProtocolError("maskbin is not valid base64") from None
        if mask_bytes is not None:
            name = os.path.basename(str(arg.get("mask") or "mask.msk")) or "mask.msk"
            suffix = Path(name).suffix.lower() or ".msk"
            if not suffix[1:].isalnum() or len(suffix) > 8:
                suffix = ".msk"
            with tempfile.TemporaryDirectory(prefix="saxsdog-mask-") as td:
                mpath = os.path.join(td, "mask" + suffix)
                with open(mpath, "wb") as fh:
                    fh.write(mask_bytes)
                try:
                    mask = read_mask(mpath, shape=cal.imagesize)
                except GpusaxsError as exc:
                    raise P.ProtocolError(f"mask {name!r}: {getattr(exc, 'reason', exc)}") from None
        elif cal.mask_file:
            mfile = os.path.realpath(cal.mask_file)
            if not inside(mfile, self.base) or not os.path.isfile(mfile):
                raise P.ProtocolError(
                    "no mask sent and the calibration's MaskFile is not a file "
                    "inside the server's base folder"
                )
            try:
                mask = read_mask(mfile, shape=cal.imagesize)
            except GpusaxsError as exc:
                raise P.ProtocolError(f"MaskFile: {getattr(exc, 'reason', exc)}") from None
        else:
            mask = np.zeros(cal.imagesize, dtype=bool)
        mask = np.ascontiguousarray(mask, dtype=bool)
        cal = cal.replace(mask_file=None)
        key = (matrix_key(cal, mask=mask), str(self.backend))
        cached = key in self.builds
        build = self.builds.get(key, self._integrator_maker(cal, mask), label=self.rel(directory))
        if self.stream is not None:
            # series starting from now use it (waiting for the build, like the queue)
            # with grazing-incidence outputs, the series files hold the maps and cuts too
            made = build.result
            if grazing is not None:
                made = partial(_grazing_stage, build, grazing)
            self.stream.set_integrator(made, average_key(key[0], self.average))
        old, old_build = self.queue, self.build
        if old is not None:
            old.abort()
        if old_build is not None and old_build is not build:
            old_build.cancel()
        self.build = build
        q = ProcessingQueue(
            directory,
            build,
            out_dir=self.out_dir,
            batch_size=self.batch_size,
            read_threads=self.threads,
            settle=self.settle,
            on_finished=self._count,
            predecessor=old,
            pipeline_factory=self._pipeline_factory,
            calibration_key=average_key(key[0], self.average),
            write_root=self.out_dir or self.base,
            grazing=grazing,
        )
        self.queue = q
        q.start()
        if self.on_new_queue is not None:
            try:
                self.on_new_queue(directory)
            except Exception:
                log.exception("cannot watch %s", directory)
        return {
            "result": P.R_NEW,
            "data": {
                "queue": q.info(self.rel),
                "cal": {"key": key[0][:16], "cached": cached, "imagesize": [h, w]},
            },
        }

    def _integrator_maker(self, cal, mask):
        """make(build) for the BuildManager: the Integrator, its matrix built chunk by chunk."""
        backend, integrator_class, average = self.backend, self._integrator_class, self.average

        def make(build):
            cls = Integrator if integrator_class is None else integrator_class
            t0 = time.perf_counter()
            integ = cls(cal, backend=backend, mask=mask, progress=build.report)
            if build.cancelled():
                raise BuildCancelled("build cancelled")
            if hasattr(integ, "warm_up"):
                integ.warm_up()  # the first frames do not pay for loading the kernels
            log.info(
                "integrator built in %.2f s (%s)",
                time.perf_counter() - t0,
                getattr(integ, "backend_name", "?"),
            )
            return integ if average is None else AveragedIntegrator(integ, average)

        return make

    # -- events -----------------------------------------------------------------------------------
    def file_event(self, path):
        q = self.queue
        if q is not None:
            q.file_event(path)

    def feeder_message(self, raw):
        """One message from the feeder's PUB socket (never raises).

        Only messages signed with the shared secret count (``feeder.messages``); the others are
        counted in ``feeder.rejected`` and logged at most once a second.
        """
        try:
            msg = self.feeder_auth.verify_frame(raw, (), lambda b: P.parse_json(b, 64 * 1024))
        except (P.ProtocolError, AuthenticationError) as exc:
            self.feeder["rejected"] += 1
            self._feeder_log.warning("rejected a feeder message: %s", exc)
            return
        self.feeder["messages"] += 1
        self.feeder["last"] = time.time()
        if msg.get("command") == "new file" and isinstance(msg.get("argument"), str):
            self.feeder["files"] += 1
            self.file_event(msg["argument"])

    def _feeder_info(self):
        last = self.feeder["last"]
        return {
            "messages": self.feeder["messages"],
            "files": self.feeder["files"],
            "rejected": self.feeder["rejected"],
            "last message age": None if last is None else time.time() - last,
        }

    def shutdown(self, timeout=60.0):
        """Stop builds and the queue: frames in flight are finished, the rest dropped."""
        self.builds.cancel_all()
        q = self.queue
        if q is not None:
            q.abort()
            if not q.join(timeout):
                log.warning("queue did not stop within %.0f s", timeout)
        if not self.builds.join(2.0):
            log.warning("an integrator build did not stop within 2 s")
