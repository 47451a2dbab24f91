"""The grazing-incidence outputs of the frame pipelines (issue 28, docs/grazing.md): when the
calibration asks for them (``GrazingIncidence``, or SAXS_py3's ``GISAXSmode`` / ``Slices``),
every frame's map is written as a NeXus file (NXdata, intensity over both axes) and its cuts
as .chi files beside its curve. They are integrated in the pipeline's integration step with
the curve, one engine pass per output and batch (:class:`GrazingStage`); saxsdog and the
server's queues use it."""

from pathlib import Path

import numpy as np

from ._version import __version__
from .fiber import FIBER_UNITS
from .io.atomic import atomic_path
from .io.chi import write_chi

__all__ = ["GrazingStage", "write_map", "map_path", "cut_path", "nx_axes", "write_angles"]

#: the NeXus units of the fiber units
_NX_UNITS = {"nm^-1": "1/nm", "A^-1": "1/angstrom", "deg": "degree", "rad": "rad"}


def _axis_name(unit):
    """The dataset name of an axis: the unit's quantity ("qip", "qoop", "exit_angle_vert")."""
    return unit.rsplit("_", 1)[0]


def nx_axes(axes):
    """[(dataset name, values, NeXus units, long name)] of a map's axes (inplane, outofplane,
    unit_ip, unit_oop), the out-of-plane axis first (NeXus order: the map is (oop, ip))."""
    inplane, outofplane, unit_ip, unit_oop = axes
    name_ip, name_oop = _axis_name(unit_ip), _axis_name(unit_oop)
    if name_ip == name_oop:  # e.g. two q axes of one name: keep them apart
        name_ip, name_oop = name_ip + "_ip", name_oop + "_oop"
    return [
        (name, np.asarray(values, dtype=np.float64), nx_unit(unit), FIBER_UNITS[unit][0])
        for name, values, unit in ((name_oop, outofplane, unit_oop), (name_ip, inplane, unit_ip))
    ]


def nx_unit(unit):
    """The NeXus units of a fiber unit ("qip_nm^-1" -> "1/nm")."""
    return _NX_UNITS[unit.rsplit("_", 1)[1]]


def write_angles(entry, common):
    """``grazing_incidence`` (NXcollection) in ``entry``: the angles and the splitting; the
    group is returned."""
    gi = entry.create_group("grazing_incidence")
    gi.attrs["NX_class"] = "NXcollection"
    gi["incident_angle"] = float(common["incident_angle"])
    gi["incident_angle"].attrs["units"] = "degree"
    gi["tilt_angle"] = float(common["tilt_angle"])
    gi["tilt_angle"].attrs["units"] = "degree"
    gi["sample_orientation"] = int(common["sample_orientation"])
    gi["split_pixels"] = bool(common["split_pixels"])
    return gi


def map_path(out_path):
    """<curve without .chi>.gi.nxs"""
    return Path(out_path).with_suffix(".gi.nxs")


def cut_path(out_path, name):
    """<curve without .chi>_<cut name>.chi"""
    out_path = Path(out_path)
    return out_path.with_name(f"{out_path.stem}_{name}.chi")


class GrazingStage:
    """The pipeline's integrator when grazing outputs are asked for: ``integrate_batch_error``
    gives each frame's curve, map and cuts packed in one row (``split`` unpacks a row);
    everything else is the wrapped :class:`gpusaxs.Integrator`'s."""

    def __init__(self, integrator, config):
        self.integrator = integrator
        self.config = config
        self.q = integrator.q
        self.shape = integrator.shape
        self.matrix_key = integrator.matrix_key
        self.calibration = integrator.calibration
        self.params = getattr(integrator, "params", None)  # --average's, recorded by the stream
        self.engine = None  # no overlapped device batches: a batch's outputs go together
        self.map_axes = None  # (inplane, outofplane, unit_ip, unit_oop), set by the first batch
        self.cut_axes = {}  # cut name -> (x, unit)

    def integrate_batch_error(self, stack, std=False):
        """(B, n) rows: the curve, then the map (oop x ip, flattened), then each cut."""
        intensity, _, err = self.integrator.integrate_batch_error(stack, std=False)
        rows, errors = [intensity], [err]
        n = len(stack)
        if self.config.map is not None:
            res = self.integrator.integrate2d_grazing_incidence_batch(
                stack, error_model="poisson", **self.config.map_kwargs()
            )
            self.map_axes = (res.inplane, res.outofplane, res.ip_unit, res.oop_unit)
            rows.append(res.intensity.reshape(n, -1))
            errors.append(res.sigma.reshape(n, -1))
        for cut in self.config.cuts:
            res = self.integrator.integrate1d_grazing_incidence_batch(
                stack, **self.config.cut_kwargs(cut, self.shape)
            )
            self.cut_axes[cut.name] = (res.radial, res.unit)
            rows.append(res.intensity)
            errors.append(res.sigma)
        return np.hstack(rows), None, np.hstack(errors)

    def integrate_batch(self, stack):
        return self.integrate_batch_error(stack)[0]

    def prime(self):
        """Learn the outputs' axes (``map_axes``, ``cut_axes``) before the first batch, from a
        frame of zeros (the axes depend on the geometry only): the stream's series file is
        laid out when the series starts."""
        map_unknown = self.config.map is not None and self.map_axes is None
        if map_unknown or len(self.cut_axes) < len(self.config.cuts):
            self.integrate_batch_error(np.zeros((1, *self.shape), dtype=np.float32))

    def split(self, row):
        """(curve, map (n_oop, n_ip) or None, {cut name: (x, unit, I)}) of one packed row."""
        at = len(self.q)
        curve, grid, cuts = row[:at], None, {}
        if self.map_axes is not None:
            inplane, outofplane = self.map_axes[:2]
            size = len(inplane) * len(outofplane)
            grid = row[at : at + size].reshape(len(outofplane), len(inplane))
            at += size
        for cut in self.config.cuts:
            x, unit = self.cut_axes[cut.name]
            cuts[cut.name] = (x, unit, row[at : at + len(x)])
            at += len(x)
        return curve, grid, cuts

    def write(self, out_path, name, row, err_row, calibration_key=None):
        """The map's NeXus file and the cuts' .chi files of one frame."""
        _, grid, cuts = self.split(row)
        _, grid_err, cut_errs = self.split(err_row)
        if grid is not None:
            write_map(
                map_path(out_path),
                grid,
                grid_err,
                self.map_axes,
                self.config.common,
                name,
                calibration_key,
            )
        for cut_name, (x, unit, intensity) in cuts.items():
            write_chi(
                cut_path(out_path, cut_name),
                x,
                intensity,
                error=cut_errs[cut_name][2],
                title=f"{name} {cut_name}",
                q_label=FIBER_UNITS[unit][0],
                calibration_key=calibration_key,
            )


def write_map(path, intensity, errors, axes, common, source, calibration_key=None):
    """One map as a NeXus file, atomically: /entry/data an NXdata whose signal ``intensity``
    (n_oop, n_ip) has both axes (``axes`` = (inplane, outofplane, unit_ip, unit_oop)), its
    ``intensity_errors``, and /entry/grazing_incidence the angles."""
    import h5py

    (name_oop, *_), (name_ip, *_) = named = nx_axes(axes)
    with atomic_path(path) as tmp, h5py.File(tmp, "w") as h5:
        h5.attrs["NX_class"] = "NXroot"
        h5.attrs["default"] = "entry"
        h5.attrs["creator"] = f"gpusaxs {__version__} saxsdog"
        entry = h5.create_group("entry")
        entry.attrs["NX_class"] = "NXentry"
        entry.attrs["default"] = "data"
        if calibration_key is not None:
            entry.attrs["calibration_key"] = calibration_key
        entry["source"] = str(source)
        data = entry.create_group("data")
        data.attrs["NX_class"] = "NXdata"
        data.attrs["signal"] = "intensity"
        data.attrs["axes"] = [name_oop, name_ip]
        data.attrs[f"{name_oop}_indices"] = 0
        data.attrs[f"{name_ip}_indices"] = 1
        data["intensity"] = np.asarray(intensity, dtype=np.float64)
        data["intensity"].attrs["long_name"] = "mean intensity per pixel (counts)"
        data["intensity_errors"] = np.asarray(errors, dtype=np.float64)
        for name, values, units, long_name in named:
            data[name] = values
            data[name].attrs["units"] = units
            data[name].attrs["long_name"] = long_name
        write_angles(entry, common)
