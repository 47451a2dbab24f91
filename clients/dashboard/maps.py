"""The dashboard's grazing-incidence maps: the newest ``*.gi.nxs`` of a folder, read as an image.

``saxsleash dashboard --maps FOLDER`` starts one :class:`MapWatch`, a thread that looks at the
folder every ``interval`` seconds and reads the newest map (NeXus: the NXdata that ``@default``
names, its ``@signal`` over its two ``@axes``, each axis with ``units``) into a :class:`GiMap`
(docs/grazing.md writes them; any NeXus file of that layout reads). The page
(:mod:`.page`) draws it. No Bokeh here.
"""

import logging
import os
import threading
from dataclasses import dataclass

import numpy as np

from .polling import Poller

log = logging.getLogger("saxsleash.dashboard")

#: the maps' file name ending (gpusaxs.grazing_outputs.map_path)
SUFFIX = ".gi.nxs"


@dataclass(frozen=True)
class GiMap:
    """One map as the page draws it."""

    path: str  #: the file
    title: str  #: the frame's name (the file name without .gi.nxs)
    mtime: float  #: the file's modification time
    image: np.ndarray  #: float32 (n_vertical, n_horizontal), NaN where empty or <= 0
    x: np.ndarray  #: the horizontal axis' bin centres
    y: np.ndarray  #: the vertical axis' bin centres
    xlabel: str  #: e.g. "qip (1/nm)"
    ylabel: str  #: e.g. "qoop (1/nm)"

    def extent(self):
        """(x0, y0, width, height) of the image: the outer edges of the first and last cells."""

        def edges(c):
            step = (c[-1] - c[0]) / (len(c) - 1) if len(c) > 1 else 1.0
            return float(c[0] - step / 2), float(c[-1] - c[0] + step)

        x0, dw = edges(self.x)
        y0, dh = edges(self.y)
        return x0, y0, dw, dh

    def log_range(self):
        """(low, high) of the log colour scale: the 1st and 99.5th percentile of the positive
        cells, or None when there is none."""
        finite = self.image[np.isfinite(self.image)]
        if not finite.size:
            return None
        low, high = (float(v) for v in np.percentile(finite, (1, 99.5)))
        return low, max(high, low * 10 if low > 0 else 1.0)


def _text(value):
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    if isinstance(value, np.ndarray) and value.shape == ():
        return _text(value[()])
    return str(value)


def _names(value):
    """An attribute holding one name or a list of names, as a list of str."""
    if isinstance(value, (str, bytes)):
        return [_text(value)]
    return [_text(v) for v in np.atleast_1d(value)]


def _nxdata(h5):
    """The NXdata the file's ``@default`` chain names, else the first NXdata of an NXentry."""
    entry_name = _text(h5.attrs.get("default", "entry"))
    entry = h5.get(entry_name) if entry_name in h5 else None
    if entry is None:
        entry = next((h5[k] for k in h5 if hasattr(h5[k], "keys")), None)
    if entry is None:
        raise ValueError("no NXentry")
    name = _text(entry.attrs.get("default", "data"))
    if name in entry and "signal" in entry[name].attrs:
        return entry[name]
    for key in entry:
        group = entry[key]
        if hasattr(group, "attrs") and _text(group.attrs.get("NX_class", "")) == "NXdata":
            return group
    raise ValueError("no NXdata group")


def _axis(data, name):
    values = np.asarray(data[name][()], dtype=np.float64).ravel()
    units = _text(data[name].attrs.get("units", ""))
    return values, f"{name} ({units})" if units else name


def read_map(path):
    """The :class:`GiMap` of a NeXus file whose default NXdata holds a 2D signal over two axes
    (the first axis vertical, the second horizontal, NeXus' order)."""
    import h5py

    path = os.fspath(path)
    with h5py.File(path, "r") as h5:
        data = _nxdata(h5)
        signal = np.asarray(data[_text(data.attrs["signal"])][()], dtype=np.float64)
        if signal.ndim != 2:
            raise ValueError(f"the signal has {signal.ndim} dimensions, not 2")
        axes = _names(data.attrs["axes"])
        if len(axes) != 2 or "." in axes:
            raise ValueError(f"a map needs two named axes, not {axes}")
        y, ylabel = _axis(data, axes[0])
        x, xlabel = _axis(data, axes[1])
        mtime = os.stat(path).st_mtime
    if signal.shape != (len(y), len(x)):
        raise ValueError(f"the signal's shape {signal.shape} is not the axes' ({len(y)}, {len(x)})")
    image = signal.astype(np.float32)  # half the bytes sent to the browser
    image[~(image > 0)] = np.nan  # empty cells (the missing wedge) and <= 0: no colour
    name = os.path.basename(path)
    title = name[: -len(SUFFIX)] if name.endswith(SUFFIX) else os.path.splitext(name)[0]
    return GiMap(path, title, mtime, image, x, y, xlabel, ylabel)


def newest_map(folder):
    """(mtime, path) of the newest ``*.gi.nxs`` in ``folder`` (not its subfolders), or None."""
    best = None
    try:
        with os.scandir(folder) as it:
            for e in it:
                if not e.name.endswith(SUFFIX) or e.name.startswith("."):
                    continue
                try:
                    if not e.is_file():
                        continue
                    key = (e.stat().st_mtime_ns, e.name)
                except OSError:
                    continue
                if best is None or key > best[0]:
                    best = (key, e.path)
    except OSError:
        return None
    return None if best is None else (best[0][0], best[1])


class MapWatch(Poller):
    """Look at ``folder`` every ``interval`` s in a thread; keep the newest map read.

    :meth:`snapshot` gives (map or None, maps seen since start, note or None); the note says
    why the newest file could not be read.
    """

    thread_name = "dashboard-maps"

    def __init__(self, folder, interval=1.0):
        self.folder = os.fspath(folder)
        self.interval = max(0.05, float(interval))
        self._lock = threading.Lock()
        self._map = None
        self._seen = 0
        self._note = None
        self._key = None
        self._poller_init()

    def poll_once(self):
        """Read the newest map when it is another file or the file changed."""
        found = newest_map(self.folder)
        if found is None or found == self._key:
            return
        try:
            gimap = read_map(found[1])
        except Exception as exc:  # noqa: BLE001 - a half-written or foreign file: said, retried
            with self._lock:
                self._note = f"{os.path.basename(found[1])}: {exc}"
            return
        self._key = found
        with self._lock:
            self._map, self._note = gimap, None
            self._seen += 1

    def snapshot(self):
        with self._lock:
            return self._map, self._seen, self._note
