"""The device's bitshuffle-LZ4 decoder (gpusaxs/kernels/bslz4.cu) run on the CPU shim against the
reference decoders: HDF5 chunks written by hdf5plugin's filter (read back as stored, through
h5py's direct chunk read) and decoded by h5py's filter pipeline, and stream payloads compressed
and decompressed by the bitshuffle package.  Real-size frames, the format's edge cases, and hostile
chunks, which must fail their own frame only and never touch memory outside the buffers (each
buffer sits against a guard page: one byte outside kills the emulator)."""

import re
import struct
import subprocess

import numpy as np
import pytest
from bslz4_cases import encode, frames_like_detector, hostile_chunks, reference
from bslz4_shim import build, run
from cuda_shim import compile_with_shim

from gpusaxs.gpu_decode import (
    DECODE_WARPS,
    MAX_BLOCK_BYTES,
    STATUS,
    DeviceDecoder,
    decode_source,
    stage_chunks,
)

bitshuffle = pytest.importorskip("bitshuffle")


@pytest.fixture(scope="module")
def emu(tmp_path_factory):
    folder = tmp_path_factory.mktemp("bslz4")
    exe, reason = build(folder)
    if exe is None:
        pytest.skip(reason)
    return exe, folder


def test_hdf5plugin_chunks_real_size(emu, tmp_path):
    """EIGER 500K uint32 frames written by hdf5plugin's Bitshuffle filter, read as stored."""
    h5py = pytest.importorskip("h5py")
    hdf5plugin = pytest.importorskip("hdf5plugin")
    exe, folder = emu
    shape = (514, 1030)
    frames = frames_like_detector(3, shape, np.uint32)
    path = tmp_path / "master.h5"
    with h5py.File(path, "w") as f:
        f.create_dataset(
            "data", data=frames, chunks=(1, *shape), **hdf5plugin.Bitshuffle(cname="lz4")
        )
    with h5py.File(path, "r") as f:
        ds = f["data"]
        chunks = [ds.id.read_direct_chunk((k, 0, 0))[1] for k in range(3)]
        expected = ds[()]
    assert all(len(c) < frames[0].nbytes / 2 for c in chunks)  # compressed, not raw
    out, status = run(exe, folder, chunks, shape, np.uint32)
    assert status.tolist() == [0, 0, 0]
    np.testing.assert_array_equal(out, expected)


@pytest.mark.parametrize("dtype", [np.uint16, np.int32, np.float32, np.uint8])
def test_stream_payloads_each_dtype(emu, dtype):
    exe, folder = emu
    shape = (97, 203)  # 19691 elements: partial last block and a raw tail of 3 elements
    frames = frames_like_detector(2, shape, dtype, seed=1)
    chunks = [encode(f) for f in frames]
    out, status = run(exe, folder, chunks, shape, dtype)
    assert status.tolist() == [0, 0]
    for k in range(2):
        np.testing.assert_array_equal(out[k], reference(chunks[k], shape, dtype))
        np.testing.assert_array_equal(out[k], frames[k])


@pytest.mark.parametrize("block_bytes", [64, 96, 4096, 16384])
def test_block_sizes_other_than_8192(emu, block_bytes):
    exe, folder = emu
    shape = (61, 67)  # 4087 elements: 7 raw at the end
    frames = frames_like_detector(2, shape, np.uint32, seed=block_bytes)
    chunks = [encode(f, block_bytes) for f in frames]
    batch = stage_chunks(chunks, shape, np.uint32)
    out, status = run(exe, folder, chunks, shape, np.uint32, max_blocks=batch.max_blocks)
    assert status.tolist() == [0, 0]
    np.testing.assert_array_equal(out, frames)


def test_incompressible_block_and_tiny_frames(emu):
    """bitshuffle stores no block raw: an incompressible block is an LZ4 block of literals,
    longer than its input; frames smaller than 8 elements are only a raw tail."""
    exe, folder = emu
    rng = np.random.default_rng(5)
    noise = rng.integers(0, 2**32, size=(1, 40, 52), dtype=np.uint32)
    chunk = encode(noise[0])
    csize = struct.unpack_from(">I", chunk, 12)[0]
    assert csize > 8192  # the reference encoder did not shrink it
    out, status = run(exe, folder, [chunk], (40, 52), np.uint32)
    assert status.tolist() == [0]
    np.testing.assert_array_equal(out[0], noise[0])
    tiny = np.arange(5, dtype=np.uint16).reshape(1, 5)
    out, status = run(exe, folder, [encode(tiny)], (1, 5), np.uint16)
    assert status.tolist() == [0]
    np.testing.assert_array_equal(out[0], tiny)


def test_block_too_large_for_the_device_fails_its_frame(emu):
    exe, folder = emu
    frames = frames_like_detector(2, (64, 300), np.uint32, seed=3)
    chunks = [encode(frames[0], 32768), encode(frames[1])]
    out, status = run(exe, folder, chunks, (64, 300), np.uint32)
    assert STATUS[int(status[0])].startswith("block size above")
    assert status[1] == 0
    np.testing.assert_array_equal(out[1], frames[1])


@pytest.mark.parametrize("guard", ["end", "start"])
def test_hostile_chunks_fail_alone_within_bounds(emu, guard):
    exe, folder = emu
    shape = (64, 300)
    frames = frames_like_detector(2, shape, np.uint32, seed=7)
    good = encode(frames[0])
    bad = hostile_chunks(good)
    chunks = [encode(frames[1])] + list(bad.values()) + [encode(frames[1])]
    out, status = run(exe, folder, chunks, shape, np.uint32, guard=guard)
    assert status[0] == 0 and status[-1] == 0
    np.testing.assert_array_equal(out[0], frames[1])
    np.testing.assert_array_equal(out[-1], frames[1])
    failed = dict(zip(bad, status[1:-1].tolist(), strict=True))
    assert all(code != 0 for code in failed.values()), failed


def test_lying_offsets_table_fails_the_frame(emu):
    exe, folder = emu
    frames = frames_like_detector(2, (32, 64), np.uint16, seed=9)
    chunks = [encode(f) for f in frames]
    n = sum(map(len, chunks))
    offsets = np.array([0, len(chunks[0]), n + 100], dtype=np.int64)  # past the buffer
    out, status = run(exe, folder, chunks, (32, 64), np.uint16, offsets=offsets)
    assert status[0] == 0 and status[1] != 0
    np.testing.assert_array_equal(out[0], frames[0])


def test_random_corruption_never_escapes(emu):
    """Bytes flipped anywhere in a chunk: the frame decodes (then as the reference decodes the
    same bytes) or fails with a status as the reference does, and the emulator never touches a
    guard page."""
    exe, folder = emu
    shape = (48, 100)
    frame = frames_like_detector(1, shape, np.uint16, seed=11)[0]
    good = encode(frame, 1024)
    rng = np.random.default_rng(12)
    chunks = []
    for _ in range(24):
        b = bytearray(good)
        for i in rng.integers(12, len(b), size=3):
            b[i] = int(rng.integers(0, 256))
        chunks.append(bytes(b))
    batch = stage_chunks(chunks, shape, np.uint16)
    out, status = run(exe, folder, chunks, shape, np.uint16, max_blocks=batch.max_blocks)
    host, host_status = DeviceDecoder(np).decode(batch)
    for k in range(len(chunks)):
        if status[k] == 0 and host_status[k] == 0:
            np.testing.assert_array_equal(out[k], host[k])
    # the same chunks are refused as by the reference (bitshuffle behind gpusaxs.io.bslz4's checks)
    assert ((status != 0) == (host_status != 0)).all(), (status, host_status)
    assert 0 < (status != 0).sum() < len(chunks)


def test_numpy_decoder_matches_and_flags(tmp_path):
    """The NumPy path (host bitshuffle) of DeviceDecoder on the same staging."""
    frames = frames_like_detector(3, (20, 30), np.int32, seed=2)
    chunks = [encode(f) for f in frames]
    chunks[1] = chunks[1][:-5]
    batch = stage_chunks(chunks, (20, 30), np.int32, ids=["a", "b", "c"])
    out, status = DeviceDecoder(np).decode(batch)
    assert status.tolist()[0] == 0 and status[1] != 0 and status[2] == 0
    np.testing.assert_array_equal(out[[0, 2]], frames[[0, 2]])


def test_python_constants_match_the_cuda_source():
    """gpu_decode's constants and status names are the .cu's #defines."""
    src = decode_source()
    defines = dict(re.findall(r"#define (GS_BS_\w+) (\d+)", src))
    assert int(defines["GS_BS_MAX_BLOCK"]) == MAX_BLOCK_BYTES
    assert int(defines["GS_BS_WARPS"]) == DECODE_WARPS
    codes = {int(v) for k, v in defines.items() if k not in ("GS_BS_MAX_BLOCK", "GS_BS_WARPS")}
    assert codes == set(STATUS) - {-1}  # -1: a chunk the host reader did not hand over


def _decode_kernel_body():
    src = decode_source()
    start = src.index("gs_bslz4_decode(")
    return re.sub(r"//[^\n]*", "", src[src.index("{", start) :])  # code only, no comments


def test_decode_kernel_reads_no_status_other_warps_write():
    """The decode kernel's early exits must be the same for all 32 lanes of a warp: status[f] is
    written by other warps during the launch (GS_ATOMIC_MAX), so lanes reading it at different
    moments split the warp at its __syncwarp (undefined on the device; in CI the emulator hung
    for 600 s in test_random_corruption_never_escapes).  status may only be written there."""
    body = _decode_kernel_body()
    uses = [m.start() for m in re.finditer(r"status\[", body)]
    assert uses, "the decode kernel no longer reports errors in status"
    for at in uses:
        assert body[max(0, at - 16) : at].endswith("GS_ATOMIC_MAX(&"), body[at - 80 : at + 40]


SPLIT_WARP = r"""
__global__ void split(int* out, int leave) {
    if ((int)threadIdx.x == leave) return;  // one lane leaves the warp
    __syncwarp();
    out[threadIdx.x] = 1;
}
int main(int argc, char** argv) {
    const int leave = std::atoi(argv[1]);
    std::vector<int> out(64, 0);
    gs_launch(3, 64, [&] { split(out.data(), leave); });
    std::printf("done\\n");
    return 0;
}
"""


def test_shim_ends_a_split_warp_instead_of_hanging(tmp_path):
    """The CPU shim's answer to a warp whose lanes do not all reach a __syncwarp: exit status 86
    and a message at once (a device may hang or corrupt; the emulator used to spin for ever).
    Lane 5 of the first warp returns: its 31 others wait, the second warp ends normally."""
    exe, reason = compile_with_shim(SPLIT_WARP, tmp_path, "split")
    if exe is None:
        pytest.skip(reason)
    whole = subprocess.run([str(exe), "-1"], capture_output=True, text=True, timeout=60)
    assert whole.returncode == 0 and "done" in whole.stdout, whole.stderr
    split = subprocess.run([str(exe), "5"], capture_output=True, text=True, timeout=60)
    assert split.returncode == 86, (split.returncode, split.stderr)
    assert "deadlock" in split.stderr and "31 of 64 threads" in split.stderr, split.stderr
