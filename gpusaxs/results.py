"""Result objects of the pyFAI-style methods (Integrator.integrate1d, integrate2d, ...).

Like pyFAI's Integrate1dResult / Integrate2dResult they unpack as tuples, so pyFAI scripts port:
``q, I = res`` (or ``q, I, sigma = res`` when an error model was asked for) for a curve,
``I, radial, chi = res`` for a cake.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

from ._typing import FloatArray
from .integration_options import IntegrationOptions
from .units import unit_label

__all__ = ["IntegrationResult"]


@dataclass
class IntegrationResult:
    """One integrated curve (1D), cake (2D), or a batch of them.

    Attributes
    ----------
    radial : (n_rad,) radial bin centres in ``unit``.
    intensity : (n_rad,) 1D, (n_azim, n_rad) 2D, with a leading B axis for a batch; NaN in
        empty bins.  The mean of the corrected pixel values ``(x - dark) / (K sa flat)`` in the
        bin, divided by ``normalization_factor``.
    sigma : uncertainty of ``intensity`` (same shape) from ``error_model``, or None.
    std : standard deviation of the corrected pixel values in the bin ("azimuthal" model), or None.
    unit : radial unit name (gpusaxs.units).
    azimuthal : (n_azim,) chi bin centres in degrees for a cake (pyFAI's convention), else None.
    count : sum of the pixel weights (area fractions of valid pixels) per bin.
    sum_signal : weighted sum of the corrected pixel values per bin.
    sum_normalization : count * normalization_factor, so intensity = sum_signal / sum_normalization.
    sum_variance : weighted sum of the Poisson variances of the corrected values, or None.
    error_model : "poisson", "azimuthal" or None.
    normalization_factor : the divisor of ``intensity`` (float, or one per frame of a batch).
    options : the :class:`~gpusaxs.integration_options.IntegrationOptions` the integration ran
        with (unit, bins, ranges, corrections); ``options.as_dict()`` for files.
    robust : the parameters of a robust profile (``sigma_clip``, ``medfilt1d``,
        ``integrate_radial``: method, thres, max_iter, percentile, ...), else None.

    Examples
    --------
    >>> res = integ.integrate1d(image, unit="q_nm^-1", error_model="poisson")  # doctest: +SKIP
    >>> q, I, sigma = res  # doctest: +SKIP
    >>> res.radial_label  # doctest: +SKIP
    'q (nm^-1)'
    """

    radial: FloatArray
    intensity: FloatArray
    sigma: FloatArray | None
    unit: str
    count: FloatArray
    sum_signal: FloatArray
    sum_normalization: FloatArray
    sum_variance: FloatArray | None = None
    std: FloatArray | None = None
    azimuthal: FloatArray | None = None
    error_model: str | None = None
    normalization_factor: object = 1.0
    options: IntegrationOptions | None = None
    robust: dict[str, Any] | None = None

    @property
    def sem(self) -> FloatArray | None:
        """Standard error of the mean: pyFAI's name for ``sigma``."""
        return self.sigma

    @property
    def is_2d(self) -> bool:
        """True for a cake (radial x azimuthal bins)."""
        return self.azimuthal is not None

    @property
    def radial_label(self) -> str:
        """Axis label of the radial unit, e.g. 'q (nm^-1)'."""
        return unit_label(self.unit)

    def _items(self) -> tuple[Any, ...]:
        if self.is_2d:
            return (self.intensity, self.radial, self.azimuthal)
        if self.sigma is None:
            return (self.radial, self.intensity)
        return (self.radial, self.intensity, self.sigma)

    def __iter__(self) -> Iterator[Any]:
        return iter(self._items())

    def __len__(self) -> int:
        return len(self._items())

    def __getitem__(self, index: int) -> Any:
        return self._items()[index]

    def __repr__(self) -> str:
        shape = np.shape(self.intensity)
        kind = "cake" if self.is_2d else "curve"
        return (
            f"IntegrationResult({kind}, intensity shape={shape}, unit={self.unit!r}, "
            f"error_model={self.error_model!r})"
        )
