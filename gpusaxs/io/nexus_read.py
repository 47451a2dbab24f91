"""Reading NeXus NXazint1d / NXazint2d files written by :class:`gpusaxs.io.nexus.NXazintWriter`
(the layout is described there), also while a live writer is still appending to them."""

from __future__ import annotations

import json
import os
import time
from typing import Any

import numpy as np

from .._typing import PathLike

__all__ = ["read_nxazint", "EMPTY_ID", "LIVE_READ_ATTEMPTS", "h5py_module"]

#: image_id of a row not yet written (the dataset's fill value)
EMPTY_ID = -1


def h5py_module() -> Any:
    """h5py, imported on first use (25 ms: tools that may write NeXus start without it)."""
    import h5py

    return h5py


def _decode(v: object) -> str:
    return v.decode("utf-8") if isinstance(v, bytes) else str(v)


#: reads of a live file before an error is passed on (HDF5's SWMR does not cover variable-length
#: data: a reader can meet a row's source name before the writer's flush has put it in the file,
#: "len not positive after adjustment for EOA"); the pauses between them add up to 0.5 s, which
#: a file that is broken for good also costs before its error is passed on
LIVE_READ_ATTEMPTS = 5


def _open_for_reading(path: str) -> Any:
    """Open read-only; SWMR first (a live file being written, or one whose writer was killed)."""
    try:
        return h5py_module().File(path, "r", swmr=True)
    except OSError:
        return h5py_module().File(path, "r")


def read_nxazint(path: PathLike) -> dict[str, Any]:
    """Read an NXazint1d / NXazint2d file written by :class:`NXazintWriter`.

    On a file still being written (live mode) only the complete rows are returned; a read that
    meets a row the writer has not flushed whole (HDF5's SWMR does not cover the variable-length
    source names) is made again, up to LIVE_READ_ATTEMPTS times.

    Parameters
    ----------
    path : str or path-like
        The NeXus file.

    Returns
    -------
    dict
        ``radial`` (n_rad,), ``radial_unit`` (e.g. ``"q_nm^-1"``), ``azimuthal`` (n_azim,)
        degrees or None, ``intensity`` and ``sigma`` (n_img, [n_azim,] n_rad), ``image_ids``
        (n_img,) int64, ``sources`` (list of str, "" where none was given),
        ``calibration_key`` (str or None), ``calibration`` (dict or None), ``definition``,
        ``inputs`` (list of str or None).

    Examples
    --------
    >>> d = gpusaxs.read_nxazint("curves.h5")  # doctest: +SKIP
    >>> d["intensity"].shape  # (n_img, n_rad)  # doctest: +SKIP
    (100, 1002)
    """
    path = os.fspath(path)
    for attempt in range(LIVE_READ_ATTEMPTS):
        try:
            with _open_for_reading(path) as f:
                return _read_entry(f)
        except OSError:
            if attempt == LIVE_READ_ATTEMPTS - 1:
                raise
        time.sleep(0.05 * (attempt + 1))  # the writer's flush completes meanwhile
    raise AssertionError("unreachable")


def _read_entry(f: Any) -> dict[str, Any]:
    """read_nxazint of an open file."""
    entry_name = _decode(f.attrs.get("default", "entry"))
    entry = f[entry_name]
    data = entry[_decode(entry.attrs.get("default", "data"))]
    ids = data["image_id"][()]
    n = min(len(ids), data["I"].shape[0])
    if "I_errors" in data:
        n = min(n, data["I_errors"].shape[0])
    if "source" in data:
        n = min(n, data["source"].shape[0])
    written = ids[:n] != EMPTY_ID
    # rows are appended in order: take the complete prefix
    n = int(np.argmin(written)) if not written.all() else n
    inp = entry.get("reduction/input")
    unit = _decode(inp["unit"][()]) if inp is not None and "unit" in inp else None
    cal = None
    if inp is not None and "calibration" in inp:
        cal = json.loads(_decode(inp["calibration"][()]))
    key = entry.attrs.get("calibration_key")
    inputs = None
    if inp is not None and "input_files" in inp:
        inputs = [_decode(v) for v in inp["input_files"][()]]
    return {
        "definition": _decode(entry["definition"][()]) if "definition" in entry else None,
        "radial": data["radial_axis"][()],
        "radial_unit": unit,
        "azimuthal": data["azimuthal_axis"][()] if "azimuthal_axis" in data else None,
        "intensity": data["I"][:n],
        "sigma": data["I_errors"][:n] if "I_errors" in data else None,
        "image_ids": ids[:n],
        "sources": [_decode(v) for v in data["source"][:n]] if "source" in data else None,
        "calibration_key": None if key is None else _decode(key),
        "calibration": cal,
        "inputs": inputs,
    }
