"""The grazing-incidence maps and cuts of a stream series, in the series' NeXus file (issue 28).

With a :class:`gpusaxs.grazing_outputs.GrazingStage` as the consumer's integrator, each row the
integrator stage hands on packs a frame's curve, map and cuts. :class:`GrazingSeries` lays out
``/entry/grazing_incidence`` (NXcollection: the angles) with ``map`` (NXdata: ``I`` and
``I_errors`` (frames, n_oop, n_ip) over both axes) and one ``cut_<name>`` per cut (NXdata: ``I``,
``I_errors`` (frames, npt) over its axis), each with ``image_id`` (the same dataset as
``/entry/data/image_id``: row k of every group is one frame); then appends the rows
(docs/grazing.md).
"""

import numpy as np

from gpusaxs.fiber import FIBER_UNITS
from gpusaxs.grazing_outputs import GrazingStage, nx_axes, nx_unit, write_angles

__all__ = ["GrazingSeries", "grazing_stage"]


def grazing_stage(integ):
    """``integ`` when it packs grazing-incidence outputs (a GrazingStage), else None."""
    return integ if isinstance(integ, GrazingStage) else None


def _rows(group, name, shape, long_name):
    d = group.create_dataset(
        name,
        shape=(0, *shape),
        maxshape=(None, *shape),
        dtype=np.float64,
        chunks=(max(1, min(256, 2**20 // (8 * int(np.prod(shape))))), *shape),  # <= ~1 MB
        fillvalue=np.nan,
    )
    d.attrs["long_name"] = long_name
    return d


def _nxdata(parent, name, axes, image_id):
    """An NXdata group of rows over ``axes`` [(name, values, units, long name)]."""
    g = parent.create_group(name)
    g.attrs["NX_class"] = "NXdata"
    g.attrs["signal"] = "I"
    g.attrs["axes"] = [".", *(a[0] for a in axes)]
    shape = tuple(len(a[1]) for a in axes)
    for k, (axis, values, units, long_name) in enumerate(axes, start=1):
        g.attrs[f"{axis}_indices"] = k
        g[axis] = values
        g[axis].attrs["units"] = units
        g[axis].attrs["long_name"] = long_name
    _rows(g, "I", shape, "mean intensity per pixel (counts)")
    _rows(g, "I_errors", shape, "estimated intensity error")
    g["image_id"] = image_id  # a hard link to the curves' dataset: the rows' frame numbers
    return g


class GrazingSeries:
    """The grazing-incidence groups of one series file; ``stage`` is a primed GrazingStage."""

    def __init__(self, stage):
        unknown = stage.config.map is not None and stage.map_axes is None
        if unknown or len(stage.cut_axes) < len(stage.config.cuts):
            raise RuntimeError("the grazing-incidence axes are unknown (priming them failed)")
        self.stage = stage
        self.n_curve = len(stage.q)
        self.groups = []  # [(group name, size of its part of a packed row, row shape)]
        if stage.map_axes is not None:
            inplane, outofplane = stage.map_axes[:2]
            shape = (len(outofplane), len(inplane))
            self.groups.append(("grazing_incidence/map", shape[0] * shape[1], shape))
        for cut in stage.config.cuts:
            x = stage.cut_axes[cut.name][0]
            self.groups.append((f"grazing_incidence/cut_{cut.name}", len(x), (len(x),)))

    def header(self, entry):
        """The groups, empty (``NXazintWriter(extra=...)``)."""
        stage, ids = self.stage, entry["data/image_id"]
        gi = write_angles(entry, stage.config.common)
        if stage.map_axes is not None:
            _nxdata(gi, "map", nx_axes(stage.map_axes), ids)
        for cut in stage.config.cuts:
            x, unit = stage.cut_axes[cut.name]
            name, label = unit.rsplit("_", 1)[0], FIBER_UNITS[unit][0]
            axis = (name, np.asarray(x, float), nx_unit(unit), label)
            _nxdata(gi, f"cut_{cut.name}", [axis], ids)

    def curves(self, packed):
        """The curves' part (B, n_q) of packed rows (or None)."""
        return None if packed is None else packed[:, : self.n_curve]

    def appender(self, intensity, err):
        """``fn(entry)`` for ``NXazintWriter.extend``: the maps' and cuts' parts of the packed
        rows appended to their groups."""

        def append(entry):
            b, at = len(intensity), self.n_curve
            for name, size, shape in self.groups:
                g = entry[name]
                for dataset, rows in (("I", intensity), ("I_errors", err)):
                    d = g[dataset]
                    n0 = d.shape[0]
                    d.resize(n0 + b, axis=0)
                    if rows is not None:
                        d[n0:] = rows[:, at : at + size].reshape(b, *shape)
                at += size

        return append
