"""Pixel masks: fit2d binary ``.msk`` files and image masks. True = pixel excluded.

fit2d ``.msk`` layout (all integers little-endian int32):

* bytes 0-15: ``'M','A','S','K'``, each as an int32
  (``b'M\\0\\0\\0A\\0\\0\\0S\\0\\0\\0K\\0\\0\\0'``)
* byte 0x10: width (columns), byte 0x14: height (rows), byte 0x18: 1; rest of the
  1024-byte header zero
* from byte 1024: one bit per pixel, LSB first within each little-endian 32-bit word, each
  row padded to a whole number of 32-bit words, the *bottom* image row first (so the rows
  are flipped to get NumPy's top-down order); a set bit = masked.

Note: ``fabio.open(path).data`` returns the rows in file order (bottom row first), i.e.
``read_mask(path) == np.flipud(fabio.open(path).data != 0)``.
"""

from __future__ import annotations

import os

import numpy as np

from .._typing import ArrayLike, BoolArray, PathLike
from ..errors import ImageReadError
from .atomic import atomic_save_bytes
from .images import read_image

__all__ = [
    "FIT2D_MASK_MAGIC",
    "read_mask",
    "read_fit2d_mask",
    "write_fit2d_mask",
    "fit2d_mask_bytes",
]

FIT2D_MASK_MAGIC = b"M\0\0\0A\0\0\0S\0\0\0K\0\0\0"
_HEADER_BYTES = 1024
_MAX_DIM = 1 << 20  # sanity limit on width/height read from a header


def _row_bytes(width: int) -> int:
    """Bytes per stored row: ``width`` bits rounded up to whole 32-bit words."""
    return ((width + 31) // 32) * 4


def read_fit2d_mask(path: PathLike, shape: tuple[int, int] | None = None) -> BoolArray:
    """Read a fit2d binary ``.msk`` file; return a bool ``(rows, cols)`` array, True = masked.

    Raises ImageReadError naming the file and the reason (bad magic, truncated, wrong size).
    """
    try:
        with open(path, "rb") as fh:
            raw = fh.read()
    except FileNotFoundError:
        raise ImageReadError(path, "no such file") from None
    except OSError as exc:
        raise ImageReadError(path, f"cannot read: {exc.strerror or exc}") from None
    if len(raw) < 16 or raw[:16] != FIT2D_MASK_MAGIC:
        raise ImageReadError(path, "not a fit2d mask: bad magic")
    if len(raw) < _HEADER_BYTES:
        raise ImageReadError(
            path, f"truncated: expected a {_HEADER_BYTES}-byte header, got {len(raw)} bytes"
        )
    width, height = (int(v) for v in np.frombuffer(raw, "<i4", count=2, offset=0x10))
    if not (0 < width <= _MAX_DIM and 0 < height <= _MAX_DIM):
        raise ImageReadError(
            path, f"not a fit2d mask: invalid size {width}x{height} (width x height) in header"
        )
    if shape is not None and (height, width) != tuple(int(s) for s in shape):
        raise ImageReadError(
            path, f"mask is {height}x{width} (rows x columns), expected {shape[0]}x{shape[1]}"
        )
    row_bytes = _row_bytes(width)
    need = row_bytes * height
    got = len(raw) - _HEADER_BYTES
    if got < need:
        raise ImageReadError(path, f"truncated: expected {need} bytes of bit data, got {got}")
    # Trailing bytes beyond the bit data are ignored (some writers add a newline).
    packed = np.frombuffer(raw, np.uint8, count=need, offset=_HEADER_BYTES)
    bits = np.unpackbits(packed.reshape(height, row_bytes), axis=1, count=width, bitorder="little")
    mask: BoolArray = np.ascontiguousarray(bits[::-1]).view(bool)
    return mask


def read_mask(path: PathLike, shape: tuple[int, int] | None = None) -> BoolArray:
    """Read a mask file; True = pixel excluded.

    fit2d ``.msk`` (recognised by suffix or magic bytes) or any image read by
    :func:`gpusaxs.read_image` (TIFF, EDF, CBF, PNG, ...; nonzero = masked).

    Parameters
    ----------
    path : str or path-like
        The mask file.
    shape : (int, int), optional
        Expected ``(H, W)`` in pixels (the calibration's image size); None: any.

    Returns
    -------
    ndarray of bool, shape (H, W)
        True where the pixel is excluded, rows top-down (NumPy order).

    Raises
    ------
    ImageReadError
        Naming the file and the reason (missing, truncated, wrong size, not a mask).

    Examples
    --------
    >>> import numpy as np, gpusaxs
    >>> from gpusaxs.io.masks import write_fit2d_mask
    >>> m = np.zeros((4, 5), bool)
    ... m[0, 1] = True
    >>> write_fit2d_mask(str(tmp_path / "m.msk"), m)  # doctest: +SKIP
    >>> bool(gpusaxs.read_mask(str(tmp_path / "m.msk"))[0, 1])  # doctest: +SKIP
    True
    """
    spath = os.fspath(path)
    is_msk = spath.lower().endswith(".msk")
    if not is_msk:
        try:
            with open(spath, "rb") as fh:
                is_msk = fh.read(16) == FIT2D_MASK_MAGIC
        except OSError:
            pass  # read_image reports it
    if is_msk:
        return read_fit2d_mask(path, shape)
    img = read_image(path, shape)
    return np.asarray(img != 0, dtype=bool)


def fit2d_mask_bytes(mask: ArrayLike) -> bytes:
    """Encode a 2D mask (True/nonzero = masked, NumPy top-down order) as fit2d ``.msk`` bytes."""
    mask = np.asarray(mask)
    if mask.ndim != 2 or mask.shape[0] < 1 or mask.shape[1] < 1:
        raise ValueError(f"mask must be a non-empty 2D array, got shape {mask.shape}")
    height, width = mask.shape
    header = np.zeros(_HEADER_BYTES // 4, "<i4")
    header[:4] = [ord("M"), ord("A"), ord("S"), ord("K")]
    header[4] = width
    header[5] = height
    header[6] = 1  # as written by fit2d (and fabio)
    padded = np.zeros((height, _row_bytes(width) * 8), np.uint8)
    padded[:, :width] = mask[::-1] != 0
    packed = np.packbits(padded, axis=1, bitorder="little")
    return header.tobytes() + packed.tobytes()


def write_fit2d_mask(path: PathLike, mask: ArrayLike, fsync: bool = False) -> None:
    """Write a 2D mask (True = masked, NumPy top-down order) as a fit2d ``.msk`` file,
    atomically."""
    atomic_save_bytes(path, fit2d_mask_bytes(mask), fsync=fsync)
