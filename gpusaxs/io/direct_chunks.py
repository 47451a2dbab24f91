"""HDF5 frames read as stored (issue 26): the bitshuffle-LZ4 chunks of an EIGER master (or a named
dataset) read with h5py's direct chunk read, no filter run on the host, for the device decoder
(:mod:`gpusaxs.gpu_decode`).

A file qualifies when every frame dataset is 3-D, chunked one frame per chunk and stored with
bitshuffle-LZ4 as its only filter (HDF5 filter 32008, LZ4 option): what DECTRIS detectors
write.  ``DirectChunkReader.unsupported`` says why another file does not (then the caller reads
it through the filter on the host, as before).  A chunk stored without the filter (its filter
mask says so) or never written is returned as None, for the host path to read.  An EIGER
master's ``pixel_mask`` is read as the host reader reads it (``mask_index``: the flat indices of
the pixels to mark invalid, or ``mask_error``).
"""

import os
import threading

import numpy as np

from ..errors import ImageReadError, one_line
from .frames import split_source
from .hdf5_checks import (
    PIXEL_MASK_PATH,
    bslz4_outer,
    check_mask_dataset,
    hdf5_parts,
    register_hdf5_filters,
)

__all__ = ["ChunkSources", "DirectChunkReader"]


class DirectChunkReader:
    """The stored chunks of a multi-frame HDF5 file: ``n`` frames of ``shape`` and ``dtype``;
    ``chunk(i)`` the stored bytes of frame ``i`` (or None), ``chunks(indices)`` several."""

    def __init__(self, path, dataset=None):
        import h5py

        register_hdf5_filters()
        self.path = str(path)
        self.linked = []
        try:
            self.h5 = h5py.File(self.path, "r")
        except OSError as exc:
            raise ImageReadError(self.path, f"cannot open HDF5 file: {one_line(exc)}") from None
        try:
            self.parts = hdf5_parts(self.h5, self.path, dataset, self.linked)
        except BaseException:
            self.close()
            raise
        self.starts = np.cumsum([0] + [n for _, n in self.parts])
        self.n = int(self.starts[-1])
        first = self.parts[0][0]
        self.shape = tuple(int(s) for s in first.shape[-2:])
        self.dtype = np.dtype(first.dtype)
        self.unsupported = self._why_not()
        # an EIGER master's pixel_mask, as the host reader applies it (gpusaxs.io.frames)
        self.mask_index, self.mask_error = None, None
        mask = self.h5.get(PIXEL_MASK_PATH) if dataset is None else None
        if mask is not None:
            try:
                check_mask_dataset(mask, self.shape, self.path)
                m = np.asarray(mask[()]) != 0
                self.mask_index = np.flatnonzero(m) if m.any() else None
            except ImageReadError as exc:
                self.mask_error = exc.reason
            except Exception as exc:
                self.mask_error = f"/{PIXEL_MASK_PATH}: cannot decode: {one_line(exc)}"

    def _why_not(self):
        """None when every part is one bslz4 chunk per frame, else the reason."""
        for ds, _ in self.parts:
            name = ds.name
            if ds.ndim != 3:
                return f"{name}: {ds.ndim}-D, not a stack of frames"
            if tuple(ds.shape[-2:]) != self.shape or ds.dtype != self.dtype:
                return f"{name}: frames of another shape or dtype than the first dataset's"
            if ds.chunks is None or tuple(ds.chunks) != (1, *self.shape):
                return f"{name}: chunks {ds.chunks}, not one frame per chunk"
            if ds.id.get_create_plist().get_nfilters() != 1 or not bslz4_outer(ds):
                return f"{name}: not stored with bitshuffle-LZ4 as its only filter"
        return None

    def chunk(self, i):
        """Stored bytes of frame ``i`` (bitshuffle-LZ4, HDF5 filter framing), or None for a
        chunk stored without the filter or never written."""
        if not 0 <= i < self.n:
            raise IndexError(f"frame {i} of {self.n}")
        k = int(np.searchsorted(self.starts, i, side="right") - 1)
        ds, _ = self.parts[k]
        try:
            mask, raw = ds.id.read_direct_chunk((int(i - self.starts[k]), 0, 0))
        except (KeyError, OSError, ValueError):
            return None
        return None if mask & 1 else raw

    def chunks(self, indices):
        """[(index, bytes or None)] of frames ``indices``."""
        return [(int(i), self.chunk(int(i))) for i in indices]

    def close(self):
        for f in self.linked:
            try:
                f.close()
            except Exception:
                pass
        self.linked = []
        h5, self.h5 = getattr(self, "h5", None), None
        if h5 is not None:
            h5.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


class ChunkSources:
    """Open DirectChunkReaders by (file, dataset), shared by a pipeline's reader threads.

    ``read(source, shape)`` returns (reader, chunk) for a frame reference (``file::N``,
    ``file::/dataset::N``) of a file that qualifies, or None: then the host path reads the frame
    (another storage, an unreadable pixel_mask, a frame the reader does not have, another frame
    shape than ``shape``, a chunk stored without the filter)."""

    def __init__(self):
        self._lock = threading.Lock()
        self._readers = {}

    def read(self, source, shape=None):
        text = os.fspath(source)
        if "::" not in text:
            return None
        file, dataset, index = split_source(text)
        if index is None:
            return None
        with self._lock:  # h5py serialises its calls anyway
            key = (file, dataset)
            reader = self._readers.get(key, False)
            if reader is False:
                try:
                    reader = DirectChunkReader(file, dataset)
                except Exception:
                    reader = None
                if reader is not None and (reader.unsupported or reader.mask_error):
                    reader.close()
                    reader = None
                self._readers[key] = reader
            if reader is None or not 0 <= index < reader.n:
                return None
            if shape is not None and tuple(shape) != reader.shape:
                return None
            chunk = reader.chunk(index)
        return None if chunk is None else (reader, chunk)

    def close(self):
        with self._lock:
            for reader in self._readers.values():
                if reader is not None:
                    reader.close()
            self._readers.clear()
