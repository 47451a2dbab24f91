"""The bin-major view of an integration matrix (cached): each bin's entries together.

:class:`gpusaxs.matrix.IntegrationMatrix` is pixel-major (CSR over pixels), the engines'
layout. The robust statistics (:mod:`gpusaxs.robust`) need the transpose: the pixels of one
bin side by side, so that a clipping iteration or a sort touches one bin's values in one pass.
:func:`bin_major` builds it once per matrix (a stable sort of the entries by bin) and keeps the
last few.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from ._typing import AnyArray

if TYPE_CHECKING:
    from .matrix import IntegrationMatrix

__all__ = ["BinMajor", "bin_major", "on_device"]

_CACHE_SIZE = 4


@dataclass(frozen=True)
class BinMajor:
    """A matrix's entries ordered by bin (CSC-like), with what the robust statistics need.

    Attributes
    ----------
    bin_ptr : int64 (n_bins + 1,)
        Entries of bin b are ``bin_ptr[b]:bin_ptr[b + 1]``.
    bin_of : int64 (nnz,)
        Bin of each entry (for ``bincount``).
    pixels : int32 (int64 beyond 2**31 pixels) (nnz,)
        Flat pixel index of each entry (C order of the frame).
    weights : float64 (nnz,)
        The entry's area fraction ``w`` (the matrix's weight).
    scale : float64 (nnz,)
        The pixel's scale ``s`` (1 / corrections): the corrected value is ``(x - dark) * s``.
    offset : float64 (nnz,) or None
        The pixel's dark, or None.
    n_bins : int
    pixel_ptr : int64 (n_pixels + 1,), host
        The matrix's entries of pixel p are ``pixel_ptr[p]:pixel_ptr[p + 1]`` (CSR order).
    slot : int32 (int64 beyond 2**31 entries) (nnz,), host
        Place of each CSR entry in this bin-major order (the CPU sigma-clipping kernel copies
        each pixel's frames there).
    """

    bin_ptr: AnyArray
    bin_of: AnyArray
    pixels: AnyArray
    weights: AnyArray
    scale: AnyArray
    offset: AnyArray | None
    n_bins: int
    pixel_ptr: AnyArray
    slot: AnyArray

    @property
    def nnz(self) -> int:
        """Number of entries."""
        return int(self.pixels.shape[0])


_cache: OrderedDict[tuple[int, str], tuple[Any, BinMajor]] = OrderedDict()
_lock = threading.Lock()


def _build(matrix: IntegrationMatrix) -> BinMajor:
    counts = np.diff(matrix.pixel_ptr)
    pixel_of = np.repeat(np.arange(counts.size, dtype=np.int64), counts)
    order = np.argsort(matrix.bins, kind="stable")
    bin_of = matrix.bins[order].astype(np.int64)
    pixels = pixel_of[order]
    if counts.size < 2**31:
        pixels = pixels.astype(np.int32)  # half the bytes read per entry and frame
    ptr = np.zeros(matrix.n_bins + 1, dtype=np.int64)
    np.cumsum(np.bincount(bin_of, minlength=matrix.n_bins), out=ptr[1:])
    offset = None if matrix.pixel_offset is None else matrix.pixel_offset[pixels].astype(np.float64)
    index = np.int32 if order.size < 2**31 else np.int64  # 4 bytes per entry where they do
    slot = np.empty(order.size, dtype=index)
    slot[order] = np.arange(order.size, dtype=index)
    return BinMajor(
        bin_ptr=ptr,
        bin_of=bin_of,
        pixels=pixels,
        weights=matrix.weights[order].astype(np.float64),
        scale=matrix.pixel_scale[pixels].astype(np.float64),
        offset=offset,
        n_bins=int(matrix.n_bins),
        pixel_ptr=np.asarray(matrix.pixel_ptr, dtype=np.int64),
        slot=slot,
    )


def on_device(view: BinMajor, xp: Any) -> BinMajor:
    """``view`` with its arrays in the array module ``xp`` (CuPy: copied to the device; the
    CPU kernel's ``pixel_ptr`` and ``slot`` stay on the host)."""
    if xp is np:
        return view
    offset = None if view.offset is None else xp.asarray(view.offset)
    return BinMajor(
        bin_ptr=xp.asarray(view.bin_ptr),
        bin_of=xp.asarray(view.bin_of),
        pixels=xp.asarray(view.pixels),
        weights=xp.asarray(view.weights),
        scale=xp.asarray(view.scale),
        offset=offset,
        n_bins=view.n_bins,
        pixel_ptr=view.pixel_ptr,
        slot=view.slot,
    )


def bin_major(matrix: IntegrationMatrix, xp: Any = np) -> BinMajor:
    """The bin-major view of ``matrix`` in the array module ``xp`` (NumPy or CuPy), built on
    the host once per matrix and kept for the last few matrices."""
    key = (id(matrix), xp.__name__)
    with _lock:
        hit = _cache.get(key)
        if hit is None or hit[0] is not matrix:
            host = _cache.get((id(matrix), np.__name__))
            view = host[1] if host is not None and host[0] is matrix else _build(matrix)
            _cache[(id(matrix), np.__name__)] = (matrix, view)
            hit = _cache[key] = (matrix, on_device(view, xp))
            while len(_cache) > 2 * _CACHE_SIZE:
                _cache.popitem(last=False)
        _cache.move_to_end(key)
    return hit[1]
