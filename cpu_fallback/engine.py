"""The CPU engine: integrates stacks of frames with an IntegrationMatrix on the host.

``CpuEngine`` runs the numba kernel of :mod:`cpu_fallback.banded` on all cores (the default);
``ScipyEngine`` is the plain NumPy/SciPy sparse product, used when numba is missing and as an
independent reference in tests.  Both meet gpusaxs.engine_contract (float64 Sums, (B, n_bins)).
"""

import copy
import sys
import threading

import numpy as np

from gpusaxs.engine_contract import (
    Sums,
    as_frame_stack,
    invalid_threshold,
    pixel_offset,
    valid_mask,
)

from .layout import (
    BAND_PIXELS,
    LANES,
    banded_layout,
    check_gather_layout,
    check_layout,
    gather_layout,
    thread_bands,
)

__all__ = ["CpuEngine", "ScipyEngine", "invalid_threshold", "as_frame_stack", "pixel_offset"]


#: Bound on the kernel's private per-thread sums (bytes); larger stacks go in groups of frames.
BANDED_OUTPUT_BYTES = 256 << 20
#: Largest per-thread sums buffer (float64 values) an engine keeps for its next call (64 MB).
KEPT_WORK_VALUES = 8 << 20
#: Output blocks from this many float64 values (8 MB) on are kept for reuse (see _output).
REUSED_OUTPUT_VALUES = 1 << 20
#: Bins per pixel above which the gather kernel (cpu_fallback.gather) serves: a map's or a
#: cake's threads' private copies of every bin would cost more than the kernel itself.
GATHER_BINS_PER_PIXEL = 0.05


class CpuEngine:
    """Multi-threaded numba engine: the banded kernel of :mod:`cpu_fallback.banded` for curves,
    the gather kernel of :mod:`cpu_fallback.gather` for maps and cakes (``kernel``).

    ``threads``: cores to use (default: all numba sees).  ``layout_cache``: callable(matrix,
    name, build, check) -> (layout, source) keeping the kernel's layout beside the matrix's cache
    file (gpusaxs.matrix_cache.cached_derived, which gpusaxs.engines.make_engine passes);
    None: the layout is built here (``layout_source`` "uncached"). ``kernel``: "banded" or
    "gather"; None: "gather" above GATHER_BINS_PER_PIXEL bins per pixel.
    """

    name = "numba"
    #: the matrix's pixel_offset (dark) is applied in the kernel (docs/ARCHITECTURE.md)
    supports_pixel_offset = True

    def __init__(self, matrix, threads=None, layout_cache=None, kernel=None):
        import numba

        pixel_offset(matrix)  # a dark of the wrong size fails here, not in the first call
        self.matrix = matrix
        self.threads = max(
            1, min(int(threads or numba.config.NUMBA_NUM_THREADS), numba.config.NUMBA_NUM_THREADS)
        )
        #: called once before a kernel is compiled (not in memory nor in the disk cache)
        self.on_compile = None
        #: "gather" for maps and cakes (many bins per pixel), else "banded"
        many = matrix.n_bins > GATHER_BINS_PER_PIXEL * matrix.n_pixels
        self.kernel = kernel or ("gather" if many else "banded")
        if self.kernel not in ("gather", "banded"):
            raise ValueError(f"kernel must be 'gather' or 'banded', not {kernel!r}")
        make, check, name = (
            (gather_layout, check_gather_layout, "gather")
            if self.kernel == "gather"
            else (banded_layout, check_layout, f"band{BAND_PIXELS}")
        )
        if layout_cache is not None and getattr(matrix, "pixel_offset", None) is None:
            # kept beside the matrix's cache file (8 s to make for an EIGER 16M)
            self.layout, self.layout_source = layout_cache(
                matrix, name, lambda: make(matrix), lambda lay: check(lay, matrix)
            )
        else:  # no cache, or a dark set on this matrix object: its layout is not cached
            self.layout, self.layout_source = make(matrix), "uncached"
        # the kernel's per-thread sums, kept between calls: a fresh 2-4 MB array per call
        # costs its page faults (~1 ms, 5-10 % of a 64-frame call); one caller at a time uses it
        self._work = np.zeros(0)
        self._work_lock = threading.Lock()
        # the gather kernel's last output block, reused once no result refers to it any more
        self._spare = np.zeros(0)

    def with_threads(self, threads):
        """A copy of this engine on ``threads`` cores, for callers that run engines side by side
        (the detector stream's workers, one engine thread each): it shares the matrix and the
        layout (read only) and has its own work arrays, so the two never wait for each other."""
        clone = copy.copy(self)
        clone.threads = max(1, min(int(threads), self.threads))
        clone._work = np.zeros(0)
        clone._work_lock = threading.Lock()
        clone._spare = np.zeros(0)
        return clone

    def sums(self, stack, errors=False):
        """Per-bin sums of a stack (B, H, W) of any integer or float dtype.

        errors: False (signal, norm), True (also variance and squares) or "poisson" (also
        variance; squares None, which saves a third of the kernel's work).  Frames go through
        the kernel in groups that bound the threads' private sums to about
        BANDED_OUTPUT_BYTES.
        """
        import numba

        # the numba kernels (cpu_fallback.banded imports numba and defines them) are loaded
        # with the first frames, not with gpusaxs: ``import numba`` alone costs 0.3 s and more
        from .banded import PARALLEL_REDUCE_VALUES, banded_sums, reduce_threads, zero_sums

        frames = as_frame_stack(stack, self.matrix.shape)
        n_sums = 1 if not errors else (2 if errors == "poisson" else 3)
        if self.kernel == "gather":
            return self._gather(frames, n_sums)
        n_frames, n_bins = frames.shape[0], self.matrix.n_bins
        planes = 1 + n_sums  # signal, lost[, variance[, squares]]
        out = np.empty((planes, n_frames, n_bins))
        lay = self.layout
        dark = pixel_offset(self.matrix)
        per_frame = planes * self.threads * n_bins * 8
        group = max(LANES, BANDED_OUTPUT_BYTES // per_frame // LANES * LANES)
        upper = invalid_threshold(frames.dtype)
        own_work = self._work_lock.acquire(blocking=False)
        previous = numba.get_num_threads()
        numba.set_num_threads(self.threads)
        try:
            bands = thread_bands(lay, self.threads)
            for b0 in range(0, n_frames, group):
                part = frames[b0 : b0 + group]
                n = part.shape[0]
                bp = -(-n // LANES) * LANES  # columns per bin: frames rounded up to 8
                size = planes * self.threads * n_bins * bp
                if not own_work or size > KEPT_WORK_VALUES:
                    sums = np.zeros(size)
                elif self._work.size >= size:
                    sums = self._work[:size]
                    if size >= PARALLEL_REDUCE_VALUES:
                        zero_sums(sums)
                    else:
                        sums[:] = 0.0
                else:
                    sums = self._work = np.zeros(size)
                sums = sums.reshape(planes, self.threads, n_bins * bp)
                banded_sums(
                    sums,
                    part,
                    bands,
                    lay,
                    dark,
                    self.matrix.pixel_scale,
                    n_sums,
                    upper,
                    (self.matrix.pixel_ptr, self.matrix.bins, self.matrix.weights),
                    self.on_compile,
                )
                if size >= PARALLEL_REDUCE_VALUES:  # a map: add and transpose on all cores
                    reduce_threads(sums, out, b0, n)
                else:
                    total = sums.sum(axis=1).reshape(planes, n_bins, bp)
                    out[:, b0 : b0 + n] = total[:, :, :n].transpose(0, 2, 1)
        finally:
            numba.set_num_threads(previous)
            if own_work:
                self._work_lock.release()
        signal, lost = out[0], out[1]
        norm = np.maximum(self.matrix.norm[None, :] - lost, 0.0)
        if not errors:
            return Sums(signal, norm)
        return Sums(signal, norm, out[2], out[3] if errors is True else None)

    def _gather(self, frames, n_sums):
        """Sums of a (B, N) stack by the gather kernel: the stack made pixel-major (one pass),
        then every bin's pixels read in all frames at once and its sums written once."""
        import numba

        from .gather import bin_chunks, gather_sums, pixel_major

        out = self._output((2 + n_sums, frames.shape[0], self.matrix.n_bins))
        previous = numba.get_num_threads()
        numba.set_num_threads(self.threads)
        try:
            if frames.shape[0] == 1:
                stack = frames.reshape(-1, 1)  # one frame is pixel-major already
            else:
                stack = np.empty(frames.shape[::-1], frames.dtype)
                pixel_major(frames, stack)
            chunks = bin_chunks(self.layout["bin_ptr"], self.threads)
            upper = invalid_threshold(frames.dtype)
            dark = pixel_offset(self.matrix)
            gather_sums(out, stack, chunks, self.layout, dark, n_sums, upper, self.on_compile)
        finally:
            numba.set_num_threads(previous)
        variance = out[3] if n_sums >= 2 else None
        return Sums(out[0], out[1], variance, out[4] if n_sums == 3 else None, mean=out[2])

    def _output(self, shape):
        """A float64 array of ``shape`` for the gather kernel's sums: the previous call's block
        when nothing refers to it any more (no result, no view: CPython's reference count),
        else a fresh one. A map's block is hundreds of MB, whose fresh pages cost a third of
        the kernel's time; a caller that drops each result before the next call never pays
        them again."""
        with self._work_lock:
            spare = self._spare
            # references: self._spare, ``spare`` and getrefcount's argument
            if spare.shape == shape and sys.getrefcount(spare) == 3:
                return spare
            out = np.empty(shape)
            self._spare = out if out.size >= REUSED_OUTPUT_VALUES else np.zeros(0)
            return out


class ScipyEngine:
    """Reference engine: float64 SciPy sparse products (slow, simple, independent of numba).

    Implements the engine contract (docs/ARCHITECTURE.md) literally: with
    v = x - pixel_offset (v = x without a dark), over valid pixels (unmasked, x >= 0, finite, not
    the unsigned maximum): signal = sum w*s*v, norm = sum w, variance = sum w*s^2*x,
    squares = sum w*(s*v)^2.
    """

    name = "scipy"
    supports_pixel_offset = True

    def __init__(self, matrix):
        self.matrix = matrix
        self._weights = matrix.to_scipy(scaled=False)
        self._scale = matrix.pixel_scale.astype(np.float64)
        dark = pixel_offset(matrix)
        self._offset = None if dark is None else dark.astype(np.float64)

    def sums(self, stack, errors=False):
        frames = as_frame_stack(stack, self.matrix.shape)
        valid = valid_mask(frames)
        x = np.where(valid, frames.astype(np.float64), 0.0)
        v = x if self._offset is None else np.where(valid, x - self._offset, 0.0)
        sv = v * self._scale
        A = self._weights
        signal = (A @ sv.T).T
        norm = (A @ valid.T.astype(np.float64)).T
        if not errors:
            return Sums(signal, norm)
        variance = (A @ (x * self._scale * self._scale).T).T
        squares = None if errors == "poisson" else (A @ (sv * sv).T).T
        return Sums(signal, norm, variance, squares)
