"""The integration operator: a sparse matrix from pixels to radial bins (sections 4.1, 4.2).

Built once per calibration on the CPU, in chunks of image rows, with each pixel split into
Oversampling x Oversampling sub-pixels whose shares go to their q bins.  Stored pixel-major
(for each pixel, the bins it feeds and the area fraction it gives each); see
docs/ARCHITECTURE.md for the contract with the engines.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

import numpy as np
from numpy.typing import NDArray

from ._typing import ArrayLike, BoolArray, FloatArray
from .geometry import (
    _lab_transverse,
    chi_of_lab,
    corner_offsets_mm,
    lab_coordinates,
    pixel_offsets_mm,
    polarization_factor_rows,
    q_from_two_theta,
    two_theta_of_offsets,
)
from .radial_bins import default_q_edges
from .units import in_sector, normalise_sector, parse_unit, radial_of

if TYPE_CHECKING:
    import scipy.sparse

    from .calibration_model import Calibration


@dataclass(frozen=True)
class IntegrationMatrix:
    """Pixel-major sparse integration operator for images of ``shape`` (H, W).

    Built by :func:`build_matrix`; the engines sum frames through it (docs/ARCHITECTURE.md).

    Attributes
    ----------
    shape : (int, int)
        Image shape (H, W) in pixels.
    q_edges : ndarray of float64, shape (n_radial + 1,)
        Radial bin edges in ``radial_unit`` (nm^-1 by default).
    pixel_ptr : ndarray of int64, shape (H * W + 1,)
        Entries of pixel j are ``pixel_ptr[j]:pixel_ptr[j + 1]``.
    bins : ndarray of int32, shape (nnz,)
        Bin index of each entry.
    weights : ndarray of float32, shape (nnz,)
        Area fraction of the pixel that goes to the bin.
    pixel_scale : ndarray of float32, shape (H * W,)
        Multiplicative correction: 1/K (polarization), divided by the solid angle and the
        flat field when those options are on; else 1.
    norm : ndarray of float64, shape (n_bins,)
        Sum of weights per bin over all unmasked pixels.
    pixel_offset : ndarray of float32, shape (H * W,), or None
        Value subtracted from each raw pixel before scaling (the dark current, counts)
        (docs/ARCHITECTURE.md).
    radial_unit : str
        Unit of ``q_edges`` (:mod:`gpusaxs.units`; "q_nm^-1" by default).
    azimuth_edges : ndarray of float64, shape (n_azim + 1,), or None
        None for a 1D curve; for a 2D cake the chi edges in degrees, and bin
        ``a * n_radial + r`` is azimuth bin a, radial bin r.

    Examples
    --------
    >>> m = gpusaxs.build_matrix(cal)  # doctest: +SKIP
    >>> m.n_bins, m.nnz / m.n_pixels  # bins, entries per pixel  # doctest: +SKIP
    (1002, 2.7)
    """

    shape: tuple[int, int]
    q_edges: FloatArray
    pixel_ptr: NDArray[np.int64]
    bins: NDArray[np.int32]
    weights: NDArray[np.float32]
    pixel_scale: NDArray[np.float32]
    norm: FloatArray
    pixel_offset: NDArray[np.float32] | None = None
    radial_unit: str = "q_nm^-1"
    azimuth_edges: FloatArray | None = None

    @property
    def n_pixels(self) -> int:
        """Number of pixels, H * W."""
        return int(self.shape[0]) * int(self.shape[1])

    @property
    def n_radial(self) -> int:
        """Number of radial bins."""
        return len(self.q_edges) - 1

    @property
    def n_azimuthal(self) -> int:
        """Number of azimuth bins (1 for a 1D curve)."""
        return 1 if self.azimuth_edges is None else len(self.azimuth_edges) - 1

    @property
    def n_bins(self) -> int:
        """Number of bins the engines sum into: n_azimuthal * n_radial."""
        return self.n_radial * self.n_azimuthal

    @property
    def azimuth_centers(self) -> FloatArray | None:
        """Azimuth bin centres (chi, degrees) of a cake; None for a 1D curve."""
        if self.azimuth_edges is None:
            return None
        return 0.5 * (self.azimuth_edges[1:] + self.azimuth_edges[:-1])

    @property
    def nnz(self) -> int:
        """Number of (pixel, bin, weight) entries."""
        return len(self.bins)

    @property
    def q_centers(self) -> FloatArray:
        """Radial bin centres (in nm^-1, or in ``radial_unit``)."""
        return 0.5 * (self.q_edges[1:] + self.q_edges[:-1])

    @property
    def nbytes(self) -> int:
        """Memory of the matrix's arrays, bytes."""
        arrays = (self.pixel_ptr, self.bins, self.weights, self.pixel_scale, self.pixel_offset)
        return int(sum(a.nbytes for a in arrays if a is not None))

    def to_scipy(self, scaled: bool = False) -> scipy.sparse.csr_matrix:
        """The operator as a SciPy sparse matrix.

        Parameters
        ----------
        scaled : bool
            False: the values are the weights w; True: w times ``pixel_scale``.

        Returns
        -------
        scipy.sparse.csr_matrix, shape (n_bins, n_pixels)
        """
        import scipy.sparse as sp

        values = self.weights.astype(np.float64)
        if scaled:
            counts = np.diff(self.pixel_ptr)
            values = values * np.repeat(self.pixel_scale.astype(np.float64), counts)
        csc = sp.csc_matrix((values, self.bins, self.pixel_ptr), shape=(self.n_bins, self.n_pixels))
        csr: scipy.sparse.csr_matrix = csc.tocsr()
        return csr

    def bin_major(
        self,
    ) -> tuple[NDArray[np.int64], NDArray[np.int32], NDArray[np.float32]]:
        """Bin-major CSR arrays, for gather kernels.

        Returns
        -------
        row_ptr : ndarray of int64, shape (n_bins + 1,)
        pixel : ndarray of int32, shape (nnz,)
        weight : ndarray of float32, shape (nnz,)
        """
        order = np.argsort(self.bins, kind="stable")
        pixel_of_entry = np.repeat(
            np.arange(self.n_pixels, dtype=np.int32), np.diff(self.pixel_ptr)
        )
        row_ptr = np.zeros(self.n_bins + 1, dtype=np.int64)
        np.cumsum(np.bincount(self.bins, minlength=self.n_bins), out=row_ptr[1:])
        return row_ptr, pixel_of_entry[order], self.weights[order]


# ----------------------------------------------------------------------------------------------
# Building
# ----------------------------------------------------------------------------------------------

#: Sub-pixels handled per chunk while building (bounds the builder's memory, ~40 B each, and
#: the time between two progress/cancel checks: ~0.1-0.3 s on a loaded 2-core machine).
CHUNK_SUBPIXELS = 1 << 19

#: Bumped whenever the builder's output changes, so stale cache files are not reused.
FORMAT_VERSION = 1


class BuildCancelled(Exception):
    """A matrix build was stopped between two chunks (``should_stop`` or ``progress`` said so)."""


def _bin_index(q: FloatArray, q_edges: FloatArray, uniform: bool) -> NDArray[np.int64]:
    """Bin of each q (int64), -1 outside [q_edges[0], q_edges[-1])."""
    idx: NDArray[np.int64]
    if uniform:
        dq = (q_edges[-1] - q_edges[0]) / (len(q_edges) - 1)
        idx = np.floor((q - q_edges[0]) / dq).astype(np.int64)
    else:
        idx = np.searchsorted(q_edges, q, side="right").astype(np.int64) - 1
    idx[(idx < 0) | (idx >= len(q_edges) - 1) | ~np.isfinite(q)] = -1
    return idx


def _is_uniform(q_edges: FloatArray) -> bool:
    steps = np.diff(q_edges)
    return bool(np.allclose(steps, steps[0], rtol=1e-12, atol=0.0))


def _chunk_entries(
    cal: Calibration, rows: slice, q_edges: FloatArray, uniform: bool, keep: BoolArray
) -> tuple[NDArray[np.int64], NDArray[np.int64], FloatArray]:
    """Entries (pixel offset within chunk, bin, weight) of the pixels in ``rows``.

    Splits each pixel into ov x ov sub-pixels, bins them, and counts per pixel how many
    sub-pixels fall in each bin (as offsets from the pixel's lowest bin).
    """
    ov = int(cal.oversampling)
    n_rows = rows.stop - rows.start
    width = cal.imagesize[1]
    tth = two_theta_of_offsets(cal, *pixel_offsets_mm(cal, rows, ov))
    idx = _bin_index(q_from_two_theta(tth, cal.wavelength_A), q_edges, uniform)
    # (rows, ov, W, ov) -> (rows*W, ov*ov): the sub-pixels of each pixel side by side
    idx = idx.reshape(n_rows, ov, width, ov).transpose(0, 2, 1, 3).reshape(n_rows * width, ov * ov)
    inside = idx >= 0
    big = np.iinfo(np.int64).max
    low = np.where(inside, idx, big).min(axis=1)
    offset = np.where(inside, idx - low[:, None], -1)
    spread = int(offset.max()) + 1 if inside.any() else 0
    counts = np.zeros((n_rows * width, max(spread, 1)), dtype=np.int32)
    for k in range(spread):
        counts[:, k] = (offset == k).sum(axis=1)
    counts[~keep] = 0
    pix, col = np.nonzero(counts)
    weights = counts[pix, col].astype(np.float64) / (ov * ov)
    return pix, low[pix] + col, weights


def default_radial_edges(
    cal: Calibration,
    unit: str = "q_nm^-1",
    npt: int | None = None,
    radial_range: tuple[float, float] | None = None,
    checkpoint: Callable[[], Any] | None = None,
) -> FloatArray:
    """Radial bin edges in ``unit`` (see :mod:`gpusaxs.units`).

    Without npt and radial_range in q_nm^-1 these are :func:`default_q_edges` (SAXSdog's bins).
    Otherwise ``npt`` bins (default: as many as the default q bins) uniform over
    ``radial_range`` (default: from 0 to the largest value on the detector's pixel corners).
    checkpoint: as in :func:`default_q_edges`.
    """
    unit = parse_unit(unit)
    if unit == "q_nm^-1" and npt is None and radial_range is None:
        return default_q_edges(cal, checkpoint)
    if npt is None:
        npt = len(default_q_edges(cal, checkpoint)) - 1
    npt = int(npt)
    if npt < 1:
        raise ValueError(f"npt must be a positive number of bins, got {npt}")
    if radial_range is None:
        hi = 0.0
        for start in range(0, cal.imagesize[0] + 1, 256):
            if checkpoint is not None:
                checkpoint()
            tx, ty, tz = _lab_transverse(cal, *corner_offsets_mm(cal, slice(start, start + 256)))
            r = np.hypot(tx, ty)
            hi = max(hi, float(np.max(radial_of(unit, np.arctan2(r, tz), r, cal.wavelength_A))))
        lo = 0.0
    else:
        lo, hi = (float(v) for v in radial_range)
    if not (np.isfinite(lo) and np.isfinite(hi) and hi > lo):
        raise ValueError(
            f"radial_range must be (low, high) with low < high in {unit}, got {radial_range!r}"
        )
    return np.linspace(lo, hi, npt + 1)


def _option_bin_index(
    cal: Calibration,
    rows: slice,
    ov: int,
    q_edges: FloatArray,
    uniform: bool,
    unit: str,
    sector: tuple[float, float] | None,
    azimuth_edges: FloatArray | None,
) -> NDArray[np.int64]:
    """Bin index (int64, -1 outside) of each sub-pixel of ``rows`` for the options path: radial
    coordinate in ``unit``, optionally restricted to an azimuth ``sector`` (lo, span) in
    degrees and split into the cake's azimuth bins."""
    tx, ty, tz = lab_coordinates(cal, rows, ov)
    r = np.hypot(tx, ty)
    idx = _bin_index(radial_of(unit, np.arctan2(r, tz), r, cal.wavelength_A), q_edges, uniform)
    if sector is None:
        return idx
    pos = in_sector(np.rad2deg(chi_of_lab(tx, ty)), *sector)
    outside = ~np.isfinite(pos)
    if azimuth_edges is not None:
        rel = azimuth_edges - azimuth_edges[0]
        az = np.searchsorted(rel, np.where(outside, 0.0, pos), side="right") - 1
        outside |= (az < 0) | (az >= len(rel) - 1)
        idx = np.where(idx >= 0, az * (len(q_edges) - 1) + idx, -1)
    idx[outside] = -1
    return idx


def _entries_of_index(
    idx: NDArray[np.int64], n_rows: int, width: int, ov: int, keep: BoolArray
) -> tuple[NDArray[np.int64], NDArray[np.int64], FloatArray]:
    """(pixel within chunk, bin, weight) from the sub-pixel bins ``idx`` (n_rows*ov, W*ov), for
    any bin layout (a pixel's bins need not be neighbours, as in a cake)."""
    idx = idx.reshape(n_rows, ov, width, ov).transpose(0, 2, 1, 3).reshape(n_rows * width, ov * ov)
    pix = np.repeat(np.arange(n_rows * width, dtype=np.int64), ov * ov)
    idx = idx.ravel()
    inside = (idx >= 0) & np.repeat(keep, ov * ov)
    span = int(idx.max()) + 1 if inside.any() else 1
    keys, counts = np.unique(pix[inside] * span + idx[inside], return_counts=True)
    return keys // span, keys % span, counts.astype(np.float64) / (ov * ov)


def build_mask(cal: Calibration, mask: ArrayLike | None = None) -> BoolArray:
    """The mask (H, W) bool, True = excluded, a matrix is built with: ``mask``, else the
    calibration's mask file, else nothing masked; ValueError when its shape is not Imagesize."""
    height, width = (int(v) for v in cal.imagesize)
    if mask is None:
        mask = (
            cal.load_mask() if getattr(cal, "mask_file", None) else np.zeros((height, width), bool)
        )
    mask_arr: BoolArray = np.asarray(mask, dtype=bool)
    if mask_arr.shape != (height, width):
        raise ValueError(f"mask shape {mask_arr.shape} does not match Imagesize {(height, width)}")
    return mask_arr


def build_matrix(
    cal: Calibration,
    mask: ArrayLike | None = None,
    q_edges: ArrayLike | None = None,
    progress: Callable[[int, int], Any] | None = None,
    unit: str = "q_nm^-1",
    azimuth_range: tuple[float, float] | None = None,
    azimuth_edges: ArrayLike | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> IntegrationMatrix:
    """Build the IntegrationMatrix of a calibration on the CPU, in bounded memory.

    With the defaults the matrix is SAXSdog's (q in nm^-1, full circle), built by the original
    path.

    Parameters
    ----------
    cal : Calibration
        The geometry, oversampling and binning.
    mask : array_like of bool, shape (H, W), optional
        True = pixel excluded (default: ``cal.load_mask()`` when the calibration names a mask
        file, else nothing masked).
    q_edges : array_like, shape (n_radial + 1,), optional
        Radial bin edges in ``unit``, increasing (default :func:`default_radial_edges`).
    progress : callable(done_rows, total_rows), optional
        Called after each chunk of image rows, and with done_rows = 0 while the default bins
        are set up (it may raise :class:`BuildCancelled` to stop the build).
    unit : str
        Radial unit (:mod:`gpusaxs.units`), e.g. ``"q_nm^-1"``, ``"2th_deg"``.
    azimuth_range : (float, float), optional
        (lo, hi) sector in degrees (pyFAI's chi, may wrap through +-180) outside which
        sub-pixels are dropped.
    azimuth_edges : array_like, shape (n_azim + 1,), optional
        chi edges in degrees (increasing, spanning at most 360) of a 2D cake.
    should_stop : callable() -> bool, optional
        Asked at the same points as ``progress``: True raises :class:`BuildCancelled`.

    Returns
    -------
    IntegrationMatrix
        ``n_bins = n_azim * n_radial`` bins (n_azim = 1 for a curve).

    Raises
    ------
    BuildCancelled
        When ``should_stop`` or ``progress`` stopped the build.

    Examples
    --------
    >>> cal = gpusaxs.Calibration.from_file("calibration.json")  # doctest: +SKIP
    >>> m = gpusaxs.build_matrix(cal)  # doctest: +SKIP
    >>> m.q_centers.shape == (m.n_bins,)  # doctest: +SKIP
    True
    """
    unit = parse_unit(unit)
    height, width = (int(v) for v in cal.imagesize)
    mask_arr = build_mask(cal, mask)

    def checkpoint(done: int) -> None:
        if should_stop is not None and should_stop():
            raise BuildCancelled(f"build stopped at row {done} of {height}")
        if progress is not None:
            progress(done, height)

    if q_edges is None:
        edges = default_radial_edges(cal, unit, checkpoint=lambda: checkpoint(0))
    else:
        edges = np.asarray(q_edges, dtype=np.float64)
    if edges.ndim != 1 or len(edges) < 2 or np.any(np.diff(edges) <= 0):
        raise ValueError(
            f"radial bin edges must be a 1D increasing array of at least 2 edges ({unit})"
        )
    sector = None
    az_edges: FloatArray | None = None
    if azimuth_edges is not None:
        az_edges = np.asarray(azimuth_edges, dtype=np.float64)
        if (
            az_edges.ndim != 1
            or len(az_edges) < 2
            or np.any(np.diff(az_edges) <= 0)
            or az_edges[-1] - az_edges[0] > 360.0 + 1e-9
        ):
            raise ValueError(
                "azimuth_edges must be increasing chi edges in degrees spanning at most 360"
            )
        sector = (float(az_edges[0]), float(az_edges[-1] - az_edges[0]))
    elif azimuth_range is not None:
        sector = normalise_sector(azimuth_range)
    legacy = unit == "q_nm^-1" and sector is None
    uniform = _is_uniform(edges)
    ov = int(cal.oversampling)
    rows_per_chunk = max(1, CHUNK_SUBPIXELS // (width * ov * ov))

    counts_per_pixel = np.zeros(height * width, dtype=np.int64)
    bins_parts: list[NDArray[np.int32]] = []
    weight_parts: list[NDArray[np.float32]] = []
    scale = np.ones(height * width, dtype=np.float32)
    for start in range(0, height, rows_per_chunk):
        if should_stop is not None and should_stop():
            raise BuildCancelled(f"build stopped at row {start} of {height}")
        rows = slice(start, min(height, start + rows_per_chunk))
        keep = ~mask_arr[rows].ravel()
        if legacy:
            pix, bins64, weights64 = _chunk_entries(cal, rows, edges, uniform, keep)
        else:
            idx = _option_bin_index(cal, rows, ov, edges, uniform, unit, sector, az_edges)
            pix, bins64, weights64 = _entries_of_index(idx, rows.stop - rows.start, width, ov, keep)
        first = start * width
        counts_per_pixel[first : first + keep.size] = np.bincount(pix, minlength=keep.size)
        bins_parts.append(bins64.astype(np.int32))
        weight_parts.append(weights64.astype(np.float32))
        if getattr(cal, "polarization", None) is not None:
            scale[first : first + keep.size] = (1.0 / polarization_factor_rows(cal, rows)).ravel()
        checkpoint(rows.stop)

    n_bins = (len(edges) - 1) * (1 if az_edges is None else len(az_edges) - 1)
    pixel_ptr = np.zeros(height * width + 1, dtype=np.int64)
    np.cumsum(counts_per_pixel, out=pixel_ptr[1:])
    bins = np.concatenate(bins_parts) if bins_parts else np.zeros(0, np.int32)
    weights = np.concatenate(weight_parts) if weight_parts else np.zeros(0, np.float32)
    norm = np.bincount(bins, weights=weights.astype(np.float64), minlength=n_bins).astype(
        np.float64, copy=False
    )
    return IntegrationMatrix(
        shape=(height, width),
        q_edges=edges,
        pixel_ptr=pixel_ptr,
        bins=bins,
        weights=weights,
        pixel_scale=scale,
        norm=norm,
        radial_unit=unit,
        azimuth_edges=az_edges,
    )


def restrict_matrix(matrix: IntegrationMatrix, mask: ArrayLike) -> IntegrationMatrix:
    """The matrix without the pixels where ``mask`` (H, W) is True: the same as building with
    that mask added, in one pass over the entries (no geometry recomputed)."""
    excluded = np.asarray(mask, dtype=bool)
    if excluded.shape != tuple(matrix.shape):
        raise ValueError(
            f"mask shape {excluded.shape} does not match Imagesize {tuple(matrix.shape)}"
        )
    counts = np.diff(matrix.pixel_ptr) * ~excluded.ravel()
    keep = np.repeat(~excluded.ravel(), np.diff(matrix.pixel_ptr))
    pixel_ptr = np.zeros_like(matrix.pixel_ptr)
    np.cumsum(counts, out=pixel_ptr[1:])
    bins, weights = matrix.bins[keep], matrix.weights[keep]
    norm = np.bincount(bins, weights=weights.astype(np.float64), minlength=matrix.n_bins).astype(
        np.float64, copy=False
    )
    return replace(matrix, pixel_ptr=pixel_ptr, bins=bins, weights=weights, norm=norm)
