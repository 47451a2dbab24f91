"""Integrator: the user-facing front end, one per calibration, on the CPU or the GPU.

>>> cal = Calibration.from_file("cal.json")
>>> integ = Integrator(cal)  # backend "auto": CuPy when a GPU is present
>>> res = integ.integrate1d(image, unit="q_nm^-1", correct_solid_angle=True)  # pyFAI-style
>>> q, I, sigma = res
>>> q, I = integ.integrate(image)  # SAXSdog's methods, q in nm^-1
>>> I = integ.integrate_batch(stack)  # (B, H, W) -> (B, n_bins)
"""

from __future__ import annotations

import hashlib
import os
import threading
from collections import OrderedDict
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
from numpy.typing import DTypeLike

from ._typing import AnyArray, ArrayLike, FloatArray, PathLike
from .dummy import dummy_sums, warn_negative_floats
from .engine_contract import Engine, error_model, mean_intensity
from .engines import make_engine

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from .calibration import Calibration
    from .matrix import IntegrationMatrix
    from .results import IntegrationResult

ERROR_MODELS = (None, "poisson", "azimuthal")

__all__ = ["Integrator"]


def _as_calibration(cal: Any, base_dir: PathLike | None = None) -> Calibration:
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

    Two sets of methods: the pyFAI-style ones (:meth:`integrate1d`, :meth:`integrate2d`,
    :meth:`integrate1d_batch`: units, ranges, sectors, cakes, corrections, a result object)
    and SAXSdog's (:meth:`integrate`, :meth:`integrate_batch`, :meth:`integrate_error`,
    :meth:`integrate_chi`, :meth:`plot`: q in nm^-1, the calibration's bins and corrections).
    Empty bins (no valid pixel) are NaN in every result.

    Parameters
    ----------
    cal : Calibration, dict or path
        The calibration, its dict (flat or nested form) or its file (JSON or .poni).
    backend : {"auto", "numpy", "cupy"}
        "auto": CuPy when it imports and a CUDA device is present, else the CPU engine (the
        environment variable GPUSAXS_BACKEND overrides "auto").
    q_edges : array_like, shape (n_bins + 1,), optional
        Bin edges in nm^-1 (default: uniform bins from PixelPerRadialElement).
    mask : array_like of bool, shape (H, W), optional
        True = excluded; replaces the calibration's MaskFile.
    cache_dir : str, path-like or False, optional
        Folder of the on-disk matrix cache (default: $GPUSAXS_CACHE_DIR, else
        $XDG_CACHE_HOME/gpusaxs or ~/.cache/gpusaxs); False: no disk cache.
    threads : int, optional
        CPU threads for the CPU engine (default: all cores).
    progress : callable(done_rows, total_rows), optional
        Called while the matrix is built.
    engine : Engine or callable(IntegrationMatrix) -> Engine, optional
        An engine object (``sums(stack, errors)``, :class:`gpusaxs.engine_contract.Engine`)
        or a factory making one; default: the engine of the backend, created on first use (importing
        numba or CuPy only when a frame is integrated).

    Attributes
    ----------
    calibration : Calibration
    matrix : IntegrationMatrix
        The integration operator of the calibration's own bins.
    matrix_key : str
        The calibration key (sha256 hex), recorded in every curve.
    matrix_info : dict
        Where the matrix came from: source ("memory", "disk" or "built"), seconds, cache path.
    backend_name, backend_reason : str
        The backend chosen ("cupy" or "numpy") and why.

    Examples
    --------
    >>> import gpusaxs
    >>> integ = gpusaxs.Integrator("calibration.json")  # doctest: +SKIP
    >>> image = gpusaxs.read_image("frame.tif", integ.shape)  # doctest: +SKIP
    >>> q, I = integ.integrate(image)  # q in nm^-1  # doctest: +SKIP
    >>> res = integ.integrate1d(image, unit="2th_deg", correct_solid_angle=True)  # doctest: +SKIP
    >>> tth, I, sigma = res  # doctest: +SKIP
    """

    #: Option sets whose matrix and engine are kept (least recently used dropped first).
    OPTION_CACHE_SIZE = 4

    def __init__(
        self,
        cal: Calibration | dict[str, Any] | PathLike,
        backend: str = "auto",
        q_edges: ArrayLike | None = None,
        mask: ArrayLike | None = None,
        cache_dir: PathLike | bool | None = None,
        threads: int | None = None,
        progress: Callable[[int, int], Any] | None = None,
        engine: Engine | Callable[[IntegrationMatrix], Engine] | None = None,
    ) -> None:
        from .backend import select_backend
        from .matrix_cache import get_matrix

        self.calibration = _as_calibration(cal)
        self.backend_name, self.backend_reason = select_backend(backend)
        self._build_args = dict(mask=mask, cache_dir=cache_dir, progress=progress)
        self._threads = threads
        self._option_engines: OrderedDict[str, tuple[IntegrationMatrix, Engine]] = OrderedDict()
        self._option_lock = threading.Lock()
        self.matrix_info: dict[str, Any] = {}
        self.matrix = get_matrix(
            self.calibration,
            mask=mask,
            q_edges=q_edges,
            cache_dir=cache_dir,
            progress=progress,
            info=self.matrix_info,
        )
        self.matrix_key = self.matrix_info["key"]
        if engine is not None and (isinstance(engine, type) or not hasattr(engine, "sums")):
            engine = engine(self.matrix)  # a class or factory taking the matrix
        self._engine: Engine | None = engine  # type: ignore[assignment]  # an engine by now

    @property
    def engine(self) -> Engine:
        """The integration engine, created on first use (lazy: no numba/CuPy import before)."""
        if self._engine is None:
            self._engine = self._make_engine(self.matrix)
        return self._engine

    @engine.setter
    def engine(self, value: Engine) -> None:
        self._engine = value

    def _make_engine(self, matrix: IntegrationMatrix) -> Engine:
        """The engine of this integrator's backend for ``matrix`` (gpusaxs.engines)."""
        # the backend selected here: never "auto" again (which would follow $GPUSAXS_BACKEND
        # and could silently run an explicit cupy request on the CPU)
        return make_engine(matrix, self.backend_name, threads=self._threads)

    # -- properties ---------------------------------------------------------------------------
    @property
    def q(self) -> FloatArray:
        """Bin centres in nm^-1, shape (n_bins,)."""
        return self.matrix.q_centers

    @property
    def q_edges(self) -> FloatArray:
        """Bin edges in nm^-1, shape (n_bins + 1,)."""
        return self.matrix.q_edges

    @property
    def shape(self) -> tuple[int, int]:
        """Image shape (H, W) this integrator accepts."""
        return self.matrix.shape

    def __repr__(self) -> str:
        return (
            f"Integrator(shape={self.shape}, n_bins={self.matrix.n_bins}, "
            f"backend={self.backend_name!r}, engine={self.engine.name!r})"
        )

    def warm_up(self, dtype: DTypeLike = np.int32) -> Integrator:
        """Run the engine once on two blank frames of ``dtype`` (default int32, PILATUS).

        The first call of a kernel loads or compiles it and starts the thread pool (about
        0.3 s on the CPU engine); services call this at setup so the first real frames do not
        pay for it.

        Parameters
        ----------
        dtype : numpy dtype
            The detector's pixel type.

        Returns
        -------
        Integrator
            self.
        """
        blank = np.zeros((2,) + tuple(self.shape), dtype=dtype)
        for errors in (False, "poisson", True):  # each is its own kernel variant
            self.engine.sums(blank, errors=errors)
        return self

    # -- integration ----------------------------------------------------------------------------
    def integrate_batch(self, stack: ArrayLike) -> FloatArray:
        """Mean intensity per bin of each frame of a stack, in one engine pass.

        Parameters
        ----------
        stack : array_like, shape (B, H, W)
            Frames of any integer or float dtype.

        Returns
        -------
        ndarray of float64, shape (B, n_bins)
            Mean intensity (counts per pixel) in each q bin of :attr:`q`; NaN in empty bins.
        """
        return mean_intensity(self.engine.sums(stack, errors=False))

    def integrate(self, image: ArrayLike) -> tuple[FloatArray, FloatArray]:
        """Integrate one frame over the calibration's q bins (SAXSdog's ``integratedata``).

        Parameters
        ----------
        image : array_like, shape (H, W)
            The frame, any integer or float dtype; negative, non-finite and unsigned-maximum
            pixels are invalid and not counted.

        Returns
        -------
        q : ndarray of float64, shape (n_bins,)
            Bin centres in nm^-1.
        I : ndarray of float64, shape (n_bins,)
            Mean intensity in each bin; NaN where no valid pixel contributes.

        Examples
        --------
        >>> q, I = integ.integrate(image)  # doctest: +SKIP
        """
        return self.q, self.integrate_batch(self._single(image))[0]

    def integrate_batch_error(
        self, stack: ArrayLike, std: bool = True
    ) -> tuple[FloatArray, FloatArray | None, FloatArray]:
        """Mean, standard deviation and Poisson error per bin of each frame of a stack.

        Parameters
        ----------
        stack : array_like, shape (B, H, W)
            Frames of any integer or float dtype.
        std : bool
            False skips the standard deviation (returned as None): a curve file of q, I and
            err needs only the Poisson error, and the CPU engine is then ~20 % faster.

        Returns
        -------
        I, std, err : ndarray of float64, shape (B, n_bins)
            Mean, weighted standard deviation of the pixel values (or None), Poisson error of
            the mean; NaN in empty bins.
        """
        return error_model(self.engine.sums(stack, errors=True if std else "poisson"))

    def integrate_error(self, image: ArrayLike) -> tuple[FloatArray, FloatArray, FloatArray]:
        """Mean, standard deviation and Poisson error per bin of one frame (section 4.7).

        Parameters
        ----------
        image : array_like, shape (H, W)
            The frame, any integer or float dtype.

        Returns
        -------
        I, std, err : ndarray of float64, shape (n_bins,)
            Over the bins of :attr:`q` (nm^-1); NaN in empty bins.
        """
        intensity, std, err = self.integrate_batch_error(self._single(image))
        assert std is not None  # asked for with std=True
        return intensity[0], std[0], err[0]

    def integrate_chi(
        self, image: ArrayLike, path: PathLike, title: str | None = None
    ) -> FloatArray:
        """Integrate one frame and write a .chi curve file (q in nm^-1, I, Poisson error).

        Parameters
        ----------
        image : array_like, shape (H, W)
            The frame.
        path : str or path-like
            The .chi file, written atomically (temporary name, then renamed).
        title : str, optional
            First line of the file (default: the path).

        Returns
        -------
        ndarray of float64, shape (3, n_bins)
            Rows q, I, err, as written.
        """
        from .io.chi import write_chi

        intensity, _, err = self.integrate_error(image)
        write_chi(
            path,
            self.q,
            intensity,
            err,
            title=title if title is not None else str(path),
            calibration_key=self.matrix_key,
        )
        return np.vstack([self.q, intensity, err])

    def plot(
        self, image: ArrayLike, outputfile: str = "", startplotat: int = 0, fig: Any = None
    ) -> Figure:
        """Plot I(q) with the Poisson error and the standard deviation (section 4.7).

        Parameters
        ----------
        image : array_like, shape (H, W)
            The frame.
        outputfile : str
            Write the figure there (format from the suffix); empty: show a window.
        startplotat : int
            First bin to plot.
        fig : matplotlib Figure, optional
            Draw into this figure.

        Returns
        -------
        matplotlib.figure.Figure
        """
        from .plotting import plot_curve

        intensity, std, err = self.integrate_error(image)
        figure: Figure = plot_curve(
            self.q,
            intensity,
            err=err,
            std=std,
            outputfile=outputfile,
            start=startplotat,
            fig=fig,
            title=getattr(self.calibration, "title", "") or "",
        )
        return figure

    # -- pyFAI-style methods ---------------------------------------------------------------------
    def integrate1d(
        self,
        image: ArrayLike,
        npt: int | None = None,
        unit: str = "q_nm^-1",
        radial_range: tuple[float, float] | None = None,
        azimuth_range: tuple[float, float] | None = None,
        correct_solid_angle: bool = False,
        dark: ArrayLike | None = None,
        flat: ArrayLike | None = None,
        polarization_factor: float | None = None,
        normalization_factor: float = 1.0,
        error_model: str | None = "poisson",
        mask: ArrayLike | None = None,
        dummy: float | None = None,
        delta_dummy: float | None = None,
    ) -> IntegrationResult:
        """Integrate one frame to a curve, with pyFAI's options.

        All options are folded into the sparse matrix (cached per option set): one engine
        pass.  With the defaults the numbers are those of :meth:`integrate` /
        :meth:`integrate_error`.

        Parameters
        ----------
        image : array_like, shape (H, W)
            The frame, any integer or float dtype.
        npt : int, optional
            Number of radial bins; None: the calibration's bins (PixelPerRadialElement, or
            this integrator's q_edges) when unit and radial_range are the defaults, else as
            many bins as those, uniform over the range.
        unit : str
            Radial unit: ``"q_nm^-1"`` (default), ``"q_A^-1"``, ``"2th_deg"``, ``"2th_rad"`` or
            ``"r_mm"`` (:mod:`gpusaxs.units`).
        radial_range : (float, float), optional
            (low, high) in ``unit``; None: from 0 to the detector's largest value.
        azimuth_range : (float, float), optional
            (low, high) chi sector in degrees (pyFAI's convention, :mod:`gpusaxs.units`);
            low > high wraps through +-180, e.g. (170, -170).
        correct_solid_angle : bool
            Divide by pyFAI's relative solid angle cos(incidence)^3.
        dark : array_like, shape (H, W), optional
            Counts subtracted from each raw pixel (validity judged on the raw value).
        flat : array_like, shape (H, W), optional
            Divisor of each pixel; pixels where it is not positive are dropped.
        polarization_factor : float, optional
            None: the calibration's PolarizationCorrection; a number in [-1, 1]: pyFAI's
            factor, replacing it.
        normalization_factor : float or array_like
            The result is divided by it (monitor, transmission).
        error_model : {"poisson", "azimuthal", None}
            "poisson" (sigma = sqrt(sum w s^2 x) / sum w, SAXSdog's error), "azimuthal" (std =
            spread of the corrected pixels in the bin, sigma = std * sqrt(sum w^2) / sum w) or
            None (no sigma, fastest).
        mask : array_like of bool, shape (H, W), optional
            True = excluded, added to the integrator's mask.
        dummy, delta_dummy : float, optional
            pyFAI's dead-pixel value: with ``dummy`` given, pixels whose raw value is within
            ``delta_dummy`` (default: equal) of it are invalid and every other finite value
            counts, negative ones included (background-subtracted data; ``float("nan")``
            keeps every finite value). None (default): gpusaxs's rule, values < 0 are
            detector flags and invalid (:mod:`gpusaxs.dummy`).

        Returns
        -------
        IntegrationResult
            ``radial`` (npt,) bin centres in ``unit``, ``intensity`` and ``sigma`` (npt,);
            unpacks as ``radial, I`` or ``radial, I, sigma`` like pyFAI's.

        Examples
        --------
        >>> res = integ.integrate1d(
        ...     image,
        ...     npt=500,
        ...     unit="q_A^-1",  # doctest: +SKIP
        ...     azimuth_range=(-30, 30),
        ...     correct_solid_angle=True,
        ... )
        >>> q, I, sigma = res  # doctest: +SKIP
        """
        return _first_frame(self.integrate1d_batch(self._single(image), **_passed_on(locals())))

    def integrate1d_batch(
        self,
        stack: ArrayLike,
        npt: int | None = None,
        unit: str = "q_nm^-1",
        radial_range: tuple[float, float] | None = None,
        azimuth_range: tuple[float, float] | None = None,
        correct_solid_angle: bool = False,
        dark: ArrayLike | None = None,
        flat: ArrayLike | None = None,
        polarization_factor: float | None = None,
        normalization_factor: float | Sequence[float] | AnyArray = 1.0,
        error_model: str | None = "poisson",
        mask: ArrayLike | None = None,
        dummy: float | None = None,
        delta_dummy: float | None = None,
    ) -> IntegrationResult:
        """:meth:`integrate1d` of a stack in one engine pass.

        Parameters
        ----------
        stack : array_like, shape (B, H, W)
            The frames.
        normalization_factor : float or array_like, shape (B,)
            A scalar or one value per frame.
        npt, unit, radial_range, azimuth_range, correct_solid_angle, dark, flat, \
polarization_factor, error_model, mask, dummy, delta_dummy
            As :meth:`integrate1d`.

        Returns
        -------
        IntegrationResult
            ``intensity``, ``sigma``, ... of shape (B, npt).
        """
        return self._integrate(
            stack,
            dict(
                npt=npt,
                unit=unit,
                radial_range=radial_range,
                azimuth_range=azimuth_range,
                azimuth_npt=None,
                correct_solid_angle=correct_solid_angle,
                dark=dark,
                flat=flat,
                polarization_factor=polarization_factor,
                mask=mask,
            ),
            normalization_factor,
            error_model,
            dummy=(dummy, delta_dummy),
        )

    def integrate2d(
        self,
        image: ArrayLike,
        npt_rad: int | None,
        npt_azim: int = 360,
        unit: str = "q_nm^-1",
        radial_range: tuple[float, float] | None = None,
        azimuth_range: tuple[float, float] | None = None,
        correct_solid_angle: bool = False,
        dark: ArrayLike | None = None,
        flat: ArrayLike | None = None,
        polarization_factor: float | None = None,
        normalization_factor: float = 1.0,
        error_model: str | None = None,
        mask: ArrayLike | None = None,
        dummy: float | None = None,
        delta_dummy: float | None = None,
    ) -> IntegrationResult:
        """A cake: intensity over radial and chi bins of one frame, in one engine pass.

        Parameters
        ----------
        image : array_like, shape (H, W)
            The frame.
        npt_rad : int or None
            Radial bins (None: as :meth:`integrate1d`'s ``npt=None``).
        npt_azim : int
            chi bins.
        azimuth_range : (float, float), optional
            chi range in degrees (default (-180, 180), pyFAI's); may wrap through +-180.
        unit, radial_range, correct_solid_angle, dark, flat, polarization_factor, \
normalization_factor, error_model, mask, dummy, delta_dummy
            As :meth:`integrate1d` (``error_model`` defaults to None here, as pyFAI's).

        Returns
        -------
        IntegrationResult
            ``intensity`` (npt_azim, npt_rad), ``radial`` (npt_rad,) in ``unit``,
            ``azimuthal`` (npt_azim,) chi bin centres in degrees; unpacks as
            ``I, radial, chi`` like pyFAI's Integrate2dResult.

        Examples
        --------
        >>> I, q, chi = integ.integrate2d(image, 500, 360)  # doctest: +SKIP
        """
        return _first_frame(self.integrate2d_batch(self._single(image), **_passed_on(locals())))

    def integrate2d_batch(
        self,
        stack: ArrayLike,
        npt_rad: int | None,
        npt_azim: int = 360,
        unit: str = "q_nm^-1",
        radial_range: tuple[float, float] | None = None,
        azimuth_range: tuple[float, float] | None = None,
        correct_solid_angle: bool = False,
        dark: ArrayLike | None = None,
        flat: ArrayLike | None = None,
        polarization_factor: float | None = None,
        normalization_factor: float | Sequence[float] | AnyArray = 1.0,
        error_model: str | None = None,
        mask: ArrayLike | None = None,
        dummy: float | None = None,
        delta_dummy: float | None = None,
    ) -> IntegrationResult:
        """:meth:`integrate2d` of a stack in one engine pass.

        Parameters
        ----------
        stack : array_like, shape (B, H, W)
            The frames.
        npt_rad, npt_azim, unit, radial_range, azimuth_range, correct_solid_angle, dark, \
flat, polarization_factor, error_model, mask, dummy, delta_dummy
            As :meth:`integrate2d`.
        normalization_factor : float or array_like, shape (B,)
            A scalar or one value per frame.

        Returns
        -------
        IntegrationResult
            ``intensity`` of shape (B, npt_azim, npt_rad).
        """
        return self._integrate(
            stack,
            dict(
                npt=npt_rad,
                unit=unit,
                radial_range=radial_range,
                azimuth_range=(-180.0, 180.0) if azimuth_range is None else azimuth_range,
                azimuth_npt=int(npt_azim),
                correct_solid_angle=correct_solid_angle,
                dark=dark,
                flat=flat,
                polarization_factor=polarization_factor,
                mask=mask,
            ),
            normalization_factor,
            error_model,
            dummy=(dummy, delta_dummy),
        )

    def option_engine(
        self,
        npt: int | None = None,
        unit: str = "q_nm^-1",
        radial_range: tuple[float, float] | None = None,
        azimuth_range: tuple[float, float] | None = None,
        azimuth_npt: int | None = None,
        correct_solid_angle: bool = False,
        dark: ArrayLike | None = None,
        flat: ArrayLike | None = None,
        polarization_factor: float | None = None,
        mask: ArrayLike | None = None,
    ) -> tuple[IntegrationMatrix, Engine]:
        """The matrix and engine of an option set, built once and cached (the last few sets).

        Parameters
        ----------
        npt, unit, radial_range, azimuth_range, correct_solid_angle, dark, flat, \
polarization_factor, mask
            As :meth:`integrate1d`.
        azimuth_npt : int, optional
            chi bins of a cake; None for a curve.

        Returns
        -------
        matrix : IntegrationMatrix
        engine : Engine
        """
        from .units import parse_unit

        unit = parse_unit(unit)
        key = _options_digest(
            npt,
            unit,
            radial_range,
            azimuth_range,
            azimuth_npt,
            correct_solid_angle,
            dark,
            flat,
            polarization_factor,
            mask,
        )
        with self._option_lock:  # one build per option set, also from several threads
            hit = self._option_engines.get(key)
            if hit is None:
                matrix = self._option_matrix(
                    npt,
                    unit,
                    radial_range,
                    azimuth_range,
                    azimuth_npt,
                    correct_solid_angle,
                    dark,
                    flat,
                    polarization_factor,
                    mask,
                )
                hit = (matrix, self.engine if matrix is self.matrix else self._make_engine(matrix))
                self._option_engines[key] = hit
                while len(self._option_engines) > self.OPTION_CACHE_SIZE:
                    self._option_engines.popitem(last=False)
            self._option_engines.move_to_end(key)
        return hit

    def _option_matrix(
        self,
        npt: int | None,
        unit: str,
        radial_range: tuple[float, float] | None,
        azimuth_range: tuple[float, float] | None,
        azimuth_npt: int | None,
        correct_solid_angle: bool,
        dark: ArrayLike | None,
        flat: ArrayLike | None,
        polarization_factor: float | None,
        mask: ArrayLike | None,
    ) -> IntegrationMatrix:
        from .corrections import apply_corrections
        from .matrix import default_radial_edges, restrict_matrix
        from .matrix_cache import get_matrix
        from .units import normalise_sector

        cal = self.calibration
        options: dict[str, Any] = dict(unit=unit)
        if azimuth_npt is not None:
            assert azimuth_range is not None  # integrate2d_batch gives (-180, 180) by default
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
            matrix = get_matrix(
                cal,
                mask=args["mask"],
                q_edges=edges,
                options=options,
                cache_dir=args["cache_dir"],
                progress=args["progress"],
            )
        if mask is not None:
            matrix = restrict_matrix(matrix, mask)
        return apply_corrections(matrix, cal, correct_solid_angle, polarization_factor, flat, dark)

    def _norm_squared(self, matrix: IntegrationMatrix, norm: FloatArray) -> FloatArray:
        """sum w^2 per bin of the valid pixels (B, n_bins): the matrix's static sum of w^2
        (computed once per matrix) scaled by the fraction of the bin's weight valid per frame."""
        with self._option_lock:
            cache: OrderedDict[int, tuple[IntegrationMatrix, FloatArray]] = (
                self.__dict__.setdefault("_norm_sq_cache", OrderedDict())
            )
            hit = cache.get(id(matrix))
            if hit is None or hit[0] is not matrix:
                squares = np.bincount(
                    matrix.bins,
                    weights=matrix.weights.astype(np.float64) ** 2,
                    minlength=matrix.n_bins,
                ).astype(np.float64, copy=False)
                hit = cache[id(matrix)] = (matrix, squares)
                while len(cache) > self.OPTION_CACHE_SIZE:
                    cache.popitem(last=False)
        with np.errstate(invalid="ignore", divide="ignore"):
            result: FloatArray = np.where(matrix.norm > 0, hit[1] * norm / matrix.norm, 0.0)
            return result

    def _integrate(
        self,
        stack: ArrayLike,
        options: dict[str, Any],
        normalization_factor: float | Sequence[float] | AnyArray,
        error_model_name: str | None,
        dummy: tuple[float | None, float | None] = (None, None),
    ) -> IntegrationResult:
        from .results import IntegrationResult

        if error_model_name not in ERROR_MODELS:
            raise ValueError(f"error_model must be one of {ERROR_MODELS}, got {error_model_name!r}")
        dummy_value, delta_dummy = dummy
        if dummy_value is None and delta_dummy is not None:
            raise ValueError("delta_dummy needs dummy (pyFAI's meaning: |x - dummy| <= delta)")
        # with a dummy value the dark is subtracted on the host (gpusaxs.dummy)
        matrix, engine = self.option_engine(
            **(options if dummy_value is None else dict(options, dark=None))
        )
        stack = np.asarray(stack)
        assert isinstance(stack, np.ndarray)
        if stack.ndim != 3:
            raise ValueError(f"expected a stack (B, H, W), got an array of shape {stack.shape}")
        modes: dict[str | None, bool | str] = {None: False, "poisson": "poisson", "azimuthal": True}
        errors = modes[error_model_name]
        factor = np.asarray(normalization_factor, dtype=np.float64)
        if factor.ndim == 1:
            if len(factor) != stack.shape[0]:
                raise ValueError(
                    f"normalization_factor has {len(factor)} values for {stack.shape[0]} frames"
                )
            factor = factor[:, None]
        elif factor.ndim != 0:
            raise ValueError("normalization_factor must be a number or one per frame")
        if np.any(factor <= 0) or not np.all(np.isfinite(factor)):
            raise ValueError(f"normalization_factor must be positive, got {normalization_factor}")
        if dummy_value is None:
            warn_negative_floats(stack)
            sums = engine.sums(stack, errors=errors)
        else:
            if options["dark"] is not None and np.shape(options["dark"]) != matrix.shape:
                raise ValueError(
                    f"dark has shape {np.shape(options['dark'])}, the frames {matrix.shape}"
                )
            sums = dummy_sums(engine, stack, options["dark"], dummy_value, delta_dummy, errors)
        if errors:
            intensity, std, sigma = error_model(sums)
        else:
            intensity, std, sigma = mean_intensity(sums), None, None
        if error_model_name == "azimuthal":
            assert std is not None  # errors=True gives the squares
            sigma = (
                std
                * np.sqrt(self._norm_squared(matrix, sums.norm))
                / np.where(sums.norm > 0, sums.norm, np.nan)
            )
        else:
            std = None
        if np.any(factor != 1.0):
            intensity = intensity / factor
            sigma = None if sigma is None else sigma / factor
            std = None if std is None else std / factor
        shape = (
            (stack.shape[0], matrix.n_azimuthal, matrix.n_radial)
            if matrix.azimuth_edges is not None
            else (stack.shape[0], matrix.n_radial)
        )

        def cake(a: Any) -> Any:
            return None if a is None else np.reshape(a, shape)

        return IntegrationResult(
            radial=matrix.q_centers,
            intensity=cake(intensity),
            sigma=cake(sigma),
            unit=matrix.radial_unit,
            count=cake(sums.norm),
            sum_signal=cake(sums.signal),
            sum_normalization=cake(sums.norm * factor),
            sum_variance=cake(sums.variance),
            std=cake(std),
            azimuthal=matrix.azimuth_centers,
            error_model=error_model_name,
            normalization_factor=normalization_factor,
        )

    def _single(self, image: ArrayLike) -> AnyArray:
        arr = np.asarray(image)
        if arr.ndim != 2:
            raise ValueError(f"expected a 2D image, got an array of shape {arr.shape}")
        return arr[None]


def _passed_on(arguments: dict[str, Any]) -> dict[str, Any]:
    """A single-frame method's keyword arguments (its ``locals()``), for its batch method."""
    return {k: v for k, v in arguments.items() if k not in ("self", "image")}


def _first_frame(res: IntegrationResult) -> IntegrationResult:
    """The single-frame result of a batch result of one frame."""
    from dataclasses import replace

    arrays = (
        "intensity",
        "sigma",
        "std",
        "count",
        "sum_signal",
        "sum_normalization",
        "sum_variance",
    )
    changes: dict[str, Any] = {
        name: None if getattr(res, name) is None else getattr(res, name)[0] for name in arrays
    }
    return replace(res, **changes)


def _options_digest(*options: Any) -> str:
    """Digest of an option set; arrays (dark, flat, mask) by their content."""
    h = hashlib.sha256()
    for value in options:
        if isinstance(value, np.ndarray) or (value is not None and np.ndim(value) > 1):
            arr = np.ascontiguousarray(value)
            h.update(str((arr.shape, arr.dtype.str)).encode())
            h.update(arr.tobytes())
        else:
            h.update(
                repr(
                    value
                    if not isinstance(value, (list, tuple))
                    else tuple(float(v) for v in value)
                ).encode()
            )
        h.update(b"|")
    return h.hexdigest()
