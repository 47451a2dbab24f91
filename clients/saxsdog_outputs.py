"""saxsdog's outputs beside the .chi curves: the HDF5 file per image folder
(:class:`Hdf5Collector`), the SVG plot of a curve and the PNG picture of a frame."""

import threading
import time
from pathlib import Path

import numpy as np

from gpusaxs.clients.saxsdog_parser import err
from gpusaxs.io.atomic import atomic_path, atomic_write


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
            err(f"{h5path}: cannot resume from this file ({exc}); frames are recomputed")
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


def plot_curve_svg(path, q, intensity, title):
    """SVG plot of one curve (log intensity), drawn without pyplot (thread-safe)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

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


def frame_png(path, image):
    """PNG picture of a frame (log scale, masked/negative pixels dark)."""
    import matplotlib.image as mpimg

    img = np.asarray(image, dtype=np.float64)
    good = np.isfinite(img) & (img > 0)
    logimg = np.zeros_like(img)
    logimg[good] = np.log10(img[good])
    vmax = np.percentile(logimg[good], 99.9) if good.any() else 1.0
    with atomic_write(path, "wb") as fh:
        mpimg.imsave(fh, logimg, vmin=0.0, vmax=max(vmax, 1e-9), cmap="viridis", format="png")
