"""pyFAI's ``integrate_radial``: I(chi) over a radial range, from one cake integration (the
cake's cells summed over the radial bins), in ``chi_deg`` or ``chi_rad``."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from ._typing import AnyArray, ArrayLike
from .integration_options import IntegrationOptions
from .results import IntegrationResult
from .units import AZIMUTH_UNITS, parse_azimuth_unit

if TYPE_CHECKING:
    from .option_engines import OptionEngines

__all__ = ["radial_profile"]

_MODELS = (None, "poisson", "azimuthal", "hybrid")


def radial_profile(
    engines: OptionEngines,
    stack: AnyArray,
    npt: int,
    npt_rad: int = 100,
    radial_range: tuple[float, float] | None = None,
    radial_unit: str = "q_nm^-1",
    unit: str = "chi_deg",
    azimuth_range: tuple[float, float] | None = None,
    error_model: str | None = "poisson",
    correct_solid_angle: bool = False,
    dark: ArrayLike | None = None,
    flat: ArrayLike | None = None,
    polarization_factor: float | None = None,
    normalization_factor: float | Sequence[float] | AnyArray = 1.0,
    mask: ArrayLike | None = None,
) -> IntegrationResult:
    """I(chi) of a stack (B, H, W): a cake of ``npt`` chi x ``npt_rad`` radial bins, its
    weighted sums added over the radial bins (pyFAI's definition). "azimuthal" (and "hybrid",
    the same here: nothing is clipped) report the spread of the corrected values in each chi
    bin; "poisson" sqrt(sum w s^2 x) / sum w."""
    if error_model not in _MODELS:
        raise ValueError(f"error_model must be one of {_MODELS}, got {error_model!r}")
    chi_unit = parse_azimuth_unit(unit)
    options = IntegrationOptions.make(
        npt=npt_rad,
        unit=radial_unit,
        radial_range=radial_range,
        azimuth_range=azimuth_range,
        azimuth_npt=npt,
        correct_solid_angle=correct_solid_angle,
        dark=dark,
        flat=flat,
        polarization_factor=polarization_factor,
        mask=mask,
    )
    spread = error_model in ("azimuthal", "hybrid")
    cake = engines.integrate(stack, options, 1.0, "azimuthal" if spread else error_model)
    matrix, _ = engines.get(options)
    norm_cells = np.asarray(cake.count)
    signal = np.asarray(cake.sum_signal).sum(axis=-1)
    norm = norm_cells.sum(axis=-1)
    with np.errstate(invalid="ignore", divide="ignore"):
        intensity = np.where(norm > 0, signal / np.where(norm > 0, norm, 1.0), np.nan)
        variance = std = sigma = None
        if spread:
            cells_i = np.nan_to_num(np.asarray(cake.intensity))
            cells_std = np.nan_to_num(np.asarray(cake.std))
            squares = (norm_cells * (cells_std**2 + cells_i**2)).sum(axis=-1)
            std = np.sqrt(np.maximum(squares / norm - intensity**2, 0.0))
            norm_sq = engines.norm_squared(matrix, norm_cells.reshape(stack.shape[0], -1))
            norm_sq = norm_sq.reshape(norm_cells.shape).sum(axis=-1)
            sigma = std * np.sqrt(norm_sq) / norm
        elif error_model == "poisson":
            variance = np.asarray(cake.sum_variance).sum(axis=-1)
            sigma = np.sqrt(variance) / norm
    factor = _column(normalization_factor)
    chi = np.asarray(cake.azimuthal, dtype=np.float64)
    if chi_unit == "chi_rad":
        chi = np.deg2rad(chi)
    return IntegrationResult(
        radial=chi,
        intensity=intensity / factor,
        sigma=None if sigma is None else sigma / factor,
        unit=chi_unit,
        count=norm,
        sum_signal=signal,
        sum_normalization=norm * factor,
        sum_variance=variance,
        std=None if std is None else std / factor,
        error_model=error_model,
        normalization_factor=normalization_factor,
        options=options,
        robust={
            "method": "integrate_radial",
            "radial_unit": options.unit,
            "radial_range": [float(matrix.q_edges[0]), float(matrix.q_edges[-1])],
            "npt_rad": int(npt_rad),
            "unit_label": AZIMUTH_UNITS[chi_unit][0],
        },
    )


def _column(value: Any) -> AnyArray:
    factor = np.asarray(value, dtype=np.float64)
    if np.any(factor <= 0) or not np.all(np.isfinite(factor)):
        raise ValueError(f"normalization_factor must be positive, got {value}")
    return factor[:, None] if factor.ndim == 1 else factor
