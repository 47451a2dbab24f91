"""Frames of multi-frame files: EIGER/NeXus HDF5 (master + external-link data files, bslz4/LZ4
chunks through hdf5plugin), any HDF5 dataset named ``file.h5::/path``, multi-frame EDF/CBF
(fabio) and multi-page TIFF (tifffile), read one frame at a time (never the whole file).

A frame of such a file is named by a :class:`FrameRef`, a ``str`` of the form
``file::index`` or ``file::/dataset::index`` (index counted from 0 over the whole stack, an
EIGER master's data files one after the other), that :func:`gpusaxs.io.images.read_image`
also reads. :func:`frame_sources` lists what a path holds: the path itself for a single-frame
image, one FrameRef per frame for a stack. ``iter_frames(path)`` yields ``(source, frame)``.

An EIGER master's ``pixel_mask`` (``/entry/instrument/detector/detectorSpecific/pixel_mask``,
nonzero = bad) is applied to every frame read from it: those pixels get the invalid value of
the frame's dtype (NaN, -1, or the unsigned maximum, EIGER's own gap flag), so they carry no
weight, exactly as a masked pixel.

Hostile files: a frame's declared shape is checked (against the expected shape, and
``MAX_PIXELS``) before it is read; every stored bitshuffle/LZ4 chunk is checked
(:mod:`gpusaxs.io.bslz4`) before the HDF5 filter decodes it (a lying block size would crash
the process); external links must lead to a regular file inside the master's folder tree
(or a folder of ``$GPUSAXS_LINK_ROOTS``, or any with ``GPUSAXS_LINK_ROOTS=any``); only regular
files are opened (a FIFO would block forever).
"""

import atexit
import collections
import os
import re
import stat
import struct
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import ImageReadError, one_line
from .hdf5_checks import (
    PIXEL_MASK_PATH,
    bslz4_outer,
    check_bslz4_chunks,
    check_frame_shape,
    check_mask_dataset,
    hdf5_parts,
    invalid_value,
    is_hdf5,
    link_roots,
    register_hdf5_filters,
    regular_file,
)
from .image_files import MAX_PIXELS, check_frame, is_image_file, read_image_file

__all__ = [
    "FrameRef",
    "HDF5_SUFFIXES",
    "frame_sources",
    "read_frame",
    "iter_frames",
    "is_frame_source",
    "pixel_mask",
    "split_source",
    "is_eiger_data_file",
    "count_frames",
    "link_roots",
]

HDF5_SUFFIXES = (".h5", ".hdf5", ".hdf", ".nxs", ".nx5", ".cxi")
#: EIGER data files (reached through their master file; skipped by folder walks)
EIGER_DATA_RE = re.compile(r".*_data_\d{6}\.h5$", re.I)
_SEP = "::"


class FrameRef(str):
    """One frame of a stack: ``file::index`` or ``file::/dataset::index`` (a str).

    Attributes: ``file`` (str), ``dataset`` (HDF5 path or None: the file's frame data),
    ``index`` (int, or None for a single 2D dataset).
    """

    file: str
    dataset: str | None
    index: int | None  # type: ignore[assignment]  # shadows str.index (a frame number here)

    def __new__(cls, file, dataset=None, index=None):
        parts = [os.fspath(file)]
        if dataset is not None:
            parts.append(dataset)
        if index is not None:
            parts.append(str(int(index)))
        self = super().__new__(cls, _SEP.join(parts))
        self.file = os.fspath(file)
        self.dataset = dataset
        self.index = None if index is None else int(index)
        return self

    def __reduce__(self):
        return (FrameRef, (self.file, self.dataset, self.index))

    def curve_name(self, suffix=".chi"):
        """``<stem>_<index:05d><suffix>`` (``<stem><suffix>`` for a single 2D dataset)."""
        stem = Path(self.file).stem
        if self.index is None:
            return stem + suffix
        return f"{stem}_{self.index:05d}{suffix}"


def split_source(text):
    """``"f.h5::/entry/data/data::3"`` -> (file, dataset or None, index or None)."""
    text = os.fspath(text)
    parts = text.split(_SEP)
    file, rest = parts[0], parts[1:]
    dataset = index = None
    if rest and re.fullmatch(r"\d+", rest[-1]):
        index = int(rest.pop())
    if rest:
        dataset = _SEP.join(rest)
    return file, dataset, index


def is_eiger_data_file(path):
    """True for an EIGER data file name (``*_data_000001.h5``)."""
    return bool(EIGER_DATA_RE.match(os.path.basename(os.fspath(path))))


# ----------------------------------------------------------------------------- open stacks
class _Stack:
    """An open multi-frame file: ``n`` frames, ``read(i)``; one reader at a time."""

    def __init__(self, path, dataset):
        self.path, self.dataset = path, dataset
        self.lock = threading.Lock()
        self.mask_index = None
        self.mask_error = None
        self.linked = []  # data files opened for the master's external links
        low = path.lower()
        if low.endswith(HDF5_SUFFIXES) or is_hdf5(path):
            self._open_hdf5(path, dataset)
        elif dataset is not None:
            raise ImageReadError(path, f"not an HDF5 file, so it has no dataset {dataset!r}")
        elif low.endswith((".tif", ".tiff")):
            self._open_tiff(path)
        else:
            self._open_fabio(path)

    # HDF5 ---------------------------------------------------------------------------
    def _open_hdf5(self, path, dataset):
        import h5py

        register_hdf5_filters()
        try:
            self.h5 = h5py.File(path, "r")
        except OSError as exc:
            raise ImageReadError(path, f"cannot open HDF5 file: {one_line(exc)}") from None
        try:
            self.parts = hdf5_parts(self.h5, path, dataset, self.linked)
            self.checked = [bslz4_outer(ds) for ds, _ in self.parts]
            mask = self.h5.get(PIXEL_MASK_PATH) if dataset is None else None
            if mask is not None:
                self._open_mask(mask)
        except BaseException:
            self.close()
            raise
        self.kind = "hdf5"
        self.single = len(self.parts) == 1 and self.parts[0][0].ndim == 2
        self.starts = np.cumsum([0] + [n for _, n in self.parts])
        self.n = int(self.starts[-1])

    def _open_mask(self, mask):
        """Read the pixel mask, or keep why not (reported with every frame)."""
        try:
            frame_shape = tuple(self.parts[0][0].shape[-2:])
            check_mask_dataset(mask, frame_shape, self.path)
            m = np.asarray(mask[()]) != 0
        except ImageReadError as exc:
            self.mask_error = exc.reason
            return
        except Exception as exc:
            self.mask_error = f"/{PIXEL_MASK_PATH}: cannot decode: {one_line(exc)}"
            return
        self.mask_index = np.flatnonzero(m) if m.any() else None
        self.mask_shape = m.shape

    def _read_hdf5(self, i, shape):
        k = int(np.searchsorted(self.starts, i, side="right") - 1)
        ds, _ = self.parts[k]
        check_frame_shape(ds, shape, self.path)
        j = None if ds.ndim == 2 else int(i - self.starts[k])
        if self.checked[k]:  # ~0.16 ms for an EIGER 1M frame (the decode: ~5 ms)
            check_bslz4_chunks(ds, j, self.path)
        return ds[()] if j is None else ds[j]

    # TIFF ---------------------------------------------------------------------------
    def _open_tiff(self, path):
        import tifffile

        try:
            self.tif = tifffile.TiffFile(path)
            self.n = len(self.tif.pages)
        except Exception as exc:
            raise ImageReadError(path, f"cannot decode TIFF: {one_line(exc)}") from None
        self.kind, self.single = "tiff", self.n == 1

    # fabio (EDF, CBF, ...) -------------------------------------------------------------
    def _open_fabio(self, path):
        import fabio

        try:
            self.fab = fabio.open(path)
            self.n = int(getattr(self.fab, "nframes", 1) or 1)
        except Exception as exc:
            raise ImageReadError(path, f"cannot decode image: {one_line(exc)}") from None
        self.kind, self.single = "fabio", self.n == 1

    def read(self, i, shape=None):
        if not 0 <= i < self.n:
            raise ImageReadError(self.path, f"frame {i} out of range (the file has {self.n})")
        if self.mask_error is not None:
            raise ImageReadError(self.path, self.mask_error)
        with self.lock:
            try:
                if self.kind == "hdf5":
                    arr = self._read_hdf5(i, shape)
                elif self.kind == "tiff":
                    arr = self.tif.pages[i].asarray()
                else:
                    arr = self.fab.data if i == 0 and self.n == 1 else self.fab.getframe(i).data
            except ImageReadError:
                raise
            except Exception as exc:
                raise ImageReadError(
                    self.path, f"frame {i}: cannot decode: {one_line(exc)}"
                ) from None
        arr = np.asarray(arr)
        if self.mask_index is not None:
            if arr.shape != self.mask_shape:
                raise ImageReadError(
                    self.path, f"pixel_mask is {self.mask_shape}, frames are {arr.shape}"
                )
            if not (arr.flags.writeable and arr.flags.c_contiguous and arr.flags.owndata):
                arr = np.array(arr, copy=True)  # h5py hands a fresh array: no copy
            arr.reshape(-1)[self.mask_index] = invalid_value(arr.dtype)
        return arr

    def close(self):
        with self.lock:
            for h in [getattr(self, n, None) for n in ("h5", "tif", "fab")] + self.linked:
                if h is not None:
                    try:
                        h.close()
                    except Exception:
                        pass


class _StackCache:
    """Open stacks, least recently used closed beyond ``size``; reopened if the file changed."""

    def __init__(self, size=16):
        self.size = size
        self._lock = threading.Lock()
        self._open = collections.OrderedDict()

    def get(self, path, dataset):
        path = os.path.abspath(os.fspath(path))
        try:
            st = os.stat(path)
        except FileNotFoundError:
            raise ImageReadError(path, "no such file") from None
        except OSError as exc:
            raise ImageReadError(path, f"cannot read: {exc.strerror or exc}") from None
        if not stat.S_ISREG(st.st_mode):
            raise ImageReadError(path, "not a regular file; not opened")
        key = (path, dataset)
        sig = (st.st_mtime_ns, st.st_size, st.st_ino)
        with self._lock:
            hit = self._open.get(key)
            if hit is not None and hit[0] == sig:
                self._open.move_to_end(key)
                return hit[1]
        stack = _Stack(path, dataset)
        old = []
        with self._lock:
            prev = self._open.pop(key, None)
            if prev is not None:
                old.append(prev[1])
            self._open[key] = (sig, stack)
            while len(self._open) > self.size:
                old.append(self._open.popitem(last=False)[1][1])
        for s in old:
            s.close()
        return stack

    def clear(self):
        with self._lock:
            items = list(self._open.values())
            self._open.clear()
        for _, s in items:
            s.close()


_cache = _StackCache()
atexit.register(_cache.clear)  # close open files before the interpreter tears down


# ----------------------------------------------------------------------------- cheap checks
def _tiff_pages_beyond_first(path):
    """True if a TIFF has a second page (reads the header and the first IFD only)."""
    with open(path, "rb") as fh:
        head = fh.read(16)
        if len(head) < 8 or head[:2] not in (b"II", b"MM"):
            return False
        order = "<" if head[:2] == b"II" else ">"
        magic = struct.unpack(order + "H", head[2:4])[0]
        if magic == 43:  # BigTIFF: let tifffile count
            return True
        (ifd,) = struct.unpack(order + "I", head[4:8])
        fh.seek(ifd)
        raw = fh.read(2)
        if len(raw) < 2:
            return False
        (n,) = struct.unpack(order + "H", raw)
        fh.seek(ifd + 2 + 12 * n)
        raw = fh.read(4)
        return len(raw) == 4 and struct.unpack(order + "I", raw)[0] != 0


def _edf_more_than_one_frame(path):
    """True if an (uncompressed) EDF file holds more bytes than its first frame."""
    with open(path, "rb") as fh:
        head = fh.read(1 << 16)
    end = head.find(b"}")
    if not head.startswith(b"{") or end < 0:
        return False
    end = head.find(b"\n", end) + 1 or end + 1
    m = re.search(rb"(?:EDF_BinarySize|Size)\s*=\s*(\d+)\s*;", head[:end])
    if m is None:
        return False
    return os.path.getsize(path) > end + int(m.group(1))


def count_frames(path):
    """Number of frames of a file (1 for a single image); raises ImageReadError."""
    path = os.fspath(path)
    file, dataset, index = split_source(path)
    if index is not None:
        return 1
    return _cache.get(file, dataset).n


def _maybe_stack(path):
    """Cheap test whether a file may hold several frames (no decoding)."""
    low = path.lower()
    if low.endswith(HDF5_SUFFIXES):
        return True
    try:
        if low.endswith((".tif", ".tiff")):
            return _tiff_pages_beyond_first(path)
        if low.endswith(".edf"):
            return _edf_more_than_one_frame(path)
    except OSError:
        return False
    return False


# ----------------------------------------------------------------------------- public API
def frame_sources(path, explicit=False):
    """What ``path`` holds, as a list of sources for :func:`read_frame` / ``read_image``.

    A single-frame image gives ``[path]`` unchanged; a stack (HDF5, multi-frame EDF/CBF/TIFF)
    one :class:`FrameRef` per frame; ``file.h5::/dataset`` names a dataset, ``...::N`` one
    frame. A file that is neither gives ``[]``, or, with ``explicit=True`` (a file the user
    named), raises ImageReadError saying what was expected. An EIGER data file
    (``*_data_000001.h5``) gives ``[]`` unless explicit (its master lists it).
    """
    text = os.fspath(path)
    file, dataset, index = (
        split_source(text) if _SEP in text and not os.path.exists(text) else (text, None, None)
    )
    if index is not None:
        return [FrameRef(file, dataset, index)]
    low = file.lower()
    hdf5 = dataset is not None or low.endswith(HDF5_SUFFIXES)
    if not hdf5 and not is_image_file(file):
        if explicit and os.path.isfile(file) and is_hdf5(file):
            hdf5 = True
        elif explicit:
            raise ImageReadError(
                file,
                "not an image or HDF5 file (expected TIFF, CBF, EDF, "
                "... or HDF5/NeXus, e.g. an EIGER master file)",
            )
        else:
            return []
    if hdf5 and dataset is None and not explicit and is_eiger_data_file(file):
        return []
    if not hdf5 and not _maybe_stack(file):
        return [path]
    try:
        stack = _cache.get(file, dataset)
    except ImageReadError:
        if explicit or hdf5:
            if explicit:
                raise
            return []  # a walk: HDF5 files without frames are not images
        return [path]  # the reader will report it with the reason
    if stack.kind != "hdf5" and stack.single:
        return [path]
    if stack.kind == "hdf5" and stack.single:
        return [FrameRef(file, dataset, None)]
    return [FrameRef(file, dataset, i) for i in range(stack.n)]


def is_frame_source(path: object) -> bool:
    """True if ``read_image`` should hand ``path`` to :func:`read_frame`: a FrameRef, a
    ``file::...`` string naming no existing file, or an HDF5 file name."""
    if isinstance(path, FrameRef):
        return True
    if not isinstance(path, (str, os.PathLike)):
        return False
    text = os.fspath(path)
    if _SEP in text and not os.path.exists(text):
        return True
    return text.lower().endswith(HDF5_SUFFIXES)


def read_frame(source: "str | os.PathLike[str]", shape: "tuple[int, int] | None" = None) -> Any:
    """One 2D frame: ``source`` a FrameRef, or a string ``file[::/dataset][::index]``.

    ``shape``: expected (H, W) or None. The EIGER pixel mask is applied (see module doc).
    Raises ImageReadError.
    """
    if isinstance(source, FrameRef):
        file, dataset, index = source.file, source.dataset, source.index
    else:
        file, dataset, index = split_source(os.fspath(source))
    stack = _cache.get(file, dataset)
    if index is None:
        if stack.n != 1:
            raise ImageReadError(
                file, f"holds {stack.n} frames; name one as {os.path.basename(file)}::N (N from 0)"
            )
        index = 0
    arr = stack.read(index, shape)
    name = str(source) if isinstance(source, FrameRef) else os.fspath(source)
    return check_frame(name, arr, shape)


def iter_frames(
    path: "str | os.PathLike[str]", explicit: bool = True, shape: "tuple[int, int] | None" = None
) -> Iterator[tuple[str, Any]]:
    """Yield ``(source, frame)`` for every frame of ``path``, one frame in memory at a time.

    Parameters
    ----------
    path : str or path-like
        A single-frame image, a stack (HDF5 / NeXus, EIGER master, multi-frame EDF, CBF or
        TIFF), ``file.h5::/dataset`` or ``file::N``.
    explicit : bool
        True (a file the user named): a file that holds no frame raises ImageReadError;
        False (a file found in a folder): it yields nothing.
    shape : (int, int), optional
        Expected ``(H, W)`` of every frame.

    Yields
    ------
    source : str
        The path, or a :class:`FrameRef` ``file::index`` naming the frame.
    frame : ndarray, shape (H, W)
        The pixels, in the file's dtype (EIGER's pixel mask applied).

    Examples
    --------
    >>> for source, frame in gpusaxs.iter_frames("scan_master.h5"):  # doctest: +SKIP
    ...     q, I = integ.integrate(frame)
    """
    for src in frame_sources(path, explicit=explicit):
        yield (
            src,
            (read_frame(src, shape) if isinstance(src, FrameRef) else read_image_file(src, shape)),
        )


def pixel_mask(path):
    """The EIGER master's pixel mask as bool (True = bad), or None if the file has none."""
    import h5py

    register_hdf5_filters()
    file, _, _ = split_source(os.fspath(path))
    regular_file(file, "HDF5 file")
    try:
        with h5py.File(file, "r") as f:
            m = f.get(PIXEL_MASK_PATH)
            if m is None:
                return None
            pixels = int(np.prod(m.shape, dtype=np.int64))
            if m.ndim != 2 or pixels > MAX_PIXELS:
                raise ImageReadError(
                    file,
                    f"/{PIXEL_MASK_PATH} is {'x'.join(map(str, m.shape))} (declared in the "
                    f"file), not a 2D mask of at most {MAX_PIXELS:,} pixels; not read",
                )
            if bslz4_outer(m):
                check_bslz4_chunks(m, None, file)
            return np.asarray(m[()]) != 0
    except OSError as exc:
        raise ImageReadError(file, f"cannot open HDF5 file: {one_line(exc)}") from None
