"""The SAXS 0.3.0 module API (section 6), for existing scripts.

>>> cal = gpusaxs.calibration("cal.json")  # SAXS.calibration(config)
>>> q, I = cal.integrate(image)
>>> data = cal.integratechi(image, "frame.chi")
>>> I, std, err = cal.integrateerror(image)
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ._typing import ArrayLike, BoolArray, FloatArray, PathLike
from .calibration_model import Calibration
from .geometry import calc_theta  # noqa: F401  (SAXS.calc_theta)
from .integrator import Integrator


class calibration:  # noqa: N801  (the name of the original API)
    """SAXS.calibration(config): the SAXS 0.3.0 class, a thin layer over :class:`Integrator`.

    Parameters
    ----------
    config : str, path-like or dict
        The calibration file (JSON or .poni) or its dict.
    backend : {"auto", "numpy", "cupy"}
        As :class:`Integrator`.

    Attributes
    ----------
    config : Calibration
    integrator : Integrator

    Examples
    --------
    >>> cal = gpusaxs.calibration("cal.json")  # doctest: +SKIP
    >>> q, I = cal.integrate(image)  # q in nm^-1  # doctest: +SKIP
    >>> I, std, err = cal.integrateerror(image)  # doctest: +SKIP
    """

    def __init__(self, config: PathLike | dict[str, Any], backend: str = "auto") -> None:
        self.config = (
            Calibration.from_file(config)
            if not isinstance(config, dict)
            else Calibration.from_dict(config)
        )
        self.integrator = Integrator(self.config, backend=backend)

    def integrate(self, image: ArrayLike) -> tuple[FloatArray, FloatArray]:
        """Integrate one frame (SAXS.calibration.integrate).

        Parameters
        ----------
        image : array_like, shape (H, W)
            The frame.

        Returns
        -------
        q : ndarray of float64, shape (n_bins,)
            Bin centres, nm^-1.
        I : ndarray of float64, shape (n_bins,)
            Mean intensity per bin.
        """
        return self.integrator.integrate(image)

    def integratechi(self, image: ArrayLike, path: PathLike) -> FloatArray:
        """Integrate one frame and save it as a .chi file.

        Parameters
        ----------
        image : array_like, shape (H, W)
            The frame.
        path : str or path-like
            The .chi file.

        Returns
        -------
        ndarray of float64, shape (3, n_bins)
            q (nm^-1), I, Poisson error.
        """
        return self.integrator.integrate_chi(image, path)

    def integrateerror(self, image: ArrayLike) -> FloatArray:
        """Mean, standard deviation and Poisson error per bin of one frame.

        Parameters
        ----------
        image : array_like, shape (H, W)
            The frame.

        Returns
        -------
        ndarray of float64, shape (3, n_bins)
            Intensity, standard deviation, Poisson error.
        """
        rows: FloatArray = np.vstack(self.integrator.integrate_error(image))
        return rows

    def plot(
        self, image: ArrayLike, outputfile: str = "", startplotat: int = 0, fig: Any = None
    ) -> Any:
        """Plot the curve with its error bands.

        Parameters
        ----------
        image : array_like, shape (H, W)
            The frame.
        outputfile : str
            Write the figure there; empty: show a window.
        startplotat : int
            First bin to plot.
        fig : matplotlib Figure, optional
            Draw into this figure.

        Returns
        -------
        matplotlib.figure.Figure
        """
        return self.integrator.plot(image, outputfile=outputfile, startplotat=startplotat, fig=fig)


def openmask(config: Calibration | PathLike) -> BoolArray:
    """SAXS.openmask(config): the mask of a calibration.

    Parameters
    ----------
    config : Calibration, str or path-like
        The calibration or its file.

    Returns
    -------
    ndarray of bool, shape (H, W)
        True = pixel masked; all False when the calibration names no mask file.
    """
    cal = config if isinstance(config, Calibration) else Calibration.from_file(config)
    return cal.load_mask()
