"""Read single 2D detector frames from single-image files (PILATUS/EIGER TIFF, CBF, EDF, ...).

TIFF goes through tifffile (fast path); every other format through fabio (PNG/BMP/JPEG, used
for masks, through Pillow). The pixel dtype of the file is kept (PILATUS TIFF/CBF: int32
counts, -1 gaps, -2 bad pixels); only a non-native byte order is swapped to native.
Every failure raises :class:`gpusaxs.errors.ImageReadError` with a one-line reason.

Before any pixel is decoded, the frame's declared size and pixel type (TIFF tags, the CBF and
EDF headers) are checked against the expected shape and a pixel bound, so a small compressed
file declaring a huge frame (a decompression bomb) is rejected without a large allocation.
Frames of stacks and HDF5 files are :mod:`gpusaxs.io.frames`; :func:`gpusaxs.io.images.read_image`
reads both.
"""

from __future__ import annotations

import bz2
import gzip
import logging
import mmap
import os
import re
import struct
import threading
from collections.abc import Callable
from typing import Any, Literal

import numpy as np

from .._typing import AnyArray, PathLike
from ..errors import ImageReadError, one_line

__all__ = [
    "IMAGE_SUFFIXES",
    "is_image_file",
    "read_image_file",
    "check_frame",
    "declared_frame",
    "MAX_PIXELS",
]

#: Largest frame (pixels) read when no expected shape is given (as the calibration's limit,
#: an 8192 x 8192 frame; EIGER2 16M has 18 M pixels).
MAX_PIXELS = 1 << 26

#: Suffixes (lower case) of the single-frame detector formats watchers should pick up.
IMAGE_SUFFIXES = (".tif", ".tiff", ".cbf", ".edf", ".img", ".mccd")

_TIFF_SUFFIXES = (".tif", ".tiff")
_PIL_SUFFIXES = (".png", ".bmp", ".gif", ".jpg", ".jpeg")


def is_image_file(path: PathLike) -> bool:
    """True if ``path`` has a single-frame image suffix (see ``IMAGE_SUFFIXES``), any case.

    Hidden/temporary names (``.name...tmp`` from :func:`gpusaxs.io.atomic_write`) never match.
    """
    name = os.path.basename(os.fspath(path))
    return not name.startswith(".") and name.lower().endswith(IMAGE_SUFFIXES)


def check_frame(path: PathLike, data: Any, shape: Any) -> AnyArray:
    """Validate a decoded array: 2D, numeric, expected shape; return it in native byte order."""
    arr: AnyArray = np.asarray(data)
    if arr.ndim == 3 and arr.shape[0] == 1:
        arr = arr[0]
    if arr.ndim != 2:
        raise ImageReadError(path, f"expected a 2D frame, got an array of shape {arr.shape}")
    if arr.dtype.kind not in "biuf":
        raise ImageReadError(path, f"unsupported pixel type {arr.dtype}")
    if shape is not None and tuple(arr.shape) != tuple(int(s) for s in shape):
        h, w = arr.shape
        raise ImageReadError(
            path, f"image is {h}x{w} (rows x columns), expected {shape[0]}x{shape[1]}"
        )
    if not arr.dtype.isnative:
        arr = arr.astype(arr.dtype.newbyteorder("="))
    return arr


#: Tags the plain-TIFF fast path reads; the others are descriptive and skipped.
_LAYOUT_TAGS = {256, 257, 258, 259, 266, 273, 277, 279, 317, 339}
#: Tags that change how pixels are stored (tiles, predictor, ...): such files go to tifffile.
_NOT_PLAIN_TAGS = {317, 322, 323, 324, 325, 330, 338}
_TIFF_TYPES = {3: "H", 4: "I"}
_SAMPLE_KIND = {1: "u", 2: "i", 3: "f"}


def _read_tiff_plain(path: str, expect: tuple[Any, Any] | None = None) -> AnyArray | None:
    """Pixels of a plain TIFF in one read, or None when the file is not plain.

    Plain: classic TIFF, one page, one sample per pixel, uncompressed, no predictor or tiles,
    strips stored back to back (PILATUS and most detector TIFFs).  Parsing is a few struct
    reads instead of tifffile's general machinery: about 3x less CPU per frame.
    """
    with open(path, "rb") as fh:
        head = fh.read(8)
        if len(head) < 8 or head[:2] not in (b"II", b"MM"):
            return None
        order = "<" if head[:2] == b"II" else ">"
        magic, ifd = struct.unpack(order + "HI", head[2:])
        size = os.fstat(fh.fileno()).st_size
        if magic != 42 or ifd + 2 > size:
            return None
        fh.seek(ifd)
        (n_entries,) = struct.unpack(order + "H", fh.read(2))
        raw = fh.read(12 * n_entries + 4)
        if len(raw) < 12 * n_entries + 4:
            return None
        tags = {}
        for k in range(n_entries):
            tag, typ, count, value = struct.unpack(order + "HHI4s", raw[12 * k : 12 * k + 12])
            if tag in _NOT_PLAIN_TAGS:
                return None
            if tag in _LAYOUT_TAGS:
                fmt = _TIFF_TYPES.get(typ)
                if fmt is None:
                    return None
                width = struct.calcsize(fmt) * count
                if width <= 4:
                    vals = struct.unpack(order + fmt * count, value[:width])
                else:
                    (at,) = struct.unpack(order + "I", value)
                    if at + width > size:
                        return None
                    fh.seek(at)
                    vals = struct.unpack(order + fmt * count, fh.read(width))
                tags[tag] = vals
        (next_ifd,) = struct.unpack(order + "I", raw[-4:])

        def one(tag: int, default: Any = None) -> Any:
            return tags.get(tag, (default,))[0]

        if (
            next_ifd != 0
            or one(259, 1) != 1
            or one(277, 1) != 1
            or one(266, 1) != 1
            or 256 not in tags
            or 257 not in tags
            or 273 not in tags
            or 279 not in tags
        ):
            return None
        bits, kind = one(258, 1), _SAMPLE_KIND.get(one(339, 1))
        if kind is None or bits not in (8, 16, 32, 64) or (kind == "f" and bits < 32):
            return None
        dtype = np.dtype(f"{order}{kind}{bits // 8}")
        height, width = one(257), one(256)
        offsets, counts = tags[273], tags[279]
        if len(offsets) != len(counts) or any(
            offsets[i] + counts[i] != offsets[i + 1] for i in range(len(offsets) - 1)
        ):
            return None
        _check_declared(path, (height, width), dtype, expect)
        nbytes = height * width * dtype.itemsize
        if sum(counts) != nbytes:
            return None
        end = offsets[0] + nbytes
        if end > size:
            raise ImageReadError(
                path, f"truncated: image data ends at byte {end}, file has {size} bytes"
            )
        out = np.empty((height, width), dtype=dtype)
        fh.seek(offsets[0])
        if fh.readinto(out.data.cast("B")) != nbytes:
            raise ImageReadError(path, "truncated: file shrank while it was read")
        return out


def _read_tiff(path: str, expect: tuple[Any, Any] | None = None) -> AnyArray:
    try:
        plain = _read_tiff_plain(path, expect)
    except ImageReadError:
        raise
    except (OSError, ValueError, struct_error()) as exc:
        raise ImageReadError(path, f"cannot decode TIFF: {one_line(exc)}") from None
    if plain is not None:
        return plain
    import tifffile  # only for TIFFs the fast path does not read

    try:
        with tifffile.TiffFile(path) as tf:
            pages = tf.pages
            n = len(pages)
            if n != 1:
                raise ImageReadError(
                    path,
                    f"multi-frame TIFF ({n} pages), expected one 2D frame"
                    if n
                    else "TIFF file has no image",
                )
            page = pages[0]
            _check_declared(path, page.shape, page.dtype, expect)
            size = int(tf.filehandle.size)
            offsets = page.dataoffsets
            counts = page.databytecounts
            if offsets and counts:
                end = max(int(o) + int(c) for o, c in zip(offsets, counts, strict=False))
                if end > size:
                    raise ImageReadError(
                        path, f"truncated: image data ends at byte {end}, file has {size} bytes"
                    )
            pixels: AnyArray = page.asarray()
            return pixels
    except ImageReadError:
        raise
    except Exception as exc:  # tifffile raises many types; report them on one line
        raise ImageReadError(path, f"cannot decode TIFF: {one_line(exc)}") from None


def _check_declared(path: PathLike, shape: Any, dtype: Any, expect: Any) -> None:
    """Reject a frame by its declared shape and dtype, before decoding it.

    expect: (expected shape (H, W) or None, most pixels); None = no check.
    """
    if expect is None:
        return
    want, max_pixels = expect
    shape = tuple(int(v) for v in shape)
    while len(shape) > 2 and shape[0] == 1:
        shape = shape[1:]
    dtype = np.dtype(dtype) if dtype is not None else None
    if dtype is not None and (dtype.kind not in "biuf" or dtype.itemsize > 8):
        raise ImageReadError(path, f"unsupported pixel type {dtype} (declared in the header)")
    n_pixels = int(np.prod(shape, dtype=np.int64)) if shape else 0
    if want is not None and len(shape) == 2 and shape != tuple(int(v) for v in want):
        raise ImageReadError(
            path,
            f"image is {shape[0]}x{shape[1]} (rows x columns, declared in "
            f"the header), expected {want[0]}x{want[1]}; not decoded",
        )
    if max_pixels is not None and n_pixels > max_pixels:
        dims = "x".join(str(v) for v in shape)
        raise ImageReadError(
            path,
            f"image declares {dims} = {n_pixels:,} pixels, more than the "
            f"limit of {max_pixels:,}; not decoded",
        )


_EDF_TYPES = {
    "unsignedbyte": "u1",
    "signedbyte": "i1",
    "unsignedshort": "u2",
    "signedshort": "i2",
    "unsignedinteger": "u4",
    "signedinteger": "i4",
    "unsignedlong": "u4",
    "signedlong": "i4",
    "float": "f4",
    "floatvalue": "f4",
    "doublevalue": "f8",
    "double": "f8",
    "unsigned64": "u8",
    "signed64": "i8",
    "unsignedint": "u4",
    "signedint": "i4",
}
_CBF_TYPES = {
    "signed 32-bit integer": "i4",
    "unsigned 32-bit integer": "u4",
    "signed 16-bit integer": "i2",
    "unsigned 16-bit integer": "u2",
    "signed 8-bit integer": "i1",
    "unsigned 8-bit integer": "u1",
    "signed 64-bit integer": "i8",
    "unsigned 64-bit integer": "u8",
    "signed 64-bit real ieee": "f8",
    "signed 32-bit real ieee": "f4",
}


def _head_bytes(path: str, n: int = 65536) -> bytes:
    """The first ``n`` bytes of a file, decompressed for .gz/.bz2 (only ``n`` bytes inflated)."""
    low = path.lower()
    opener: Callable[..., Any]
    if low.endswith(".gz"):
        opener = gzip.open
    elif low.endswith(".bz2"):
        opener = bz2.open
    else:
        opener = open
    try:
        with opener(path, "rb") as fh:
            return fh.read(n)
    except (OSError, EOFError, ValueError):
        return b""


def declared_frame(path: str) -> tuple[tuple[int, ...], Any] | None:
    """(shape, dtype) a CBF or EDF file declares in its header, without decoding the pixels;
    None when the header does not say (other formats: the reader checks after decoding)."""
    head = _head_bytes(os.fspath(path))
    if not head:
        return None
    if head[:4] in (b"II*\x00", b"MM\x00*"):  # MarCCD (.mccd) and other TIFFs read by fabio
        return _tiff_declared(path)
    text = head.split(_CBF_STARTER, 1)[0].decode("latin-1")
    # every occurrence counts (a decoy line before the real MIME header must not win): the
    # largest declared size is the one checked
    fast = re.findall(r"X-Binary-Size-Fastest-Dimension:\s*(\d+)", text)
    second = re.findall(r"X-Binary-Size-Second-Dimension:\s*(\d+)", text)
    if fast and second:
        kinds = {
            _CBF_TYPES.get(k.strip().lower(), k)
            for k in re.findall(r'X-Binary-Element-Type:\s*"([^"]+)"', text)
        }
        dtype = kinds.pop() if len(kinds) == 1 else None
        return (max(map(int, second)), max(map(int, fast))), dtype
    if text.lstrip().startswith("{"):
        block = text.split("}", 1)[0]
        fields = {}
        for m in re.finditer(r"([A-Za-z_0-9]+)\s*=\s*([^;]*);", block):
            fields[m.group(1).lower()] = m.group(2).strip()
        try:
            shape = tuple(int(fields[f"dim_{k}"]) for k in (3, 2, 1) if f"dim_{k}" in fields)
        except ValueError:
            return None
        if len(shape) >= 2:
            dtype = _EDF_TYPES.get(fields.get("datatype", "").lower())
            return shape, dtype
    return None


def _tiff_declared(path: str) -> tuple[tuple[int, ...], Any] | None:
    """(shape, dtype) of a TIFF's first page from its tags (nothing decoded)."""
    import tifffile

    try:
        with tifffile.TiffFile(path) as tf:
            page = tf.pages.first
            return tuple(int(v) for v in page.shape), page.dtype
    except Exception as exc:
        raise ImageReadError(path, f"cannot decode TIFF header: {one_line(exc)}") from None


def struct_error() -> type[Exception]:
    return struct.error


class _FabioLogCapture(logging.Filter):
    """Collect (and silence) fabio's ERROR records of the current thread while reading.

    fabio reports truncated EDF data ("Data stream is incomplete", then zero-pads) and CBF
    checksum mismatches only through logging; these must become ImageReadError.
    """

    def __init__(self) -> None:
        super().__init__()
        self._local = threading.local()
        self._installed: set[str] = set()

    def filter(self, record: logging.LogRecord) -> bool:
        bucket = getattr(self._local, "bucket", None)
        if bucket is None or record.thread != threading.get_ident():
            return True
        if record.levelno >= logging.ERROR:
            bucket.append(record.getMessage())
        return record.levelno >= logging.CRITICAL

    def __enter__(self) -> list[str]:
        # fabio modules log through their own loggers ("fabio.edfimage", ...); logger filters
        # do not apply to propagated records, so attach to each of them (new ones appear as
        # fabio imports format modules lazily).
        for name in list(logging.root.manager.loggerDict):
            if (name == "fabio" or name.startswith("fabio.")) and name not in self._installed:
                logging.getLogger(name).addFilter(self)
                self._installed.add(name)
        bucket: list[str] = []
        self._local.bucket = bucket
        return bucket

    def __exit__(self, *exc: object) -> Literal[False]:
        self._local.bucket = None
        return False


_fabio_log = _FabioLogCapture()


_CBF_STARTER = b"\x0c\x1a\x04\xd5"  # start of the binary data in a CBF file


def _check_cbf_start(path: str) -> None:
    """Reject a CBF file without the binary-data start marker before fabio sees it.

    fabio's CBF reader loops forever on such a file (a CBF cut inside its binary-section
    header, e.g. still being written by the detector), which would hang a file watcher.
    """
    with open(path, "rb") as fh:
        head = fh.read(4096)
        low = path.lower()
        if not (
            low.endswith(".cbf")
            or low.endswith(".cbf.gz")
            or low.endswith(".cbf.bz2")
            or head.startswith(b"###CBF")
            or b"CIF-BINARY-FORMAT-SECTION" in head
        ):
            return
        if low.endswith((".gz", ".bz2")):  # compressed: fabio parses the decompressed bytes
            opener = gzip.open if low.endswith(".gz") else bz2.open
            try:
                with opener(path, "rb") as zf:
                    found = _CBF_STARTER in zf.read()
            except (OSError, EOFError, ValueError) as exc:
                raise ImageReadError(path, f"cannot decompress: {one_line(exc)}") from None
            if found:
                return
            raise ImageReadError(path, "truncated or corrupt CBF: no binary data section")
        if _CBF_STARTER in head:
            return
        with mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as mm:
            if mm.find(_CBF_STARTER) >= 0:
                return
    raise ImageReadError(path, "truncated or corrupt CBF: no binary data section")


def _read_fabio(path: str, expect: tuple[Any, Any] | None = None) -> Any:
    _check_cbf_start(path)
    declared = declared_frame(path)
    if declared is not None:
        _check_declared(path, declared[0], declared[1], expect)
    try:
        import fabio
    except ImportError as exc:  # pragma: no cover - fabio is a dependency
        raise ImageReadError(path, f"fabio is needed to read this format: {exc}") from None
    try:
        with _fabio_log as messages:
            img = fabio.open(path)
            try:
                nframes = int(getattr(img, "nframes", 1) or 1)
                data = img.data
                incomplete = bool(getattr(img, "incomplete_file", False))
            finally:
                close = getattr(img, "close", None)
                if close is not None:
                    close()
    except ImageReadError:
        raise
    except Exception as exc:  # fabio raises OSError, ValueError, AssertionError, ...
        reason = one_line(exc)
        if isinstance(exc, OSError) and "could not identify" in str(exc).lower():
            reason = "not a recognised image format"
        raise ImageReadError(path, f"cannot decode image: {reason}") from None
    if messages or incomplete:
        detail = " ".join(messages[0].split()) if messages else "incomplete data"
        raise ImageReadError(path, f"truncated or corrupt: {detail}")
    if nframes != 1:
        raise ImageReadError(path, f"multi-frame file ({nframes} frames), expected one 2D frame")
    if data is None:
        raise ImageReadError(path, "file holds no image data")
    return data


def _read_pil(path: str, expect: tuple[Any, Any] | None = None) -> AnyArray:
    try:
        from PIL import Image
    except ImportError as exc:  # pragma: no cover
        raise ImageReadError(path, f"Pillow is needed to read this format: {exc}") from None
    try:
        with Image.open(path) as im:
            _check_declared(path, (im.height, im.width), None, expect)
            im.load()
            if getattr(im, "n_frames", 1) != 1:
                raise ImageReadError(path, f"multi-frame image ({im.n_frames} frames)")
            return np.asarray(im)
    except ImageReadError:
        raise
    except Exception as exc:
        raise ImageReadError(path, f"cannot decode image: {one_line(exc)}") from None


def read_image_file(
    path: PathLike, shape: tuple[int, int] | None = None, max_pixels: int | None = MAX_PIXELS
) -> AnyArray:
    """One 2D frame of a single-image file (no HDF5, no stacks): as
    :func:`gpusaxs.io.images.read_image`, which also reads frames of stacks."""
    spath = os.fspath(path)
    if not os.path.exists(spath):
        raise ImageReadError(path, "no such file")
    if os.path.isdir(spath):
        raise ImageReadError(path, "is a directory, not an image file")
    if not os.path.isfile(spath):  # a FIFO or a device would block or never end
        raise ImageReadError(path, "not a regular file; not opened")
    if os.path.getsize(spath) == 0:
        raise ImageReadError(path, "empty file")
    low = spath.lower()
    expect = (shape, max_pixels)
    if low.endswith(_TIFF_SUFFIXES):
        arr = _read_tiff(spath, expect)
    elif low.endswith(_PIL_SUFFIXES):
        arr = _read_pil(spath, expect)
    else:
        arr = _read_fabio(spath, expect)
    arr = check_frame(path, arr, shape)
    if max_pixels is not None and arr.size > max_pixels:
        raise ImageReadError(
            path, f"image has {arr.size:,} pixels, more than the limit of {max_pixels:,}"
        )
    return arr
