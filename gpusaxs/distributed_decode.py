"""The Dask tasks' device decode (issue 26): frames of EIGER HDF5 masters read as stored
bitshuffle-LZ4 chunks (:mod:`gpusaxs.io.direct_chunks`) and integrated by the worker engine's
``sums_compressed``, as :class:`gpusaxs.pipeline.FramePipeline` does.

On by the pipeline's rule (:func:`gpusaxs.gpu_decode.device_decode_enabled`: a CuPy
DeviceEngine and ``GPUSAXS_DEVICE_DECODE=1`` in the worker's environment).  A chunk the
decoder refuses fails its frame alone (an ImageReadError naming why); a call that fails hands
its frames back to the task's host path (read through the HDF5 filter, integrated there).
"""

from __future__ import annotations

from .engine_contract import error_model
from .errors import ImageReadError
from .gpu_decode import device_decode_enabled
from .io.direct_chunks import ChunkSources

__all__ = ["chunk_sources", "integrate_stored"]


def chunk_sources(integ, choice=None):
    """A ChunkSources for a task whose integrator decodes on the device, else None (close it
    when the task ends)."""
    return ChunkSources() if device_decode_enabled(integ.engine, choice) else None


def integrate_stored(integ, items, sources, shape):
    """Integrate the frames of ``items`` ((image, curve) pairs) that ``sources`` reads as stored
    bslz4 chunks.  Returns ``(rest, rows)``: the items for the host path (another storage, or
    their device call failed), and one ``(image, curve, exception or None, intensity row or
    None, error row or None)`` per frame integrated or refused here."""
    packed, rest = [], []
    for image, curve in items:
        got = sources.read(image, shape)
        if got is None:
            rest.append((image, curve))
        else:
            packed.append((image, curve, *got))
    groups = {}
    for entry in packed:
        groups.setdefault(id(entry[2]), []).append(entry)
    rows = []
    for group in groups.values():
        reader = group[0][2]
        try:
            res = integ.engine.sums_compressed(
                [g[3] for g in group],
                reader.shape,
                reader.dtype,
                "poisson",
                list(range(len(group))),
                reader.mask_index,
            )
            intensity, _, err = error_model(res.sums)
        except Exception:  # noqa: BLE001 - the host path reads and integrates these again
            rest.extend((g[0], g[1]) for g in group)
            continue
        for rec in res.errors:
            image, curve = group[rec["id"]][:2]
            why = ImageReadError(str(image), f"bslz4: {rec['reason']}")
            rows.append((image, curve, why, None, None))
        for j, k in enumerate(res.ids):
            image, curve = group[k][:2]
            rows.append((image, curve, None, intensity[j], err[j]))
    return rest, rows
