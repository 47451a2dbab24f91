"""Read one 2D detector frame, whatever holds it: a single-image file
(:mod:`gpusaxs.io.image_files`) or a frame of a stack or HDF5 file (:mod:`gpusaxs.io.frames`).
"""

from __future__ import annotations

from .._typing import AnyArray, PathLike
from ..errors import ImageReadError
from .frames import is_frame_source, read_frame
from .image_files import (
    IMAGE_SUFFIXES,
    MAX_PIXELS,
    declared_frame,
    is_image_file,
    read_image_file,
)

__all__ = [
    "IMAGE_SUFFIXES",
    "is_image_file",
    "read_image",
    "image_complete",
    "declared_frame",
    "MAX_PIXELS",
]


def read_image(
    path: PathLike, shape: tuple[int, int] | None = None, max_pixels: int | None = MAX_PIXELS
) -> AnyArray:
    """Read one 2D detector frame.

    TIFF (a fast path for plain detector TIFFs, else tifffile), CBF, EDF, MarCCD and the other
    formats of fabio, PNG and friends through Pillow; HDF5 files and frames of stacks
    (``file.h5::/dataset``, ``file::N``) through :func:`gpusaxs.io.frames.read_frame`.  TIFF,
    CBF and EDF frames are checked against ``shape`` and ``max_pixels`` by their headers before
    decoding (no decompression bombs).

    Parameters
    ----------
    path : str or path-like
        The image file, or a frame source of a stack.
    shape : (int, int), optional
        Expected ``(H, W)`` in pixels (the calibration's Imagesize); None: any size up to
        ``max_pixels``.
    max_pixels : int or None
        Largest frame accepted without a ``shape`` (default ``MAX_PIXELS``, 2^26); None: no
        bound.

    Returns
    -------
    ndarray, shape (H, W)
        The pixels in the file's dtype (e.g. int32 for PILATUS), native byte order, rows
        top-down.

    Raises
    ------
    ImageReadError
        Naming the file and the reason: missing, truncated, not an image, not a single 2D
        frame, wrong size, too large.

    Examples
    --------
    >>> image = gpusaxs.read_image("frame_00001.tif", shape=(1043, 981))  # doctest: +SKIP
    >>> image.dtype, image.shape  # doctest: +SKIP
    (dtype('int32'), (1043, 981))
    """
    if is_frame_source(path):  # HDF5 / a frame of a stack (gpusaxs.io.frames)
        frame: AnyArray = read_frame(path, shape)
        return frame
    return read_image_file(path, shape, max_pixels)


def image_complete(path: PathLike, shape: tuple[int, int] | None = None) -> bool:
    """True if ``path`` decodes fully as one 2D frame (of ``shape`` if given), else False.

    Used by file watchers to wait for a detector file that is still being written.
    """
    try:
        read_image(path, shape)
    except ImageReadError:
        return False
    return True
