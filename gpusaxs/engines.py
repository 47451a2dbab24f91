"""The one entrance to the integration engines: ``make_engine(matrix, backend)`` chooses and
builds the engine of a matrix (the GPU engine, the numba engine, the SciPy reference or the
start-up-free bincount engine); every caller (Integrator, saxsdog, the server, the stream
consumer, Dask workers) gets its engine here.

The backend choice itself ("auto" | "numpy" | "cupy", $GPUSAXS_BACKEND) is gpusaxs.backend's
``select_backend``; ``backend_info()`` reports it.  The contract the engines meet is
gpusaxs.engine_contract.
"""

from __future__ import annotations

import functools
import os
from typing import TYPE_CHECKING, Any

from gpusaxs import gpu_engine
from gpusaxs.backend import array_module, backend_info, select_backend
from gpusaxs.cpu_fallback.engine import CpuEngine, ScipyEngine
from gpusaxs.cpu_fallback.light import BincountEngine
from gpusaxs.engine_contract import Engine
from gpusaxs.matrix_cache import cached_derived

if TYPE_CHECKING:
    from gpusaxs.matrix import IntegrationMatrix

__all__ = ["make_engine", "robust_kernels", "select_backend", "backend_info", "NO_NUMBA_VAR"]

#: set (to anything) to run the CPU backend on the SciPy reference instead of numba
NO_NUMBA_VAR = "GPUSAXS_NO_NUMBA"


def make_engine(
    matrix: IntegrationMatrix,
    backend: str | None = "auto",
    *,
    threads: int | None = None,
    light: bool = False,
    **device_options: Any,
) -> Engine:
    """The engine of ``backend`` for ``matrix``.

    Parameters
    ----------
    matrix : IntegrationMatrix
        The integration operator (with its optional dark, ``pixel_offset``).
    backend : {"auto", "numpy", "cupy"}
        As :func:`gpusaxs.backend.select_backend`: "auto" is the GPU engine when CuPy and a
        CUDA device work, else the CPU engine ($GPUSAXS_BACKEND overrides "auto" only);
        "cupy" raises BackendError without a usable device.
    threads : int, optional
        Cores of the numba engine (default: all); also of the GPU engine's CPU fallback.
    light : bool
        On the CPU: the start-up-free NumPy bincount engine (no numba import nor kernel load;
        the right choice for a few frames).  Ignored on the GPU.
    **device_options
        Options of :class:`gpusaxs.gpu_engine.DeviceEngine` (batch_size, n_streams, method,
        layout, upload, segment_length, spmm_dtype, staging_threads, stream_factory); ignored
        on the CPU.

    Returns
    -------
    Engine
        On the CPU: ``BincountEngine`` (light), else ``CpuEngine`` (numba) unless numba does
        not import or $GPUSAXS_NO_NUMBA is set, then ``ScipyEngine``.  On the GPU: a
        ``DeviceEngine`` on CuPy whose fallback chain ends at this function's CPU engine.
        An engine that cannot apply the matrix's dark is replaced by ``ScipyEngine``.

    Raises
    ------
    BackendError
        For an unknown backend, or "cupy" without CuPy or a CUDA device.
    """
    name, _reason = select_backend(backend)
    engine: Engine
    if name == "cupy":
        engine = gpu_engine.DeviceEngine(
            matrix,
            xp=array_module("cupy"),
            host_engine=functools.partial(make_engine, backend="numpy", threads=threads),
            **device_options,
        )
    elif light:
        engine = BincountEngine(matrix)
    elif _numba_usable():
        engine = CpuEngine(matrix, threads=threads, layout_cache=cached_derived)
    else:
        engine = ScipyEngine(matrix)
    if matrix.pixel_offset is not None and not getattr(engine, "supports_pixel_offset", False):
        engine = ScipyEngine(matrix)  # an engine without the dark: the reference has it
    return engine


def _numba_usable() -> bool:
    """numba imports and $GPUSAXS_NO_NUMBA is unset."""
    if os.environ.get(NO_NUMBA_VAR):
        return False
    try:
        import numba  # noqa: F401
    except ImportError:
        return False
    return True


def robust_kernels() -> Any:
    """The CPU kernels of the robust statistics (module gpusaxs.cpu_fallback.robust_kernel:
    sigma clipping and weighted percentiles per bin), or None when numba is not usable; then
    gpusaxs.robust's array-module path runs (NumPy here, CuPy on a GPU)."""
    if not _numba_usable():
        return None
    from gpusaxs.cpu_fallback import robust_kernel  # numba's kernels: loaded on first use

    return robust_kernel
