"""NeXus NXazint1d / NXazint2d output: integrated curves (or cakes) of many frames in one HDF5 file.

Layout (the NeXus application definitions for azimuthal integration, NXazint1d / NXazint2d)::

    /  @NX_class=NXroot @default=entry
    entry/  NXentry  @default=data  @calibration_key
        definition            "NXazint1d" | "NXazint2d"
        solid_angle_applied, polarization_applied, normalization_applied   (bool)
        instrument/  NXinstrument: name; monochromator/ NXmonochromator: wavelength (angstrom),
                     energy (keV), NaN when neither a calibration nor a wavelength is given;
                     source/ NXsource: name, type, probe ("x-ray")
        reduction/   NXprocess: program, version, date, reference, note,
            input/   NXparameters: unit, calibration (JSON), calibration_key, calibration_file,
                     geometry (distance mm, beam centre px, pixel size um, tilt deg, wavelength
                     angstrom, and pyFAI's PONI), input_files
        data/        NXdata  @signal=I  @axes=[".", ("azimuthal_axis",) "radial_axis"]
            I             (nImg, [nAzim,] nRad)  intensity, NaN in empty bins
            I_errors      same shape; NaN where no error was given
            radial_axis   (nRad,)  bin centres, @units e.g. "1/nm", @long_name "q" | "2theta" | "r"
            azimuthal_axis (nAzim,) degrees (NXazint2d only)
            image_id      (nImg,) int64, -1 marks a row not yet written
            source        (nImg,) str: the file (``file::frame``) each row came from

Two modes. ``live=False`` (default): the file is written under a hidden temporary name in the
target folder and renamed onto ``path`` by :meth:`NXazintWriter.close`; :meth:`abort` (or an
exception in a ``with`` block) removes it, so ``path`` is never half-written. ``live=True``: the
file is written in place in HDF5 SWMR mode; another process reading it with
:func:`read_nxazint` (or ``h5py.File(path, "r", swmr=True)``) sees the rows appended so far, at
the latest ``flush_interval_s`` after they were appended, and a writer killed at any moment leaves
a readable file with every row flushed before (a SWMR reader opens it; for other readers
``h5clear -s FILE`` clears the "open for writing" flag the killed writer left).
"""

from __future__ import annotations

import contextlib
import datetime
import json
import os
import threading
import time
from collections.abc import Callable, Sequence
from types import TracebackType
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from .._typing import ArrayLike, PathLike
from .._version import __version__
from .atomic import _open_temp
from .nexus_read import EMPTY_ID, h5py_module, read_nxazint

if TYPE_CHECKING:
    from .calibration_model import Calibration

__all__ = ["NXazintWriter", "read_nxazint", "RADIAL_UNITS"]

#: our radial unit name -> (NeXus units attribute, NXazint long_name)
RADIAL_UNITS = {
    "q_nm^-1": ("1/nm", "q"),
    "q_A^-1": ("1/angstrom", "q"),
    "2th_deg": ("degrees", "2theta"),
    "2th_rad": ("rad", "2theta"),
    "r_mm": ("mm", "r"),
}

PROGRAM = "gpusaxs"
REFERENCE = "gpusaxs: GPU-backed azimuthal integration (successor of SAXSdog, SAXS 0.3.0)"
NOTE = (
    "Geometry: fit2d convention (BeamCenter [Y from the bottom edge, X] in pixels, tilt angle "
    "and tilt-plane rotation in degrees), the same geometry as pyFAI's PONI in "
    "reduction/input/poni. Intensity: mean counts per pixel in the bin (corrections as "
    "flagged in the entry); I_errors: Poisson error of that mean; empty bins are NaN."
)
#: NXsource/type by default: the instruments SAXSdog serves are synchrotron beamlines
SOURCE_TYPE = "Synchrotron X-ray Source"
#: h c in keV * angstrom (photon energy = HC_KEV_ANGSTROM / wavelength)
HC_KEV_ANGSTROM = 12.398419843320026


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).astimezone().isoformat(timespec="seconds")


def _version() -> str:
    return str(__version__)


def _chunk_rows(row_bytes: int) -> int:
    """Rows per chunk: about 1 MiB, between 1 and 1024 rows."""
    return int(max(1, min(1024, (1 << 20) // max(1, row_bytes))))


def _text(group: Any, name: str, value: object) -> None:
    group.create_dataset(name, data=str(value), dtype=h5py_module().string_dtype())


class NXazintWriter:
    """Write integrated curves (NXazint1d) or cakes (NXazint2d), row by row, into one file.

    Parameters
    ----------
    path : str or os.PathLike
        The output file (``.h5`` / ``.nxs``).
    radial : array_like, shape (n_rad,)
        Radial bin centres, in ``radial_unit``.
    radial_unit : str
        One of ``RADIAL_UNITS``: ``"q_nm^-1"`` (default), ``"q_A^-1"``, ``"2th_deg"``,
        ``"2th_rad"``, ``"r_mm"``.
    azimuthal : array_like, shape (n_azim,), optional
        Azimuthal bin centres in degrees for 2D cakes (NXazint2d); None for curves (NXazint1d).
    calibration : gpusaxs.Calibration, optional
        Stored as its JSON and geometry fields (and pyFAI's PONI).
    calibration_key : str, optional
        Stored as the attribute ``/entry@calibration_key`` (stale-output detection).
    inputs : list of str, optional
        Input file names (provenance).
    live : bool
        False: atomic (temporary name, renamed on :meth:`close`). True: written in place,
        readable while being written (SWMR).
    flush_interval_s : float
        Live mode: appended rows reach the file at the latest this long after :meth:`append`.
    options : dict, optional
        Integration options (pyFAI names: ``correct_solid_angle``, ``polarization_factor``,
        ``normalization_factor``, ``dark``, ``flat``, ...), stored in ``reduction/input`` and
        used for the entry's ``*_applied`` flags.
    source_name, source_type : str
        ``instrument/source`` (NXsource, required by NXazint1d/2d): the facility's name
        (default ``"unknown"``) and its NeXus type (default ``"Synchrotron X-ray Source"``;
        e.g. ``"Rotating Anode X-ray"``, ``"Metal Jet X-ray"`` for a laboratory camera).
    wavelength_A : float, optional
        Wavelength in angstrom for ``instrument/monochromator`` when no ``calibration`` is
        given (with one, its wavelength is used); NaN when neither is known.
    extra : callable, optional
        ``extra(entry)`` adds groups to ``/entry`` before live mode starts (SWMR allows no new
        ones after); rows go into them with :meth:`extend`.

    Examples
    --------
    >>> with NXazintWriter("out.h5", q, calibration=cal, inputs=["a.h5"]) as w:  # doctest: +SKIP
    ...     w.append(I, sigma, image_ids=np.arange(len(I)), sources=names)
    """

    def __init__(
        self,
        path: PathLike,
        radial: ArrayLike,
        *,
        radial_unit: str = "q_nm^-1",
        azimuthal: ArrayLike | None = None,
        calibration: Calibration | None = None,
        calibration_key: str | None = None,
        inputs: Sequence[str] | None = None,
        live: bool = False,
        flush_interval_s: float = 1.0,
        options: dict[str, Any] | None = None,
        source_name: str = "unknown",
        source_type: str = SOURCE_TYPE,
        wavelength_A: float | None = None,
        extra: Callable[[Any], None] | None = None,
    ) -> None:
        if radial_unit not in RADIAL_UNITS:
            raise ValueError(
                f"radial_unit must be one of {sorted(RADIAL_UNITS)}, not {radial_unit!r}"
            )
        radial = np.asarray(radial, dtype=np.float64)
        assert isinstance(radial, np.ndarray)
        if radial.ndim != 1 or radial.size == 0:
            raise ValueError(f"radial must be a non-empty 1D array, not shape {radial.shape}")
        self.path = os.fspath(path)
        self.live = bool(live)
        self.flush_interval_s = float(flush_interval_s)
        self.radial = radial
        self.azimuthal = None if azimuthal is None else np.asarray(azimuthal, dtype=np.float64)
        if self.azimuthal is not None and (self.azimuthal.ndim != 1 or self.azimuthal.size == 0):
            raise ValueError(
                f"azimuthal must be a non-empty 1D array, not shape {self.azimuthal.shape}"
            )
        self.row_shape: tuple[int, ...] = (
            (radial.size,) if self.azimuthal is None else (self.azimuthal.size, radial.size)
        )
        self._source = (str(source_name), str(source_type))
        self._wavelength_A = wavelength_A
        self.n_rows = 0
        self._lock = threading.RLock()
        self._dirty = False
        self._last_flush = time.monotonic()
        self._closed = False
        self._stop = threading.Event()
        self._flusher: threading.Thread | None = None
        self._tmp: str | None
        if self.live:
            self._tmp = None
            self._file = h5py_module().File(self.path, "w", libver="latest")
        else:
            fd, self._tmp = _open_temp(self.path)
            os.close(fd)
            self._file = h5py_module().File(self._tmp, "w")
        try:
            self._write_header(radial_unit, calibration, calibration_key, inputs, options or {})
            if extra is not None:
                extra(self._file["entry"])
            if self.live:
                self._file.swmr_mode = True
                self._file.flush()
                self._flusher = threading.Thread(
                    target=self._flush_loop, name="nxazint-flush", daemon=True
                )
                self._flusher.start()
        except BaseException:
            self.abort()
            raise

    # -- structure ------------------------------------------------------------------------
    def _write_header(
        self,
        radial_unit: str,
        cal: Calibration | None,
        key: str | None,
        inputs: Sequence[str] | None,
        options: dict[str, Any],
    ) -> None:
        f = self._file
        two_d = self.azimuthal is not None
        f.attrs["NX_class"] = "NXroot"
        f.attrs["default"] = "entry"
        f.attrs["creator"] = f"{PROGRAM} {_version()}"
        f.attrs["file_name"] = os.path.basename(self.path)
        f.attrs["file_time"] = _now()
        f.attrs["HDF5_Version"] = h5py_module().version.hdf5_version
        f.attrs["h5py_version"] = h5py_module().version.version

        entry = f.create_group("entry")
        entry.attrs["NX_class"] = "NXentry"
        entry.attrs["default"] = "data"
        if key is not None:
            entry.attrs["calibration_key"] = str(key)
        _text(entry, "definition", "NXazint2d" if two_d else "NXazint1d")
        _text(entry, "start_time", _now())
        pol = options.get("polarization_factor")
        if pol is None and cal is not None and cal.polarization is not None:
            pol = cal.polarization[0]
        entry["solid_angle_applied"] = bool(options.get("correct_solid_angle", False))
        entry["polarization_applied"] = pol is not None
        norm = options.get("normalization_factor", 1.0)
        entry["normalization_applied"] = norm is not None and float(norm) != 1.0

        instrument = entry.create_group("instrument")
        instrument.attrs["NX_class"] = "NXinstrument"
        _text(instrument, "name", (cal.title if cal is not None and cal.title else "unknown"))
        # both groups are required by NXazint1d/2d (nexusformat's nxvalidate checks them)
        wavelength = cal.wavelength_A if cal is not None else self._wavelength_A
        wavelength = float("nan") if wavelength is None else float(wavelength)
        mono = instrument.create_group("monochromator")
        mono.attrs["NX_class"] = "NXmonochromator"
        mono["wavelength"] = wavelength
        mono["wavelength"].attrs["units"] = "angstrom"
        mono["energy"] = HC_KEV_ANGSTROM / wavelength  # keV (h c / lambda); NaN if unknown
        mono["energy"].attrs["units"] = "keV"
        source = instrument.create_group("source")
        source.attrs["NX_class"] = "NXsource"
        _text(source, "name", self._source[0])
        _text(source, "type", self._source[1])
        _text(source, "probe", "x-ray")

        red = entry.create_group("reduction")
        red.attrs["NX_class"] = "NXprocess"
        _text(red, "program", PROGRAM)
        _text(red, "version", _version())
        _text(red, "date", _now())
        _text(red, "reference", REFERENCE)
        _text(red, "note", NOTE)
        inp = red.create_group("input")
        inp.attrs["NX_class"] = "NXparameters"
        _text(inp, "unit", radial_unit)
        if key is not None:
            _text(inp, "calibration_key", key)
        if inputs is not None:
            inp.create_dataset(
                "input_files",
                data=[os.fspath(p) for p in inputs],
                dtype=h5py_module().string_dtype(),
            )
        for name, value in sorted(options.items()):
            if value is None or isinstance(value, (bool, int, float, str)):
                _text(inp, f"option_{name}", json.dumps(value))
            else:  # arrays (dark, flat, mask): recorded as given, not copied
                _text(inp, f"option_{name}", f"<{type(value).__name__}>")
        if cal is not None:
            self._write_calibration(inp, cal)

        data = entry.create_group("data")
        data.attrs["NX_class"] = "NXdata"
        data.attrs["signal"] = "I"
        data.attrs["axes"] = (
            [".", "azimuthal_axis", "radial_axis"] if two_d else [".", "radial_axis"]
        )
        data.attrs["interpretation"] = "image" if two_d else "spectrum"
        units, long_name = RADIAL_UNITS[radial_unit]
        ax = data.create_dataset("radial_axis", data=self.radial)
        ax.attrs["units"] = units
        ax.attrs["long_name"] = long_name
        if two_d:
            az = data.create_dataset("azimuthal_axis", data=self.azimuthal)
            az.attrs["units"] = "degrees"
            az.attrs["long_name"] = "chi"
        rows = _chunk_rows(int(np.prod(self.row_shape)) * 8)
        for name, long_name in (("I", "intensity"), ("I_errors", "estimated intensity error")):
            d = data.create_dataset(
                name,
                shape=(0, *self.row_shape),
                maxshape=(None, *self.row_shape),
                dtype=np.float64,
                chunks=(rows, *self.row_shape),
                fillvalue=np.nan,
            )
            d.attrs["units"] = "arbitrary units"
            d.attrs["long_name"] = long_name
        ids = data.create_dataset(
            "image_id",
            shape=(0,),
            maxshape=(None,),
            dtype=np.int64,
            chunks=(4096,),
            fillvalue=EMPTY_ID,
        )
        ids.attrs["long_name"] = "image index"
        data.create_dataset(
            "source",
            shape=(0,),
            maxshape=(None,),
            dtype=h5py_module().string_dtype(),
            chunks=(1024,),
        )
        self._I = data["I"]
        self._E = data["I_errors"]
        self._ids = ids
        self._src = data["source"]

    @staticmethod
    def _write_calibration(inp: Any, cal: Calibration) -> None:
        _text(inp, "calibration", json.dumps(cal.to_dict("flat"), sort_keys=True))
        if cal.source is not None:
            _text(inp, "calibration_file", cal.source)
        geo = inp.create_group("geometry")
        geo.attrs["NX_class"] = "NXparameters"
        for name, value, unit in (
            ("distance", cal.distance_mm, "mm"),
            ("beam_center_y_from_bottom", cal.beam_center[0], "pixel"),
            ("beam_center_x", cal.beam_center[1], "pixel"),
            ("pixel_size", np.asarray(cal.pixel_size_um), "um"),
            ("image_size", np.asarray(cal.imagesize), "pixel"),
            ("tilt_angle", cal.tilt_angle_deg, "degrees"),
            ("tilt_plane_rotation", cal.tilt_rot_deg, "degrees"),
            ("wavelength", cal.wavelength_A, "angstrom"),
        ):
            geo[name] = value
            geo[name].attrs["units"] = unit
        try:
            poni = cal.to_poni()
        except (ValueError, AttributeError):
            return
        _text(inp, "poni", json.dumps(poni, sort_keys=True))

    # -- rows -------------------------------------------------------------------------------
    def append(
        self,
        intensity: ArrayLike,
        sigma: ArrayLike | None,
        image_ids: ArrayLike,
        sources: Sequence[PathLike] | None = None,
    ) -> None:
        """Append B rows (one row, without the B axis, is accepted too).

        Parameters
        ----------
        intensity : array_like, shape (B, n_rad) or (B, n_azim, n_rad)
            Mean intensity per bin.
        sigma : array_like of the same shape, or None
            Its uncertainty; None stores NaN.
        image_ids : array_like of int, shape (B,)
            The frame numbers.
        sources : list of B str, optional
            The file (``file::frame``) each row came from.
        """
        I = np.asarray(intensity, dtype=np.float64)
        if I.ndim == len(self.row_shape):
            I = I[None]
        if I.shape[1:] != self.row_shape:
            raise ValueError(f"intensity rows must have shape {self.row_shape}, not {I.shape[1:]}")
        b = I.shape[0]
        E = None
        if sigma is not None:
            E = np.asarray(sigma, dtype=np.float64).reshape(I.shape)
        ids = np.asarray(image_ids, dtype=np.int64).reshape(-1)
        if ids.shape != (b,):
            raise ValueError(f"image_ids must have {b} entries, not {ids.size}")
        names = None
        if sources is not None:
            names = [os.fspath(s) for s in sources]
            if len(names) != b:
                raise ValueError(f"sources must have {b} entries, not {len(names)}")
        if b == 0:
            return
        with self._lock:
            self._check_open()
            n0, n1 = self.n_rows, self.n_rows + b
            for d in (self._I, self._E, self._src):
                d.resize(n1, axis=0)
            self._I[n0:n1] = I
            if E is not None:
                self._E[n0:n1] = E
            if names is not None:
                self._src[n0:n1] = names
            # the ids last: a reader takes rows whose id is set (-1 = not written yet)
            self._ids.resize((n1,))
            self._ids[n0:n1] = ids
            self.n_rows = n1
            self._dirty = True
            if self.live and time.monotonic() - self._last_flush >= self.flush_interval_s:
                self._flush_locked()

    def extend(self, fn: Callable[[Any], None]) -> None:
        """``fn(entry)`` under the writer's lock: append to the ``extra`` groups' datasets
        (call it before :meth:`append` of the same rows: their ids come last)."""
        with self._lock:
            self._check_open()
            fn(self._file["entry"])
            self._dirty = True

    def flush(self) -> None:
        """Push the rows appended so far to the file (readers see them)."""
        with self._lock:
            self._check_open()
            self._flush_locked()

    def _flush_locked(self) -> None:
        self._file.flush()
        self._dirty = False
        self._last_flush = time.monotonic()

    def _flush_loop(self) -> None:
        while not self._stop.wait(max(0.01, self.flush_interval_s / 2)):
            with self._lock:
                if self._closed:
                    return
                if self._dirty and time.monotonic() - self._last_flush >= self.flush_interval_s:
                    self._flush_locked()

    def _check_open(self) -> None:
        if self._closed:
            raise ValueError(f"{self.path}: the NeXus writer is closed")

    # -- end ---------------------------------------------------------------------------------
    def _stop_flusher(self) -> None:
        self._stop.set()
        if self._flusher is not None and self._flusher is not threading.current_thread():
            self._flusher.join(timeout=10)

    def close(self) -> None:
        """Finish the file: flush and close it; in atomic mode rename it onto ``path``."""
        if self._closed:
            return
        self._stop_flusher()
        with self._lock:
            self._closed = True
            try:
                self._file.close()
            except BaseException:
                self._remove_tmp()
                raise
            if self._tmp is not None:
                try:
                    os.replace(self._tmp, self.path)
                except BaseException:
                    self._remove_tmp()
                    raise
                self._tmp = None

    def abort(self) -> None:
        """Give up: close the file; in atomic mode remove the temporary file (``path`` untouched).

        In live mode the rows written so far stay in ``path``.
        """
        if self._closed:
            return
        self._stop_flusher()
        with self._lock:
            self._closed = True
            with contextlib.suppress(Exception):
                self._file.close()
            self._remove_tmp()

    def _remove_tmp(self) -> None:
        if self._tmp is not None:
            with contextlib.suppress(OSError):
                os.unlink(self._tmp)
            self._tmp = None

    def __enter__(self) -> NXazintWriter:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> Literal[False]:
        if exc_type is None:
            self.close()
        else:
            self.abort()
        return False

    def __del__(self) -> None:  # an unclosed atomic writer never leaves its temporary file behind
        with contextlib.suppress(Exception):
            if not self._closed:
                self.abort()
