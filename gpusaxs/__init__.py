"""gpusaxs: GPU-backed azimuthal integration of SAXS/WAXS detector frames.

The public API, all of it (see README.md):

    cal = gpusaxs.Calibration.from_file(path)          # or .from_dict(d, base_dir=None)
    integ = gpusaxs.Integrator(cal, backend="auto", q_edges=None)
    q, I = integ.integrate(image)                      # q in nm^-1
    I = integ.integrate_batch(stack)                   # (B, H, W) -> (B, n_bins)
    I, std, err = integ.integrate_error(image)
    integ.integrate_chi(image, path); integ.plot(image, outputfile="")
    res = integ.integrate1d(image, npt=None, unit="q_nm^-1", radial_range=None,
                            azimuth_range=None, correct_solid_angle=False, dark=None, flat=None,
                            polarization_factor=None, normalization_factor=1.0,
                            error_model="poisson", mask=None)   # -> IntegrationResult
    res = integ.integrate2d(image, npt_rad, npt_azim=360, ...)  # cake (azim, rad)
    res = integ.integrate1d_batch(stack, ...); integ.integrate2d_batch(stack, npt_rad, ...)
    res = integ.integrate2d_grazing_incidence(image, npt_ip=1000, npt_oop=1000,
                                              unit_ip="qip_nm^-1", unit_oop="qoop_nm^-1",
                                              incident_angle=0.0, tilt_angle=0.0,
                                              sample_orientation=1, angle_unit="rad",
                                              split_pixels=True, ...)  # map (oop, ip)
    res = integ.integrate1d_grazing_incidence(image, npt_oop=..., vertical_integration=True)
    integ.integrate2d_polar(image, ...); integ.integrate2d_exitangles(image, ...)  # + 1d cuts
    gpusaxs.fiber.FIBER_UNITS                          # qip/qoop nm^-1 A^-1, exit angles, polar
    res = integ.sigma_clip(image, npt, thres=5, max_iter=5, error_model="poisson")  # + _batch
    res = integ.medfilt1d(image, npt, percentile=50)   # or (lo, hi); + _batch
    res = integ.integrate_radial(image, npt, npt_rad=100, radial_range=None, unit="chi_deg")
    gpusaxs.units.RADIAL_UNITS                         # q_nm^-1 q_A^-1 2th_deg 2th_rad r_mm
    gpusaxs.geometry.two_theta(cal); gpusaxs.geometry.polarization_factor(cal)
    gpusaxs.calc_theta(r, phi, d, tilt, tilt_dir)
    gpusaxs.read_image(path); gpusaxs.read_mask(path)  # mask: True = pixel excluded
    gpusaxs.iter_frames(path)                          # (source, frame) of HDF5/multi-frame files
    gpusaxs.NXazintWriter(path, q, ...); gpusaxs.read_nxazint(path)   # NeXus NXazint1d/2d
    gpusaxs.read_chi(path); gpusaxs.write_chi(path, q, I, err)
    gpusaxs.backend_info()                             # ["bslz4_decode"]: where bslz4 is decoded
    gpusaxs.engines.make_engine(m, "cupy").sums_compressed(chunks, shape, dtype)  # bslz4 on GPU
    gpusaxs.calibration(config)                        # the SAXS 0.3.0 class (section 6)
"""

import importlib as _importlib
import os as _os
import sys as _sys
from importlib.util import spec_from_file_location as _spec_from_file_location

# The card keeps the service, the clients and the CPU engine in top-level folders
# (server/, clients/, cpu_fallback/); they install as gpusaxs.server, gpusaxs.clients and
# gpusaxs.cpu_fallback (pyproject's package-dir), so that `gpusaxs` is the only top-level name.
# In a source checkout (tests, benchmarks) the same names resolve to those folders.
_ROOT = _os.path.dirname(_os.path.dirname(_os.path.abspath(__file__)))
_CARD_FOLDERS = ("server", "clients", "cpu_fallback")


class _CheckoutFolders:
    """Finds ``gpusaxs.server``, ``gpusaxs.clients`` and ``gpusaxs.cpu_fallback`` in the
    source checkout's top-level folders, and nothing else (``gpusaxs.tests`` does not import)."""

    @staticmethod
    def find_spec(fullname, path=None, target=None):  # type: ignore[no-untyped-def]
        package, _, name = fullname.partition(".")
        if package != "gpusaxs" or name not in _CARD_FOLDERS:
            return None
        folder = _os.path.join(_ROOT, name)
        return _spec_from_file_location(
            fullname, _os.path.join(folder, "__init__.py"), submodule_search_locations=[folder]
        )


if _os.path.isfile(_os.path.join(_ROOT, "pyproject.toml")) and _os.path.isfile(
    _os.path.join(_ROOT, "server", "__init__.py")
):
    if not any(isinstance(f, _CheckoutFolders) for f in _sys.meta_path):
        _sys.meta_path.insert(0, _CheckoutFolders())

from . import geometry, units
from ._version import __version__
from .backend import backend_info
from .calibration_model import Calibration
from .errors import BackendError, CalibrationError, ChiFormatError, GpusaxsError, ImageReadError
from .geometry import calc_theta
from .integrator import Integrator
from .io.chi import read_chi, write_chi
from .io.images import read_image
from .io.masks import read_mask
from .legacy import calibration, openmask
from .matrix import IntegrationMatrix, build_matrix
from .results import IntegrationResult

__all__ = [
    "Calibration",
    "Integrator",
    "IntegrationMatrix",
    "IntegrationResult",
    "build_matrix",
    "geometry",
    "units",
    "calc_theta",
    "read_image",
    "read_mask",
    "read_chi",
    "write_chi",
    "backend_info",
    "calibration",
    "openmask",
    "GpusaxsError",
    "CalibrationError",
    "ImageReadError",
    "ChiFormatError",
    "BackendError",
    "__version__",
]

# multi-frame files in, NeXus NXazint curves out (issue 12): imported on first use, so that
# `import gpusaxs` (and every saxsdog start) does not pay for h5py
_LAZY = {
    "iter_frames": ".io.frames",
    "NXazintWriter": ".io.nexus",
    "read_nxazint": ".io.nexus_read",
}
__all__ += list(_LAZY)


def __getattr__(name: str) -> object:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'gpusaxs' has no attribute {name!r}")
    value = getattr(_importlib.import_module(module, __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
