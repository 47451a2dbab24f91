"""Exceptions raised by gpusaxs.

Every error a user can cause with a bad file names the file (and, for a
calibration, the JSON path of the offending field), so tools can print
``str(exc)`` as a one-line message without a traceback.
"""

from __future__ import annotations

from typing import Any

from ._typing import PathLike


class GpusaxsError(Exception):
    """Base class of all gpusaxs errors."""


class CalibrationError(GpusaxsError, ValueError):
    """A calibration file or dict is invalid.

    Attributes: ``path`` (file or None), ``json_path`` (e.g. ``"#/Tilt/TiltAngleDeg"``),
    ``reason`` (what is wrong).

    Parameters
    ----------
    reason : str
        What is wrong, e.g. ``"must be > 0"``.
    path : str or path-like, optional
        The calibration file, None for a dict.
    json_path : str
        JSON path of the offending field, ``"#"`` for the whole document.
    """

    def __init__(self, reason: str, path: PathLike | None = None, json_path: str = "#") -> None:
        self.path = None if path is None else str(path)
        self.json_path = json_path
        self.reason = reason
        where = f"{self.path}: " if self.path else ""
        super().__init__(f"{where}{json_path}: {reason}")

    def __reduce__(
        self,
    ) -> tuple[Any, ...]:  # pickles (errors cross process boundaries: Dask workers)
        return type(self), (self.reason, self.path, self.json_path)


class ImageReadError(GpusaxsError, OSError):
    """An image or mask file cannot be read (missing, truncated, not an image, wrong size).

    Parameters
    ----------
    path : str or path-like
        The file.
    reason : str
        What is wrong with it.
    """

    def __init__(self, path: PathLike, reason: str) -> None:
        self.path = str(path)
        self.reason = reason
        super().__init__(f"{self.path}: {reason}")

    def __reduce__(self) -> tuple[Any, ...]:
        return type(self), (self.path, self.reason)


class ChiFormatError(GpusaxsError, ValueError):
    """A .chi curve file cannot be parsed.

    Parameters
    ----------
    path : str or path-like
        The file.
    reason : str
        What is wrong with it (names the line).
    """

    def __init__(self, path: PathLike, reason: str) -> None:
        self.path = str(path)
        self.reason = reason
        super().__init__(f"{self.path}: {reason}")

    def __reduce__(self) -> tuple[Any, ...]:
        return type(self), (self.path, self.reason)


class BackendError(GpusaxsError, RuntimeError):
    """The requested integration backend is not available (e.g. "cupy" without a CUDA device)."""


def one_line(exc: BaseException) -> str:
    """``Type: message`` of an exception on one line (library messages can be multi-line)."""
    msg = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {msg}" if msg else type(exc).__name__
