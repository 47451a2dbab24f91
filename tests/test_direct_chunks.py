"""The HDF5 direct-chunk reader (gpusaxs/io/direct_chunks.py) and the compressed batch staging
(gpusaxs/gpu_decode.stage_chunks): an EIGER master whose frames live in external-link data
files written by hdf5plugin's bitshuffle filter; the stored chunks, staged end to end and decoded
(host bitshuffle on NumPy, the device kernels on the CPU shim), give what h5py's filter
pipeline reads."""

import numpy as np
import pytest
from bslz4_shim import build, run

from gpusaxs.gpu_decode import DeviceDecoder, stage_chunks
from gpusaxs.io.direct_chunks import DirectChunkReader

h5py = pytest.importorskip("h5py")
hdf5plugin = pytest.importorskip("hdf5plugin")

SHAPE = (64, 120)


def write_master(folder, counts=(3, 2), dtype=np.uint32, **filt):
    """An EIGER-style master (entry/data/data_NNNNNN external links) and its data files."""
    filt = filt or hdf5plugin.Bitshuffle(cname="lz4")
    rng = np.random.default_rng(4)
    frames = []
    master = folder / "scan_master.h5"
    with h5py.File(master, "w") as m:
        g = m.create_group("entry/data")
        for k, n in enumerate(counts, start=1):
            data = rng.poisson(3.0, size=(n, *SHAPE)).astype(dtype)
            frames.append(data)
            name = f"scan_data_{k:06d}.h5"
            with h5py.File(folder / name, "w") as d:
                d.create_dataset("entry/data/data", data=data, chunks=(1, *SHAPE), **filt)
            g[f"data_{k:06d}"] = h5py.ExternalLink(name, "/entry/data/data")
    return master, np.concatenate(frames)


def test_reader_gives_stored_chunks_of_every_data_file(tmp_path):
    master, frames = write_master(tmp_path)
    with DirectChunkReader(master) as r:
        assert r.unsupported is None
        assert (r.n, r.shape, r.dtype) == (5, SHAPE, np.dtype(np.uint32))
        got = r.chunks(range(r.n))
    assert [i for i, _ in got] == list(range(5))
    assert all(len(c) < frames[0].nbytes for _, c in got)  # as stored: compressed
    batch = stage_chunks([c for _, c in got], SHAPE, np.uint32, ids=[i for i, _ in got])
    assert batch.offsets.tolist() == np.cumsum([0] + [len(c) for _, c in got]).tolist()
    assert bytes(batch.chunk(3)) == got[3][1]
    out, status = DeviceDecoder(np).decode(batch)
    assert not status.any()
    np.testing.assert_array_equal(out, frames)


def test_staged_batch_decodes_on_the_device_kernels(tmp_path):
    exe, reason = build(tmp_path)
    if exe is None:
        pytest.skip(reason)
    master, frames = write_master(tmp_path, counts=(2, 2), dtype=np.uint16)
    with DirectChunkReader(master) as r:
        chunks = [c for _, c in r.chunks(range(r.n))]
    batch = stage_chunks(chunks, SHAPE, np.uint16)
    out, status = run(exe, tmp_path, chunks, SHAPE, np.uint16, max_blocks=batch.max_blocks)
    assert not status.any()
    np.testing.assert_array_equal(out, frames)


def test_other_storage_is_named_unsupported(tmp_path):
    master, _ = write_master(tmp_path, counts=(2,), compression="gzip")
    with DirectChunkReader(master) as r:
        assert "bitshuffle-LZ4" in r.unsupported
    path = tmp_path / "big_chunks.h5"
    with h5py.File(path, "w") as f:
        f.create_dataset(
            "entry/data/data",
            data=np.zeros((4, *SHAPE), np.uint32),
            chunks=(2, *SHAPE),
            **hdf5plugin.Bitshuffle(cname="lz4"),
        )
    with DirectChunkReader(path) as r:
        assert "one frame per chunk" in r.unsupported


def test_staging_into_a_given_allocator_and_block_table():
    """stage_chunks copies into the allocator's buffer (pinned on CuPy) and sizes the block
    table from the smallest block size the headers announce."""
    import struct

    given = []

    def empty(n):
        given.append(np.empty(n, dtype=np.uint8))
        return given[-1]

    h = struct.pack(">QI", 4 * 1000, 256)
    batch = stage_chunks([h + b"x" * 10, b"short"], (1000,), np.uint32, empty=empty)
    assert batch.data.base is given[0] or batch.data is given[0]
    assert batch.max_blocks == 1000 * 4 // 256 + 1  # 15 full blocks and a last partial one
    assert batch.nbytes == 27 and batch.n == 2
