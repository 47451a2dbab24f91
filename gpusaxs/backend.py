"""Choice of the array backend: "numpy" (CPU) or "cupy" (CUDA GPU).

``select_backend("auto")`` uses CuPy when ``import cupy`` works and at least one CUDA device is
visible, else NumPy.  The environment variable ``GPUSAXS_BACKEND`` (``auto`` | ``numpy`` |
``cupy``) overrides an ``"auto"`` request only; an explicit request always wins.  The CuPy
probe runs once per process and is cached (it only imports CuPy and asks the runtime for the
device count: no kernel is compiled, no context work beyond that).
"""

from __future__ import annotations

import functools
import os
import sys
from types import ModuleType
from typing import Any

import numpy

from gpusaxs.errors import BackendError
from gpusaxs.gpu_fallbacks import decode_counts, engine_fallbacks

ENV_VAR = "GPUSAXS_BACKEND"
VALID_BACKENDS = ("auto", "numpy", "cupy")
INSTALL_HINT = 'pip install ".[gpu]"'


class _Probe:
    """Result of the CuPy probe: ``ok`` (bool), ``reason`` (str), ``cupy`` (module or None)."""

    __slots__ = ("ok", "reason", "cupy", "device_count")

    def __init__(self, ok: bool, reason: str, cupy: Any = None, device_count: int = 0) -> None:
        self.ok = ok
        self.reason = reason
        self.cupy = cupy
        self.device_count = device_count


@functools.lru_cache(maxsize=1)
def _probe_cupy() -> _Probe:
    """Import CuPy and count CUDA devices; never raises.  Cached (``_probe_cupy.cache_clear()``)."""
    try:
        import cupy
    except Exception as exc:  # ImportError, or a broken install raising anything else
        return _Probe(
            False,
            f"CuPy is not installed or cannot be imported "
            f"({type(exc).__name__}: {exc}); install it with {INSTALL_HINT}",
        )
    version = getattr(cupy, "__version__", "?")
    try:
        count = int(cupy.cuda.runtime.getDeviceCount())
    except Exception as exc:  # no driver, CUDA_VISIBLE_DEVICES="", driver/runtime mismatch
        return _Probe(
            False,
            f"CuPy {version} is installed but no CUDA device is usable "
            f"({type(exc).__name__}: {exc})",
            cupy,
        )
    if count <= 0:
        return _Probe(False, f"CuPy {version} is installed but no CUDA device is visible", cupy)
    return _Probe(True, f"CuPy {version} with {count} CUDA device(s)", cupy, count)


def _normalise(name: object, what: str) -> str:
    if name is None:
        return "auto"
    if not isinstance(name, str):
        raise BackendError(
            f"{what} must be a string, one of {', '.join(VALID_BACKENDS)}; got {name!r}"
        )
    key = name.strip().lower()
    if key not in VALID_BACKENDS:
        raise BackendError(
            f"unknown backend {name!r} ({what}); valid names: {', '.join(VALID_BACKENDS)}"
        )
    return key


def select_backend(requested: str | None = "auto") -> tuple[str, str]:
    """Choose the array backend.

    Parameters
    ----------
    requested : {"auto", "numpy", "cupy"}
        "auto" (CuPy if a CUDA device is usable, else NumPy; overridden by
        $GPUSAXS_BACKEND), "numpy" or "cupy".  None means "auto".

    Returns
    -------
    name : {"cupy", "numpy"}
    reason : str
        Why, in words (for logs and ``backend_info``).

    Raises
    ------
    BackendError
        For an unknown name, or for "cupy" (requested, or from the environment) when CuPy or
        a CUDA device is missing.
    """
    key = _normalise(requested, "requested backend")
    origin = f"requested {key!r}"
    if key == "auto":
        env = os.environ.get(ENV_VAR, "").strip()
        if env:
            key = _normalise(env, f"environment variable {ENV_VAR}")
            origin = f"{ENV_VAR}={env}"
    if key == "numpy":
        return "numpy", f"NumPy backend ({origin})"
    probe = _probe_cupy()
    if key == "cupy":
        if not probe.ok:
            raise BackendError(f"backend 'cupy' {origin} is not available: {probe.reason}")
        return "cupy", f"{probe.reason} ({origin})"
    if probe.ok:
        return "cupy", f"auto: {probe.reason}"
    return "numpy", f"auto: falling back to NumPy because {probe.reason}"


def array_module(name: str) -> ModuleType:
    """The array module for a backend name from select_backend: numpy or cupy."""
    if name == "numpy":
        return numpy
    if name == "cupy":
        probe = _probe_cupy()
        if not probe.ok:
            raise BackendError(f"backend 'cupy' is not available: {probe.reason}")
        cupy: ModuleType = probe.cupy
        return cupy
    raise BackendError(f"unknown backend {name!r}; valid names: numpy, cupy")


def _device_info(cupy: Any, index: int) -> dict[str, Any]:
    """Plain-Python description of CUDA device ``index`` (memory in bytes)."""
    info: dict[str, Any] = {"index": index}
    try:
        props = cupy.cuda.runtime.getDeviceProperties(index)
        name = props.get("name", b"")
        info["name"] = name.decode(errors="replace") if isinstance(name, bytes) else str(name)
        info["compute_capability"] = f"{props.get('major', '?')}.{props.get('minor', '?')}"
        info["total_memory_bytes"] = int(props.get("totalGlobalMem", 0))
        info["multiprocessors"] = int(props.get("multiProcessorCount", 0))
    except Exception as exc:
        info["error"] = f"{type(exc).__name__}: {exc}"
    try:
        with cupy.cuda.Device(index):
            free, total = cupy.cuda.runtime.memGetInfo()
        info["free_memory_bytes"] = int(free)
        info.setdefault("total_memory_bytes", int(total))
    except Exception as exc:
        info.setdefault("error", f"{type(exc).__name__}: {exc}")
    return info


def backend_info() -> dict[str, Any]:
    """JSON-serialisable description of the backend "auto" selects and of the CUDA devices.

    Never raises: what cannot be probed is reported in the ``reason`` and ``error`` fields.

    Returns
    -------
    dict
        Keys: backend ("cupy" | "numpy" | None when the environment asks for an unusable one),
        reason, env (value of $GPUSAXS_BACKEND or None), cupy_available, cupy_version,
        cuda_runtime_version, cuda_driver_version, device_count, devices (list of dicts:
        name, compute_capability, total_memory_bytes, free_memory_bytes), device_name,
        compute_capability, total_memory_bytes (of device 0), numpy/scipy/python versions,
        engine_fallbacks (list of {from, to, reason}: GPU engine paths that failed in this
        process and what replaced them, see gpusaxs.gpu_fallbacks), bslz4_decode ({path:
        "device" when the backend is CuPy (gpusaxs/kernels/bslz4.cu) else "host" (bitshuffle),
        counts: the bslz4 frames decoded in this process per path, see docs/gpu.md).

    Examples
    --------
    >>> import gpusaxs
    >>> info = gpusaxs.backend_info()
    >>> info["backend"] in ("cupy", "numpy", None)
    True
    """
    import scipy

    info: dict[str, Any] = {
        "backend": None,
        "reason": None,
        "env": os.environ.get(ENV_VAR) or None,
        "cupy_available": False,
        "cupy_version": None,
        "cuda_runtime_version": None,
        "cuda_driver_version": None,
        "device_count": 0,
        "devices": [],
        "device_name": None,
        "compute_capability": None,
        "total_memory_bytes": None,
        "numpy_version": numpy.__version__,
        "scipy_version": scipy.__version__,
        "python_version": sys.version.split()[0],
        "engine_fallbacks": [],
    }
    try:
        info["engine_fallbacks"] = engine_fallbacks()
    except Exception as exc:  # never raises
        info["engine_fallbacks"] = [{"error": f"{type(exc).__name__}: {exc}"}]
    try:
        info["backend"], info["reason"] = select_backend("auto")
    except BackendError as exc:
        info["reason"] = str(exc)
    info["bslz4_decode"] = {
        "path": "device" if info["backend"] == "cupy" else "host",
        "counts": decode_counts(),
    }
    probe = _probe_cupy()
    if probe.cupy is not None:
        cupy = probe.cupy
        info["cupy_version"] = str(getattr(cupy, "__version__", None))
        for key, fn in (
            ("cuda_runtime_version", "runtimeGetVersion"),
            ("cuda_driver_version", "driverGetVersion"),
        ):
            try:
                info[key] = int(getattr(cupy.cuda.runtime, fn)())
            except Exception:
                pass
    if probe.ok:
        info["cupy_available"] = True
        info["device_count"] = probe.device_count
        info["devices"] = [_device_info(probe.cupy, i) for i in range(probe.device_count)]
        first = info["devices"][0]
        info["device_name"] = first.get("name")
        info["compute_capability"] = first.get("compute_capability")
        info["total_memory_bytes"] = first.get("total_memory_bytes")
    return info
