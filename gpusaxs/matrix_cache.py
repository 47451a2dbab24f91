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


def matrix_key(cal, mask=None, q_edges=None):
    """Hex digest identifying the matrix of (calibration, mask, q_edges)."""
    h = hashlib.sha256()
    h.update(f"gpusaxs-matrix-v{FORMAT_VERSION}".encode())
    h.update(cal.key().encode())
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
        np.savez(fh, **{f: np.asarray(getattr(matrix, f)) for f in _FIELDS})


def load_matrix(path):
    """Read a matrix written by :func:`save_matrix`."""
    with np.load(path, allow_pickle=False) as data:
        fields = {f: data[f] for f in _FIELDS}
    fields["shape"] = tuple(int(v) for v in fields["shape"])
    return IntegrationMatrix(**fields)


def get_matrix(cal, mask=None, q_edges=None, cache_dir=None, progress=None):
    """The matrix of a calibration: from memory, from ``cache_dir``, or freshly built.

    With a cache folder (argument or $GPUSAXS_CACHE_DIR) the matrix is also saved there, so the
    next process with the same calibration loads it instead of building it.
    """
    key = matrix_key(cal, mask, q_edges)
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
        matrix = build_matrix(cal, mask=mask, q_edges=q_edges, progress=progress)
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
