"""Resuming a series after a restart: the ids already written to its latest NeXus file.

With a fixed calibration (``--calibration``), an image of a series whose start this server never
saw, and whose ``series_<id>[.n].nxs`` is in the output folder, continues that series in a new
file (``series_<id>.<n+1>.nxs``); the ids of the earlier file count as received, so the ids lost
between the last row written and the restart are ``missing`` at the series' end.
"""

import os
import re

import numpy as np

from .idset import IdRanges

#: rows never written by a killed writer hold this id (NXazintWriter's fill value)
EMPTY_ID = -1


def latest_file(root, series_id):
    """Name of the newest regular ``series_<id>[.n].nxs`` in ``root`` (no link), or None."""
    pat = re.compile(rf"^series_{int(series_id)}(?:\.(\d+))?\.nxs$")
    best, best_n = None, 0
    try:
        entries = list(os.scandir(root))
    except OSError:
        return None
    for e in entries:
        m = pat.match(e.name)
        if m and e.is_file(follow_symlinks=False):
            n = int(m.group(1) or 1)
            if n >= best_n:
                best, best_n = e.name, n
    return best


def _name(v):
    return v.decode("utf-8") if isinstance(v, bytes) else str(v)


def written_ids(path):
    """IdRanges of the complete rows of a (possibly killed) NXazint file; empty if unreadable."""
    import h5py

    try:
        try:
            f = h5py.File(path, "r", swmr=True)
        except OSError:
            f = h5py.File(path, "r")
        with f:
            entry = f[_name(f.attrs.get("default", "entry"))]
            data = entry[_name(entry.attrs.get("default", "data"))]
            ids = data["image_id"]
            n = min(ids.shape[0], data["I"].shape[0], data["I_errors"].shape[0])
            ids = ids[:n]
    except (OSError, KeyError, ValueError):
        return IdRanges()
    return IdRanges.from_ids(ids[ids != EMPTY_ID].astype(np.int64))
