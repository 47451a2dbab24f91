"""HDF5 frame files checked before anything is read: declared frame shapes, EIGER pixel-mask
datasets, every stored bitshuffle/LZ4 chunk (a lying block size would crash the HDF5 filter),
and external links (they must lead to a regular file inside the master's folder tree or a
folder of ``$GPUSAXS_LINK_ROOTS``). Used by :mod:`gpusaxs.io.frames`.
"""

from __future__ import annotations

import itertools
import os
import re
import stat

import numpy as np

from ..errors import ImageReadError, one_line
from . import bslz4
from .image_files import MAX_PIXELS

PIXEL_MASK_PATH = "entry/instrument/detector/detectorSpecific/pixel_mask"


def register_hdf5_filters():
    """Register the HDF5 compression filters (bslz4, LZ4, ...) once; no-op without hdf5plugin."""
    try:
        import hdf5plugin  # noqa: F401
    except ImportError:  # pragma: no cover - a dependency
        pass


def invalid_value(dtype):
    if dtype.kind == "f":
        return np.nan
    if dtype.kind == "u":
        return np.iinfo(dtype).max
    return -1


def is_hdf5(path):
    try:
        with open(path, "rb") as fh:
            return fh.read(8) == b"\x89HDF\r\n\x1a\n"
    except OSError:
        return False


def check_frame_shape(ds, shape, path):
    """Reject a dataset by its declared frame shape, before anything is read."""
    frame = tuple(int(v) for v in ds.shape[-2:])
    if shape is not None and frame != tuple(int(v) for v in shape):
        raise ImageReadError(
            path,
            f"{ds.name}: frames are {frame[0]}x{frame[1]} (rows x columns, declared in the "
            f"file), expected {shape[0]}x{shape[1]}; not read",
        )
    if frame[0] * frame[1] > MAX_PIXELS:
        raise ImageReadError(
            path,
            f"{ds.name}: frames of {frame[0]}x{frame[1]} pixels are more than the limit of "
            f"{MAX_PIXELS:,}; not read",
        )


def check_mask_dataset(mask, frame_shape, path):
    """The pixel mask must be a 2D dataset of the frames' shape (checked before reading)."""
    import h5py

    where = f"/{PIXEL_MASK_PATH}"
    if not isinstance(mask, h5py.Dataset):
        raise ImageReadError(path, f"{where} is not a dataset")
    if tuple(mask.shape) != frame_shape or mask.dtype.kind not in "biuf":
        raise ImageReadError(
            path,
            f"{where} is {'x'.join(map(str, mask.shape))} of {mask.dtype} (declared in the "
            f"file), frames are {'x'.join(map(str, frame_shape))}; not read",
        )
    if bslz4_outer(mask):
        check_bslz4_chunks(mask, None, path)


def bslz4_outer(ds):
    """True if the dataset's chunks are stored bitshuffle/LZ4-compressed by its last filter
    (the framing :func:`check_bslz4_chunks` checks)."""
    if ds.chunks is None:
        return False
    dcpl = ds.id.get_create_plist()
    n = dcpl.get_nfilters()
    if n == 0:
        return False
    code, _, values, _ = dcpl.get_filter(n - 1)
    return code == bslz4.FILTER_ID and len(values) > 4 and values[4] == 2


def check_bslz4_chunks(ds, index, path):
    """Check the stored bslz4 chunks that hold frame ``index`` (None: the whole dataset) of
    ``ds`` before the filter decodes them; ImageReadError naming the dataset and chunk."""
    chunks = ds.chunks
    itemsize = ds.dtype.itemsize
    nbytes = int(np.prod(chunks, dtype=np.int64)) * itemsize
    axes = [range(0, int(n), int(c)) for n, c in zip(ds.shape, chunks, strict=True)]
    if index is not None:
        axes[0] = [index - index % chunks[0]]
    last = 1 << (ds.id.get_create_plist().get_nfilters() - 1)
    for offset in itertools.product(*axes):
        try:
            mask, raw = ds.id.read_direct_chunk(offset)
        except (KeyError, OSError, ValueError):
            continue  # a chunk never written: the fill value
        if mask & last:
            continue  # stored without the filter
        try:
            bslz4.check_payload(raw, nbytes, itemsize)
        except bslz4.Bslz4Error as exc:
            raise ImageReadError(
                path, f"{ds.name}: corrupt chunk at {tuple(map(int, offset))}: {exc}"
            ) from None


def frame_dataset(obj, path, name):
    import h5py

    if not isinstance(obj, h5py.Dataset):
        raise ImageReadError(path, f"{name} is not a dataset")
    if obj.ndim not in (2, 3) or obj.dtype.kind not in "biuf":
        raise ImageReadError(
            path,
            f"{name} is not a frame or a stack of frames (shape {obj.shape}, type {obj.dtype})",
        )
    return obj, (1 if obj.ndim == 2 else obj.shape[0])


def link_roots():
    """Folders an HDF5 external link may lead into besides the master's own folder tree:
    ``$GPUSAXS_LINK_ROOTS`` (folders separated by ``os.pathsep``); None = anywhere
    (``GPUSAXS_LINK_ROOTS=any``)."""
    value = os.environ.get("GPUSAXS_LINK_ROOTS", "").strip()
    if value.lower() == "any":
        return None
    return [os.path.realpath(v) for v in value.split(os.pathsep) if v.strip()]


def regular_file(path, what):
    """Raise unless ``path`` is a regular file (a FIFO or a device would block or never end)."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise ImageReadError(path, f"{what}: no such file") from None
    except OSError as exc:
        raise ImageReadError(path, f"{what}: cannot read: {exc.strerror or exc}") from None
    if not stat.S_ISREG(st.st_mode):
        raise ImageReadError(path, f"{what}: not a regular file; not opened")


def follow(h5, where, path, linked):
    """The object at ``where`` of the open file ``h5`` (of ``path``); an external link is
    followed only to a regular file inside the allowed folders, opened here (``linked``)."""
    import h5py

    link = h5.get(where, getlink=True)
    if not isinstance(link, h5py.ExternalLink):
        return h5[where]
    master_dir = os.path.dirname(os.path.realpath(path))
    target = os.path.realpath(os.path.join(master_dir, link.filename))
    roots = link_roots()
    if roots is not None and not any(
        os.path.commonpath([target, r]) == r for r in [master_dir, *roots]
    ):
        raise ImageReadError(
            path,
            f"{where}: external link to {link.filename} leads outside the master's folder "
            "(allow it with GPUSAXS_LINK_ROOTS)",
        )
    try:
        regular_file(target, "data file")
    except ImageReadError as exc:
        raise ImageReadError(
            path, f"{where}: cannot open its data file {link.filename} ({exc.reason})"
        ) from None
    try:
        f = h5py.File(target, "r")
    except OSError as exc:
        raise ImageReadError(
            path, f"{where}: cannot open its data file {link.filename} ({one_line(exc)})"
        ) from None
    linked.append(f)
    if link.path not in f:
        raise ImageReadError(path, f"{where}: no {link.path} in its data file {link.filename}")
    return f[link.path]


def hdf5_parts(h5, path, dataset, linked):
    """[(dataset, n_frames), ...] of the frame data of an open HDF5 file; data files opened
    for external links are appended to ``linked``."""
    import h5py

    if dataset is not None:
        if dataset not in h5 and not isinstance(h5.get(dataset, getlink=True), h5py.ExternalLink):
            raise ImageReadError(path, f"no dataset {dataset!r} in the file")
        return [frame_dataset(follow(h5, dataset, path, linked), path, dataset)]
    data = h5.get("entry/data", getlink=True)
    data = h5.get("entry/data") if isinstance(data, (h5py.HardLink, h5py.SoftLink)) else None
    if isinstance(data, h5py.Group):
        names = sorted(n for n in data if re.fullmatch(r"data_\d{6}", n))
        if names:  # an EIGER master file
            parts = []
            for n in names:
                where = f"/entry/data/{n}"
                try:
                    obj = follow(h5, where, path, linked)
                except (KeyError, OSError) as exc:
                    if isinstance(exc, ImageReadError):
                        raise
                    raise ImageReadError(path, f"{where}: cannot open ({one_line(exc)})") from None
                parts.append(frame_dataset(obj, path, where))
            return parts
        if "data" in data:
            obj = follow(h5, "/entry/data/data", path, linked)
            return [frame_dataset(obj, path, "/entry/data/data")]
    definition = h5.get("entry/definition")
    if definition is not None and b"NXazint" in np.asarray(definition[()]).tobytes():
        raise ImageReadError(path, "an integrated-curves file (NXazint), not detector frames")
    signal = nexus_default_signal(h5)
    if signal is not None:
        return [frame_dataset(follow(h5, signal, path, linked), path, signal)]
    raise ImageReadError(
        path,
        "no frame data found (looked for /entry/data/data_NNNNNN, "
        "/entry/data/data and the NeXus default); name the dataset as "
        f"{os.path.basename(path)}::/path/to/dataset",
    )


def nexus_default_signal(h5):
    """Path of the NeXus default plottable signal, or None."""
    import h5py

    def attr(obj, name):
        v = obj.attrs.get(name)
        return v.decode() if isinstance(v, bytes) else (None if v is None else str(v))

    def local(group, name):  # a link inside this file (an external one is not opened here)
        link = group.get(name, getlink=True) if name else None
        return isinstance(link, (h5py.HardLink, h5py.SoftLink)) and name in group

    node = h5
    for _ in range(3):
        d = attr(node, "default")
        if d is None or not local(node, d):
            break
        node = node[d]
    if isinstance(node, h5py.Group) and attr(node, "NX_class") == "NXdata":
        s = attr(node, "signal")
        if s and isinstance(node.get(s, getlink=True), h5py.ExternalLink):
            return f"{node.name.rstrip('/')}/{s}"  # followed by follow, confined
        if s and local(node, s):
            return node[s].name
    return None
