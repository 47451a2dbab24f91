"""The pyFAI-style integration of a stack: an option set's matrix and engine (built once,
kept for the last few sets), then the engine's sums reduced to an :class:`IntegrationResult`
by the chosen error model. :class:`gpusaxs.Integrator` is the front end."""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import TYPE_CHECKING, Any

import numpy as np

from ._typing import AnyArray, ArrayLike, FloatArray
from .corrections import apply_corrections
from .dummy import dummy_sums, warn_negative_floats
from .engine_contract import Engine, error_model, mean_intensity
from .fiber import build_grazing_matrix
from .integration_options import IntegrationOptions
from .matrix import default_radial_edges, restrict_matrix
from .matrix_cache import get_matrix
from .radial_bins import log_edges
from .results import IntegrationResult
from .units import normalise_sector

if TYPE_CHECKING:
    from .calibration_model import Calibration
    from .matrix import IntegrationMatrix

ERROR_MODELS = (None, "poisson", "azimuthal")

__all__ = ["ERROR_MODELS", "OptionEngines", "first_frame", "passed_on"]


class OptionEngines:
    """The matrices and engines of option sets, built once per set and kept for the last
    ``size`` sets (least recently used dropped first); safe to share between threads.

    Parameters
    ----------
    calibration : Calibration
    matrix : IntegrationMatrix
        The calibration's own matrix (default unit, bins and corrections).
    engine : callable
        ``engine()``: the engine of ``matrix``; ``engine(matrix)``: a new engine of another.
    build_args : dict
        ``mask``, ``cache_dir`` and ``progress`` as given to the Integrator.
    """

    def __init__(
        self,
        calibration: Calibration,
        matrix: IntegrationMatrix,
        engine: Callable[..., Engine],
        build_args: dict[str, Any],
        size: int = 4,
    ) -> None:
        self.calibration, self.matrix, self.size = calibration, matrix, size
        self._engine, self._build_args = engine, build_args
        self._sets: OrderedDict[IntegrationOptions, tuple[IntegrationMatrix, Engine]] = (
            OrderedDict()
        )
        self._norm_sq: OrderedDict[int, tuple[IntegrationMatrix, FloatArray]] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, options: IntegrationOptions) -> tuple[IntegrationMatrix, Engine]:
        """The matrix and engine of ``options`` (built on first use)."""
        with self._lock:  # one build per option set, also from several threads
            hit = self._sets.get(options)
            if hit is None:
                matrix = self._build(options)
                engine = self._engine() if matrix is self.matrix else self._engine(matrix)
                hit = self._sets[options] = (matrix, engine)
                while len(self._sets) > self.size:
                    self._sets.popitem(last=False)
            self._sets.move_to_end(options)
        return hit

    def _build(self, options: IntegrationOptions) -> IntegrationMatrix:
        cal, unit = self.calibration, options.unit
        if options.grazing is not None:  # a map (oop, ip): kept in memory only
            mask = self._build_args["mask"]
            if mask is None and getattr(cal, "mask_file", None):
                mask = cal.load_mask()
            if options.mask is not None:  # the default ranges span the unmasked pixels
                extra = options.mask.array.astype(bool)
                mask = extra if mask is None else np.asarray(mask, bool) | extra
            return self._finish(build_grazing_matrix(cal, options.grazing, mask=mask), options)
        folded: dict[str, Any] = dict(unit=unit)
        if options.azimuth_npt is not None:
            lo, span = normalise_sector(options.azimuth_range or (-180.0, 180.0))
            n = options.azimuth_npt
            folded["azimuth_edges"] = lo + span * np.arange(n + 1) / n
        elif options.azimuth_range is not None:
            folded["azimuth_range"] = options.azimuth_range
        if unit == "q_nm^-1" and options.npt is None and options.radial_range is None:
            edges = self.matrix.q_edges
        else:
            edges = default_radial_edges(cal, unit, options.npt, options.radial_range)
        if options.radial_spacing == "log":
            edges = log_edges(options.radial_range, len(edges) - 1)
        if len(folded) == 1 and unit == "q_nm^-1" and edges is self.matrix.q_edges:
            matrix = self.matrix
        else:
            args = self._build_args
            matrix = get_matrix(
                cal,
                mask=args["mask"],
                q_edges=edges,
                options=folded,
                cache_dir=args["cache_dir"],
                progress=args["progress"],
            )
        return self._finish(matrix, options)

    def _finish(self, matrix: IntegrationMatrix, options: IntegrationOptions) -> IntegrationMatrix:
        """``matrix`` restricted to the option set's mask, with its corrections folded in."""
        cal = self.calibration
        if options.mask is not None:
            matrix = restrict_matrix(matrix, options.mask.array)
        return apply_corrections(
            matrix,
            cal,
            options.correct_solid_angle,
            options.polarization_factor,
            options.array("flat"),
            options.array("dark"),
        )

    def norm_squared(self, matrix: IntegrationMatrix, norm: FloatArray) -> FloatArray:
        """sum w^2 per bin of the valid pixels (B, n_bins): the matrix's static sum of w^2
        (computed once per matrix) scaled by the fraction of the bin's weight valid per frame."""
        with self._lock:
            hit = self._norm_sq.get(id(matrix))
            if hit is None or hit[0] is not matrix:
                squares = np.bincount(
                    matrix.bins,
                    weights=matrix.weights.astype(np.float64) ** 2,
                    minlength=matrix.n_bins,
                ).astype(np.float64, copy=False)
                hit = self._norm_sq[id(matrix)] = (matrix, squares)
                while len(self._norm_sq) > self.size:
                    self._norm_sq.popitem(last=False)
        with np.errstate(invalid="ignore", divide="ignore"):
            result: FloatArray = np.where(matrix.norm > 0, hit[1] * norm / matrix.norm, 0.0)
            return result

    def integrate(
        self,
        stack: ArrayLike,
        options: IntegrationOptions,
        normalization_factor: float | Sequence[float] | AnyArray = 1.0,
        error_model_name: str | None = "poisson",
        dummy: float | None = None,
        delta_dummy: float | None = None,
    ) -> IntegrationResult:
        """Integrate a stack (B, H, W) with ``options``: one engine pass, one result."""
        if error_model_name not in ERROR_MODELS:
            raise ValueError(f"error_model must be one of {ERROR_MODELS}, got {error_model_name!r}")
        if dummy is None and delta_dummy is not None:
            raise ValueError("delta_dummy needs dummy (pyFAI's meaning: |x - dummy| <= delta)")
        # with a dummy value the dark is subtracted on the host (gpusaxs.dummy)
        dark = options.array("dark")
        built = options if dummy is None or dark is None else _without_dark(options)
        matrix, engine = self.get(built)
        stack = np.asarray(stack)
        assert isinstance(stack, np.ndarray)
        if stack.ndim != 3:
            raise ValueError(f"expected a stack (B, H, W), got an array of shape {stack.shape}")
        modes: dict[str | None, bool | str] = {None: False, "poisson": "poisson", "azimuthal": True}
        errors = modes[error_model_name]
        factor = _normalization(normalization_factor, stack.shape[0])
        if dummy is None:
            warn_negative_floats(stack)
            sums = engine.sums(stack, errors=errors)
        else:
            if dark is not None and dark.shape != matrix.shape:
                raise ValueError(f"dark has shape {dark.shape}, the frames {matrix.shape}")
            sums = dummy_sums(engine, stack, dark, dummy, delta_dummy, errors)
        if errors:
            intensity, std, sigma = error_model(sums)
        else:
            intensity, std, sigma = mean_intensity(sums), None, None
        if error_model_name == "azimuthal":
            assert std is not None  # errors=True gives the squares
            sigma = (
                std
                * np.sqrt(self.norm_squared(matrix, sums.norm))
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
            sum_normalization=cake(sums.norm if np.all(factor == 1.0) else sums.norm * factor),
            sum_variance=cake(sums.variance),
            std=cake(std),
            azimuthal=matrix.azimuth_centers,
            error_model=error_model_name,
            normalization_factor=normalization_factor,
            options=options,
        )


def _without_dark(options: IntegrationOptions) -> IntegrationOptions:
    return IntegrationOptions(**{**options.__dict__, "dark": None})


def _normalization(value: float | Sequence[float] | AnyArray, n_frames: int) -> AnyArray:
    """The normalization factor as a scalar or a (B, 1) column; ValueError when not positive."""
    factor = np.asarray(value, dtype=np.float64)
    if factor.ndim == 1:
        if len(factor) != n_frames:
            raise ValueError(f"normalization_factor has {len(factor)} values for {n_frames} frames")
        factor = factor[:, None]
    elif factor.ndim != 0:
        raise ValueError("normalization_factor must be a number or one per frame")
    if np.any(factor <= 0) or not np.all(np.isfinite(factor)):
        raise ValueError(f"normalization_factor must be positive, got {value}")
    return factor


def passed_on(arguments: dict[str, Any]) -> dict[str, Any]:
    """A single-frame method's keyword arguments (its ``locals()``), for its batch method."""
    return {k: v for k, v in arguments.items() if k not in ("self", "image")}


def first_frame(res: IntegrationResult) -> IntegrationResult:
    """The single-frame result of a batch result of one frame."""
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
