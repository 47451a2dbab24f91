"""Stream V2 bslz4 frames decoded on the device (issue 26): which frames of a batch skip the host
decode threads and go compressed to the engine's ``sums_compressed``, and their integration.

The rule is the pipeline's (:func:`gpusaxs.gpu_decode.device_decode_enabled`: a CuPy
DeviceEngine and ``GPUSAXS_DEVICE_DECODE=1``), for an integrator whose batch call is the plain
``Integrator.integrate_batch_error`` (an averaging or grazing-incidence integrator keeps the
host path: its rows are not the engine's sums alone).  A frame the decoder refuses fails alone
with a ``decode`` record; a call that fails retries its frames on the host (bitshuffle, then
the integrator's own batch call, one frame failing alone as on the host path).
"""

import logging

import numpy as np

from gpusaxs.engine_contract import error_model
from gpusaxs.frame_batches import integrate_once, sums_batch_call
from gpusaxs.gpu_decode import DECODE_DTYPES, device_decode_enabled

from .codecs import DecodeError

__all__ = ["DeviceFrames", "StreamDeviceDecode"]

log = logging.getLogger("saxsdogserver.stream")


class DeviceFrames:
    """The frames of a batch left compressed for the device: Image messages whose payload is
    bslz4 of ``shape`` and ``dtype``.  Sliced like a stack (what the consumer's queues pass)."""

    def __init__(self, messages, shape, dtype):
        self.messages, self.shape, self.dtype = list(messages), tuple(shape), np.dtype(dtype)

    def __len__(self):
        return len(self.messages)

    def __getitem__(self, which):
        return DeviceFrames(self.messages[which], self.shape, self.dtype)


class StreamDeviceDecode:
    """The stream consumer's device decode.  ``choice``: None follows the opt-in rule, True or
    False forces it (as FramePipeline's ``compressed``)."""

    def __init__(self, choice=None):
        self.choice = choice
        self._last = (None, False)  # (integrator, its decision): decided once per integrator
        self.frames = 0  # frames sent to the device path

    def enabled(self, integ):
        """Whether ``integ``'s bslz4 frames go to the device (decided on its first batch)."""
        last, decision = self._last
        if last is not integ:
            decision = self.choice is not False and sums_batch_call(integ)
            try:
                decision = decision and device_decode_enabled(integ.engine, self.choice)
            except Exception:  # noqa: BLE001 - no engine: the integrator stage reports it
                decision = False
            self._last = (integ, decision)
        return decision

    @property
    def path(self):
        """ "device" when the current integrator decodes bslz4 frames on the device, else "host"
        (``bslz4 decode`` of the consumer's stat)."""
        return "device" if self._last[1] else "host"

    def route(self, series_id, integ, batch, out):
        """Put the frames of ``batch`` (Image messages of one series and dtype) that the device
        decodes on ``out`` as one ("batch", series_id, DeviceFrames, n, ids, None) item; return
        the others, for the host decode threads (in their order)."""
        if not batch or not self.enabled(integ):
            return batch
        shape = tuple(integ.shape)
        dtype = np.dtype(batch[0].payload.dtype)
        mine, rest = [], []
        for m in batch:
            p = m.payload
            fits = (
                p.compression == "bslz4"
                and tuple(p.shape) == shape
                and np.dtype(p.dtype) == dtype
                and dtype in DECODE_DTYPES
                and p.elem_size in (None, dtype.itemsize)
            )
            (mine if fits else rest).append(m)
        if mine:
            ids = np.array([m.image_id for m in mine], dtype=np.int64)
            self.frames += len(mine)
            out.put(("batch", series_id, DeviceFrames(mine, shape, dtype), len(mine), ids, None))
        return rest

    def integrate(self, integ, frames, ids, book, series_id):
        """The rows item ("rows", series_id, intensity, err, ids) of ``frames`` (None when no
        frame gave a row); every frame that gives none gets its record in ``book``."""
        try:
            res = integ.engine.sums_compressed(
                [m.payload.data for m in frames.messages],
                frames.shape,
                frames.dtype,
                "poisson",
                list(range(len(frames))),
            )
            intensity, _, err = error_model(res.sums)
        except Exception as exc:  # noqa: BLE001 - the host path takes these frames again
            log.warning("device decode of %d frames failed (%s): host path", len(frames), exc)
            return self._host(integ, frames, ids, book, series_id)
        except BaseException as exc:  # the stage dies: its frames still get a record
            for i in ids:
                book.error(series_id, int(i), f"integrator stage died: {exc!r}", "failed")
            raise
        for rec in res.errors:
            iid = int(ids[rec["id"]])
            book.error(series_id, iid, f"cannot decode (bslz4): {rec['reason']}", "decode")
        if not res.ids:
            return None
        good = np.asarray(res.ids, dtype=np.intp)
        return ("rows", series_id, np.asarray(intensity), np.asarray(err), ids[good])

    @staticmethod
    def _host(integ, frames, ids, book, series_id):
        """The host path for frames whose device call failed: decoded by bitshuffle, then
        integrated by the integrator's batch call (a frame that fails, fails alone)."""
        stack = np.empty((len(frames), *frames.shape), dtype=frames.dtype.newbyteorder("="))
        good = []
        for k, m in enumerate(frames.messages):
            try:
                view = stack[k]
                frame = m.payload.decode(out=view)
                if frame is not view:  # not decoded in place
                    view[...] = frame
            except (DecodeError, ValueError, TypeError, MemoryError) as exc:
                why = f"cannot decode ({m.payload.compression}): {exc}"
                book.error(series_id, int(ids[k]), why, "decode")
                continue
            good.append(k)
        if not good:
            return None
        stack, ids = stack[good], ids[good]

        def one_call(x):
            intensity, _, err = integ.integrate_batch_error(x, std=False)
            return intensity, err

        intensity, err, failed = integrate_once(stack, one_call)
        for k, why in failed.items():
            book.error(series_id, int(ids[k]), f"integration failed: {why}", "integrate")
        if failed:
            keep = np.array([k for k in range(len(ids)) if k not in failed], dtype=np.intp)
            if intensity is None or not keep.size:
                return None
            intensity, ids = intensity[keep], ids[keep]
            err = None if err is None else err[keep]
        return ("rows", series_id, intensity, err, ids)
