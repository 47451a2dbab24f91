"""The sparse-product path of the GPU engine: the float reference it falls back to, and on
NumPy (CI) the stand-in for its kernels: CSR matrices of w, w*s, w*s^2 (cupyx.scipy.sparse on
a device, scipy.sparse on NumPy) times the frames, invalid values (engine_contract.valid_mask)
zeroed, the dark subtracted.

``SparseProduct`` is a base of gpusaxs.gpu_engine.DeviceEngine, which supplies the matrix
arrays (``_w``, ``_s``, ``_pix``, ``_row_ptr``, ``_pixel_offset``) and ``xp``.
"""

import numpy as np

from gpusaxs.engine_contract import valid_mask

__all__ = ["SparseProduct"]


class SparseProduct:
    """The sparse-product path (``_spmm_into``) of DeviceEngine."""

    def _sparse_matrices(self, dtype=None):
        """(n_bins, n_pixels) CSR matrices with values w, w*s, w*s^2 (built once per value
        dtype, lazily)."""
        dtype = np.dtype(dtype or self.spmm_dtype)
        if self._sparse is None:
            self._sparse = {}
        if dtype not in self._sparse:
            w = self._w.astype(np.float64)
            s = self._s.astype(np.float64)
            values = {"w": w, "ws": w * s, "ws2": w * s * s}
            shape = (self.n_bins, self.n_pixels)
            if self.xp is np:
                import scipy.sparse as sp

                mats = {
                    k: sp.csr_matrix((v, self._pix, self._row_ptr), shape=shape)
                    for k, v in values.items()
                }
            else:
                import cupyx.scipy.sparse as csp

                xp = self.xp
                idx = np.int32 if self._pix.size < 2**31 else np.int64
                ind = xp.asarray(self._pix.astype(idx))
                ptr = xp.asarray(self._row_ptr.astype(idx))
                mats = {
                    k: csp.csr_matrix((xp.asarray(v.astype(dtype)), ind, ptr), shape=shape)
                    for k, v in values.items()
                }
                xp.cuda.runtime.deviceSynchronize()
            self._sparse[dtype] = mats
        return self._sparse[dtype]

    def _spmm_into(self, x, out, errors, dtype=None):
        """Sparse-product path on x (n_pixels, b): frames converted to float, invalid -> 0.

        The reference path through cupyx.scipy.sparse, without avoidable copies: the float
        frames are made frame-major (b, n_pixels), C-contiguous (no copy of a frame-major
        batch), so each product gets their transpose, the F-contiguous (n_pixels, b) operand
        cuSPARSE's SpMM reads (cupyx copies any other layout first); the dark offset stays on
        the device (``_offset_on``)."""
        xp = self.xp
        dt = np.dtype(dtype or self.spmm_dtype)
        mats = self._sparse_matrices(dt)
        xt = x.T  # (b, n_pixels): a C-contiguous view for a frame-major batch
        valid = valid_mask(xt, xp)
        xv = xp.where(valid, xt.astype(dt), dt.type(0))
        if self._o is not None:
            d = xp.where(valid, xv - self._offset_on(dt)[None, :], dt.type(0))
        else:
            d = xv
        out[0] = (mats["ws"] @ d.T).T
        out[1] = (mats["w"] @ valid.astype(dt).T).T
        if errors:
            out[2] = (mats["ws2"] @ xv.T).T
        if errors is True:
            out[3] = (mats["ws2"] @ (d * d).T).T

    def _offset_on(self, dtype):
        """The per-pixel dark offset as a device array of dtype (uploaded once)."""
        dtype = np.dtype(dtype)
        if dtype not in self._offsets:
            self._offsets[dtype] = self.xp.asarray(self._pixel_offset.astype(dtype))
        return self._offsets[dtype]
