"""saxsdog: integrate folders of detector images into curves (specification section 2.1).

Walks the given folders (and files), integrates every image with the batched engine
(gpusaxs.pipeline.FramePipeline: reading, integrating and writing overlap) and writes one
.chi curve per frame, optionally a NeXus/HDF5 file per folder.  With -w it then watches the
folders (recursively, new subfolders included) and integrates new images once complete.
"""

import argparse
import json
import os
import signal
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from gpusaxs.clients.progress import Progress, format_duration
from gpusaxs.curve_claims import CurveClaims, clash_message
from gpusaxs.io.atomic import atomic_path

PROG = "saxsdog"

EPILOG = """\
options in detail:
  -c FILE        calibration file (JSON, section 3 of the specification) or a pyFAI
                 .poni file.  Required.
                   saxsdog -c cal.json data/      saxsdog -c detector.poni data/
  -t N           number of reader threads (image decoding); integration is one batched
                 engine call per group of frames, writing runs in its own thread.
                   saxsdog -c cal.json -t 4 data/
  -m             live plot window showing the latest curve (needs a display).
  -w             after the initial walk keep watching the folders, recursively and including
                 new subfolders; a file still being written is waited for (size stable and
                 decodable, at most --wait-timeout seconds after its last change), then
                 integrated once.  Stop with Ctrl-C.
                   saxsdog -c cal.json -w data/
  -r             resume: skip frames whose curve already exists and was made with the same
                 calibration (its calibration key, on the .chi title line or the HDF5 file's
                 calibration_key attribute); a curve made with another calibration, or
                 without a key, is redone.
                   saxsdog -c cal.json -r data/
  -o DIR         output folder (default ./out); the tree below each input folder is
                 mirrored there: data/a/x.tif -> DIR/a/x.chi.
                   saxsdog -c cal.json -o curves/ data/
  -i             write the curves in place, beside the images: data/a/x.tif -> data/a/x.chi.
  -s             also write an SVG plot of each curve (x.svg beside x.chi).
  -p             also write a PNG picture of each frame (x.png beside x.chi).
  -P             print where the time went (read, integrate, write) at the end.
  -S             silent: no progress bar, no summary (errors are still printed).
  -n             no initial walk: only files that appear later are integrated (with -w).
                   saxsdog -c cal.json -w -n data/
  -D             walk the input folders (and their top-level subfolders) in parallel.
  --format F     chi (default), hdf5, both (chi + hdf5), nexus or chi+nexus.
                 nexus: one NXazint1d file per image folder, <outfolder>/<foldername>.nxs
                 (curves, calibration, units, program, input files; docs/tools.md).
                   saxsdog -c cal.json --format nexus data/
                 hdf5: one HDF5 file per image folder,
                 <outfolder>/<foldername>.h5 with /entry/data/q (1/nm), I (frames x bins),
                 errors, frame_names and the calibration JSON in /entry/calibration.
                   saxsdog -c cal.json --format both data/
  --backend B    auto (default: GPU when present), numpy or cupy.
  --no-cache     do not use the on-disk matrix cache.  By default the integration matrix
                 of a calibration is built once and kept in $GPUSAXS_CACHE_DIR (default
                 $XDG_CACHE_HOME/gpusaxs or ~/.cache/gpusaxs, at most $GPUSAXS_CACHE_MAX_MB,
                 default 2048 MB, least recently used files removed first), so the next run
                 with the same calibration starts in a fraction of a second.
  --scheduler A  send the work to a Dask cluster (pip install "gpusaxs[dask]"): A is a
                 scheduler address, or local:N for N worker processes on this machine.
                 Each worker writes its .chi files; HDF5 files and -s plots are written
                 here from the curves the workers send back.  Not with -w, -p or -m.
                   saxsdog -c cal.json --scheduler tcp://head:8786 -o curves/ data/
                   saxsdog -c cal.json --scheduler local:2 data/
  --frames-per-task N  frames per Dask task (default 200).

Multi-frame files: EIGER master files (with their data files, bslz4 compressed), any HDF5
dataset named as FILE.h5::/path/to/data, multi-page TIFF and multi-frame EDF give one curve per
frame, <name>_<index>.chi (index from 0, 5 digits):
  saxsdog -c cal.json scan_master.h5        ->  out/scan_master_00000.chi, ...
The EIGER pixel_mask is applied on top of the calibration's mask.  A file named on the
command line that holds no readable frame is an error (exit status 1).

Bad files (truncated, not an image, wrong size) are reported on stderr with their name and
the reason; the others are still integrated.  Every output is written under a temporary name
and renamed, so no half-written file is ever visible.  Ctrl-C finishes and writes the frames
in flight, prints a summary and exits with status 130.

Errors found at the start stop the run before any frame is read: an output folder that
cannot be written (or is a file), a calibration that is invalid or too large to build (the
error names the field and the limit).  No image in the inputs (without -w): a warning, exit 1.

exit status: 0 all frames written, 1 some frames failed or no image found, 2 usage or
calibration error, 130 interrupted.
"""


def build_parser():
    """The argument parser (options of section 2.1 plus --format, --backend)."""
    p = argparse.ArgumentParser(
        prog=PROG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        usage="%(prog)s [options] -c CALIBRATION FOLDER_OR_IMAGE [...]",
        description="Integrate folders of detector images to curves I(q), one .chi per image.",
        epilog=EPILOG,
    )
    p.add_argument(
        "paths",
        nargs="+",
        metavar="FOLDER_OR_IMAGE",
        help="folders to walk (recursively) and/or image files (HDF5/EIGER master, "
        "FILE.h5::/dataset, multi-frame TIFF/EDF: one curve per frame)",
    )
    p.add_argument(
        "-c",
        "--calibration",
        metavar="FILE",
        required=True,
        help="calibration file (JSON) or pyFAI .poni file",
    )
    p.add_argument(
        "-t",
        "--threads",
        metavar="N",
        type=int,
        default=2,
        help="number of reader threads (default 2)",
    )
    p.add_argument(
        "-m", "--plotmonitor", action="store_true", help="show a live updating plot window"
    )
    p.add_argument(
        "-w",
        "--watch",
        action="store_true",
        help="watch the folders for new images (recursive, new subfolders too)",
    )
    p.add_argument(
        "-r", "--resume", action="store_true", help="skip frames whose curve already exists"
    )
    p.add_argument(
        "-o",
        "--out",
        metavar="OUTDIR",
        default="out",
        help="output folder, input tree mirrored below it (default ./out)",
    )
    p.add_argument("-i", "--inplace", action="store_true", help="write curves beside the images")
    p.add_argument("-s", "--svg", action="store_true", help="write an SVG plot per curve")
    p.add_argument("-p", "--png", action="store_true", help="write a PNG picture per frame")
    p.add_argument(
        "-P", "--profile", action="store_true", help="print a read/integrate/write time profile"
    )
    p.add_argument("-S", "--silent", action="store_true", help="less output")
    p.add_argument(
        "-n",
        "--nowalk",
        action="store_true",
        help="do not integrate files already there, only watch (with -w)",
    )
    p.add_argument("-D", "--walkdirinthreads", action="store_true", help="walk folders in parallel")
    p.add_argument(
        "--format",
        choices=("chi", "hdf5", "both", "nexus", "chi+nexus"),
        default="chi",
        help="curve output: chi (default), hdf5 (one HDF5 file per folder), both "
        "(chi + hdf5), nexus (one NXazint1d file per folder), chi+nexus",
    )
    p.add_argument(
        "--backend",
        choices=("auto", "numpy", "cupy"),
        default="auto",
        help="integration backend (default auto)",
    )
    p.add_argument(
        "--no-cache", action="store_true", help="do not read or write the on-disk matrix cache"
    )
    p.add_argument(
        "--scheduler",
        metavar="ADDRESS",
        help="Dask scheduler (tcp://host:8786) or local:N worker processes",
    )
    p.add_argument(
        "--frames-per-task",
        metavar="N",
        type=int,
        default=200,
        help="with --scheduler: frames per Dask task (default 200)",
    )
    p.add_argument(
        "--batch-size",
        metavar="N",
        type=int,
        default=16,
        help="most frames per engine call (default 16)",
    )
    p.add_argument(
        "--wait-timeout",
        metavar="S",
        type=float,
        default=30.0,
        help="watch mode: seconds an incomplete file is waited for after its last "
        "change before it is reported (default 30)",
    )
    return p


# --------------------------------------------------------------------------------------------
def _err(msg):
    sys.stderr.write(f"{PROG}: {msg}\n")
    sys.stderr.flush()


def _is_temp(name):
    return name.startswith(".") or name.endswith(".tmp")


def _inside(path, folder):
    try:
        Path(path).resolve().relative_to(folder)
        return True
    except ValueError:
        return False


class Hdf5Collector:
    """Curves per output folder, written as one NeXus/HDF5 file per folder at the end."""

    def __init__(self, q, calibration_text, calibration_key=None):
        self.q = None if q is None else np.asarray(q, dtype=np.float64)  # set before writing
        self.calibration_text = calibration_text
        self.calibration_key = calibration_key
        self._lock = threading.Lock()
        self._files = {}  # h5 path -> {frame name: (I, err)}

    @staticmethod
    def file_for(image_path, out_path):
        """<folder of the curve>/<name of the image folder>.h5"""
        folder_name = Path(image_path).resolve().parent.name or "frames"
        return Path(out_path).parent / f"{folder_name}.h5"

    def add(self, h5path, frame_name, intensity, error, source=None):
        with self._lock:
            self._files.setdefault(Path(h5path), {})[frame_name] = (
                np.asarray(intensity, dtype=np.float64),
                None if error is None else np.asarray(error, dtype=np.float64),
            )

    def known_frames(self, h5path):
        """Frame names already collected for ``h5path`` (after ``preload``)."""
        with self._lock:
            return set(self._files.get(Path(h5path), {}))

    def preload(self, h5path):
        """Load the curves of an existing file (resume with --format hdf5)."""
        h5path = Path(h5path)
        with self._lock:
            if h5path in self._files:
                return
            self._files[h5path] = {}
        if not h5path.is_file():
            return
        import h5py

        try:
            with h5py.File(h5path, "r") as f:
                d = f["entry/data"]
                key = f["entry"].attrs.get("calibration_key")
                if isinstance(key, bytes):
                    key = key.decode()
                if key is None or key != self.calibration_key:
                    return  # another (or an unknown) calibration: recompute everything
                names = [
                    n.decode() if isinstance(n, bytes) else str(n) for n in d["frame_names"][()]
                ]
                intensity = d["I"][()]
                errors = d["errors"][()] if "errors" in d else None
        except (OSError, KeyError) as exc:
            _err(f"{h5path}: cannot resume from this file ({exc}); frames are recomputed")
            return
        for k, name in enumerate(names):
            self.add(h5path, name, intensity[k], None if errors is None else errors[k])

    def write_all(self):
        """Write every collected folder file (temporary name + rename); return the paths."""
        written = []
        with self._lock:
            items = [(p, dict(frames)) for p, frames in self._files.items() if frames]
        for path, frames in items:
            self._write(path, frames)
            written.append(path)
        return written

    def _write(self, path, frames):
        import h5py

        names = sorted(frames)
        intensity = np.stack([frames[n][0] for n in names])
        has_err = all(frames[n][1] is not None for n in names)
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(path) as tmp:
            with h5py.File(tmp, "w") as f:
                f.attrs["default"] = "entry"
                f.attrs["creator"] = "gpusaxs saxsdog"
                f.attrs["file_time"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
                entry = f.create_group("entry")
                entry.attrs["NX_class"] = "NXentry"
                if self.calibration_key is not None:
                    entry.attrs["calibration_key"] = self.calibration_key
                    f.attrs["calibration_key"] = self.calibration_key
                entry.attrs["default"] = "data"
                data = entry.create_group("data")
                data.attrs["NX_class"] = "NXdata"
                data.attrs["signal"] = "I"
                data.attrs["axes"] = [".", "q"]
                data.attrs["q_indices"] = 1
                dq = data.create_dataset("q", data=self.q)
                dq.attrs["units"] = "1/nm"
                dq.attrs["long_name"] = "q (1/nm)"
                di = data.create_dataset(
                    "I", data=intensity, compression="gzip", compression_opts=1, shuffle=True
                )
                di.attrs["long_name"] = "mean intensity"
                if has_err:
                    de = data.create_dataset(
                        "errors",
                        data=np.stack([frames[n][1] for n in names]),
                        compression="gzip",
                        compression_opts=1,
                        shuffle=True,
                    )
                    de.attrs["long_name"] = "Poisson error of I"
                    data["I_errors"] = de  # NeXus 2014 name, same data (hard link)
                data.create_dataset(
                    "frame_names", data=np.array(names, dtype=object), dtype=h5py.string_dtype()
                )
                note = entry.create_group("calibration")
                note.attrs["NX_class"] = "NXnote"
                note.create_dataset("type", data="application/json")
                note.create_dataset("data", data=self.calibration_text)


def _plot_curve_svg(path, q, intensity, title):
    """SVG plot of one curve (log intensity), drawn without pyplot (thread-safe)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    from gpusaxs.io.atomic import atomic_write

    fig = Figure(figsize=(6, 4))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    good = np.isfinite(intensity) & (intensity > 0)
    ax.plot(q[good], intensity[good], lw=1)
    ax.set_yscale("log")
    ax.set_xlabel("q (1/nm)")
    ax.set_ylabel("I (counts/pixel)")
    ax.set_title(title)
    with atomic_write(path, "wb") as fh:
        fig.savefig(fh, format="svg")


def _frame_png(path, image):
    """PNG picture of a frame (log scale, masked/negative pixels dark)."""
    import matplotlib.image as mpimg

    from gpusaxs.io.atomic import atomic_write

    img = np.asarray(image, dtype=np.float64)
    good = np.isfinite(img) & (img > 0)
    logimg = np.zeros_like(img)
    logimg[good] = np.log10(img[good])
    vmax = np.percentile(logimg[good], 99.9) if good.any() else 1.0
    with atomic_write(path, "wb") as fh:
        mpimg.imsave(fh, logimg, vmin=0.0, vmax=max(vmax, 1e-9), cmap="viridis", format="png")


class LiveMonitor:
    """-m: a pyplot window showing the latest curve, refreshed from the main thread."""

    def __init__(self):
        import matplotlib

        if (
            not os.environ.get("DISPLAY")
            and not os.environ.get("WAYLAND_DISPLAY")
            and sys.platform.startswith("linux")
        ):
            raise RuntimeError("no display (DISPLAY is not set)")
        import matplotlib.pyplot as plt

        backend = matplotlib.get_backend().lower()
        if backend in ("agg", "pdf", "svg", "ps", "cairo", "template"):
            raise RuntimeError(f"matplotlib backend {backend!r} cannot open a window")
        self.plt = plt
        plt.ion()
        self.fig, self.ax = plt.subplots()
        (self.line,) = self.ax.plot([], [], lw=1)
        self.ax.set_yscale("log")
        self.ax.set_xlabel("q (1/nm)")
        self.ax.set_ylabel("I")
        self._latest = None
        self._shown = None
        self._lock = threading.Lock()

    def push(self, name, q, intensity):
        with self._lock:
            self._latest = (name, q, intensity)

    def refresh(self, seconds=0.2):
        """Redraw with the latest curve and run the GUI loop for ``seconds``."""
        with self._lock:
            latest = self._latest
        if latest is not None and latest is not self._shown:
            name, q, intensity = latest
            good = np.isfinite(intensity) & (intensity > 0)
            self.line.set_data(q[good], intensity[good])
            self.ax.relim()
            self.ax.autoscale_view()
            self.ax.set_title(name)
            self._shown = latest
        self.plt.pause(seconds)


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
        if "nexus" in self.formats:  # NXazint1d files (clients/saxsdog_nexus.py)
            from gpusaxs.clients.saxsdog_nexus import NexusCollector

            self.hdf5 = NexusCollector(
                None if integrator is None else integrator.q, cal, self.calibration_key
            )
        self.monitor = None
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
        if self.args.svg:
            _plot_curve_svg(out_path.with_suffix(".svg"), q, intensity, name)
        if self.args.png:
            from gpusaxs.io.images import read_image

            _frame_png(out_path.with_suffix(".png"), read_image(image_path, shape=self.shape))
        if self.hdf5 is not None:
            self.hdf5.add(
                self.hdf5.file_for(image_path, out_path), name, intensity, error, source=image_path
            )
        if chi and "chi" in self.formats:
            from gpusaxs.io.chi import write_chi

            write_chi(
                out_path,
                q,
                intensity,
                error=error,
                title=name,
                calibration_key=self.calibration_key,
            )

    def on_done(self, image_path, out_path, q, intensity):
        self.progress.advance()
        if self.monitor is not None:
            self.monitor.push(Path(image_path).name, q, intensity)

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
        from gpusaxs.errors import GpusaxsError
        from gpusaxs.io.frames import HDF5_SUFFIXES, frame_sources

        if _is_temp(Path(image_path).name):
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
        if not self.args.inplace and _inside(key, self.out_dir_resolved):
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
        from gpusaxs.io.settle import FileSettler

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
        from gpusaxs.errors import ImageReadError
        from gpusaxs.io.images import read_image

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
        from gpusaxs.pipeline import curve_path

        return curve_path(image_path, root, out_dir=self.out_dir, inplace=self.args.inplace)

    def _already_done(self, image_path, out):
        """Resume: True when the curve exists and was made with this calibration (its key);
        a curve of another calibration, or without a key, is counted in ``redone``."""
        if "chi" in self.formats:
            if not out.is_file():
                return False
            from gpusaxs.io.chi import read_chi, read_chi_key

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
                    if sub.is_dir() and not _is_temp(sub.name):
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
            dirnames[:] = sorted(d for d in dirnames if not _is_temp(d))
            dp = Path(dirpath)
            if not self.args.inplace and _inside(dp, self.out_dir_resolved):
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
        from gpusaxs.gpu_engine import fallback_lines  # issue 25: GPU fallbacks are visible

        return "\n".join(
            [
                f"{PROG}: {head}{', '.join(parts)} in {format_duration(total)} "
                f"({setup}; {rate:.1f} frames/s after set-up)"
            ]
            + [f"{PROG}: engine fallback {line}" for line in fallback_lines()]
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


def _start_watch(dog, roots):
    """Start watchdog observers on the input folders (recursive); return the observer."""
    from watchdog.events import FileSystemEventHandler
    from watchdog.observers import Observer

    class Handler(FileSystemEventHandler):
        def __init__(self, root):
            self.root = root

        def _file(self, path):
            try:
                dog.offer(Path(path), self.root, check_complete=True)
            except Exception as exc:  # never kill the observer thread
                dog.report(path, exc)

        def on_created(self, event):
            if event.is_directory:
                # files created before the new folder was watched: scan it (dedupe after)
                for dp, dn, fn in os.walk(event.src_path):
                    dn[:] = [d for d in dn if not _is_temp(d)]
                    for n in fn:
                        self._file(os.path.join(dp, n))
            else:
                self._file(event.src_path)

        def on_modified(self, event):
            if not event.is_directory:
                self._file(event.src_path)

        def on_closed(self, event):
            if not event.is_directory:
                self._file(event.src_path)

        def on_moved(self, event):
            if event.is_directory:
                self.on_created(
                    type("E", (), {"is_directory": True, "src_path": event.dest_path})()
                )
            else:
                self._file(event.dest_path)

    observer = Observer()
    for folder, root in roots:
        if folder.is_dir():
            observer.schedule(Handler(root), str(folder), recursive=True)
    observer.daemon = True
    observer.start()
    return observer


def _dask_pipeline(args, dog, integrator):
    """--scheduler: a Dask client and a DaskPipeline that feeds the run's frames to it."""
    from gpusaxs.distributed import DaskPipeline, connect, dashboard_link

    client = connect(args.scheduler)
    link = dashboard_link(client)
    if not args.silent:
        n = len(client.scheduler_info().get("workers", {}))
        _err(
            f"Dask: {n} workers at {client.scheduler.address}"
            + (f", dashboard {link}" if link else "")
        )
    extras = dog.hdf5 is not None or args.svg
    pipe = DaskPipeline(
        client,
        integrator,
        frames_per_task=args.frames_per_task,
        batch_size=args.batch_size,
        write_chi="chi" in dog.formats,
        client_writer=(lambda i, o, q, I, e: dog.write(i, o, q, I, e, chi=False))
        if extras
        else None,
        on_done=dog.on_done,
        on_error=dog.on_error,
        backend=args.backend,
        threads=1 if args.scheduler.startswith("local:") else None,
    )
    return client, pipe


def _install_signal_handlers():
    """Ctrl-C (SIGINT) and SIGTERM stop the run gracefully (KeyboardInterrupt in main).

    Installed explicitly: a shell starts background jobs with SIGINT ignored, and a watching
    saxsdog must still stop on it.  Returns a dict that receives the signal number.
    """
    caught = {}
    if threading.current_thread() is not threading.main_thread():
        return caught

    def handler(signum, frame):
        caught.setdefault("signum", signum)
        raise KeyboardInterrupt

    signal.signal(signal.SIGINT, handler)
    signal.signal(signal.SIGTERM, handler)
    return caught


def _image_suffixes():
    from gpusaxs.io.images import IMAGE_SUFFIXES

    return IMAGE_SUFFIXES


def _output_problem(out):
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
        import tempfile

        try:
            fd, tmp = tempfile.mkstemp(prefix=".saxsdog-probe-", suffix=".tmp", dir=out)
            os.close(fd)
            os.unlink(tmp)
        except OSError as exc:
            return f"not writable ({exc.strerror or exc})"
    return None


#: Up to this many frames (and without -w) the NumPy engine is used: it needs no numba import
#: nor compiled-kernel load (about 1-3 s), which a few frames would not repay.
SMALL_JOB_FRAMES = 8


def _make_integrator(args, cal, dog):
    """The Integrator, with "building the integration matrix" and a progress bar on a build."""
    from gpusaxs.integrator import Integrator

    bar = Progress(
        total=int(cal.imagesize[0]),
        silent=args.silent,
        label=f"{PROG}: building the integration matrix",
        unit="rows",
    )
    engine = None
    if not args.watch and len(dog.pending) <= SMALL_JOB_FRAMES and args.backend != "cupy":
        from gpusaxs.light_engine import BincountEngine

        engine = BincountEngine

    def progress(done, total):
        bar.total = total
        bar.set_done(done)

    integrator = Integrator(
        cal,
        backend=args.backend,
        progress=progress,
        cache_dir=False if args.no_cache else None,
        engine=engine,
    )
    if integrator.backend_name == "cupy" and engine is not None:
        integrator._engine = None  # the GPU engine: ignore the small-job choice
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
        _err(f"warning: {info['cache_error']}")
    if engine is None:
        _warm_up(integrator, dog, args.silent)
    return integrator


def _warm_up(integrator, dog, silent):
    """Make the engine and load (or, once, compile) the kernel the run uses, timing each
    part (seconds) for the summary line."""
    t0 = time.perf_counter()
    eng = integrator.engine  # the CPU engine's layout: from the cache, or made now
    dog.setup_parts["engine"] = time.perf_counter() - t0
    compiled = []

    def notice():
        if not compiled and not silent:
            _err("compiling the CPU kernels (first run only)")
        compiled.append(True)

    if hasattr(eng, "on_compile"):
        eng.on_compile = notice  # kept for the run: another pixel type compiles, said too
    t0 = time.perf_counter()
    import numpy as np

    # the variant the run uses (errors "poisson"), for PILATUS' int32 pixels
    eng.sums(np.zeros((2, *integrator.shape), np.int32), errors="poisson")
    what = "kernels compiled" if compiled else "kernels loaded"
    dog.setup_parts[what] = time.perf_counter() - t0


def main(argv=None):
    """Run saxsdog; returns the exit status (0 ok, 1 failures, 2 usage error, 130 Ctrl-C)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.threads < 1:
        parser.error("-t/--threads must be at least 1")
    if args.batch_size < 1:
        parser.error("--batch-size must be at least 1")
    if args.nowalk and not args.watch:
        _err("warning: -n without -w: nothing to do")
    t_start = time.perf_counter()

    roots = []
    for p in args.paths:
        path = Path(p)
        if path.is_dir():
            roots.append((path, path))
        elif path.exists() or ("::" in p and Path(p.split("::")[0]).is_file()):
            roots.append((path, path.parent))  # a file, or file.h5::/dataset[::N]
        else:
            _err(f"error: {p}: no such file or folder")
            return 2
    if args.scheduler and (args.watch or args.png or args.plotmonitor):
        _err("error: --scheduler works on a fixed set of files: not with -w, -p or -m")
        return 2
    if args.frames_per_task < 1:
        parser.error("--frames-per-task must be at least 1")
    if args.watch and not any(p.is_dir() for p, _ in roots):
        _err("error: -w needs at least one folder to watch")
        return 2

    if not args.inplace:
        problem = _output_problem(Path(args.out))
        if problem:
            _err(f"error: -o {args.out}: {problem}")
            return 2

    from gpusaxs.errors import GpusaxsError

    try:
        from gpusaxs.calibration import Calibration
        from gpusaxs.matrix_cache import matrix_key

        cal = Calibration.from_file(args.calibration)
        cal.check_limits()  # before anything is read or built
        key = matrix_key(cal)  # the Integrator's matrix_key (resume checks)
        calibration_text = json.dumps(cal.to_dict("flat"), indent=1)
    except GpusaxsError as exc:
        _err(f"error: {exc}")
        return 2
    except OSError as exc:
        _err(f"error: {args.calibration}: {exc.strerror or exc}")
        return 2

    dog = Saxsdog(args, cal, None, calibration_text, calibration_key=key)
    if args.plotmonitor:
        try:
            dog.monitor = LiveMonitor()
        except Exception as exc:
            _err(f"warning: -m: no live plot window ({exc})")
    caught = _install_signal_handlers()
    observer = None
    try:
        if args.watch:
            dog.start_settler(args.wait_timeout)
            observer = _start_watch(dog, roots)  # before the walk: no gap
        if not args.nowalk:
            dog.walk(roots)  # frames are kept until the pipeline exists
        if not args.watch and not dog.pending and not dog.skipped and not dog.failed_early:
            _err(
                "warning: no image found in "
                + ", ".join(args.paths)
                + " (suffixes: "
                + " ".join(_image_suffixes())
                + "); nothing to do"
            )
            return 1
        integrator = _make_integrator(args, cal, dog)
    except KeyboardInterrupt:
        if observer is not None:
            observer.stop()
        if dog.settler is not None:
            dog.settler.stop()
        _err("interrupted during set-up")
        return 128 + caught.get("signum", signal.SIGINT)
    except (GpusaxsError, MemoryError) as exc:
        if observer is not None:
            observer.stop()
        if dog.settler is not None:
            dog.settler.stop()
        _err(f"error: {exc}" if str(exc) else f"error: {type(exc).__name__}")
        return 2
    dog.setup_seconds = time.perf_counter() - t_start
    t_start = time.perf_counter()

    client = None
    if args.scheduler:
        try:
            client, pipeline = _dask_pipeline(args, dog, integrator)
        except Exception as exc:
            _err(f"error: --scheduler {args.scheduler}: {exc}")
            return 2
    else:
        from gpusaxs.pipeline import FramePipeline

        pipeline = FramePipeline(
            integrator,
            batch_size=args.batch_size,
            read_threads=args.threads,
            on_done=dog.on_done,
            on_error=dog.on_error,
            errors=True,
            writer=dog.write,
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
            _err("interrupted again: stopping without waiting")
            return 130
    if client is not None:
        from gpusaxs.distributed import close_client

        close_client(client)
    written_h5 = []
    if dog.hdf5 is not None:
        try:
            written_h5 = dog.hdf5.write_all()
        except Exception as exc:
            _err(f"error: writing the HDF5 file failed: {exc}")
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
