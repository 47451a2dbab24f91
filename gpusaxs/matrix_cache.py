"""Cache of built integration matrices: in memory, and on disk keyed by a hash.

The key covers the calibration (``Calibration.key()``, which includes the mask file's content),
an explicit mask, the q bin edges and the builder's format version, so the next process with
the same calibration loads its matrix (~15 ms for a PILATUS 1M: raw arrays behind a JSON
header) instead of building it (seconds; a minute for an EIGER 16M).

The disk cache is on by default, in ``$GPUSAXS_CACHE_DIR``, else ``$XDG_CACHE_HOME/gpusaxs``,
else ``~/.cache/gpusaxs``.  It is bounded in size (``$GPUSAXS_CACHE_MAX_MB``, default 2048 MB):
after a write the least recently used files (by modification time, refreshed on every load) are
removed until it fits.  Safe with concurrent processes: a file is written under a unique hidden
temporary name and renamed, so a reader sees a whole file or none; two processes building the
same key both write, the second rename wins with identical content; a file removed by another
process's eviction while being loaded is still read whole (POSIX unlink).

Integrity: the header holds the CRC-32 of the raw arrays, checked on every load (~10 ms for a
PILATUS 1M matrix, 22 MB); the header's fields, dtypes and sizes are checked against the
calibration (image shape, oversampling) before any array is read, and the index arrays are
checked for range.  A file that fails any check is rebuilt and replaced, never used.
"""

import hashlib
import json
import mmap
import os
import time
import weakref
import zlib
from collections import OrderedDict
from pathlib import Path
from threading import Lock
from typing import Any

import numpy as np

from .cache_dir import cache_max_bytes, default_cache_dir
from .io.atomic import atomic_write
from .io.images import MAX_PIXELS
from .matrix import FORMAT_VERSION, IntegrationMatrix, build_matrix
from .matrix_limits import check_limits

__all__ = [
    "matrix_key",
    "default_cache_dir",
    "cache_max_bytes",
    "save_matrix",
    "load_matrix",
    "get_matrix",
    "evict",
    "remember_matrix",
]

_MEMORY: "OrderedDict[str, IntegrationMatrix]" = OrderedDict()
_MEMORY_SIZE = 4
_LOCK = Lock()
_FIELDS = ("shape", "q_edges", "pixel_ptr", "bins", "weights", "pixel_scale", "norm")
#: Default bound of the disk cache, MB (a PILATUS 1M matrix is 22 MB, an EIGER 16M one ~450 MB).
_PREFIX, _SUFFIX = "matrix-", ".gsm"
_LEGACY_SUFFIXES = (".npz",)  # files of older versions: evicted like the others
#: First bytes of a matrix file; then the JSON header's length (8 bytes, little endian), the
#: header {"fields": [[name, dtype, shape, offset], ...]} and the raw arrays, 64-byte aligned.
_MAGIC = b"GPUSAXS-MATRIX-2\n"
_ALIGN = 64
#: Largest header read (bytes): a real one is < 1 kB.
_MAX_HEADER = 1 << 16
#: dtype and number of dimensions of each stored array
_KINDS = {
    "shape": ("<i8", 1),
    "q_edges": ("<f8", 1),
    "pixel_ptr": ("<i8", 1),
    "bins": ("<i4", 1),
    "weights": ("<f4", 1),
    "pixel_scale": ("<f4", 1),
    "norm": ("<f8", 1),
    "azimuth_edges": ("<f8", 1),
}
_OPTIONAL = ("radial_unit", "azimuth_edges")  # stored only when not at their default


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
        h.update(
            repr(
                sorted(
                    (k, np.asarray(v, dtype=np.float64).tolist() if k != "unit" else v)
                    for k, v in options.items()
                )
            ).encode()
        )
    for name, arr in (("mask", mask), ("edges", q_edges)):
        h.update(name.encode())
        if arr is not None:
            arr = np.ascontiguousarray(arr)
            h.update(str((arr.shape, arr.dtype.str)).encode())
            h.update(arr.tobytes())
    return h.hexdigest()


def save_arrays(path, arrays, meta=None):
    """Write named arrays behind a JSON header with their CRC-32, under a unique temporary
    name, then rename (raw bytes, 64-byte aligned: a load is one read and one CRC pass)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fields, offset, crc = [], 0, 0
    for name, arr in arrays.items():
        fields.append([name, arr.dtype.str, list(arr.shape), offset])
        offset += -(-arr.nbytes // _ALIGN) * _ALIGN
        crc = zlib.crc32(bytes(-arr.nbytes % _ALIGN), zlib.crc32(arr.data.cast("B"), crc))
    head = {"fields": fields, "meta": meta or {}, "data_bytes": offset, "crc32": crc}
    header = json.dumps(head).encode()
    pad = -(len(_MAGIC) + 8 + len(header)) % _ALIGN
    with atomic_write(path, "wb") as fh:
        fh.write(_MAGIC + len(header + b" " * pad).to_bytes(8, "little") + header + b" " * pad)
        for arr in arrays.values():
            fh.write(arr.data.cast("B"))
            fh.write(b"\0" * (-arr.nbytes % _ALIGN))
    return crc


def load_arrays(path, check):
    """(arrays, meta, crc32) of a file of :func:`save_arrays`; ValueError naming the file and the
    field on any mismatch.  ``check(fields)``, given {name: (dtype, shape)} from the header,
    raises ValueError when the sizes are not the expected ones (before anything is read)."""
    with open(path, "rb") as fh:
        size = os.fstat(fh.fileno()).st_size
        head = fh.read(len(_MAGIC) + 8)
        if head[: len(_MAGIC)] != _MAGIC:
            raise ValueError(f"{path}: not a gpusaxs matrix file (or an older format)")
        n = int.from_bytes(head[len(_MAGIC) :], "little")
        if not 0 < n <= _MAX_HEADER:
            raise ValueError(f"{path}: header of {n} bytes")
        try:
            header = json.loads(fh.read(n))
            data_bytes = int(header["data_bytes"])
            crc = int(header["crc32"])
            layout = [
                (str(k), np.dtype(d), tuple(map(int, s)), int(o)) for k, d, s, o in header["fields"]
            ]
        except (ValueError, TypeError, KeyError) as exc:
            raise ValueError(f"{path}: bad header ({exc})") from None
        start = len(_MAGIC) + 8 + n
        if size != start + data_bytes:
            raise ValueError(
                f"{path}: truncated matrix file ({size} bytes, the header says "
                f"{start + data_bytes})"
            )
        end = 0
        for name, dt, shape, offset in layout:
            nbytes = dt.itemsize * int(np.prod(shape, dtype=np.int64))
            if offset < end or offset % _ALIGN or min(shape, default=0) < 0:
                raise ValueError(f"{path}: field {name}: bad offset or shape in the header")
            end = offset + nbytes
        if end > data_bytes:
            raise ValueError(f"{path}: the header's fields overrun the data")
        check({name: (dt, shape) for name, dt, shape, _ in layout})
        data = _read_into(fh, data_bytes)
    if zlib.crc32(data) != crc:
        raise ValueError(f"{path}: checksum mismatch (a corrupt matrix file)")
    arrays = {
        name: np.frombuffer(data, dt, int(np.prod(shape, dtype=np.int64)), offset).reshape(shape)
        for name, dt, shape, offset in layout
    }
    return arrays, header.get("meta", {}), crc


def _matrix_bounds(path, cal):
    """The header check of a matrix file: fields, dtypes and sizes bounded by ``cal``'s image
    shape and oversampling (None: by the file's own image shape and ``MAX_PIXELS``)."""

    def check(fields):
        want = set(_FIELDS)
        have = set(fields)
        if not want <= have <= want | {"azimuth_edges"}:
            raise ValueError(f"{path}: fields {sorted(have)}, expected {sorted(want)}")
        for name, (dt, shape) in fields.items():
            if dt.str != _KINDS[name][0] or len(shape) != _KINDS[name][1]:
                raise ValueError(f"{path}: field {name} is {dt.str} {shape}")
        if fields["shape"][1] != (2,):
            raise ValueError(f"{path}: field shape has {fields['shape'][1]} entries")
        if cal is not None:
            n_pixels = int(cal.imagesize[0]) * int(cal.imagesize[1])
            per_pixel = int(cal.oversampling) ** 2
        else:
            n_pixels, per_pixel = MAX_PIXELS, 1024
        (ptr,), (nnz,), (nw,) = fields["pixel_ptr"][1], fields["bins"][1], fields["weights"][1]
        if ptr - 1 > n_pixels or fields["pixel_scale"][1] != (ptr - 1,):
            raise ValueError(
                f"{path}: field pixel_ptr has {ptr} entries, the image {n_pixels} pixels"
            )
        if cal is not None and ptr - 1 != n_pixels:
            raise ValueError(
                f"{path}: field pixel_ptr has {ptr} entries, the image {n_pixels} pixels"
            )
        if nnz != nw or nnz > (ptr - 1) * per_pixel:
            raise ValueError(
                f"{path}: fields bins/weights have {nnz}/{nw} entries, "
                f"at most {(ptr - 1) * per_pixel}"
            )
        if fields["norm"][1][0] > nnz + (1 << 20):
            raise ValueError(f"{path}: field norm has {fields['norm'][1][0]} bins")

    return check


def save_matrix(matrix, path):
    """Write a matrix to ``path`` (:func:`save_arrays`: raw arrays and their CRC-32)."""
    arrays = {f: np.ascontiguousarray(getattr(matrix, f)) for f in _FIELDS}
    arrays["shape"] = np.asarray(matrix.shape, dtype="<i8")
    meta = {}
    if getattr(matrix, "radial_unit", "q_nm^-1") != "q_nm^-1":
        meta["radial_unit"] = str(matrix.radial_unit)
    if getattr(matrix, "azimuth_edges", None) is not None:
        arrays["azimuth_edges"] = np.ascontiguousarray(matrix.azimuth_edges)
    return save_arrays(path, arrays, meta)


def load_matrix(path, cal=None):
    """Read a matrix written by :func:`save_matrix`; ValueError naming the file and the field
    if it is not one, is truncated, fails its checksum or does not fit ``cal`` (optional: the
    calibration it must belong to)."""
    fields, meta, crc = load_arrays(path, _matrix_bounds(path, cal))
    shape = tuple(int(v) for v in fields["shape"])
    n_pixels, ptr, bins = shape[0] * shape[1], fields["pixel_ptr"], fields["bins"]
    if min(shape) <= 0 or len(ptr) != n_pixels + 1:
        raise ValueError(f"{path}: field shape {shape} does not match pixel_ptr")
    if cal is not None and shape != tuple(int(v) for v in cal.imagesize):
        raise ValueError(f"{path}: field shape {shape}, the calibration's image is {cal.imagesize}")
    if ptr[0] != 0 or ptr[-1] != len(bins) or (len(ptr) > 1 and np.diff(ptr).min() < 0):
        raise ValueError(f"{path}: field pixel_ptr is not a valid index")
    if len(bins) and (bins.min() < 0 or bins.max() >= len(fields["norm"])):
        raise ValueError(f"{path}: field bins holds a bin outside 0..{len(fields['norm']) - 1}")
    fields.update({k: v for k, v in meta.items() if k in _OPTIONAL})
    fields["shape"] = shape
    matrix = IntegrationMatrix(**fields)
    _remember_origin(matrix, path, crc)
    return matrix


# -- arrays derived from a cached matrix (the CPU engine's layout) ---------------------------
_ORIGIN: dict = {}  # id(matrix) -> (weakref to it, its cache file, the file's CRC-32)


def _remember_origin(matrix, path, crc):
    ident = id(matrix)
    with _LOCK:
        _ORIGIN[ident] = (weakref.ref(matrix, lambda _: _ORIGIN.pop(ident, None)), str(path), crc)


def cached_derived(matrix, name, build, check):
    """Arrays derived from ``matrix`` (a dict: arrays and ints), kept in a file beside its
    cache file (``<matrix file stem>.<name>.gsm``) under the same integrity rules.

    ``build()`` makes them; ``check(arrays)`` raises ValueError if loaded arrays do not fit the
    matrix (sizes, index ranges).  The file also records the matrix file's CRC-32: it is used
    only with that very matrix.  Returns (arrays, source): source "disk", "built" or
    "uncached" (a matrix not from the disk cache).
    """
    with _LOCK:
        origin = _ORIGIN.get(id(matrix))
    if origin is None or origin[0]() is not matrix:
        return build(), "uncached"
    _, matrix_path, matrix_crc = origin
    path = Path(matrix_path).with_suffix(f".{name}{_SUFFIX}")

    def bounds(fields):
        total = sum(
            dt.itemsize * int(np.prod(shape, dtype=np.int64)) for dt, shape in fields.values()
        )
        if total > 4 * (matrix.nbytes + 8 * matrix.n_pixels) + (1 << 20):
            raise ValueError(f"{path}: {total} bytes of arrays, more than its matrix allows")

    try:
        arrays, meta, _ = load_arrays(path, bounds)
        if meta.get("matrix_crc32") != matrix_crc:
            raise ValueError(f"{path}: made from another matrix file")
        arrays.update({k: int(v) for k, v in meta.get("ints", {}).items()})
        check(arrays)
        _touch(path)
        return arrays, "disk"
    except (OSError, ValueError, KeyError, TypeError):
        pass  # absent or corrupt: built and replaced
    arrays = build()
    plain = {k: np.ascontiguousarray(v) for k, v in arrays.items() if isinstance(v, np.ndarray)}
    ints = {k: int(v) for k, v in arrays.items() if not isinstance(v, np.ndarray)}
    try:
        save_arrays(path, plain, {"matrix_crc32": matrix_crc, "ints": ints})
        evict(path.parent, keep=path)
    except OSError:
        pass  # a read-only cache folder: built again next time
    return arrays, "built"


def _read_into(fh, size):
    """The next ``size`` bytes of ``fh`` as a memoryview of a private copy (ValueError if the
    file has fewer).

    The copy goes into anonymous memory mapped with MAP_POPULATE where the platform has it
    (its pages are faulted in by one call: ~14 ms for a PILATUS 1M matrix, against ~30 ms for a
    bytearray's page-by-page faults).  A map of the file itself would be faster still, but a
    file truncated in place behind it would kill the process with SIGBUS.
    """
    if size == 0:
        return memoryview(b"")
    try:
        flags = mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS | mmap.MAP_POPULATE
        blob = mmap.mmap(-1, size, flags=flags)
    except (AttributeError, OSError):  # not Linux: a plain buffer
        blob = bytearray(size)
    got = fh.readinto(blob)
    if got != size:
        raise ValueError(f"{fh.name}: truncated matrix file (file shrank while read)")
    return memoryview(blob)


def evict(cache_dir, max_bytes=None, keep=None):
    """Remove the least recently used matrix files of ``cache_dir`` until the folder holds at
    most ``max_bytes`` (default :func:`cache_max_bytes`); ``keep`` (a path) is never removed.
    Returns the list of removed paths.  Files vanishing meanwhile (another process) are skipped.
    """
    max_bytes = cache_max_bytes() if max_bytes is None else int(max_bytes)
    entries = []
    try:
        with os.scandir(cache_dir) as it:
            for e in it:
                if e.name.startswith(_PREFIX) and e.name.endswith((_SUFFIX, *_LEGACY_SUFFIXES)):
                    try:
                        st = e.stat()
                    except FileNotFoundError:
                        continue
                    entries.append((st.st_mtime, st.st_size, Path(e.path)))
    except FileNotFoundError:
        return []
    total = sum(size for _, size, _ in entries)
    removed = []
    for _, size, path in sorted(entries, key=lambda t: t[0]):
        if total <= max_bytes:
            break
        if keep is not None and path == Path(keep):
            continue
        try:
            path.unlink()
            removed.append(path)
        except FileNotFoundError:
            pass
        total -= size
    return removed


def _touch(path):
    """Mark a cache file as just used (LRU order is by modification time)."""
    try:
        os.utime(path)
    except OSError:
        pass


def get_matrix(
    cal: Any,
    mask: Any = None,
    q_edges: Any = None,
    cache_dir: Any = None,
    progress: Any = None,
    info: dict[str, Any] | None = None,
    options: dict[str, Any] | None = None,
) -> IntegrationMatrix:
    """The matrix of a calibration: from memory, from the disk cache, or freshly built.

    cache_dir: the disk cache folder; None = :func:`default_cache_dir`; False = no disk cache.
    progress: callable(done_rows, total_rows) while building.  info: an optional dict filled
    with ``key``, ``source`` ("memory", "disk" or "built"), ``seconds`` (to get the matrix),
    ``path`` (the cache file or None) and ``cache_error`` (why the cache was not written, or
    None).  The calibration's size limits (:func:`gpusaxs.matrix_limits.check_limits`) are
    checked before building.  options: build_matrix's binning keywords (``unit``,
    ``azimuth_range``, ``azimuth_edges``).
    """
    t0 = time.perf_counter()
    options = _binning_options(options)
    key = matrix_key(cal, mask, q_edges, options)
    if cache_dir is False:
        cache_dir = None
    elif cache_dir is None:
        cache_dir = default_cache_dir()
    path = None if cache_dir is None else Path(cache_dir) / f"{_PREFIX}{key[:32]}{_SUFFIX}"
    source = "memory"
    cache_error = None
    with _LOCK:
        matrix = _MEMORY.get(key)
        if matrix is not None:
            _MEMORY.move_to_end(key)
    if matrix is None and path is not None:
        try:
            matrix = load_matrix(path, cal)
            source = "disk"
            _touch(path)
        except (OSError, ValueError, KeyError, TypeError, EOFError):
            matrix = None  # absent or corrupt: (re)built and replaced below
    if matrix is None:
        check_limits(cal, q_edges=q_edges)
        matrix = build_matrix(cal, mask=mask, q_edges=q_edges, progress=progress, **options)
        source = "built"
    # a new build, or a matrix from memory not yet in this cache folder, is written there
    if path is not None and (source == "built" or (source == "memory" and not path.is_file())):
        try:
            _remember_origin(matrix, path, save_matrix(matrix, path))
            evict(path.parent, keep=path)
        except OSError as exc:  # read-only or full cache folder: work without it
            cache_error = f"cannot write the matrix cache {path}: {exc.strerror or exc}"
    remember_matrix(key, matrix)
    if info is not None:
        info.update(
            key=key,
            source=source,
            seconds=time.perf_counter() - t0,
            path=None if path is None else str(path),
            cache_error=cache_error,
        )
    return matrix


def remember_matrix(key, matrix):
    """Put a matrix built elsewhere (a Dask worker receives the client's) in the memory cache,
    so that ``get_matrix`` of the same key returns it without building or reading a file."""
    with _LOCK:
        _MEMORY[key] = matrix
        _MEMORY.move_to_end(key)
        while len(_MEMORY) > _MEMORY_SIZE:
            _MEMORY.popitem(last=False)


# -- signed markers (the calibration schema's "validated" markers) ---------------------------
