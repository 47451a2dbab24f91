"""Integrator's robust profiles with pyFAI's names: sigma_clip, medfilt1d, integrate_radial
(a mixin of :class:`gpusaxs.Integrator`; the per-bin statistics are in :mod:`gpusaxs.robust`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from ._typing import AnyArray, ArrayLike
from .backend import array_module
from .bin_major import BinMajor, bin_major
from .engine_contract import invalid_threshold
from .engines import robust_kernels
from .integration_options import IntegrationOptions
from .option_engines import first_frame
from .results import IntegrationResult
from .robust import (
    ROBUST_ERROR_MODELS,
    RobustSums,
    entry_values,
    percentile_sums,
    quantiles,
    sigma_clip_sums,
)
from .robust_radial import radial_profile

if TYPE_CHECKING:
    from .option_engines import OptionEngines

__all__ = ["RobustMethods"]

#: entries x frames handled at once by the array-module path (bounds its memory)
CHUNK_ENTRIES = 1 << 24


class RobustMethods:
    """pyFAI's robust 1D profiles for :class:`gpusaxs.Integrator` (docs/robust.md)."""

    _options: OptionEngines
    backend_name: str

    def sigma_clip(
        self, image: ArrayLike, npt: int | None = None, **options: Any
    ) -> IntegrationResult:
        """pyFAI's ``sigma_clip_ng`` of one frame: per bin, entries further than ``thres``
        std from the mean dropped, mean and std recomputed, at most ``max_iter`` times.

        Parameters are those of :meth:`sigma_clip_batch`. Returns the clipped mean
        (``intensity``), ``std``, ``sigma`` (its standard error) and ``count`` (the area of the
        pixels kept per bin: their number without pixel splitting)."""
        return first_frame(self.sigma_clip_batch(_one(image), npt, **options))

    def sigma_clip_batch(
        self,
        stack: ArrayLike,
        npt: int | None = None,
        unit: str = "q_nm^-1",
        radial_range: tuple[float, float] | None = None,
        azimuth_range: tuple[float, float] | None = None,
        thres: float = 5.0,
        max_iter: int = 5,
        error_model: str = "poisson",
        correct_solid_angle: bool = False,
        dark: ArrayLike | None = None,
        flat: ArrayLike | None = None,
        polarization_factor: float | None = None,
        normalization_factor: float | Sequence[float] | AnyArray = 1.0,
        mask: ArrayLike | None = None,
        radial_spacing: str = "linear",
    ) -> IntegrationResult:
        """:meth:`sigma_clip` of a stack (B, H, W) in one pass.

        Parameters
        ----------
        npt, unit, radial_range, azimuth_range, correct_solid_angle, dark, flat, \
polarization_factor, normalization_factor, mask
            As :meth:`integrate1d`.
        thres : float
            The clip bound in std (pyFAI's ``thres``; Chauvenet's bound when that is larger).
        max_iter : int
            At most this many clipping passes (fewer when nothing more is dropped).
        radial_spacing : {"linear", "log"}
            "log": ``npt`` bins uniform in log(radial) over ``radial_range`` (low > 0), for
            SAXS; ``radial`` holds their arithmetic centres.
        error_model : {"poisson", "azimuthal", "hybrid"}
            The std that clips: Poisson (max(x, 1) per raw value) or the spread of the bin's
            values; "hybrid" clips with Poisson and reports the spread of what is kept.

        A pixel split over several bins (Oversampling > 1) is clipped in each bin on its own,
        with its area there as weight (docs/robust.md)."""

        def run(ev: Any, view: Any, xp: Any) -> RobustSums:
            return sigma_clip_sums(ev, view, thres, max_iter, error_model, xp)

        def kernel(frames: AnyArray, view: BinMajor) -> RobustSums:
            return _numba_sigma_clip(frames, view, thres, max_iter, error_model)

        options = _options(
            npt,
            unit,
            radial_range,
            azimuth_range,
            correct_solid_angle,
            dark,
            flat,
            polarization_factor,
            mask,
            radial_spacing,
        )
        params = {"method": "sigma_clip", "thres": float(thres), "max_iter": int(max_iter)}
        return self._robust(stack, options, run, error_model, normalization_factor, params, kernel)

    def medfilt1d(
        self, image: ArrayLike, npt: int | None = None, **options: Any
    ) -> IntegrationResult:
        """pyFAI's ``medfilt1d_ng`` of one frame: per bin the weighted ``percentile`` of the
        corrected values (50: the median), or the mean between two percentiles (lo, hi).
        Parameters are those of :meth:`medfilt1d_batch`."""
        return first_frame(self.medfilt1d_batch(_one(image), npt, **options))

    def medfilt1d_batch(
        self,
        stack: ArrayLike,
        npt: int | None = None,
        unit: str = "q_nm^-1",
        radial_range: tuple[float, float] | None = None,
        azimuth_range: tuple[float, float] | None = None,
        percentile: float | tuple[float, float] = 50.0,
        error_model: str = "poisson",
        correct_solid_angle: bool = False,
        dark: ArrayLike | None = None,
        flat: ArrayLike | None = None,
        polarization_factor: float | None = None,
        normalization_factor: float | Sequence[float] | AnyArray = 1.0,
        mask: ArrayLike | None = None,
        radial_spacing: str = "linear",
    ) -> IntegrationResult:
        """:meth:`medfilt1d` of a stack (B, H, W).

        Parameters
        ----------
        percentile : float or (float, float)
            In [0, 100]: one value, the entry at that weighted percentile; two, the weighted
            mean of the entries between them (pyFAI's rule, docs/robust.md).
        error_model : {"poisson", "azimuthal", "hybrid"}
            The reported error of the kept entries: Poisson, or their spread ("azimuthal" and
            "hybrid": nothing is clipped, so hybrid reports the spread).
        Others as :meth:`sigma_clip_batch`."""

        def run(ev: Any, view: Any, xp: Any) -> RobustSums:
            return percentile_sums(ev, view, percentile, error_model, xp)

        def kernel(frames: AnyArray, view: BinMajor) -> RobustSums:
            return _numba_percentile(frames, view, percentile, error_model)

        options = _options(
            npt,
            unit,
            radial_range,
            azimuth_range,
            correct_solid_angle,
            dark,
            flat,
            polarization_factor,
            mask,
            radial_spacing,
        )
        pct = [float(p) for p in np.atleast_1d(percentile)]
        params = {"method": "medfilt1d", "percentile": pct}
        return self._robust(stack, options, run, error_model, normalization_factor, params, kernel)

    def integrate_radial(self, image: ArrayLike, npt: int, **options: Any) -> IntegrationResult:
        """pyFAI's ``integrate_radial``: I(chi) of one frame over a radial range.

        Parameters
        ----------
        npt : int
            chi bins over ``azimuth_range`` (default the full circle).
        npt_rad : int
            Radial bins of the cake summed (default 100).
        radial_range : (float, float), optional
            In ``radial_unit`` (default "q_nm^-1").
        unit : {"chi_deg", "chi_rad"}
            Unit of the result's abscissa.
        error_model : {"poisson", "azimuthal", "hybrid", None}
        Others as :meth:`integrate1d`."""
        return first_frame(self.integrate_radial_batch(_one(image), npt, **options))

    def integrate_radial_batch(
        self, stack: ArrayLike, npt: int, **options: Any
    ) -> IntegrationResult:
        """:meth:`integrate_radial` of a stack (B, H, W) in one engine pass."""
        return radial_profile(self._options, _stack(stack), npt, **options)

    def _robust(
        self,
        stack: ArrayLike,
        options: IntegrationOptions,
        run: Callable[[Any, Any, Any], RobustSums],
        error_model: str,
        normalization_factor: float | Sequence[float] | AnyArray,
        params: dict[str, Any],
        kernel: Callable[[AnyArray, BinMajor], RobustSums] | None = None,
    ) -> IntegrationResult:
        if error_model not in ROBUST_ERROR_MODELS:
            raise ValueError(
                f"error_model must be one of {ROBUST_ERROR_MODELS}, got {error_model!r}"
            )
        frames = _stack(stack)
        matrix, _ = self._options.get(options)
        if frames.shape[1:] != tuple(matrix.shape):
            raise ValueError(f"frames of shape {frames.shape[1:]}, the matrix's {matrix.shape}")
        xp = array_module(self.backend_name)
        view = bin_major(matrix, xp)
        flat = frames.reshape(frames.shape[0], -1)
        step = max(1, CHUNK_ENTRIES // max(view.nnz, 1))
        parts = []
        if kernel is not None and xp is np and robust_kernels() is not None:
            parts, step = [kernel(flat, view)], flat.shape[0]
        for start in range(len(parts) * flat.shape[0], flat.shape[0], step):
            chunk = xp.asarray(flat[start : start + step])
            parts.append(_host(run(entry_values(chunk, view, xp), view, xp)))
        sums = RobustSums(*(np.concatenate(arrays) for arrays in zip(*parts, strict=True)))
        factor = _factor(normalization_factor, frames.shape[0])
        return IntegrationResult(
            radial=matrix.q_centers,
            intensity=sums.intensity / factor,
            sigma=sums.sigma / factor,
            unit=matrix.radial_unit,
            count=sums.count,
            sum_signal=sums.sum_signal,
            sum_normalization=sums.sum_normalization * factor,
            sum_variance=sums.sum_variance,
            std=sums.std / factor,
            error_model=error_model,
            normalization_factor=normalization_factor,
            options=options,
            robust={**params, "error_model": error_model},
        )


def _options(
    npt: int | None,
    unit: str,
    radial_range: Any,
    azimuth_range: Any,
    correct_solid_angle: bool,
    dark: Any,
    flat: Any,
    polarization_factor: float | None,
    mask: Any,
    radial_spacing: str,
) -> IntegrationOptions:
    return IntegrationOptions.make(
        npt=npt,
        unit=unit,
        radial_range=radial_range,
        azimuth_range=azimuth_range,
        correct_solid_angle=correct_solid_angle,
        dark=dark,
        flat=flat,
        polarization_factor=polarization_factor,
        mask=mask,
        radial_spacing=radial_spacing,
    )


def _numba_sigma_clip(
    frames: AnyArray, view: BinMajor, thres: float, max_iter: int, error_model: str
) -> RobustSums:
    """The CPU kernel (gpusaxs.cpu_fallback.robust_kernel) of sigma_clip_sums."""
    model = ROBUST_ERROR_MODELS.index(error_model)
    kernel = robust_kernels().sigma_clip
    args = (view.pixel_ptr, view.slot, float(thres), int(max_iter), model)
    return _numba_run(kernel, frames, view, *args)


def _numba_percentile(
    frames: AnyArray, view: BinMajor, percentile: Any, error_model: str
) -> RobustSums:
    """The CPU kernel (gpusaxs.cpu_fallback.robust_kernel) of percentile_sums."""
    lo, hi = quantiles(percentile)
    model = ROBUST_ERROR_MODELS.index(error_model)
    return _numba_run(robust_kernels().percentile_kernel, frames, view, lo, hi, model)


def _numba_run(kernel: Any, frames: AnyArray, view: BinMajor, *args: Any) -> RobustSums:
    out = np.empty((len(RobustSums._fields), frames.shape[0], view.n_bins))
    offset = np.zeros(0) if view.offset is None else view.offset
    threshold = invalid_threshold(frames.dtype)
    sc, w, px, ptr = view.scale, view.weights, view.pixels, view.bin_ptr
    kernel(frames, threshold, px, w, sc, offset, ptr, *args, out)
    return RobustSums(*out)


def _host(sums: RobustSums) -> RobustSums:
    return RobustSums(*(a.get() if hasattr(a, "get") else np.asarray(a) for a in sums))


def _one(image: ArrayLike) -> AnyArray:
    arr = np.asarray(image)
    if arr.ndim != 2:
        raise ValueError(f"expected a 2D image, got an array of shape {arr.shape}")
    return arr[None]


def _stack(stack: ArrayLike) -> AnyArray:
    arr = np.ascontiguousarray(stack)
    if arr.ndim != 3:
        raise ValueError(f"expected a stack (B, H, W), got an array of shape {arr.shape}")
    return arr


def _factor(value: Any, n_frames: int) -> AnyArray:
    factor = np.asarray(value, dtype=np.float64)
    if factor.ndim == 1:
        if len(factor) != n_frames:
            raise ValueError(f"normalization_factor has {len(factor)} values for {n_frames} frames")
        factor = factor[:, None]
    if np.any(factor <= 0) or not np.all(np.isfinite(factor)):
        raise ValueError(f"normalization_factor must be positive, got {value}")
    return factor
