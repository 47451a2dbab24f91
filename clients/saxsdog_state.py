"""One saxsdog run's state (:class:`Saxsdog`): the inputs found (walk, dedupe, resume and
collision checks), the frames handed to the pipeline, the watch mode's waiting files, the
pipeline's callbacks that write each frame's outputs, the counters and the summary."""

import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from gpusaxs.clients.progress import Progress, format_duration
from gpusaxs.clients.saxsdog_average import average_params, average_title
from gpusaxs.clients.saxsdog_nexus import NexusCollector
from gpusaxs.clients.saxsdog_outputs import Hdf5Collector, frame_png, plot_curve_svg
from gpusaxs.clients.saxsdog_parser import PROG
from gpusaxs.curve_claims import CurveClaims, clash_message
from gpusaxs.errors import GpusaxsError, ImageReadError
from gpusaxs.gpu_engine import fallback_lines  # issue 25: GPU fallbacks are visible
from gpusaxs.gpu_fallbacks import decode_lines  # issue 26: where bslz4 frames were decoded
from gpusaxs.io.chi import read_chi, read_chi_key, write_chi
from gpusaxs.io.frames import HDF5_SUFFIXES, frame_sources
from gpusaxs.io.images import read_image
from gpusaxs.io.settle import FileSettler
from gpusaxs.pipeline import curve_path as mirrored_curve_path


def is_temp(name):
    return name.startswith(".") or name.endswith(".tmp")


def inside(path, folder):
    try:
        Path(path).resolve().relative_to(folder)
        return True
    except ValueError:
        return False


class Saxsdog:
    """One run of the tool: inputs, pipeline, watcher, counters."""

    def __init__(self, args, cal, integrator, calibration_text, calibration_key=None):
        self.args = args
        self.integrator = integrator  # None until attach(): the walk runs before the build
        self.calibration_key = (
            calibration_key
            if calibration_key is not None
            else getattr(integrator, "matrix_key", None)
        )
        self.shape = tuple(int(s) for s in cal.imagesize)
        self.formats = {
            "chi": {"chi"},
            "hdf5": {"hdf5"},
            "both": {"chi", "hdf5"},
            "nexus": {"nexus"},
            "chi+nexus": {"chi", "nexus"},
        }[args.format]
        self.out_dir = Path(args.out)
        self.out_dir_resolved = self.out_dir.resolve()
        self.progress = Progress(silent=args.silent, label=PROG)
        self.hdf5 = (
            Hdf5Collector(
                None if integrator is None else integrator.q, calibration_text, self.calibration_key
            )
            if "hdf5" in self.formats
            else None
        )
        self.average = average_params(args)  # None: the mean (saxsdog --average)
        if "nexus" in self.formats:  # NXazint1d files (clients/saxsdog_nexus.py)
            self.hdf5 = NexusCollector(
                None if integrator is None else integrator.q,
                cal,
                self.calibration_key,
                options=self.average,
            )
        self.monitor = None
        self.grazing = None  # a GrazingStage (gpusaxs/grazing_outputs.py) when asked for
        self._lock = threading.Lock()
        self._seen = set()  # resolved image paths handed on (dedupe)
        self._outputs = CurveClaims()  # out path -> image path (collision check)
        self.skipped = 0
        self.redone = 0  # resume: curves of another calibration, made again
        self.pending = []  # (image, curve) found before the pipeline exists
        self.failed_early = 0  # failures before the pipeline (collisions, timeouts)
        self.abandoned = 0  # watch-mode files still incomplete at Ctrl-C
        self.walk_seconds = 0.0
        self.setup_seconds = 0.0
        self.matrix_info = {}
        self.setup_parts = {}  # "engine", "kernels compiled" / "kernels loaded": seconds
        self.pipeline = None
        self.settler = None
        self._waiting = {}  # watch mode: absolute image path -> curve path
        self._waiting_stacks = {}  # watch mode: absolute HDF5 path -> root, expanded once settled

    # -- pipeline callbacks (pipeline threads) -----------------------------------------------
    def write(self, image_path, out_path, q, intensity, error, chi=True):
        """Writer of one frame: svg/png, hdf5 collection, then the .chi (last: resume key).

        chi=False: everything but the .chi (on a Dask cluster the workers write those)."""
        out_path = Path(out_path)
        out_path.parent.mkdir(parents=True, exist_ok=True)
        name = Path(image_path).name
        if self.grazing is not None:  # the map and the cuts, then the curve's own outputs
            self.grazing.write(out_path, name, intensity, error, self.calibration_key)
            intensity, error = intensity[: len(q)], error[: len(q)]
        if self.args.svg:
            plot_curve_svg(out_path.with_suffix(".svg"), q, intensity, name)
        if self.args.png:
            frame_png(out_path.with_suffix(".png"), read_image(image_path, shape=self.shape))
        if self.hdf5 is not None:
            self.hdf5.add(
                self.hdf5.file_for(image_path, out_path), name, intensity, error, source=image_path
            )
        if chi and "chi" in self.formats:
            write_chi(
                out_path,
                q,
                intensity,
                error=error,
                title=f"{name}  {average_title(self.average)}" if self.average else name,
                calibration_key=self.calibration_key,
            )

    def on_done(self, image_path, out_path, q, intensity):
        self.progress.advance()
        if self.monitor is not None:
            self.monitor.push(Path(image_path).name, q, intensity[: len(q)])

    def on_error(self, image_path, exc):
        self.report(image_path, exc)
        self.progress.advance(failed=True)

    def report(self, image_path, exc):
        msg = str(exc)
        path = str(image_path)
        if path not in msg:
            msg = f"{path}: {msg}"
        if not getattr(exc, "reason", None) and type(exc).__name__ not in msg:
            msg = f"{msg} ({type(exc).__name__})"
        self.progress.message(f"{PROG}: error: {msg}")

    # -- inputs ------------------------------------------------------------------------------
    def offer(self, image_path, root, check_complete=False, explicit=False):
        """Hand on each frame of one file (gpusaxs.io.frames: an image, or every frame of an
        HDF5/multi-frame file); a file the user named that holds no frame is an error."""
        if is_temp(Path(image_path).name):
            return
        if check_complete and str(image_path).lower().endswith(HDF5_SUFFIXES):
            with self._lock:  # watch mode: list its frames once it is settled
                self._waiting_stacks[os.path.abspath(image_path)] = root
            self.settler.touch(str(image_path))
            return
        try:
            sources = frame_sources(image_path, explicit=explicit)
        except GpusaxsError as exc:
            self.report(image_path, exc)
            with self._lock:
                self.failed_early += 1
            return
        for source in sources:
            self._offer_frame(source, root, check_complete)

    def _offer_frame(self, image_path, root, check_complete=False):
        """Hand one frame on (once): resume check, collision check, then pipeline/watch."""
        if hasattr(image_path, "file"):  # a frame of a stack (FrameRef)
            key = f"{Path(image_path.file).resolve()}::{image_path.dataset}::{image_path.index}"
        else:
            image_path = Path(image_path)
            key = image_path.resolve()
        if not self.args.inplace and inside(key, self.out_dir_resolved):
            return  # our own output folder inside an input folder
        with self._lock:
            if key in self._seen:
                return
            self._seen.add(key)
        out = self.curve_path(image_path, root)
        if self.args.resume and self._already_done(image_path, out):
            with self._lock:
                self.skipped += 1
            return
        other = self._outputs.claim(out, image_path)
        if other is not None:
            self.report(image_path, RuntimeError(clash_message(out, other)))
            with self._lock:
                self.failed_early += 1
            return
        self.progress.add_total()
        if check_complete:
            with self._lock:
                self._waiting[os.path.abspath(image_path)] = out
            self.settler.touch(str(image_path))
        else:
            self.submit(image_path, out)

    def submit(self, image_path, out):
        """To the pipeline, or kept until it exists (the initial walk runs before the build)."""
        with self._lock:
            if self.pipeline is None:
                self.pending.append((image_path, out))
                return
        self.pipeline.submit(image_path, out)

    def attach(self, integrator, pipeline):
        """Start integrating: the frames found so far go to ``pipeline``."""
        self.integrator = integrator
        if self.hdf5 is not None:
            self.hdf5.q = np.asarray(integrator.q, dtype=np.float64)
        with self._lock:
            self.pipeline = pipeline
            pending, self.pending = self.pending, []
        for image_path, out in pending:
            pipeline.submit(image_path, out)

    # -- watch mode: files handed on once complete (gpusaxs.io.settle.FileSettler) -------------
    def start_settler(self, timeout):
        """Wait for watched files to be complete: size and time stable, image decodes; a file
        still incomplete ``timeout`` s after its last change is reported as an error."""
        self.wait_timeout = timeout
        self.settler = FileSettler(
            self._settled, settle=0.1, give_up=timeout, poll=0.05, on_give_up=self._never_complete
        )

    def stop_settler(self):
        """Stop waiting; the files still waited for count as abandoned."""
        self.settler.stop()
        with self._lock:
            self.abandoned += len(self._waiting)
            self._waiting.clear()

    def _settled(self, path):
        with self._lock:
            root = self._waiting_stacks.pop(path, None)
        if root is not None:
            self.offer(Path(path), root)
            return
        with self._lock:
            out = self._waiting.pop(path, None)
        if out is not None:
            self.submit(Path(path), out)

    def _never_complete(self, path):
        with self._lock:
            if self._waiting.pop(path, None) is None:
                return
            self.failed_early += 1
        try:
            read_image(path)
            reason = "did not become readable"
        except ImageReadError as exc:
            reason = exc.reason
        self.on_error(
            Path(path),
            ImageReadError(
                path, f"still incomplete {self.wait_timeout:g} s after its last change: {reason}"
            ),
        )

    def curve_path(self, image_path, root):
        return mirrored_curve_path(
            image_path, root, out_dir=self.out_dir, inplace=self.args.inplace
        )

    def _already_done(self, image_path, out):
        """Resume: True when the curve exists and was made with this calibration (its key);
        a curve of another calibration, or without a key, is counted in ``redone``."""
        if "chi" in self.formats:
            if not out.is_file():
                return False
            if read_chi_key(out) != self.calibration_key:
                with self._lock:
                    self.redone += 1
                return False
            if self.hdf5 is not None:  # both: keep the folder file complete
                try:
                    c = read_chi(out)
                    h5 = self.hdf5.file_for(image_path, out)
                    self.hdf5.add(
                        h5,
                        Path(image_path).name,
                        np.asarray(c.intensity),
                        c.error,
                        source=image_path,
                    )
                except Exception:
                    return False  # unreadable curve: recompute
            return True
        h5 = self.hdf5.file_for(image_path, out)
        self.hdf5.preload(h5)
        return Path(image_path).name in self.hdf5.known_frames(h5)

    def walk(self, roots):
        """Initial walk over (path, root) inputs, folders sorted, optionally in parallel."""
        t0 = time.perf_counter()
        for p, r in roots:
            if not p.is_dir():
                self.offer(p, r, check_complete=False, explicit=True)
        folders = [(p, r) for p, r in roots if p.is_dir()]
        if self.args.walkdirinthreads and folders:
            # one task per input folder and per top-level subfolder
            tasks = []
            for p, r in folders:
                tasks.append((p, r, False))
                for sub in sorted(p.iterdir()):
                    if sub.is_dir() and not is_temp(sub.name):
                        tasks.append((sub, r, True))
            with ThreadPoolExecutor(max_workers=min(8, len(tasks))) as ex:
                for f in [ex.submit(self._walk_one, p, r, rec) for p, r, rec in tasks]:
                    f.result()
        else:
            for p, r in folders:
                self._walk_one(p, r, True)
        self.walk_seconds = time.perf_counter() - t0

    def _walk_one(self, folder, root, recursive):
        if not recursive:
            names = sorted(e.name for e in os.scandir(folder) if e.is_file())
            for n in names:
                self.offer(folder / n, root, check_complete=self._fresh(folder / n))
            return
        for dirpath, dirnames, filenames in os.walk(folder):
            dirnames[:] = sorted(d for d in dirnames if not is_temp(d))
            dp = Path(dirpath)
            if not self.args.inplace and inside(dp, self.out_dir_resolved):
                dirnames[:] = []
                continue
            for n in sorted(filenames):
                self.offer(dp / n, root, check_complete=self._fresh(dp / n))

    def _fresh(self, path):
        """Watch mode: a file changed in the last seconds may still be being written."""
        if not self.args.watch:
            return False
        try:
            return time.time() - path.stat().st_mtime < 5.0
        except OSError:
            return True

    # -- summary ----------------------------------------------------------------------------
    def summary(self, stats, interrupted, elapsed):
        failed = stats["failed"] + self.failed_early
        parts = [f"{stats['processed']} curves written", f"{failed} failed"]
        if self.skipped:
            parts.append(f"{self.skipped} skipped (already done)")
        if self.redone:
            parts.append(f"{self.redone} redone (made with another calibration)")
        dropped = stats["dropped"] + self.abandoned
        if dropped:
            parts.append(f"{dropped} not started")
        rate = stats["processed"] / elapsed if elapsed > 0 else 0.0
        head = "interrupted: " if interrupted else ""
        total = self.setup_seconds + elapsed
        how = {
            "disk": "matrix from the cache",
            "built": "matrix built",
            "memory": "matrix in memory",
        }.get(self.matrix_info.get("source"), "")
        if how and "seconds" in self.matrix_info:
            how += f" {format_duration(self.matrix_info['seconds'])}"
        parts_text = "".join(f", {k} {format_duration(v)}" for k, v in self.setup_parts.items())
        setup = f"set-up {format_duration(self.setup_seconds)}" + (f", {how}" if how else "")
        setup += parts_text
        return "\n".join(
            [
                f"{PROG}: {head}{', '.join(parts)} in {format_duration(total)} "
                f"({setup}; {rate:.1f} frames/s after set-up)"
            ]
            + [f"{PROG}: engine fallback {line}" for line in fallback_lines()]
            + [f"{PROG}: {line}" for line in decode_lines()]
        )

    def profile(self, stats, elapsed):
        """The -P table: seconds per stage (stages overlap, so shares add up to > 100 %)."""
        t = stats["timings"]
        n = max(stats["processed"] + stats["failed"], 1)
        rows = [
            ("walk", self.walk_seconds),
            (f"read ({self.args.threads} threads)", t["read"]),
            (f"integrate ({self.integrator_name()})", t["integrate"]),
            ("write", t["write"]),
        ]
        head = f"{'stage':<30}{'total s':>10}{'ms/frame':>11}{'% of wall':>11}"
        lines = [head, f"{'setup (operator + engine)':<30}{self.setup_seconds:>10.3f}"]
        for name, sec in rows + [("wall (after setup)", elapsed)]:
            share = 100.0 * sec / elapsed if elapsed > 0 else 0.0
            lines.append(f"{name:<30}{sec:>10.3f}{1000 * sec / n:>11.2f}{share:>10.1f}%")
        lines.append(
            f"{n} frames; read, integrate and write overlap (batched engine, "
            f"batch size {self.args.batch_size})"
        )
        return "\n".join(lines)

    def integrator_name(self):
        engine = getattr(getattr(self.integrator, "_engine", None), "name", None)
        backend = getattr(self.integrator, "backend_name", "?")
        return f"{backend}, {engine}" if engine else backend
