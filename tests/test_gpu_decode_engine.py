"""DeviceEngine.sums_compressed (gpusaxs/gpu_decode.py CompressedInput): bslz4 chunks in, sums of
the frames that decoded out, one error record per refused frame, the decode path counted and shown
(backend_info()["bslz4_decode"], decode_lines()).  On NumPy the host path; the device path's logic
(kernels' status, the host fallback for blocks above the device's limit, the gather of good
frames) with the decode kernels run on the CPU shim.  Sums are checked against the independent
float64 reference of test_gpu_engine."""

import struct
import time

import numpy as np
import pytest
from bslz4_shim import build, run
from test_gpu_engine import random_matrix, reference_sums

from gpusaxs import gpu_fallbacks
from gpusaxs.backend import backend_info
from gpusaxs.gpu_decode import DeviceDecoder
from gpusaxs.gpu_engine import DeviceEngine

bitshuffle = pytest.importorskip("bitshuffle")

SHAPE = (150, 211)


def encode(frame, block_bytes=8192):
    elems = block_bytes // frame.dtype.itemsize
    body = bitshuffle.compress_lz4(np.ascontiguousarray(frame).reshape(-1), elems)
    return struct.pack(">QI", frame.nbytes, elems * frame.dtype.itemsize) + body.tobytes()


@pytest.fixture(scope="module")
def matrix():
    return random_matrix(SHAPE, np.random.default_rng(3), center=(70.2, 100.6))


@pytest.fixture
def frames():
    rng = np.random.default_rng(8)
    x = rng.poisson(20.0, size=(5, *SHAPE)).astype(np.uint32)
    x[:, 10:13] = np.iinfo(np.uint32).max
    return x


@pytest.fixture
def counts(monkeypatch):
    monkeypatch.setattr(gpu_fallbacks, "_DECODES", {})
    return gpu_fallbacks._DECODES


def assert_sums(got, ref):
    for q in range(2):
        np.testing.assert_allclose(got[q], ref[q], rtol=1e-6, atol=1e-9)


def test_host_path_on_numpy(matrix, frames, counts):
    chunks = [encode(f) for f in frames]
    chunks[2] = chunks[2][:-9]  # truncated: refused, alone
    eng = DeviceEngine(matrix, xp=np, batch_size=4)
    res = eng.sums_compressed(chunks, SHAPE, np.uint32, ids=list("abcde"))
    assert res.path == "host" and res.ids == ["a", "b", "d", "e"]
    assert [e["id"] for e in res.errors] == ["c"] and res.errors[0]["status"] != 0
    assert_sums(res.sums, reference_sums(matrix, frames[[0, 1, 3, 4]], errors=False))
    assert counts["host_frames"] == 4 and counts["failed_frames"] == 1
    assert res.decoded_bytes == 4 * frames[0].nbytes
    assert res.compressed_bytes == sum(len(chunks[k]) for k in (0, 1, 3, 4))
    info = backend_info()["bslz4_decode"]
    assert info["path"] == "host" and info["counts"]["host_frames"] == 4
    assert any("decoded on the host" in line for line in gpu_fallbacks.decode_lines())


class ShimDecoder:
    """The device decoder with its kernels run on the CPU shim (what DeviceDecoder launches)."""

    host_decode = False
    path = "device"

    def __init__(self, exe, folder):
        self.exe, self.folder = exe, folder

    def staging(self, nbytes, slot=0):
        return np.empty(nbytes, dtype=np.uint8)

    def decode(self, batch):
        chunks = [bytes(batch.chunk(k)) for k in range(batch.n)]
        return run(
            self.exe, self.folder, chunks, batch.shape, batch.dtype, max_blocks=batch.max_blocks
        )


def test_device_path_logic_with_the_kernels_on_the_shim(matrix, frames, counts, tmp_path):
    exe, reason = build(tmp_path)
    if exe is None:
        pytest.skip(reason)
    chunks = [encode(f) for f in frames]
    chunks[1] = encode(frames[1], 32768)  # blocks above the device's limit: decoded on the host
    chunks[3] = chunks[3][:12] + b"\xff" * (len(chunks[3]) - 12)  # hostile: refused
    eng = DeviceEngine(matrix, xp=np, batch_size=8)
    eng._bslz4_decoder = ShimDecoder(exe, tmp_path)
    res = eng.sums_compressed(chunks, SHAPE, np.uint32, errors=True)
    assert res.path == "device" and res.ids == [0, 1, 2, 4]
    assert [e["id"] for e in res.errors] == [3]
    ref = reference_sums(matrix, frames[[0, 1, 2, 4]], errors=True)
    assert_sums(res.sums, ref)
    np.testing.assert_allclose(res.sums[2], ref[2], rtol=1e-6)
    assert counts["device_frames"] == 3 and counts["host_frames"] == 1
    assert counts["failed_frames"] == 1
    assert counts["device_compressed_bytes"] == sum(len(chunks[k]) for k in (0, 2, 4))


def test_hdf5_master_through_the_engine(matrix, frames, counts, tmp_path):
    """sums_hdf5: an EIGER-style master's chunks read as stored, in batches, decoded,
    its pixel_mask applied as the host reader applies it, and integrated; a file stored
    otherwise is refused with the reason."""
    h5py = pytest.importorskip("h5py")
    hdf5plugin = pytest.importorskip("hdf5plugin")
    from gpusaxs.io.frames import read_frame

    master = tmp_path / "m_master.h5"
    with h5py.File(tmp_path / "m_data_000001.h5", "w") as d:
        d.create_dataset(
            "entry/data/data", data=frames, chunks=(1, *SHAPE), **hdf5plugin.Bitshuffle(cname="lz4")
        )
    pixel_mask = np.zeros(SHAPE, np.uint32)
    pixel_mask[50:60, 20:200] = 1  # a dead stripe
    pixel_mask[7, 7] = 4
    with h5py.File(master, "w") as m:
        m["entry/data/data_000001"] = h5py.ExternalLink("m_data_000001.h5", "/entry/data/data")
        m["entry/instrument/detector/detectorSpecific/pixel_mask"] = pixel_mask
    eng = DeviceEngine(matrix, xp=np, batch_size=2)
    parts = list(eng.sums_hdf5(master))
    assert [p.ids for p in parts] == [[0, 1], [2, 3], [4]]
    assert not any(p.errors for p in parts)
    got = [np.concatenate([p.sums[q] for p in parts]) for q in range(2)]
    masked = frames.copy()
    masked[:, pixel_mask != 0] = np.iinfo(np.uint32).max
    host = np.stack([read_frame(f"{master}::{k}") for k in range(len(frames))])
    np.testing.assert_array_equal(host, masked)  # what the host path reads
    assert_sums(got, reference_sums(matrix, masked, errors=False))
    plain = tmp_path / "plain.h5"
    with h5py.File(plain, "w") as f:
        f.create_dataset("entry/data/data", data=frames, chunks=(1, *SHAPE), compression="gzip")
    with pytest.raises(ValueError, match="bitshuffle-LZ4"):
        list(eng.sums_hdf5(plain))


def test_decode_path_visible_in_saxsdog_summary_and_server_stat(counts, tmp_path):
    """Where bslz4 frames were decoded shows in saxsdog's summary and the server's stat
    (schema-valid); nothing when none was."""
    import types

    from gpusaxs.clients.saxsdog import Saxsdog
    from gpusaxs.server import protocol as P
    from gpusaxs.server.saxsdogserver import SaxsdogService

    svc = SaxsdogService(tmp_path, "s3cret-for-tests")
    dog = types.SimpleNamespace(
        failed_early=0,
        skipped=0,
        redone=0,
        abandoned=0,
        setup_seconds=0.5,
        matrix_info={},
        setup_parts={},
    )
    stats = {"processed": 3, "failed": 0, "dropped": 0}
    assert "bslz4 decode" not in svc.stat()
    assert "bslz4" not in Saxsdog.summary(dog, stats, False, 1.0)
    gpu_fallbacks.record_decode("device", 3, 3_000_000, 12_000_000)
    line = "3 bslz4 frames decoded on the device (3.0 MB compressed, compression 4.00x)"
    assert svc.stat()["bslz4 decode"] == [line]
    P.validate_response(svc.cmd_stat(None, []))
    assert Saxsdog.summary(dog, stats, False, 1.0).splitlines()[-1].endswith(line)


def test_frame_pipeline_reads_stored_chunks_for_the_device(matrix, frames, counts, tmp_path):
    """saxsdog's FramePipeline with compressed=True ($GPUSAXS_DEVICE_DECODE=1 on CuPy): an
    EIGER master's frames go through sums_compressed (no host integration call), its
    pixel_mask applied; a corrupted chunk fails its frame alone; the curves are those of the
    frames the host reader reads."""
    import threading

    h5py = pytest.importorskip("h5py")
    hdf5plugin = pytest.importorskip("hdf5plugin")
    from test_gpu_pipeline import GpuLikeIntegrator

    from gpusaxs.io.chi import read_chi
    from gpusaxs.io.frames import read_frame
    from gpusaxs.pipeline import FramePipeline

    data = tmp_path / "p_data_000001.h5"
    with h5py.File(data, "w") as d:
        ds = d.create_dataset(
            "entry/data/data", data=frames, chunks=(1, *SHAPE), **hdf5plugin.Bitshuffle(cname="lz4")
        )
        good = ds.id.read_direct_chunk((3, 0, 0))[1]
        ds.id.write_direct_chunk((3, 0, 0), good[:12] + b"\x07" * (len(good) - 12))
    pixel_mask = np.zeros(SHAPE, np.uint32)
    pixel_mask[30:40, :] = 1
    master = tmp_path / "p_master.h5"
    with h5py.File(master, "w") as m:
        m["entry/data/data_000001"] = h5py.ExternalLink(data.name, "/entry/data/data")
        m["entry/instrument/detector/detectorSpecific/pixel_mask"] = pixel_mask
    eng = DeviceEngine(matrix, xp=np, batch_size=4)
    integ = GpuLikeIntegrator(eng)
    integ.shape = SHAPE
    failed, finished = [], threading.Event()
    done = []

    def on_done(path, out, q, intensity):
        done.append(path)
        if len(done) + len(failed) == len(frames):
            finished.set()

    def on_error(path, exc):
        failed.append((path, exc))
        if len(done) + len(failed) == len(frames):
            finished.set()

    pipe = FramePipeline(
        integ, batch_size=4, on_done=on_done, on_error=on_error, overlap=False, compressed=True
    )
    for k in range(len(frames)):
        pipe.submit(f"{master}::{k}", tmp_path / "out" / f"f{k}.chi")
    assert finished.wait(60)
    pipe.close()
    assert integ.sync_calls == 0  # every frame went through sums_compressed
    assert [str(p) for p, _ in failed] == [f"{master}::3"]
    assert "bslz4" in str(failed[0][1])
    assert counts["host_frames"] == 4 and counts["failed_frames"] == 1  # NumPy: host decode
    for k in (0, 1, 2, 4):
        x = read_frame(f"{master}::{k}")  # the host path's frame, pixel_mask applied
        ref = reference_sums(matrix, x[None], errors=True)
        curve = read_chi(tmp_path / "out" / f"f{k}.chi")
        with np.errstate(invalid="ignore", divide="ignore"):
            expected = ref.signal[0] / ref.norm[0]
        np.testing.assert_allclose(curve[1], expected, rtol=1e-6)


class SlotDecoder:
    """The device decoder's interface with a slow decode (the device busy) that logs when each
    staging slot is filled and checks that its batch's bytes do not change while decoded."""

    host_decode = False
    path = "device"

    def __init__(self):
        self.buffers, self.staged, self.decoded = {}, [], []

    def staging(self, nbytes, slot=0):
        self.staged.append((slot, time.perf_counter()))
        buf = self.buffers.setdefault(slot, np.empty(1 << 22, dtype=np.uint8))
        return buf[:nbytes]

    def decode(self, batch):
        t0 = time.perf_counter()
        before = bytes(batch.data)
        time.sleep(0.2)  # the next batch is read and staged meanwhile
        assert bytes(batch.data) == before, "a staging slot was reused while its batch decoded"
        out = DeviceDecoder._decode_host(batch)
        self.decoded.append((list(batch.ids), t0, time.perf_counter()))
        return out


def test_stream_stages_the_next_batch_while_one_decodes(matrix, frames, counts):
    """sums_compressed_stream (sums_hdf5 uses it): batch k+1 staged on a host thread while
    batch k decodes, in alternating slots; a slot refilled only after its batch returned;
    results in order and equal to the reference."""
    eng = DeviceEngine(matrix, xp=np, batch_size=8)
    dec = eng._bslz4_decoder = SlotDecoder()
    chunks = [encode(f) for f in frames]
    batches = [(chunks[k : k + 1], [k]) for k in range(len(frames))]
    parts = list(eng.sums_compressed_stream(iter(batches), SHAPE, np.uint32, errors=False))
    assert [p.ids for p in parts] == [[k] for k in range(len(frames))]
    for k, p in enumerate(parts):
        assert p.path == "device" and not p.errors
        assert_sums(p.sums, reference_sums(matrix, frames[k : k + 1], errors=False))
    assert [s for s, _ in dec.staged] == [k % 2 for k in range(len(frames))]
    staged = [t for _, t in dec.staged]
    ends = [t1 for _, _, t1 in dec.decoded]
    for k in range(len(frames) - 1):
        assert staged[k + 1] < ends[k]  # overlapped: staged while batch k decoded
    for k in range(len(frames) - 2):
        assert staged[k + 2] >= ends[k]  # slot k % 2 refilled only after batch k returned
