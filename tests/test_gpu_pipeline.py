"""The service pipeline on the GPU engine (``saxsdog --backend cupy``): FramePipeline queues
batches with ``DeviceEngine.submit`` (pinned staging, overlapped copies) and collects them in
order.  Run here on the NumPy module with deferred streams (nothing runs until a result is
waited for), so a missing wait or a reused staging buffer would give wrong curves."""

import threading

import numpy as np
import tifffile
from test_gpu_engine import DeferredStream, reference_sums

from gpusaxs.engine_contract import error_model
from gpusaxs.gpu_engine import DeviceEngine
from gpusaxs.io.chi import read_chi
from gpusaxs.matrix import IntegrationMatrix
from gpusaxs.pipeline import FramePipeline

H, W = 12, 10


def column_matrix():
    """Bin = column, weight 1, scale 1: I = column mean of valid pixels (independent check)."""
    n = H * W
    bins = (np.arange(n) % W).astype(np.int32)
    return IntegrationMatrix(
        shape=(H, W),
        q_edges=np.linspace(0.0, 1.0, W + 1),
        pixel_ptr=np.arange(n + 1, dtype=np.int64),
        bins=bins,
        weights=np.ones(n, np.float32),
        pixel_scale=np.ones(n, np.float32),
        norm=np.full(W, float(H)),
    )


class GpuLikeIntegrator:
    """What FramePipeline needs from an Integrator, with a DeviceEngine on NumPy."""

    batch_call_is_sums = True  # its batch call is the engine's sums, as Integrator's

    def __init__(self, engine, fail_sync=False):
        self.engine = engine
        self.shape = (H, W)
        self.q = engine.matrix.q_centers
        self.sync_calls = 0

    def integrate_batch_error(self, stack, std=True):
        self.sync_calls += 1
        return error_model(self.engine.sums(stack, errors=True if std else "poisson"))

    def integrate_batch(self, stack):
        return self.integrate_batch_error(stack)[0]


def make_frames(folder, n):
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(3)
    frames, paths = [], []
    for k in range(n):
        x = rng.integers(0, 1000, (H, W)).astype(np.int32)
        x[k % H, k % W] = -1  # a PILATUS gap pixel
        p = folder / f"f{k:03d}.tif"
        tifffile.imwrite(p, x)
        frames.append(x)
        paths.append(p)
    return frames, paths


def test_pipeline_overlaps_batches_on_the_device_engine(tmp_path):
    frames, paths = make_frames(tmp_path / "in", 23)
    m = column_matrix()
    engine = DeviceEngine(m, xp=np, batch_size=4, n_streams=2, stream_factory=DeferredStream)
    integ = GpuLikeIntegrator(engine)
    submitted = []
    real_submit = engine.submit

    def counting_submit(batch, errors=False):
        submitted.append((len(batch), errors, engine.pending()))
        return real_submit(batch, errors)

    engine.submit = counting_submit
    done = threading.Event()
    written = []

    def on_done(image_path, out_path, q, intensity):
        written.append(image_path)
        if len(written) == len(paths):
            done.set()

    pipe = FramePipeline(integ, batch_size=4, read_threads=2, on_done=on_done, overlap=True)
    for p in paths:
        pipe.submit(p, tmp_path / "out" / (p.stem + ".chi"))
    assert done.wait(30)
    pipe.close()
    assert integ.sync_calls == 0 and submitted  # every batch went through submit/collect
    assert all(errors == "poisson" for _, errors, _ in submitted)
    for x, p in zip(frames, paths, strict=True):
        ref = reference_sums(m, x[None])
        intensity = ref.signal[0] / ref.norm[0]
        err = np.sqrt(ref.variance[0]) / ref.norm[0]
        curve = read_chi(tmp_path / "out" / (p.stem + ".chi"))
        np.testing.assert_allclose(curve[1], intensity, rtol=1e-6)
        np.testing.assert_allclose(curve[2], err, rtol=1e-6)
    assert engine.pending() == 0


def test_overlap_defaults_off_on_numpy_and_on_for_cupy_engines():
    engine = DeviceEngine(column_matrix(), xp=np)
    pipe = FramePipeline(GpuLikeIntegrator(engine))
    assert pipe._async_engine is None
    pipe.close()
    engine.name = "cupy"  # what a CuPy DeviceEngine reports
    pipe = FramePipeline(GpuLikeIntegrator(engine))
    assert pipe._async_engine is engine
    pipe.close()


def test_submit_failure_falls_back_to_synchronous_integration(tmp_path):
    frames, paths = make_frames(tmp_path / "in", 5)
    engine = DeviceEngine(column_matrix(), xp=np, batch_size=4)
    integ = GpuLikeIntegrator(engine)

    def broken_submit(batch, errors=False):
        raise RuntimeError("cudaErrorMemoryAllocation (simulated)")

    engine.submit = broken_submit
    done = threading.Event()
    count = []
    pipe = FramePipeline(
        integ,
        batch_size=4,
        overlap=True,
        on_done=lambda *a: (count.append(1), len(count) == 5 and done.set()),
    )
    for p in paths:
        pipe.submit(p, tmp_path / "out" / (p.stem + ".chi"))
    assert done.wait(30)
    pipe.close()
    assert integ.sync_calls >= 1
    assert sorted(f.name for f in (tmp_path / "out").iterdir()) == [p.stem + ".chi" for p in paths]
