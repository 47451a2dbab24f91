"""The SAXS 0.3.0 module API (section 6), for existing scripts.

    >>> cal = gpusaxs.calibration("cal.json")     # SAXS.calibration(config)
    >>> q, I = cal.integrate(image)
    >>> data = cal.integratechi(image, "frame.chi")
    >>> I, std, err = cal.integrateerror(image)
"""
import numpy as np

from .calibration import Calibration
from .geometry import calc_theta  # noqa: F401  (SAXS.calc_theta)
from .integrator import Integrator


class calibration:  # noqa: N801  (the name of the original API)
    """SAXS.calibration(config): config is the path of a calibration file (or a dict).

    ``gpusaxs.calibration.Calibration`` keeps working as an attribute for code that expects the
    module of the same name.
    """

    Calibration = Calibration

    def __init__(self, config, backend="auto"):
        self.config = Calibration.from_file(config) if not isinstance(config, dict) \
            else Calibration.from_dict(config)
        self.integrator = Integrator(self.config, backend=backend)

    def integrate(self, image):
        """Returns (q, I): q in nm^-1, I the mean intensity per bin."""
        return self.integrator.integrate(image)

    def integratechi(self, image, path):
        """Integrate and save as .chi; returns the (3, n_bins) array q, I, Poisson error."""
        return self.integrator.integrate_chi(image, path)

    def integrateerror(self, image):
        """Returns an array (3, n_bins): intensity, standard deviation, Poisson error."""
        return np.vstack(self.integrator.integrate_error(image))

    def plot(self, image, outputfile="", startplotat=0, fig=None):
        """Plot the curve with its error bands; writes ``outputfile`` when given."""
        return self.integrator.plot(image, outputfile=outputfile, startplotat=startplotat,
                                    fig=fig)


def openmask(config):
    """SAXS.openmask(config): the mask of a calibration as a bool array (True = masked)."""
    cal = config if isinstance(config, Calibration) else Calibration.from_file(config)
    return cal.load_mask()
