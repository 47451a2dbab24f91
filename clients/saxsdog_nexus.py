"""saxsdog --format nexus: the curves of each image folder in one NXazint1d file.

Same collection scheme as the ``hdf5`` format (curves gathered per output folder, each file
written once at the end under a temporary name and renamed), written by
:class:`gpusaxs.io.nexus.NXazintWriter`: the calibration (JSON, geometry, PONI), its key, the
units, the program and version and the input files are stored with the curves. Rows are
ordered by input file, then frame index; ``image_id`` is the frame's index in its file
(0 for a single-frame image), ``source`` the frame's name (``file`` or ``file::N``).
"""

import json
import os
import re
import threading
from pathlib import Path

import numpy as np

from gpusaxs.clients.saxsdog_outputs import Hdf5Collector
from gpusaxs.io.nexus import NXazintWriter, read_nxazint

__all__ = ["NexusCollector"]


def _natural(name):
    """Sort key: file name, then frame index as a number."""
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", name)]


def _frame_index(source):
    index = getattr(source, "index", None)
    if index is not None:
        return int(index)
    m = re.search(r"::(\d+)$", str(source))
    return int(m.group(1)) if m else 0


class NexusCollector(Hdf5Collector):
    """Curves per output folder, written as one NXazint1d file per folder by ``write_all``
    (``known_frames`` and ``write_all`` as the hdf5 format's collector)."""

    suffix = ".nxs"

    def __init__(self, q, calibration=None, calibration_key=None, options=None):
        self.options = dict(options or {})  # recorded as option_* (saxsdog --average)
        self.q = np.asarray(q, dtype=np.float64)
        self.calibration = calibration
        self.calibration_key = calibration_key
        self._lock = threading.Lock()
        self._files = {}  # path -> {frame name: (I, err, source path, index)}

    @classmethod
    def file_for(cls, image_path, out_path):
        """<folder of the curve>/<name of the image folder>.nxs"""
        file = getattr(image_path, "file", image_path)
        folder_name = Path(file).resolve().parent.name or "frames"
        return Path(out_path).parent / f"{folder_name}{cls.suffix}"

    def add(self, path, frame_name, intensity, error, source=None):
        src = source if source is not None else frame_name
        with self._lock:
            self._files.setdefault(Path(path), {})[str(frame_name)] = (
                np.asarray(intensity, dtype=np.float64),
                None if error is None else np.asarray(error, dtype=np.float64),
                os.path.abspath(os.fspath(getattr(src, "file", src))),
                _frame_index(src),
                os.path.abspath(str(src)),
            )

    def preload(self, path):
        """Load the curves of an existing file (resume): only with the same bins and key."""
        path = Path(path)
        with self._lock:
            if path in self._files:
                return
            self._files[path] = {}
        if not path.is_file():
            return
        try:
            d = read_nxazint(path)
        except (OSError, KeyError, ValueError):
            return  # unreadable: everything is recomputed
        if (
            d["radial"].shape != self.q.shape
            or not np.allclose(d["radial"], self.q)
            or (self.calibration_key is not None and d["calibration_key"] != self.calibration_key)
        ):
            return
        for k, src in enumerate(d["sources"] or []):
            if not src:
                continue
            name = os.path.basename(src)
            with self._lock:
                self._files[path][name] = (
                    d["intensity"][k],
                    d["sigma"][k],
                    src.split("::")[0],
                    int(d["image_ids"][k]),
                    src,
                )

    def _write(self, path, frames):
        names = sorted(frames, key=lambda n: (_natural(frames[n][2]), frames[n][3]))
        rows = [frames[n] for n in names]
        intensity = np.stack([r[0] for r in rows])
        sigma = None
        if all(r[1] is not None for r in rows):
            sigma = np.stack([r[1] for r in rows])
        inputs = sorted({r[2] for r in rows}, key=_natural)
        path.parent.mkdir(parents=True, exist_ok=True)
        with NXazintWriter(
            path,
            self.q,
            radial_unit="q_nm^-1",
            calibration=self.calibration,
            calibration_key=self.calibration_key,
            inputs=inputs,
            options={
                k: json.dumps(v) if isinstance(v, list) else v for k, v in self.options.items()
            },
        ) as w:
            w.append(
                intensity,
                sigma,
                np.array([r[3] for r in rows], dtype=np.int64),
                [r[4] for r in rows],
            )
