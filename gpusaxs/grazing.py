"""The grazing-incidence methods of :class:`gpusaxs.Integrator` (issue 28): maps over (qoop,
qip) and their 1D cuts, with pyFAI FiberIntegrator's names; the binning is in
:mod:`gpusaxs.fiber`, the integration is the option sets' (:mod:`gpusaxs.option_engines`)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, fields
from typing import TYPE_CHECKING, Any, cast

import numpy as np

from ._typing import AnyArray, ArrayLike, FloatArray
from .fiber import FIBER_UNITS, GrazingBinning, parse_fiber_unit
from .integration_options import IntegrationOptions
from .option_engines import first_frame, passed_on
from .results import IntegrationResult

if TYPE_CHECKING:
    from .option_engines import OptionEngines

__all__ = ["GrazingResult", "GrazingMixin", "angle_in_radians"]


@dataclass
class GrazingResult(IntegrationResult):
    """A grazing-incidence map (``intensity`` (npt_oop, npt_ip), a leading B axis for a stack)
    or a cut (``intensity`` (npt,) along ``radial`` in ``unit``).

    ``inplane`` / ``outofplane``: the bin centres of the map's axes (pyFAI's names), in
    ``unit`` / ``unit_oop``; unpacks as ``I, inplane, outofplane`` (a map) or ``x, I[, sigma]``
    (a cut), like pyFAI's fiber results. Empty cells (the missing wedge) are NaN.
    """

    unit_oop: str | None = None
    vertical_integration: bool | None = None

    @property
    def inplane(self) -> FloatArray | None:
        """In-plane bin centres of a map (None for a cut)."""
        return self.radial if self.unit_oop is not None else None

    @property
    def outofplane(self) -> FloatArray | None:
        """Out-of-plane bin centres of a map (None for a cut)."""
        return self.azimuthal

    @property
    def ip_unit(self) -> str:
        """Unit of the in-plane axis (of the cut's axis for a cut)."""
        return self.unit

    @property
    def oop_unit(self) -> str | None:
        """Unit of the out-of-plane axis of a map."""
        return self.unit_oop

    @property
    def radial_label(self) -> str:
        """Axis label of ``unit``, e.g. 'qIP (nm^-1)'."""
        return FIBER_UNITS[self.unit][0]


def angle_in_radians(value: float, angle_unit: str) -> float:
    """An incident or tilt angle in radians from ``angle_unit`` ("deg" or "rad")."""
    unit = str(angle_unit).strip().lower()
    if unit in ("deg", "degree", "degrees", "°"):
        return float(np.deg2rad(float(value)))
    if unit in ("rad", "radian", "radians"):
        return float(value)
    raise ValueError(f"angle_unit must be 'deg' or 'rad', got {angle_unit!r}")


def _pair(value: Any) -> tuple[float, float] | None:
    return None if value is None else (float(value[0]), float(value[1]))


def _as_grazing(res: IntegrationResult, **extra: Any) -> GrazingResult:
    return GrazingResult(**{f.name: getattr(res, f.name) for f in fields(res)}, **extra)


class GrazingMixin:
    """Integrator methods of grazing incidence: :meth:`integrate2d_grazing_incidence`,
    :meth:`integrate1d_grazing_incidence` and their ``_batch`` forms (stacks in one pass)."""

    _options: OptionEngines

    def integrate2d_grazing_incidence(
        self,
        image: ArrayLike,
        npt_ip: int = 1000,
        npt_oop: int = 1000,
        unit_ip: str = "qip_nm^-1",
        unit_oop: str = "qoop_nm^-1",
        ip_range: tuple[float, float] | None = None,
        oop_range: tuple[float, float] | None = None,
        incident_angle: float = 0.0,
        tilt_angle: float = 0.0,
        sample_orientation: int = 1,
        angle_unit: str = "rad",
        split_pixels: bool = True,
        correct_solid_angle: bool = False,
        dark: ArrayLike | None = None,
        flat: ArrayLike | None = None,
        polarization_factor: float | None = None,
        normalization_factor: float = 1.0,
        error_model: str | None = None,
        mask: ArrayLike | None = None,
        dummy: float | None = None,
        delta_dummy: float | None = None,
    ) -> GrazingResult:
        """A grazing-incidence map of one frame: intensity over (out-of-plane, in-plane) bins.

        Parameters
        ----------
        image : array_like, shape (H, W)
            The frame.
        npt_ip, npt_oop : int
            Bins along the in-plane and out-of-plane axes.
        unit_ip, unit_oop : str
            Axis units (:data:`gpusaxs.fiber.FIBER_UNITS`): ``qip_nm^-1`` / ``qoop_nm^-1``
            (default), ``qip_A^-1`` / ``qoop_A^-1``, ``exit_angle_horz_deg`` /
            ``exit_angle_vert_deg`` (or ``_rad``), ``qtot_nm^-1`` / ``chigi_deg`` (polar map).
        ip_range, oop_range : (float, float), optional
            Axis ranges in their units; None: the extent of the pixel centres.
        incident_angle, tilt_angle : float
            Sample pitch (about the horizontal axis) and roll (about the beam), in
            ``angle_unit`` (pyFAI's default "rad").
        sample_orientation : int
            1..8, the fiber axis' orientation on the image (EXIF values, pyFAI's).
        angle_unit : {"rad", "deg"}
        split_pixels : bool
            True: each pixel split into the calibration's Oversampling^2 sub-pixels; False:
            pixel centres only (pyFAI's method "no"). docs/grazing.md says when to use which.
        correct_solid_angle, dark, flat, polarization_factor, normalization_factor, \
error_model, mask, dummy, delta_dummy
            As :meth:`gpusaxs.Integrator.integrate1d` (error_model defaults to None).

        Returns
        -------
        GrazingResult
            ``intensity`` (npt_oop, npt_ip), ``inplane`` (npt_ip,), ``outofplane``
            (npt_oop,), ``count``, ``sigma``; unpacks as ``I, inplane, outofplane``.
        """
        arguments = passed_on(locals())
        res = self.integrate2d_grazing_incidence_batch(_single(image), **arguments)
        return cast(GrazingResult, first_frame(res))

    def integrate2d_grazing_incidence_batch(
        self,
        stack: ArrayLike,
        npt_ip: int = 1000,
        npt_oop: int = 1000,
        unit_ip: str = "qip_nm^-1",
        unit_oop: str = "qoop_nm^-1",
        ip_range: tuple[float, float] | None = None,
        oop_range: tuple[float, float] | None = None,
        incident_angle: float = 0.0,
        tilt_angle: float = 0.0,
        sample_orientation: int = 1,
        angle_unit: str = "rad",
        split_pixels: bool = True,
        correct_solid_angle: bool = False,
        dark: ArrayLike | None = None,
        flat: ArrayLike | None = None,
        polarization_factor: float | None = None,
        normalization_factor: float | Sequence[float] | AnyArray = 1.0,
        error_model: str | None = None,
        mask: ArrayLike | None = None,
        dummy: float | None = None,
        delta_dummy: float | None = None,
    ) -> GrazingResult:
        """:meth:`integrate2d_grazing_incidence` of a stack (B, H, W) in one engine pass:
        ``intensity`` (B, npt_oop, npt_ip); ``normalization_factor`` a scalar or one per frame."""
        binning = GrazingBinning(
            npt_ip=int(npt_ip),
            npt_oop=int(npt_oop),
            unit_ip=parse_fiber_unit(unit_ip),
            unit_oop=parse_fiber_unit(unit_oop),
            ip_range=_pair(ip_range),
            oop_range=_pair(oop_range),
            incident_angle=angle_in_radians(incident_angle, angle_unit),
            tilt_angle=angle_in_radians(tilt_angle, angle_unit),
            sample_orientation=int(sample_orientation),
            split=bool(split_pixels),
        )
        options = IntegrationOptions.make(
            correct_solid_angle=correct_solid_angle,
            dark=dark,
            flat=flat,
            polarization_factor=polarization_factor,
            mask=mask,
            grazing=binning,
        )
        res = self._options.integrate(
            stack, options, normalization_factor, error_model, dummy, delta_dummy
        )
        return _as_grazing(res, unit_oop=binning.unit_oop)

    def integrate1d_grazing_incidence(
        self,
        image: ArrayLike,
        npt_ip: int | None = None,
        npt_oop: int | None = None,
        unit_ip: str = "qip_nm^-1",
        unit_oop: str = "qoop_nm^-1",
        ip_range: tuple[float, float] | None = None,
        oop_range: tuple[float, float] | None = None,
        vertical_integration: bool = True,
        incident_angle: float = 0.0,
        tilt_angle: float = 0.0,
        sample_orientation: int = 1,
        angle_unit: str = "rad",
        split_pixels: bool = True,
        correct_solid_angle: bool = False,
        dark: ArrayLike | None = None,
        flat: ArrayLike | None = None,
        polarization_factor: float | None = None,
        normalization_factor: float = 1.0,
        error_model: str | None = None,
        mask: ArrayLike | None = None,
        dummy: float | None = None,
        delta_dummy: float | None = None,
    ) -> GrazingResult:
        """A cut of one frame: the map's cells summed along one axis (pyFAI's
        ``integrate1d_grazing_incidence``).

        ``vertical_integration=True`` integrates along the in-plane axis (over ``ip_range``)
        and gives I(``unit_oop``) on ``npt_oop`` bins; False integrates along the
        out-of-plane axis and gives I(``unit_ip``) on ``npt_ip`` bins. The other parameters
        are :meth:`integrate2d_grazing_incidence`'s; ``error_model`` None or "poisson".

        Returns
        -------
        GrazingResult
            ``radial`` (npt,) in ``unit``, ``intensity``, ``sigma``; unpacks as ``x, I`` or
            ``x, I, sigma``.
        """
        arguments = passed_on(locals())
        res = self.integrate1d_grazing_incidence_batch(_single(image), **arguments)
        return cast(GrazingResult, first_frame(res))

    def integrate1d_grazing_incidence_batch(
        self,
        stack: ArrayLike,
        npt_ip: int | None = None,
        npt_oop: int | None = None,
        unit_ip: str = "qip_nm^-1",
        unit_oop: str = "qoop_nm^-1",
        ip_range: tuple[float, float] | None = None,
        oop_range: tuple[float, float] | None = None,
        vertical_integration: bool = True,
        incident_angle: float = 0.0,
        tilt_angle: float = 0.0,
        sample_orientation: int = 1,
        angle_unit: str = "rad",
        split_pixels: bool = True,
        correct_solid_angle: bool = False,
        dark: ArrayLike | None = None,
        flat: ArrayLike | None = None,
        polarization_factor: float | None = None,
        normalization_factor: float | Sequence[float] | AnyArray = 1.0,
        error_model: str | None = None,
        mask: ArrayLike | None = None,
        dummy: float | None = None,
        delta_dummy: float | None = None,
    ) -> GrazingResult:
        """:meth:`integrate1d_grazing_incidence` of a stack (B, H, W) in one engine pass."""
        if error_model not in (None, "poisson"):
            raise ValueError(f"a cut takes error_model None or 'poisson', got {error_model!r}")
        npt = npt_oop if vertical_integration else npt_ip
        if npt is None:
            name = "npt_oop" if vertical_integration else "npt_ip"
            raise ValueError(f"{name} (the cut's bins) is needed")
        # the integrated axis as one bin over its range: the same pixels as pyFAI's 1000
        binned: dict[str, Any] = (
            dict(npt_ip=1, npt_oop=int(npt))
            if vertical_integration
            else dict(npt_ip=int(npt), npt_oop=1)
        )
        arguments = passed_on(locals())
        for name in ("stack", "npt_ip", "npt_oop", "vertical_integration", "npt", "name", "binned"):
            arguments.pop(name, None)
        res = self.integrate2d_grazing_incidence_batch(stack, **binned, **arguments)
        axis = -1 if vertical_integration else -2
        signal = res.sum_signal.sum(axis=axis)
        count = res.count.sum(axis=axis)
        normalization = res.sum_normalization.sum(axis=axis)
        with np.errstate(invalid="ignore", divide="ignore"):
            empty = count <= 0
            intensity = np.where(empty, np.nan, signal / normalization)
            variance = None if res.sum_variance is None else res.sum_variance.sum(axis=axis)
            sigma = (
                None
                if variance is None
                else np.where(empty, np.nan, np.sqrt(variance) / normalization)
            )
        return GrazingResult(
            radial=res.outofplane if vertical_integration else res.radial,  # type: ignore[arg-type]
            intensity=intensity,
            sigma=sigma,
            unit=res.unit_oop if vertical_integration else res.unit,  # type: ignore[arg-type]
            count=count,
            sum_signal=signal,
            sum_normalization=normalization,
            sum_variance=variance,
            error_model=error_model,
            normalization_factor=normalization_factor,
            options=res.options,
            vertical_integration=bool(vertical_integration),
        )

    # -- pyFAI's shortcuts: the polar map (|q|, chi) and the exit angles --------------------
    def integrate2d_polar(
        self,
        image: ArrayLike,
        polar_degrees: bool = True,
        radial_unit: str = "nm^-1",
        rotate: bool = False,
        **kwargs: Any,
    ) -> GrazingResult:
        """The polar map: chi = atan2(qip, qoop) (``chigi_deg``, or ``chigi_rad``) against |q|
        (``qtot_nm^-1`` or ``qtot_A^-1`` for ``radial_unit="A^-1"``) on the in-plane axis
        (``rotate``: swapped); ``kwargs`` those of :meth:`integrate2d_grazing_incidence`."""
        units = _polar_units(polar_degrees, radial_unit)
        unit_ip, unit_oop = units[::-1] if rotate else units
        return self.integrate2d_grazing_incidence(
            image, unit_ip=unit_ip, unit_oop=unit_oop, **kwargs
        )

    def integrate2d_exitangles(
        self, image: ArrayLike, angle_degrees: bool = True, **kwargs: Any
    ) -> GrazingResult:
        """The map over the exit angles from the sample horizon (horizontal in-plane, vertical
        out-of-plane), in degrees or radians; ``kwargs`` those of
        :meth:`integrate2d_grazing_incidence`."""
        suffix = "deg" if angle_degrees else "rad"
        return self.integrate2d_grazing_incidence(
            image,
            unit_ip=f"exit_angle_horz_{suffix}",
            unit_oop=f"exit_angle_vert_{suffix}",
            **kwargs,
        )

    def integrate1d_polar(
        self,
        image: ArrayLike,
        polar_degrees: bool = True,
        radial_unit: str = "nm^-1",
        radial_integration: bool = False,
        **kwargs: Any,
    ) -> GrazingResult:
        """A cut of the polar map (pyFAI's meaning): I(|q|) summed over ``oop_range`` of chi
        (default; ``npt_ip`` bins), or I(chi) over ``ip_range`` of |q| with
        ``radial_integration=True`` (``npt_oop`` bins)."""
        unit_ip, unit_oop = _polar_units(polar_degrees, radial_unit)
        return self.integrate1d_grazing_incidence(
            image,
            unit_ip=unit_ip,
            unit_oop=unit_oop,
            vertical_integration=bool(radial_integration),
            **kwargs,
        )

    def integrate1d_exitangles(
        self,
        image: ArrayLike,
        angle_degrees: bool = True,
        vertical_integration: bool = True,
        **kwargs: Any,
    ) -> GrazingResult:
        """A cut of the exit-angle map (as :meth:`integrate1d_grazing_incidence`)."""
        suffix = "deg" if angle_degrees else "rad"
        return self.integrate1d_grazing_incidence(
            image,
            unit_ip=f"exit_angle_horz_{suffix}",
            unit_oop=f"exit_angle_vert_{suffix}",
            vertical_integration=vertical_integration,
            **kwargs,
        )


def _polar_units(polar_degrees: bool, radial_unit: str) -> tuple[str, str]:
    """(|q| unit, chi unit) of pyFAI's polar shortcuts."""
    radial = "qtot_A^-1" if radial_unit == "A^-1" else "qtot_nm^-1"
    return radial, "chigi_deg" if polar_degrees else "chigi_rad"


def _single(image: ArrayLike) -> AnyArray:
    arr = np.asarray(image)
    if arr.ndim != 2:
        raise ValueError(f"expected a 2D image, got an array of shape {arr.shape}")
    return arr[None]
