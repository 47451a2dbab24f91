"""Cache of built integration matrices: in memory, and on disk keyed by a hash.

The key covers the calibration (``Calibration.key()``, which includes the mask file's content),
an explicit mask, the q bin edges and the builder's format version, so a restarted service with
the same calibration loads its matrix instead of rebuilding it.
"""
import hashlib
import os
from collections import OrderedDict
from pathlib import Path
from threading import Lock

import numpy as np

from .matrix import FORMAT_VERSION, IntegrationMatrix, build_matrix

_MEMORY = OrderedDict()
_MEMORY_SIZE = 4
_LOCK = Lock()
_FIELDS = ("shape", "q_edges", "pixel_ptr", "bins", "weights", "pixel_scale", "norm")
_OPTIONAL = ("radial_unit", "azimuth_edges")     # stored only when not at their default


def _binning_options(options):
    """The options that change the binning, without those at their defaults (so that the key
    of a default matrix is the same as before options existed)."""
    options = dict(options or {})
    if options.get("unit", "q_nm^-1") == "q_nm^-1":
        options.pop("unit", None)
    return {k: v for k, v in options.items() if v is not None}


def matrix_key(cal, mask=None, q_edges=None, options=None):
    """Hex digest identifying the matrix of (calibration, mask, q_edges, binning options).

    options: build_matrix's keyword arguments ``unit``, ``azimuth_range``, ``azimuth_edges``
    (defaults left out of the digest: the default matrix keeps its key).
    """
    h = hashlib.sha256()
    h.update(f"gpusaxs-matrix-v{FORMAT_VERSION}".encode())
    h.update(cal.key().encode())
    options = _binning_options(options)
    if options:
        h.update(repr(sorted((k, np.asarray(v, dtype=np.float64).tolist() if k != "unit" else v)
                             for k, v in options.items())).encode())
    for name, arr in (("mask", mask), ("edges", q_edges)):
        h.update(name.encode())
        if arr is not None:
            arr = np.ascontiguousarray(arr)
            h.update(str((arr.shape, arr.dtype.str)).encode())
            h.update(arr.tobytes())
    return h.hexdigest()


def default_cache_dir():
    """$GPUSAXS_CACHE_DIR if set, else None (no disk cache)."""
    value = os.environ.get("GPUSAXS_CACHE_DIR")
    return Path(value) if value else None


def save_matrix(matrix, path):
    """Write a matrix to ``path`` (.npz) under a temporary name, then rename."""
    from .io.atomic import atomic_write

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_write(path, "wb") as fh:
        fields = {f: np.asarray(getattr(matrix, f)) for f in _FIELDS}
        if matrix.radial_unit != "q_nm^-1":
            fields["radial_unit"] = np.asarray(matrix.radial_unit)
        if matrix.azimuth_edges is not None:
            fields["azimuth_edges"] = np.asarray(matrix.azimuth_edges)
        np.savez(fh, **fields)


def load_matrix(path):
    """Read a matrix written by :func:`save_matrix`."""
    with np.load(path, allow_pickle=False) as data:
        fields = {f: data[f] for f in _FIELDS}
        fields.update({f: data[f] for f in _OPTIONAL if f in data.files})
    if "radial_unit" in fields:
        fields["radial_unit"] = str(fields["radial_unit"])
    fields["shape"] = tuple(int(v) for v in fields["shape"])
    return IntegrationMatrix(**fields)


def get_matrix(cal, mask=None, q_edges=None, cache_dir=None, progress=None, options=None):
    """The matrix of a calibration: from memory, from ``cache_dir``, or freshly built.

    options: build_matrix's binning keywords (``unit``, ``azimuth_range``, ``azimuth_edges``).

    With a cache folder (argument or $GPUSAXS_CACHE_DIR) the matrix is also saved there, so the
    next process with the same calibration loads it instead of building it.
    """
    options = _binning_options(options)
    key = matrix_key(cal, mask, q_edges, options)
    cache_dir = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    path = None if cache_dir is None else cache_dir / f"matrix-{key[:32]}.npz"
    with _LOCK:
        matrix = _MEMORY.get(key)
        if matrix is not None:
            _MEMORY.move_to_end(key)
    on_disk = path is not None and path.is_file()
    if matrix is None and on_disk:
        try:
            matrix = load_matrix(path)
        except (OSError, ValueError, KeyError):
            on_disk = False            # a corrupt cache file is rebuilt and replaced
    if matrix is None:
        matrix = build_matrix(cal, mask=mask, q_edges=q_edges, progress=progress, **options)
    if path is not None and not on_disk:
        save_matrix(matrix, path)
    with _LOCK:
        _MEMORY[key] = matrix
        while len(_MEMORY) > _MEMORY_SIZE:
            _MEMORY.popitem(last=False)
    return matrix


def remember_matrix(key, matrix):
    """Put a matrix built elsewhere (a Dask worker receives the client's) in the memory cache,
    so that ``get_matrix`` of the same key returns it without building or reading a file."""
    with _LOCK:
        _MEMORY[key] = matrix
        _MEMORY.move_to_end(key)
        while len(_MEMORY) > _MEMORY_SIZE:
            _MEMORY.popitem(last=False)
