"""The bslz4 decoder on a real CUDA device (pytest -m gpu; skipped without CuPy and a device):
DeviceDecoder(cupy) against hdf5plugin's filter and bitshuffle on real-size frames, hostile chunks
refused alone, and DeviceEngine.sums_compressed on CuPy against the float64 reference, decoded on
the device (benchmarks/device_check.sh runs these, and the hostile batch under compute-sanitizer
memcheck)."""

import numpy as np
import pytest
from bslz4_cases import encode, frames_like_detector, hostile_chunks
from test_gpu_engine import random_matrix, reference_sums

from gpusaxs.gpu_decode import DeviceDecoder, stage_chunks
from gpusaxs.gpu_engine import DeviceEngine

pytestmark = pytest.mark.gpu


@pytest.fixture(scope="module")
def cp():
    cupy = pytest.importorskip("cupy")
    try:
        count = cupy.cuda.runtime.getDeviceCount()
    except Exception as exc:  # no driver / no device
        pytest.skip(f"no CUDA device: {exc}")
    if count < 1:
        pytest.skip("no CUDA device")
    return cupy


@pytest.mark.parametrize("dtype", [np.uint32, np.uint16, np.int32, np.float32, np.uint8])
def test_device_decoder_matches_bitshuffle(cp, dtype):
    shape = (1065, 1030)  # EIGER 1M: a real-size frame, partial last block
    frames = frames_like_detector(4, shape, dtype, seed=3)
    chunks = [encode(f) for f in frames]
    out, status = DeviceDecoder(cp).decode(stage_chunks(chunks, shape, dtype))
    assert status.tolist() == [0, 0, 0, 0]
    np.testing.assert_array_equal(cp.asnumpy(out), frames)


def hostile_batch():
    shape = (64, 300)
    frames = frames_like_detector(2, shape, np.uint32, seed=7)
    bad = hostile_chunks(encode(frames[0]))
    chunks = [encode(frames[1]), *bad.values(), encode(frames[1])]
    return stage_chunks(chunks, shape, np.uint32), frames[1]


def test_device_decoder_refuses_hostile_chunks_alone(cp):
    batch, good = hostile_batch()
    out, status = DeviceDecoder(cp).decode(batch)
    assert status[0] == 0 and status[-1] == 0 and (status[1:-1] != 0).all(), status
    np.testing.assert_array_equal(cp.asnumpy(out[0]), good)
    np.testing.assert_array_equal(cp.asnumpy(out[-1]), good)


def test_sums_compressed_on_the_device(cp):
    shape = (300, 411)
    m = random_matrix(shape, np.random.default_rng(5), center=(150.2, 200.7))
    rng = np.random.default_rng(6)
    x = rng.poisson(30.0, size=(19, *shape)).astype(np.uint32)
    eng = DeviceEngine(m, xp=cp, batch_size=8)
    res = eng.sums_compressed([encode(f) for f in x], shape, np.uint32, errors=True)
    assert res.path == "device" and not res.errors and eng.decoder().host_decode is False
    ref = reference_sums(m, x, errors=True)
    for q in range(4):
        np.testing.assert_allclose(res.sums[q], ref[q], rtol=1e-9, atol=1e-9)
    assert eng.path == "kernel" and not eng.fallbacks
