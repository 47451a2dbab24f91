"""Integrator: the user-facing front end, one per calibration, on the CPU or the GPU.

    >>> cal = Calibration.from_file("cal.json")
    >>> integ = Integrator(cal)                 # backend "auto": CuPy when a GPU is present
    >>> q, I = integ.integrate(image)           # q in nm^-1
    >>> I = integ.integrate_batch(stack)        # (B, H, W) -> (B, n_bins)
"""
import os

import numpy as np

from .sums import error_model, mean_intensity

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
    """

    def __init__(self, cal, backend="auto", q_edges=None, mask=None, cache_dir=None,
                 threads=None, progress=None, engine=None):
        from .backend import select_backend
        from .matrix_cache import get_matrix

        self.calibration = _as_calibration(cal)
        self.backend_name, self.backend_reason = select_backend(backend)
        self.matrix_info = {}
        self.matrix = get_matrix(self.calibration, mask=mask, q_edges=q_edges,
                                 cache_dir=cache_dir, progress=progress, info=self.matrix_info)
        self.matrix_key = self.matrix_info["key"]
        self._threads = threads
        if engine is not None and (isinstance(engine, type) or not hasattr(engine, "sums")):
            engine = engine(self.matrix)      # a class or factory taking the matrix
        self._engine = engine

    @property
    def engine(self):
        """The integration engine, created on first use (lazy: no numba/CuPy import before)."""
        if self._engine is None:
            if self.backend_name == "cupy":
                from .gpu_engine import DeviceEngine
                self._engine = DeviceEngine(self.matrix)
            else:
                from gpusaxs.cpu_fallback.engine import default_engine
                self._engine = default_engine(self.matrix, threads=self._threads)
        return self._engine

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

    def _single(self, image):
        arr = np.asarray(image)
        if arr.ndim != 2:
            raise ValueError(f"expected a 2D image, got an array of shape {arr.shape}")
        return arr[None]
