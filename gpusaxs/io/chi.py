"""``.chi`` curve files, as written by fit2d and by SAXSdog.

Layout: four header lines (title, usually the image path; q-axis label with unit; intensity
label; the number of rows, right-aligned in 11 characters), then one row per q bin::

     3.3657656E-03  1.2345678E+02  4.5123456E+00

i.e. each value as ``%14.7E`` (8 significant digits), separated by one space; two columns
(q, I) or three (q, I, error). We write LF line endings and ``nan``/``inf`` for non-finite
values; the reader also accepts fit2d's CRLF files.

The calibration key (``Integrator.matrix_key``, a sha256 hex digest of the calibration, mask and
bins) is appended to the title line as ``  calibration_key=<hex>`` so that the file stays a
four-line-header .chi that fit2d-style readers accept; :func:`read_chi` strips it from the title
into ``ChiCurve.calibration_key`` and :func:`read_chi_key` reads only that line (resume checks).

Writing is the hot path of the server (1000-row curves, thousands of times), so the rows are
formatted by NumPy into one byte buffer (about 0.1 ms per 1000x3 curve) instead of
per-value Python formatting; the result is identical to ``"%14.7E" % value``.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
from numpy.typing import NDArray

from .._typing import ArrayLike, FloatArray, PathLike
from ..errors import ChiFormatError
from .atomic import atomic_write

__all__ = ["ChiCurve", "write_chi", "read_chi", "read_chi_key", "format_chi_rows"]

#: Marker of the calibration key on the title line.
KEY_MARKER = "  calibration_key="

_FIELD = 15  # 14 characters of "%14.7E" + the following separator (" " or "\n")
# Lookup tables of ASCII text as little-endian uint32 (4 characters each): ".ddd" for 0..999,
# "dddd" for 0..9999, "E+ee" for exponents -99..99; correctly rounded powers of ten.
_FRAC = np.frombuffer("".join(f".{k:03d}" for k in range(1000)).encode(), "<u4").copy()
_LO = np.frombuffer("".join(f"{k:04d}" for k in range(10000)).encode(), "<u4").copy()
_EXP = np.frombuffer("".join(f"E{k:+03d}" for k in range(-99, 100)).encode(), "<u4").copy()
# one 14-character field "%14.7E" plus its separator: sign, lead digit, ".ddd", "dddd", "E+ee", sep
_FIELD_DTYPE = np.dtype(
    [("sign", "u1"), ("lead", "u1"), ("frac", "<u4"), ("low", "<u4"), ("exp", "<u4"), ("sep", "u1")]
)
assert _FIELD_DTYPE.itemsize == _FIELD
_TEN = np.array([float(f"1e{k}") for k in range(120)])  # Python parses these correctly rounded
_NONFINITE = {
    "nan": b"           nan",
    "inf": b"           inf",
    "-inf": b"          -inf",
}


class ChiCurve(NamedTuple):
    """A curve read from a ``.chi`` file; q in the file's unit (usually nm^-1).

    Attributes
    ----------
    q, intensity : ndarray of float64, shape (n,)
    error : ndarray of float64, shape (n,), or None for a 2-column file
    title, q_label, i_label : str
        The three header lines (title without the calibration key).
    calibration_key : str or None
        The key on the title line, None if absent.
    """

    q: FloatArray
    intensity: FloatArray
    error: FloatArray | None  # None for a 2-column file
    title: str
    q_label: str
    i_label: str
    calibration_key: str | None = None  # the key on the title line, None if absent


def _format_slow(cols: FloatArray) -> bytes:
    """Reference formatter: one ``%14.7E`` per value (handles 3-digit exponents)."""
    fmt = " ".join(["%14.7E"] * cols.shape[1]) + "\n"
    text = "".join(fmt % tuple(row) for row in cols.tolist())  # noqa: UP031 - %E is the spec
    return text.replace("NAN", "nan").replace("INF", "inf").encode("ascii")


def _mantissa(ax: FloatArray, e: NDArray[np.int64]) -> FloatArray:
    """ax / 10**(e-7) (one rounding): 8 significant digits of ax before the point, for
    |e| <= 101."""
    p = 7 - e
    ap = np.abs(p)
    m: FloatArray = ax * np.where(p >= 0, _TEN[ap], 1.0) / np.where(p < 0, _TEN[ap], 1.0)
    return m


def format_chi_rows(cols: ArrayLike) -> bytes:
    """Format a 2D float array ``(rows, columns)`` as ``.chi`` data rows; return bytes.

    Byte-for-byte equal to ``"%14.7E"``-formatting each value (``nan``/``inf`` lower case),
    values separated by one space, each row ending in ``"\\n"``.
    """
    cols = np.asarray(cols, dtype=np.float64)
    assert isinstance(cols, np.ndarray)
    n, c = cols.shape
    if n == 0:
        return b""
    ax = np.abs(cols)
    finite = np.isfinite(cols)
    nonzero = finite & (ax > 0)
    safe = np.where(nonzero, ax, 1.0)
    e = np.floor(np.log10(safe)).astype(np.int64)
    if e.min() < -101 or e.max() > 100:
        return _format_slow(cols)  # 3-digit exponents (rare): fields wider than 14
    scaled = _mantissa(safe, e)
    # values within rounding noise of a half-way point (in either pass below): let Python's
    # correctly rounded formatting decide them (normally none)
    ambiguous = np.abs(scaled - np.floor(scaled) - 0.5) < 1e-6
    m = np.rint(scaled)
    # log10 may be off by one next to powers of ten, and rounding may give 10^8: fix e
    adjust = (m >= 1e8).astype(np.int64) - (m < 1e7).astype(np.int64)
    if adjust.any():
        e += adjust
        scaled = _mantissa(safe, e)
        ambiguous |= np.abs(scaled - np.floor(scaled) - 0.5) < 1e-6
        m = np.rint(scaled)
    if (m >= 1e8).any() or (m < 1e7).any() or e.min() < -99 or e.max() > 99:
        return _format_slow(cols)
    ambiguous &= nonzero
    zero = ~nonzero
    if zero.any():  # 0 (and the placeholder of nan/inf) as 0.0000000E+00
        m = np.where(zero, 0.0, m)
        e = np.where(zero, 0, e)
    m = m.astype(np.int64)

    out = np.empty((n, c), _FIELD_DTYPE)
    out["sign"] = np.where(np.signbit(cols), ord("-"), ord(" "))
    high, low = np.divmod(m, 10000)
    lead, frac = np.divmod(high, 1000)
    out["lead"] = lead + ord("0")
    out["frac"] = _FRAC[frac]
    out["low"] = _LO[low]
    out["exp"] = _EXP[e + 99]
    out["sep"] = ord(" ")
    out["sep"][:, -1] = ord("\n")
    raw = out.view(np.uint8).reshape(n, c, _FIELD)

    special = ~finite | ambiguous
    if special.any():
        for i, j in zip(*np.nonzero(special), strict=True):
            v = float(cols[i, j])
            if np.isfinite(v):
                field = ("%14.7E" % v).encode("ascii")  # noqa: UP031 - the format of the spec
                if len(field) != 14:
                    return _format_slow(cols)
            else:
                field = _NONFINITE[repr(v)]
            raw[i, j, :14] = np.frombuffer(field, np.uint8)
    return out.tobytes()


def _header_line(text: object) -> str:
    """One header line: no line breaks inside."""
    return " ".join(str(text).splitlines()) if text else ""


def _split_key(title_line: str) -> tuple[str, str | None]:
    """(title, key or None) of a first header line."""
    head, sep, key = title_line.rpartition(KEY_MARKER)
    key = key.strip()
    if sep and key and all(c in "0123456789abcdef" for c in key):
        return head, key
    return title_line, None


def write_chi(
    path: PathLike,
    q: ArrayLike,
    intensity: ArrayLike,
    error: ArrayLike | None = None,
    title: str = "",
    q_label: str = "q (nm^-1)",
    i_label: str = "Intensity",
    fsync: bool = False,
    calibration_key: str | None = None,
) -> None:
    """Write a ``.chi`` curve atomically (temporary name, then renamed; LF line endings).

    Four header lines (title, q label, intensity label, row count), then one row per bin of
    ``%14.7E`` values: q, I and, when given, the error.

    Parameters
    ----------
    path : str or path-like
        The .chi file.
    q : array_like, shape (n,)
        Bin centres (unit as stated in ``q_label``, nm^-1 by default).
    intensity : array_like, shape (n,)
        Mean intensity per bin.
    error : array_like, shape (n,), optional
        Third column (the Poisson error).
    title : str
        First header line, usually the image path.
    q_label, i_label : str
        Second and third header lines.
    fsync : bool
        Flush to disk before the rename.
    calibration_key : str, optional
        Lower-case hex digest appended to the title line (see the module docstring).

    Raises
    ------
    ValueError
        If the arrays are not 1D of the same length, or the key is not hex.

    Examples
    --------
    >>> import numpy as np, gpusaxs
    >>> q = np.linspace(0.1, 5.0, 100)
    >>> gpusaxs.write_chi("curve.chi", q, np.exp(-q), np.full(100, 0.01))  # doctest: +SKIP
    >>> gpusaxs.read_chi("curve.chi").q.shape  # doctest: +SKIP
    (100,)
    """
    if calibration_key is not None:
        key = str(calibration_key)
        if not key or any(c not in "0123456789abcdef" for c in key):
            raise ValueError(f"write_chi: calibration_key must be lower-case hex, got {key!r}")
        title = f"{_header_line(title)}{KEY_MARKER}{key}"
    q = np.asarray(q, dtype=np.float64)
    intensity = np.asarray(intensity, dtype=np.float64)
    arrays = (
        [q, intensity] if error is None else [q, intensity, np.asarray(error, dtype=np.float64)]
    )
    n = q.shape[0] if q.ndim == 1 else -1
    for name, a in zip(("q", "intensity", "error"), arrays, strict=False):  # 2 or 3 columns
        if a.ndim != 1 or a.shape[0] != n:
            raise ValueError(
                f"write_chi: {name} must be 1D with the length of q "
                f"({q.shape}), got shape {a.shape}"
            )
    cols = np.empty((n, len(arrays)), np.float64)
    for j, a in enumerate(arrays):
        cols[:, j] = a
    header = "\n".join(
        [_header_line(title), _header_line(q_label), _header_line(i_label), f"{n:>11d}", ""]
    ).encode("utf-8")
    body = format_chi_rows(cols)
    with atomic_write(path, "wb", fsync=fsync) as fh:
        fh.write(header + body)  # one write call: cheaper than two on a disk filesystem


def _parse_rows_slow(
    path: PathLike, data_lines: list[str], first_line_no: int, ncols: int
) -> FloatArray:
    """Line-by-line parse that names the first bad line."""
    values = np.empty((len(data_lines), ncols), np.float64)
    for i, line in enumerate(data_lines):
        line_no = first_line_no + i
        parts = line.split()
        if len(parts) != ncols:
            raise ChiFormatError(
                path,
                f"line {line_no}: expected {ncols} columns, "
                f"got {len(parts)}: {line.strip()[:60]!r}",
            )
        for j, tok in enumerate(parts):
            try:
                values[i, j] = float(tok)
            except ValueError:
                raise ChiFormatError(path, f"line {line_no}: not a number: {tok[:40]!r}") from None
    return values


def read_chi(path: PathLike) -> ChiCurve:
    """Read a ``.chi`` curve file (ours or fit2d's; LF or CRLF).

    Parameters
    ----------
    path : str or path-like
        The .chi file.

    Returns
    -------
    ChiCurve
        ``q``, ``intensity``, ``error`` (None for 2 columns), the header lines and the
        calibration key; unpacks as a tuple.

    Raises
    ------
    ChiFormatError
        Naming the file and the offending line number.

    Examples
    --------
    >>> curve = gpusaxs.read_chi("frame.chi")  # doctest: +SKIP
    >>> q, I, err = curve.q, curve.intensity, curve.error  # doctest: +SKIP
    """
    try:
        with open(path, "rb") as fh:
            raw = fh.read()
    except FileNotFoundError:
        raise ChiFormatError(path, "no such file") from None
    except OSError as exc:
        raise ChiFormatError(path, f"cannot read: {exc.strerror or exc}") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        text = raw.decode("latin-1")
    lines = [ln[:-1] if ln.endswith("\r") else ln for ln in text.split("\n")]
    while lines and not lines[-1].strip():
        lines.pop()
    if len(lines) < 4:
        raise ChiFormatError(
            path, f"line {len(lines) + 1}: expected 4 header lines, file has {len(lines)} lines"
        )
    title, q_label, i_label, count_line = lines[:4]
    title, key = _split_key(title)
    try:
        count = int(count_line.strip())
    except ValueError:
        raise ChiFormatError(
            path, f"line 4: expected the number of rows, got {count_line.strip()[:40]!r}"
        ) from None
    if count < 0:
        raise ChiFormatError(path, f"line 4: negative number of rows {count}")
    data_lines = lines[4:]
    if len(data_lines) < count:
        raise ChiFormatError(
            path,
            f"line {5 + len(data_lines)}: unexpected end of file: "
            f"line 4 says {count} rows, found {len(data_lines)}",
        )
    if len(data_lines) > count:
        raise ChiFormatError(
            path, f"line {5 + count}: extra data: line 4 says {count} rows, found {len(data_lines)}"
        )
    if count == 0:
        empty = np.empty(0, np.float64)
        return ChiCurve(empty, empty.copy(), None, title, q_label, i_label, key)
    ncols = len(data_lines[0].split())
    if ncols not in (2, 3):
        raise ChiFormatError(path, f"line 5: expected 2 or 3 columns, got {ncols}")
    tokens = " ".join(data_lines).split()
    values: FloatArray | None = None
    if len(tokens) == count * ncols:
        try:
            values = np.array(tokens, dtype=np.float64).reshape(count, ncols)
        except ValueError:
            values = None
        else:
            # equal token count does not prove every line has ncols columns
            if any(len(ln.split()) != ncols for ln in data_lines):
                values = None
    if values is None:
        values = _parse_rows_slow(path, data_lines, 5, ncols)
    q = np.ascontiguousarray(values[:, 0])
    intensity = np.ascontiguousarray(values[:, 1])
    error = np.ascontiguousarray(values[:, 2]) if ncols == 3 else None
    return ChiCurve(q, intensity, error, title, q_label, i_label, key)


def read_chi_key(path: PathLike) -> str | None:
    """The calibration key on the first line of a .chi file, or None (no key, unreadable).

    Reads at most 4 kB: cheap enough to check every curve of a folder on resume.
    """
    try:
        with open(path, "rb") as fh:
            first = fh.read(4096).split(b"\n", 1)[0]
    except OSError:
        return None
    return _split_key(first.decode("utf-8", "replace").rstrip("\r"))[1]
