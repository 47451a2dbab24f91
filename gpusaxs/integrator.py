"""Integrator: the user-facing front end, one per calibration, on the CPU or the GPU.

    >>> cal = Calibration.from_file("cal.json")
    >>> integ = Integrator(cal)                 # backend "auto": CuPy when a GPU is present
    >>> res = integ.integrate1d(image, unit="q_nm^-1", correct_solid_angle=True)  # pyFAI-style
    >>> q, I, sigma = res
    >>> q, I = integ.integrate(image)           # SAXSdog's methods, q in nm^-1
    >>> I = integ.integrate_batch(stack)        # (B, H, W) -> (B, n_bins)
"""
import hashlib
import os
import threading
from collections import OrderedDict

import numpy as np

from .sums import error_model, mean_intensity

ERROR_MODELS = (None, "poisson", "azimuthal")

__all__ = ["Integrator"]


def _as_calibration(cal, base_dir=None):
    from .calibration import Calibration

    if isinstance(cal, Calibration):
        return cal
    if isinstance(cal, dict):
        return Calibration.from_dict(cal, base_dir=base_dir)
    if isinstance(cal, (str, os.PathLike)):
        return Calibration.from_file(cal)
    raise TypeError(f"expected a Calibration, a dict or a path, not {type(cal).__name__}")


class Integrator:
    """Azimuthal integrator for one calibration.

    Parameters
    ----------
    cal : Calibration, dict or path of a calibration file.
    backend : "auto" (CuPy when it imports and a CUDA device is present, else the CPU engine;
        the environment variable GPUSAXS_BACKEND overrides "auto"), "numpy" or "cupy".
    q_edges : optional bin edges in nm^-1 (default: uniform bins from PixelPerRadialElement).
    mask : optional bool array (H, W), True = excluded; replaces the calibration's MaskFile.
    cache_dir : folder of the on-disk matrix cache (default: $GPUSAXS_CACHE_DIR, else
        $XDG_CACHE_HOME/gpusaxs or ~/.cache/gpusaxs); False: no disk cache.
    threads : CPU threads for the CPU engine (default: all cores).
    progress : optional callable(done_rows, total_rows) while the matrix is built.
    engine : optional engine object (``sums(stack, errors)``) or a callable(matrix) making one;
        default: the engine of the backend, created on first use (importing numba or CuPy
        only when a frame is integrated).

    Attributes: ``matrix_key`` (the calibration key, recorded in every curve), ``matrix_info``
    (dict: source "memory", "disk" or "built", seconds, cache path).

    Empty bins (no valid pixel) are NaN in every result.

    Two sets of methods: the pyFAI-style ones (:meth:`integrate1d`, :meth:`integrate2d`,
    :meth:`integrate1d_batch`: units, ranges, sectors, cakes, corrections, a result object)
    and SAXSdog's (:meth:`integrate`, :meth:`integrate_batch`, :meth:`integrate_error`,
    :meth:`integrate_chi`, :meth:`plot`: q in nm^-1, the calibration's bins and corrections).
    """

    #: Option sets whose matrix and engine are kept (least recently used dropped first).
    OPTION_CACHE_SIZE = 4

    def __init__(self, cal, backend="auto", q_edges=None, mask=None, cache_dir=None,
                 threads=None, progress=None, engine=None):
        from .backend import select_backend
        from .matrix_cache import get_matrix

        self.calibration = _as_calibration(cal)
        self.backend_name, self.backend_reason = select_backend(backend)
        self._build_args = dict(mask=mask, cache_dir=cache_dir, progress=progress)
        self._threads = threads
        self._option_engines = OrderedDict()
        self._option_lock = threading.Lock()
        self.matrix_info = {}
        self.matrix = get_matrix(self.calibration, mask=mask, q_edges=q_edges,
                                 cache_dir=cache_dir, progress=progress, info=self.matrix_info)
        self.matrix_key = self.matrix_info["key"]
        if engine is not None and (isinstance(engine, type) or not hasattr(engine, "sums")):
            engine = engine(self.matrix)      # a class or factory taking the matrix
        self._engine = engine

    @property
    def engine(self):
        """The integration engine, created on first use (lazy: no numba/CuPy import before)."""
        if self._engine is None:
            self._engine = self._make_engine(self.matrix)
        return self._engine

    @engine.setter
    def engine(self, value):
        self._engine = value

    def _make_engine(self, matrix):
        """The engine of this integrator's backend for ``matrix``."""
        threads = self._threads
        if self.backend_name == "cupy":
            from .backend import array_module
            from .gpu_engine import DeviceEngine
            # the module of the backend selected here: never "auto" again (which would follow
            # $GPUSAXS_BACKEND and could silently run an explicit cupy request on the CPU)
            engine = DeviceEngine(matrix, xp=array_module("cupy"))
        else:
            from gpusaxs.cpu_fallback.engine import default_engine
            engine = default_engine(matrix, threads=threads)
        if matrix.pixel_offset is not None and not getattr(engine, "supports_pixel_offset", False):
            from .offset_engine import OffsetScipyEngine
            engine = OffsetScipyEngine(matrix)       # until the engines apply the dark themselves
        return engine

    # -- properties ---------------------------------------------------------------------------
    @property
    def q(self):
        """Bin centres in nm^-1."""
        return self.matrix.q_centers

    @property
    def q_edges(self):
        """Bin edges in nm^-1."""
        return self.matrix.q_edges

    @property
    def shape(self):
        """Image shape (H, W) this integrator accepts."""
        return self.matrix.shape

    def __repr__(self):
        return (f"Integrator(shape={self.shape}, n_bins={self.matrix.n_bins}, "
                f"backend={self.backend_name!r}, engine={self.engine.name!r})")

    def warm_up(self, dtype=np.int32):
        """Run the engine once on two blank frames of ``dtype`` (default int32, PILATUS).

        The first call of a kernel loads or compiles it and starts the thread pool (about
        0.3 s on the CPU engine); services call this at setup so the first real frames do not
        pay for it.  Returns self.
        """
        blank = np.zeros((2,) + tuple(self.shape), dtype=dtype)
        self.engine.sums(blank, errors=False)
        self.engine.sums(blank, errors=True)
        return self

    # -- integration ----------------------------------------------------------------------------
    def integrate_batch(self, stack):
        """Mean intensity per bin of each frame: (B, H, W) -> (B, n_bins) float64."""
        return mean_intensity(self.engine.sums(stack, errors=False))

    def integrate(self, image):
        """(q, I) of one frame (2D array of any integer or float dtype); q in nm^-1."""
        return self.q, self.integrate_batch(self._single(image))[0]

    def integrate_batch_error(self, stack, std=True):
        """(I, std, err) each (B, n_bins): mean, weighted standard deviation, Poisson error.

        std=False skips the standard deviation (returned as None): a curve file of q, I and
        err needs only the Poisson error, and the CPU engine is then ~20 % faster.
        """
        return error_model(self.engine.sums(stack, errors=True if std else "poisson"))

    def integrate_error(self, image):
        """(I, std, err) of one frame (section 4.7)."""
        intensity, std, err = self.integrate_batch_error(self._single(image))
        return intensity[0], std[0], err[0]

    def integrate_chi(self, image, path, title=None):
        """Integrate and write a .chi file (q, I, Poisson error); returns the (3, n_bins) array."""
        from .io.chi import write_chi

        intensity, _, err = self.integrate_error(image)
        write_chi(path, self.q, intensity, err, title=title if title is not None else str(path),
                  calibration_key=self.matrix_key)
        return np.vstack([self.q, intensity, err])

    def plot(self, image, outputfile="", startplotat=0, fig=None):
        """Plot I(q) with the Poisson error and the standard deviation (section 4.7).

        outputfile: write the figure there (format from the suffix); empty: show a window.
        startplotat: first bin to plot.  Returns the matplotlib figure.
        """
        from .plotting import plot_curve

        intensity, std, err = self.integrate_error(image)
        return plot_curve(self.q, intensity, err=err, std=std, outputfile=outputfile,
                          start=startplotat, fig=fig,
                          title=getattr(self.calibration, "title", "") or "")

    # -- pyFAI-style methods ---------------------------------------------------------------------
    def integrate1d(self, image, npt=None, unit="q_nm^-1", radial_range=None, azimuth_range=None,
                    correct_solid_angle=False, dark=None, flat=None, polarization_factor=None,
                    normalization_factor=1.0, error_model="poisson", mask=None):
        """Integrate one frame to a curve, with pyFAI's options; returns an IntegrationResult.

        Parameters
        ----------
        image : (H, W) array of any integer or float dtype.
        npt : number of radial bins; None: the calibration's bins (PixelPerRadialElement, or
            this integrator's q_edges) when unit and radial_range are the defaults, else as
            many bins as those, uniform over the range.
        unit : "q_nm^-1" (default), "q_A^-1", "2th_deg", "2th_rad" or "r_mm".
        radial_range : (low, high) in ``unit``; None: from 0 to the detector's largest value.
        azimuth_range : (low, high) chi sector in degrees (pyFAI's convention, gpusaxs.units);
            low > high wraps through +-180, e.g. (170, -170).
        correct_solid_angle : divide by pyFAI's relative solid angle cos(incidence)^3.
        dark : (H, W) counts subtracted from each raw pixel (validity judged on the raw value).
        flat : (H, W) divisor of each pixel; pixels where it is not positive are dropped.
        polarization_factor : None: the calibration's PolarizationCorrection; a number in
            [-1, 1]: pyFAI's factor, replacing it.
        normalization_factor : the result is divided by it (monitor, transmission).
        error_model : "poisson" (sigma = sqrt(sum w s^2 x) / sum w, SAXSdog's error),
            "azimuthal" (std = spread of the corrected pixels in the bin, sigma = std *
            sqrt(sum w^2) / sum w) or None (no sigma, fastest).
        mask : (H, W) bool, True = excluded, added to the integrator's mask.

        All options are folded into the sparse matrix (cached per option set): one engine
        pass.  With the defaults the numbers are those of :meth:`integrate` / :meth:`integrate_error`.
        """
        return _first_frame(self.integrate1d_batch(self._single(image), **_passed_on(locals())))

    def integrate1d_batch(self, stack, npt=None, unit="q_nm^-1", radial_range=None,
                          azimuth_range=None, correct_solid_angle=False, dark=None, flat=None,
                          polarization_factor=None, normalization_factor=1.0,
                          error_model="poisson", mask=None):
        """:meth:`integrate1d` of a stack (B, H, W) in one pass: arrays (B, npt).

        normalization_factor may be a scalar or one value per frame (B,).
        """
        return self._integrate(stack, dict(
            npt=npt, unit=unit, radial_range=radial_range, azimuth_range=azimuth_range,
            azimuth_npt=None, correct_solid_angle=correct_solid_angle, dark=dark, flat=flat,
            polarization_factor=polarization_factor, mask=mask), normalization_factor,
            error_model)

    def integrate2d(self, image, npt_rad, npt_azim=360, unit="q_nm^-1", radial_range=None,
                    azimuth_range=None, correct_solid_angle=False, dark=None, flat=None,
                    polarization_factor=None, normalization_factor=1.0, error_model=None,
                    mask=None):
        """A cake: intensity (npt_azim, npt_rad) over radial and chi bins, one engine pass.

        azimuth_range: chi range in degrees (default (-180, 180), pyFAI's); may wrap through
        +-180.  The result's ``azimuthal`` holds the chi bin centres (degrees); it unpacks as
        ``I, radial, chi`` like pyFAI's Integrate2dResult.  Other options as :meth:`integrate1d`.
        """
        return _first_frame(self.integrate2d_batch(self._single(image), **_passed_on(locals())))

    def integrate2d_batch(self, stack, npt_rad, npt_azim=360, unit="q_nm^-1", radial_range=None,
                          azimuth_range=None, correct_solid_angle=False, dark=None, flat=None,
                          polarization_factor=None, normalization_factor=1.0, error_model=None,
                          mask=None):
        """:meth:`integrate2d` of a stack (B, H, W): intensity (B, npt_azim, npt_rad)."""
        return self._integrate(stack, dict(
            npt=npt_rad, unit=unit, radial_range=radial_range,
            azimuth_range=(-180.0, 180.0) if azimuth_range is None else azimuth_range,
            azimuth_npt=int(npt_azim), correct_solid_angle=correct_solid_angle, dark=dark,
            flat=flat, polarization_factor=polarization_factor, mask=mask),
            normalization_factor, error_model)

    def option_engine(self, npt=None, unit="q_nm^-1", radial_range=None, azimuth_range=None,
                      azimuth_npt=None, correct_solid_angle=False, dark=None, flat=None,
                      polarization_factor=None, mask=None):
        """(matrix, engine) of an option set, built once and cached (the last few sets)."""
        from .units import parse_unit

        unit = parse_unit(unit)
        key = _options_digest(npt, unit, radial_range, azimuth_range, azimuth_npt,
                              correct_solid_angle, dark, flat, polarization_factor, mask)
        with self._option_lock:          # one build per option set, also from several threads
            hit = self._option_engines.get(key)
            if hit is None:
                matrix = self._option_matrix(npt, unit, radial_range, azimuth_range,
                                             azimuth_npt, correct_solid_angle, dark, flat,
                                             polarization_factor, mask)
                hit = (matrix, self.engine if matrix is self.matrix else self._make_engine(matrix))
                self._option_engines[key] = hit
                while len(self._option_engines) > self.OPTION_CACHE_SIZE:
                    self._option_engines.popitem(last=False)
            self._option_engines.move_to_end(key)
        return hit

    def _option_matrix(self, npt, unit, radial_range, azimuth_range, azimuth_npt,
                       correct_solid_angle, dark, flat, polarization_factor, mask):
        from .corrections import apply_corrections
        from .matrix import default_radial_edges, restrict_matrix
        from .matrix_cache import get_matrix
        from .units import normalise_sector

        cal = self.calibration
        options = dict(unit=unit)
        if azimuth_npt is not None:
            lo, span = normalise_sector(azimuth_range)
            options["azimuth_edges"] = lo + span * np.arange(azimuth_npt + 1) / azimuth_npt
        elif azimuth_range is not None:
            options["azimuth_range"] = tuple(float(v) for v in azimuth_range)
        if unit == "q_nm^-1" and npt is None and radial_range is None:
            edges = self.matrix.q_edges
        else:
            edges = default_radial_edges(cal, unit, npt, radial_range)
        if len(options) == 1 and unit == "q_nm^-1" and edges is self.matrix.q_edges:
            matrix = self.matrix
        else:
            args = self._build_args
            matrix = get_matrix(cal, mask=args["mask"], q_edges=edges, options=options,
                                cache_dir=args["cache_dir"], progress=args["progress"])
        if mask is not None:
            matrix = restrict_matrix(matrix, mask)
        return apply_corrections(matrix, cal, correct_solid_angle, polarization_factor, flat,
                                 dark)

    def _norm_squared(self, matrix, norm):
        """sum w^2 per bin of the valid pixels (B, n_bins): the matrix's static sum of w^2
        (computed once per matrix) scaled by the fraction of the bin's weight valid per frame."""
        with self._option_lock:
            cache = self.__dict__.setdefault("_norm_sq_cache", OrderedDict())
            hit = cache.get(id(matrix))
            if hit is None or hit[0] is not matrix:
                squares = np.bincount(matrix.bins, weights=matrix.weights.astype(np.float64) ** 2,
                                      minlength=matrix.n_bins)
                hit = cache[id(matrix)] = (matrix, squares)
                while len(cache) > self.OPTION_CACHE_SIZE:
                    cache.popitem(last=False)
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(matrix.norm > 0, hit[1] * norm / matrix.norm, 0.0)

    def _integrate(self, stack, options, normalization_factor, error_model_name):
        from .results import IntegrationResult

        if error_model_name not in ERROR_MODELS:
            raise ValueError(f"error_model must be one of {ERROR_MODELS}, "
                             f"got {error_model_name!r}")
        matrix, engine = self.option_engine(**options)
        stack = np.asarray(stack)
        if stack.ndim != 3:
            raise ValueError(f"expected a stack (B, H, W), got an array of shape {stack.shape}")
        errors = {None: False, "poisson": "poisson", "azimuthal": True}[error_model_name]
        factor = np.asarray(normalization_factor, dtype=np.float64)
        if factor.ndim == 1:
            if len(factor) != stack.shape[0]:
                raise ValueError(f"normalization_factor has {len(factor)} values for "
                                 f"{stack.shape[0]} frames")
            factor = factor[:, None]
        elif factor.ndim != 0:
            raise ValueError("normalization_factor must be a number or one per frame")
        if np.any(factor <= 0) or not np.all(np.isfinite(factor)):
            raise ValueError(f"normalization_factor must be positive, got {normalization_factor}")
        sums = engine.sums(stack, errors=errors)
        if errors:
            intensity, std, sigma = error_model(sums)
        else:
            intensity, std, sigma = mean_intensity(sums), None, None
        if error_model_name == "azimuthal":
            sigma = std * np.sqrt(self._norm_squared(matrix, sums.norm)) / np.where(
                sums.norm > 0, sums.norm, np.nan)
        else:
            std = None
        if np.any(factor != 1.0):
            intensity = intensity / factor
            sigma = None if sigma is None else sigma / factor
            std = None if std is None else std / factor
        shape = (stack.shape[0], matrix.n_azimuthal, matrix.n_radial) \
            if matrix.azimuth_edges is not None else (stack.shape[0], matrix.n_radial)

        def cake(a):
            return None if a is None else np.reshape(a, shape)

        return IntegrationResult(
            radial=matrix.q_centers, intensity=cake(intensity), sigma=cake(sigma),
            unit=matrix.radial_unit, count=cake(sums.norm), sum_signal=cake(sums.signal),
            sum_normalization=cake(sums.norm * factor), sum_variance=cake(sums.variance),
            std=cake(std), azimuthal=matrix.azimuth_centers, error_model=error_model_name,
            normalization_factor=normalization_factor)

    def _single(self, image):
        arr = np.asarray(image)
        if arr.ndim != 2:
            raise ValueError(f"expected a 2D image, got an array of shape {arr.shape}")
        return arr[None]


def _passed_on(arguments):
    """A single-frame method's keyword arguments (its ``locals()``), for its batch method."""
    return {k: v for k, v in arguments.items() if k not in ("self", "image")}


def _first_frame(res):
    """The single-frame result of a batch result of one frame."""
    from dataclasses import replace

    arrays = ("intensity", "sigma", "std", "count", "sum_signal", "sum_normalization",
              "sum_variance")
    return replace(res, **{name: None if getattr(res, name) is None else getattr(res, name)[0]
                           for name in arrays})


def _options_digest(*options):
    """Digest of an option set; arrays (dark, flat, mask) by their content."""
    h = hashlib.sha256()
    for value in options:
        if isinstance(value, np.ndarray) or (value is not None and np.ndim(value) > 1):
            arr = np.ascontiguousarray(value)
            h.update(str((arr.shape, arr.dtype.str)).encode())
            h.update(arr.tobytes())
        else:
            h.update(repr(value if not isinstance(value, (list, tuple)) else
                          tuple(float(v) for v in value)).encode())
        h.update(b"|")
    return h.hexdigest()
