"""Integrator: the user-facing front end, one per calibration, on the CPU or the GPU.

>>> cal = Calibration.from_file("cal.json")
>>> integ = Integrator(cal)  # backend "auto": CuPy when a GPU is present
>>> res = integ.integrate1d(image, unit="q_nm^-1", correct_solid_angle=True)  # pyFAI-style
>>> q, I, sigma = res
>>> q, I = integ.integrate(image)  # SAXSdog's methods, q in nm^-1
>>> I = integ.integrate_batch(stack)  # (B, H, W) -> (B, n_bins)
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
from numpy.typing import DTypeLike

from ._typing import AnyArray, ArrayLike, FloatArray, PathLike
from .backend import select_backend
from .calibration_model import Calibration, as_calibration
from .engine_contract import Engine, error_model, mean_intensity
from .engines import make_engine
from .grazing import GrazingMixin
from .integration_options import IntegrationOptions
from .io.chi import write_chi
from .matrix_cache import get_matrix
from .option_engines import ERROR_MODELS, OptionEngines, first_frame, passed_on
from .plotting import plot_curve
from .robust_methods import RobustMethods

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from .calibration_model import Calibration
    from .matrix import IntegrationMatrix
    from .results import IntegrationResult


__all__ = ["ERROR_MODELS", "Integrator"]


class Integrator(GrazingMixin, RobustMethods):
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
    light : bool
        On the CPU, the start-up-free NumPy engine (no numba import nor kernel load: the right
        choice for a few frames); ignored on the GPU (:func:`gpusaxs.engines.make_engine`).

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
        light: bool = False,
    ) -> None:
        self.calibration = as_calibration(cal)
        self.backend_name, self.backend_reason = select_backend(backend)
        self._build_args = dict(mask=mask, cache_dir=cache_dir, progress=progress)
        self._threads, self._light = threads, light
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
        self._options = OptionEngines(
            self.calibration,
            self.matrix,
            lambda matrix=None: self.engine if matrix is None else self._make_engine(matrix),
            self._build_args,
            self.OPTION_CACHE_SIZE,
        )

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
        return make_engine(matrix, self.backend_name, threads=self._threads, light=self._light)

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
        return first_frame(self.integrate1d_batch(self._single(image), **passed_on(locals())))

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
        options = IntegrationOptions.make(
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
        )
        return self._options.integrate(
            stack, options, normalization_factor, error_model, dummy, delta_dummy
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
        return first_frame(self.integrate2d_batch(self._single(image), **passed_on(locals())))

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
        options = IntegrationOptions.make(
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
        )
        return self._options.integrate(
            stack, options, normalization_factor, error_model, dummy, delta_dummy
        )

    def option_engine(self, **options: Any) -> tuple[IntegrationMatrix, Engine]:
        """The matrix and engine of an option set (keywords of :class:`IntegrationOptions`:
        those of :meth:`integrate1d` plus ``azimuth_npt``), built once and cached (the last
        :attr:`OPTION_CACHE_SIZE` sets)."""
        return self._options.get(IntegrationOptions.make(**options))

    def _single(self, image: ArrayLike) -> AnyArray:
        arr = np.asarray(image)
        if arr.ndim != 2:
            raise ValueError(f"expected a 2D image, got an array of shape {arr.shape}")
        return arr[None]
