"""The streaming scheduler of the GPU engine: host frames through pinned staging buffers on
``n_streams`` streams, round-robin, so that the copy of batch k+1 overlaps the integration of
batch k; results leave in submission order (``integrate_stream``) or are queued and collected
(``submit`` / ``collect``, the pipeline's service API).

``StreamScheduler`` is the half of ``gpusaxs.gpu_engine.DeviceEngine`` that moves frames; the
engine supplies the batch work it schedules (``_pixel_batch``, ``_integrate_into``,
``sums_device``) and the layout rules (``batch_layout``, ``_leading_dim``, ``_as_frames``).
Streams and pinned memory are gpusaxs.gpu_ops's, so on NumPy the same code runs at once.
"""

import collections
import concurrent.futures

import numpy as np

from gpusaxs.engine_contract import Sums
from gpusaxs.gpu_ops import Slot, view

__all__ = ["StreamScheduler"]


class StreamScheduler:
    """Pinned slots, streams and the job pipeline of the GPU engine (a base of DeviceEngine).

    Not thread-safe: one integrate_stream, or one submit/collect sequence, at a time.
    """

    def _reserve(self, b, itemsize):
        """Allocate every slot's pinned staging and device buffers for batches of b frames of
        ``itemsize`` bytes (errors=True), so no batch allocates (pinned allocation takes
        0.15-0.7 s).  Larger dtypes or batches grow the buffers when they come."""
        nq = 4
        out_nbytes = nq * b * self.n_bins * 8
        for slot in self._get_slots():
            slot.buffer("stage", b * self.n_pixels * itemsize, True)
            slot.buffer("result", out_nbytes, True)
            slot.buffer("out", out_nbytes, False)
            pixel = self.layout == "pixel" and self.method == "kernel"
            if not pixel or self.upload == "copy":
                slot.buffer("frames", b * self.n_pixels * itemsize, False)
            if pixel:
                slot.buffer(
                    "pixel_major", self.n_pixels * self._leading_dim(b) * itemsize, False, True
                )
        for slot in self._slots:
            slot.stream.synchronize()

    def integrate_stream(self, frames, errors=False):
        """Generator of Sums (host float64, (b, n_bins)), one per batch, in input order.

        frames: a host stack (B, H, W) (split into batches of batch_size; a pinned stack is
        copied to the device without staging and must not change until the generator ends),
        a device stack (integrated batch by batch), or an iterable of frames (H, W) / blocks
        (k, H, W), each copied into a pinned staging buffer as soon as it is received (so the
        producer may reuse its buffers), grouped into batches of batch_size frames (a dtype
        change ends a batch).  Batch k+1 is copied while batch k is integrated.
        """
        if self._ops.is_device_array(frames):
            return self._device_stream(frames, errors)
        if isinstance(frames, np.ndarray):
            return self._pipeline(self._stack_jobs(self._as_frames(frames)), errors)
        return self._pipeline(self._iter_jobs(frames), errors)

    def _device_stream(self, stack_dev, errors):
        frames = self._as_frames(stack_dev)
        for i in range(0, frames.shape[0], self.batch_size):
            res = self.sums_device(frames[i : i + self.batch_size], errors)
            yield Sums(*(None if a is None else self._ops.to_host(a) for a in res))

    # Job generators run inside _pipeline.  They obtain idle slots with
    # ``slot = yield from acquire()`` (which may yield a finished result first), fill the slot's
    # staging buffer, and yield ("submit", slot, src) with src a (b, P) host array to upload.
    def _stack_jobs(self, stack):
        direct = bool(stack.flags.c_contiguous and self._ops.is_pinned(stack))
        for i in range(0, stack.shape[0], self.batch_size):
            part = stack[i : i + self.batch_size]
            slot = yield ("acquire",)
            if direct:
                src = part
            else:
                src = self._stage(slot, part.dtype, part.shape[0])
                self._host_copy(src, part)
            yield ("submit", slot, src)

    def _iter_jobs(self, iterable):
        slot = stage = None
        count = 0
        for item in iterable:
            arr = self._as_frames(np.asarray(item))
            pos = 0
            while pos < arr.shape[0]:
                if stage is not None and arr.dtype != stage.dtype:
                    yield ("submit", slot, stage[:count])
                    slot = stage = None
                if stage is None:
                    slot = yield ("acquire",)
                    stage = self._stage(slot, arr.dtype, self.batch_size)
                    count = 0
                take = min(self.batch_size - count, arr.shape[0] - pos)
                # copied now: the producer may reuse its buffer as soon as we ask for the next
                self._host_copy(stage[count : count + take], arr[pos : pos + take])
                count += take
                pos += take
                if count == self.batch_size:
                    yield ("submit", slot, stage)
                    slot = stage = None
        if stage is not None and count:
            yield ("submit", slot, stage[:count])

    def _stage(self, slot, dtype, b):
        """(b, P) view of dtype on slot's pinned staging buffer (slot must be idle)."""
        nbytes = b * self.n_pixels * dtype.itemsize
        return view(slot.buffer("stage", nbytes, True), dtype, (b, self.n_pixels))

    def _get_slots(self):
        if self._slots is None:
            self._slots = [Slot(self._ops, self._stream_factory()) for _ in range(self.n_streams)]
        return self._slots

    def _pipeline(self, jobs, errors):
        """Drive a job generator: round-robin over the slots, results in submission order.

        A slot is handed to a job only when idle (its previous batch finished and its result
        copied out), so staging buffers are never overwritten while a stream reads them."""
        if self._active:
            raise RuntimeError("another integrate_stream of this engine is still running")
        self._active = True
        slots = self._get_slots()
        inflight = collections.deque()
        try:
            reply = None
            while True:
                try:
                    request = jobs.send(reply)
                except StopIteration:
                    break
                reply = None
                if request[0] == "acquire":
                    slot = slots[self._slot_counter % len(slots)]
                    self._slot_counter += 1
                    if slot.busy:  # with round-robin the busy slot is the oldest in flight
                        assert inflight and inflight[0] is slot
                        yield self._finish(inflight.popleft())
                    reply = slot
                else:
                    _, slot, src = request
                    self._submit(slot, src, errors)
                    inflight.append(slot)
            while inflight:
                yield self._finish(inflight.popleft())
        finally:
            jobs.close()
            for slot in inflight:  # abandoned generator: wait for the work still in flight
                slot.event.synchronize()
                slot.pending = None
                slot.event = None
            self._active = False

    def _host_copy(self, dst, src):
        """Copy host frames src (k, P) into dst (k, P), split over threads when large."""
        if self.staging_threads <= 1 or dst.nbytes < (8 << 20):
            np.copyto(dst, src)
            return
        if self._pool is None:
            self._pool = concurrent.futures.ThreadPoolExecutor(self.staging_threads)
        step = -(-self.n_pixels // self.staging_threads)
        futures = [
            self._pool.submit(np.copyto, dst[:, c : c + step], src[:, c : c + step])
            for c in range(0, self.n_pixels, step)
        ]
        for f in futures:
            f.result()

    def _submit(self, slot, src, errors):
        """H2D of src (b, P), integration and D2H, asynchronously on the slot's stream.

        Pixel-major path: upload "copy" copies src to a frame-major device buffer and
        transposes it into the slot's pixel-major stack; "mapped" lets the transposing kernel
        read the pinned src directly (upload and transposition in one pass)."""
        b = src.shape[0]
        nq = self._nq(errors)
        layout = self.batch_layout(src.dtype)
        out_nbytes = nq * b * self.n_bins * 8
        dev_out = view(slot.buffer("out", out_nbytes, False), np.float64, (nq, b, self.n_bins))
        host_out = view(slot.buffer("result", out_nbytes, True), np.float64, (nq, b, self.n_bins))
        stream = slot.stream
        if layout == "pixel":
            ld = self._leading_dim(b)
            dev_pm = view(
                slot.buffer("pixel_major", self.n_pixels * ld * src.itemsize, False, True),
                src.dtype,
                (self.n_pixels, ld),
            )
            if self.upload == "mapped":
                dev_src = self._ops.mapped(src)
            else:
                dev_src = view(
                    slot.buffer("frames", src.nbytes, False), src.dtype, (b, self.n_pixels)
                )
                stream.run(self._ops.h2d, dev_src, src)
            stream.run(self._pixel_batch, dev_src, b, dev_pm, dev_out, errors)
        else:
            dev_frames = view(
                slot.buffer("frames", src.nbytes, False), src.dtype, (b, self.n_pixels)
            )
            stream.run(self._ops.h2d, dev_frames, src)
            stream.run(self._integrate_into, dev_frames, "frame", b, dev_out, errors)
        stream.run(self._ops.d2h, host_out, dev_out)
        slot.event = stream.record()
        slot.pending = (b, nq, host_out)

    def _finish(self, slot):
        """Wait for slot's event; copy its results out of the pinned buffer."""
        slot.event.synchronize()
        b, nq, host_out = slot.pending
        res = np.array(host_out, copy=True)
        slot.pending = None
        slot.event = None
        return self._to_sums(res)

    # ------------------------------------------------------------------ service batches
    def submit(self, frames, errors=False):
        """Queue one batch (a list of (H, W) frames or a (b, H, W) stack) without waiting.

        The frames are copied into a pinned staging buffer at once (the caller may reuse them)
        and uploaded, integrated and copied back asynchronously on the next stream, so a
        service overlaps batch k+1's copies with batch k's integration.  If every stream is
        busy, the oldest batch is waited for (its Sums stay queued for ``collect``).  Returns
        the number of batches in flight or waiting.  Not to be mixed with integrate_stream.
        """
        if self._active:
            raise RuntimeError("integrate_stream of this engine is running")
        if not hasattr(self, "_service"):
            self._service = collections.deque()  # (slot or None, Sums or None)
        items = list(frames) if isinstance(frames, (list, tuple)) else [frames]
        arrs = [self._as_frames(np.asarray(it)) for it in items]
        if len(arrs) == 0 or sum(a.shape[0] for a in arrs) == 0:
            raise ValueError("an empty batch")
        dtype = arrs[0].dtype
        if any(a.dtype != dtype for a in arrs):
            raise ValueError("all frames of a batch must have one dtype")
        b = sum(a.shape[0] for a in arrs)
        slots = self._get_slots()
        slot = slots[self._slot_counter % len(slots)]
        self._slot_counter += 1
        if slot.busy:  # round-robin: the busy slot is the oldest in flight
            for k, (s_, _res) in enumerate(self._service):
                if s_ is slot:
                    self._service[k] = (None, self._finish(slot))
                    break
        stage = self._stage(slot, dtype, b)
        pos = 0
        for a in arrs:
            self._host_copy(stage[pos : pos + a.shape[0]], a)
            pos += a.shape[0]
        self._submit(slot, stage, errors)
        self._service.append((slot, None))
        return len(self._service)

    def pending(self):
        """Batches submitted and not yet collected."""
        return len(getattr(self, "_service", ()))

    def collect(self):
        """Sums (host float64, (b, n_bins)) of the oldest submitted batch (waits for it)."""
        service = getattr(self, "_service", None)
        if not service:
            raise RuntimeError("no batch submitted")
        slot, res = service.popleft()
        return res if slot is None else self._finish(slot)

    def close(self):
        """Release the staging thread pool (buffers are freed with the engine)."""
        if self._pool is not None:
            self._pool.shutdown()
            self._pool = None
