"""saxsdogserver --detector with the device decode (issue 26, server/stream/device_decode.py):
Stream V2 bslz4 payloads go compressed to DeviceEngine.sums_compressed (here on the NumPy
module, whose decoder is bitshuffle on the host), frames that are not bslz4 take the host
decode threads, a corrupted payload fails its frame alone, a failing call retries its frames on
the host path.  Payloads are HDF5 chunks written by the hdf5plugin Bitshuffle filter (not our
encoder) in hand-assembled Stream V2 CBOR messages; curves are checked against the CPU
engine's (an independent engine) and against the same consumer on the host path."""

import numpy as np
import pytest
from test_stream_units import (
    SELF_DESCRIBED,
    SHAPE,
    _array,
    _bytes,
    _map,
    _tag,
    _text,
    _uint,
    frame,
    running_consumer,
    small_calibration,
)

from gpusaxs import gpu_fallbacks
from gpusaxs.gpu_decode import DEVICE_DECODE_VAR
from gpusaxs.gpu_engine import DeviceEngine
from gpusaxs.server.stream import v2
from gpusaxs.server.stream.device_decode import StreamDeviceDecode

h5py = pytest.importorskip("h5py")
hdf5plugin = pytest.importorskip("hdf5plugin")

N, BAD, LZ4 = 7, 3, 5  # frames; a corrupted bslz4 payload; a frame sent as lz4 (host path)


class CountingEngine(DeviceEngine):
    """A DeviceEngine counting its host-stack and compressed calls (``fail``: every compressed
    call raises, as a device error would)."""

    fail = False

    def __init__(self, matrix):
        super().__init__(matrix, xp=np, batch_size=8)
        self.stack_frames = self.compressed_frames = 0
        self._inside = False

    def sums(self, stack, errors=False):
        if not self._inside:  # not sums_compressed's own call on the decoded frames
            self.stack_frames += len(stack)
        return super().sums(stack, errors)

    def sums_compressed(self, chunks, *args, **kw):
        if self.fail:
            raise RuntimeError("cudaErrorIllegalAddress (simulated)")
        self.compressed_frames += len(chunks)
        self._inside = True
        try:
            return super().sums_compressed(chunks, *args, **kw)
        finally:
            self._inside = False


@pytest.fixture(scope="module")
def cpu_integrator():
    from gpusaxs.integrator import Integrator

    return Integrator(small_calibration(), backend="numpy")


def device_integrator():
    from gpusaxs.integrator import Integrator

    return Integrator(small_calibration(), backend="numpy", engine=CountingEngine)


@pytest.fixture(scope="module")
def frames():
    return [frame(np.uint32, seed=i) for i in range(N)]


@pytest.fixture(scope="module")
def messages(frames, tmp_path_factory):
    """The series' image messages: payloads are the chunks hdf5plugin's Bitshuffle-LZ4 filter
    wrote (what an EIGER writes), frame BAD's blocks overwritten, frame LZ4 sent as lz4."""
    path = tmp_path_factory.mktemp("chunks") / "c.h5"
    with h5py.File(path, "w") as f:
        ds = f.create_dataset(
            "d", data=np.stack(frames), chunks=(1, *SHAPE), **hdf5plugin.Bitshuffle(cname="lz4")
        )
        payloads = [ds.id.read_direct_chunk((k, 0, 0))[1] for k in range(N)]
    payloads[BAD] = payloads[BAD][:12] + b"\x07" * (len(payloads[BAD]) - 12)
    out = []
    for k, p in enumerate(payloads):
        if k == LZ4:
            out.append(v2.encode_image(1, "dev", k, frames[k], "lz4"))
            continue
        typed = _tag(70, _tag(56500, _array(_text("bslz4"), _uint(4), _bytes(p))))
        data = _tag(40, _array(_array(_uint(SHAPE[0]), _uint(SHAPE[1])), typed))
        out.append(
            SELF_DESCRIBED
            + _map(
                type=_text("image"),
                series_id=_uint(1),
                series_unique_id=_text("dev"),
                image_id=_uint(k),
                data=_map(threshold_1=data),
            )
        )
    return out


@pytest.fixture
def counts(monkeypatch):
    monkeypatch.setattr(gpu_fallbacks, "_DECODES", {})
    return gpu_fallbacks._DECODES


def run_series(tmp_path, integ, messages, **options):
    """Send the series to a consumer; (rows by image id, the series' stat, its error records,
    the consumer's info())."""
    from gpusaxs.io.nexus import read_nxazint

    with running_consumer(tmp_path, integ, batch_size=8, **options) as (cons, push):
        push.send(v2.encode_start(1, "dev", SHAPE, (172e-6, 172e-6), N))
        for raw in messages:
            push.send(raw)
        push.send(v2.encode_end(1, "dev"))
        assert cons.book.wait(lambda b: (b.get(1) or {}).get("state") == "done", 60)
        info = cons.info()
    rows = read_nxazint(tmp_path / "series_1.nxs")
    by_id = dict(zip(rows["image_ids"].tolist(), rows["intensity"], strict=True))
    return by_id, cons.book.get(1), info["recent errors"], info


def check_rows(by_id, frames, cpu_integrator):
    assert sorted(by_id) == [k for k in range(N) if k != BAD]
    for k, row in by_id.items():
        np.testing.assert_allclose(
            row, cpu_integrator.integrate(frames[k])[1], rtol=1e-6, equal_nan=True
        )


def test_bslz4_payloads_go_to_sums_compressed(tmp_path, messages, frames, cpu_integrator, counts):
    integ = device_integrator()
    by_id, st, errors, info = run_series(tmp_path / "dev", integ, messages, device_decode=True)
    eng = integ.engine
    assert eng.compressed_frames == N - 1  # every bslz4 payload, the corrupted one included
    assert eng.stack_frames == 1  # the lz4 frame: host decode threads, host stack
    assert info["bslz4 decode"] == "device"
    assert st["integrated"] == N - 1 and st["errors"] == 1
    (rec,) = errors
    assert rec["image_id"] == BAD and rec["kind"] == "decode" and "bslz4" in rec["error"]
    assert counts["failed_frames"] == 1 and counts["host_frames"] == N - 2  # NumPy: host decode
    check_rows(by_id, frames, cpu_integrator)
    # the same series on the host path: the same rows and the same record
    host = device_integrator()
    by_host, st_h, errors_h, info_h = run_series(
        tmp_path / "host", host, messages, device_decode=False
    )
    assert host.engine.compressed_frames == 0 and info_h["bslz4 decode"] == "host"
    assert st_h["integrated"] == N - 1 and [r["image_id"] for r in errors_h] == [BAD]
    assert errors_h[0]["kind"] == "decode"
    assert sorted(by_host) == sorted(by_id)
    for k in by_id:
        np.testing.assert_allclose(by_id[k], by_host[k], rtol=1e-12, equal_nan=True)


def test_a_failing_device_call_retries_its_frames_on_the_host(
    tmp_path, messages, frames, cpu_integrator
):
    integ = device_integrator()
    integ.engine.fail = True
    by_id, st, errors, _ = run_series(tmp_path, integ, messages, device_decode=True)
    assert integ.engine.compressed_frames == 0 and integ.engine.stack_frames >= N - 1
    assert st["integrated"] == N - 1 and st["errors"] == 1
    assert [(r["image_id"], r["kind"]) for r in errors] == [(BAD, "decode")]
    check_rows(by_id, frames, cpu_integrator)


def test_the_rule_is_the_pipelines(monkeypatch, cpu_integrator):
    """None follows GPUSAXS_DEVICE_DECODE on a CuPy engine only; an averaging integrator (its
    rows are not the engine's sums) keeps the host path even when forced."""
    from gpusaxs.robust_curves import AveragedIntegrator, average_params

    integ = device_integrator()
    monkeypatch.setenv(DEVICE_DECODE_VAR, "1")
    assert not StreamDeviceDecode().enabled(integ)  # a NumPy engine: not "cupy"
    monkeypatch.setattr(integ.engine, "name", "cupy")
    assert StreamDeviceDecode().enabled(integ)
    monkeypatch.setenv(DEVICE_DECODE_VAR, "0")
    assert not StreamDeviceDecode().enabled(integ)
    assert StreamDeviceDecode(True).enabled(integ)
    assert not StreamDeviceDecode(False).enabled(integ)
    averaging = AveragedIntegrator(integ, average_params("sigma-clip", clip_thres=3.0))
    assert not StreamDeviceDecode(True).enabled(averaging)
    assert not StreamDeviceDecode(True).enabled(cpu_integrator)  # no sums_compressed


def test_the_pipeline_keeps_an_averaging_integrator_on_its_own_batch_call(monkeypatch):
    """FramePipeline (saxsdog, the server's queue) by the same rule: the engine's queued and
    compressed calls for a plain Integrator on CuPy only; an averaging integrator's rows are
    the robust averages, never the engine's plain sums."""
    from gpusaxs.pipeline import FramePipeline
    from gpusaxs.robust_curves import AveragedIntegrator, average_params

    integ = device_integrator()
    monkeypatch.setattr(integ.engine, "name", "cupy")
    monkeypatch.setenv(DEVICE_DECODE_VAR, "1")
    pipe = FramePipeline(integ)
    assert pipe._async_engine is integ.engine and pipe._chunks is not None
    pipe.close()
    averaging = AveragedIntegrator(integ, average_params("sigma-clip", clip_thres=3.0))
    pipe = FramePipeline(averaging)
    assert pipe._async_engine is None and pipe._chunks is None
    pipe.close()


def test_stream_v1_bslz4_frames_take_the_same_path(tmp_path, frames, cpu_integrator):
    """Stream V1's bs32-lz4< frames are the same bytes (HDF5 filter framing): they go to the
    device too; its lz4< frames stay on the host threads."""
    from gpusaxs.io.nexus import read_nxazint
    from gpusaxs.server.stream import v1

    integ = device_integrator()
    with running_consumer(tmp_path, integ, batch_size=8, version=1, device_decode=True) as (
        cons,
        push,
    ):
        push.send_multipart(v1.encode_start(1, SHAPE, (172e-6, 172e-6), 3))
        for k in range(3):
            push.send_multipart(v1.encode_image(1, k, frames[k], "lz4" if k == 1 else "bslz4"))
        push.send_multipart(v1.encode_end(1))
        assert cons.book.wait(lambda b: (b.get(1) or {}).get("state") == "done", 60)
    assert integ.engine.compressed_frames == 2 and integ.engine.stack_frames == 1
    rows = read_nxazint(tmp_path / "series_1.nxs")
    assert sorted(rows["image_ids"].tolist()) == [0, 1, 2]
    for row, k in zip(rows["intensity"], rows["image_ids"], strict=True):
        np.testing.assert_allclose(
            row, cpu_integrator.integrate(frames[k])[1], rtol=1e-6, equal_nan=True
        )
