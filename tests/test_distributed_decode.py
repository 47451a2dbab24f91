"""The Dask task's device decode (issue 26, gpusaxs/distributed_decode.py): a task's EIGER master
frames are read as stored chunks and integrated by sums_compressed (a DeviceEngine on the NumPy
module), other images by the host path; a corrupted chunk fails its frame alone; a failing
device call hands its frames to the host path.  The master is written by h5py + hdf5plugin's
Bitshuffle filter; curves are checked against the CPU engine on the frames the host reader
reads (pixel_mask applied)."""

import numpy as np
import pytest
from test_stream_device_decode import CountingEngine
from test_stream_units import SHAPE, frame, small_calibration

from gpusaxs import distributed
from gpusaxs.integrator import Integrator

h5py = pytest.importorskip("h5py")
hdf5plugin = pytest.importorskip("hdf5plugin")
tifffile = pytest.importorskip("tifffile")

N, BAD = 5, 2


@pytest.fixture(scope="module")
def cpu_integrator():
    return Integrator(small_calibration(), backend="numpy")


@pytest.fixture
def master(tmp_path):
    frames = np.stack([frame(np.uint32, seed=10 + i) for i in range(N)])
    data = tmp_path / "x_data_000001.h5"
    with h5py.File(data, "w") as d:
        ds = d.create_dataset(
            "entry/data/data", data=frames, chunks=(1, *SHAPE), **hdf5plugin.Bitshuffle(cname="lz4")
        )
        good = ds.id.read_direct_chunk((BAD, 0, 0))[1]
        ds.id.write_direct_chunk((BAD, 0, 0), good[:12] + b"\x07" * (len(good) - 12))
    pixel_mask = np.zeros(SHAPE, np.uint32)
    pixel_mask[40:50, :] = 1
    path = tmp_path / "x_master.h5"
    with h5py.File(path, "w") as m:
        m["entry/data/data_000001"] = h5py.ExternalLink(data.name, "/entry/data/data")
        m["entry/instrument/detector/detectorSpecific/pixel_mask"] = pixel_mask
    return path


def run_task(monkeypatch, tmp_path, master, fail=False):
    integ = Integrator(small_calibration(), backend="numpy", engine=CountingEngine)
    integ.engine.fail = fail
    monkeypatch.setattr(
        distributed, "_WORKER_INTEGRATORS", {(integ.matrix_key, "numpy", None): integ}
    )
    tif = tmp_path / "plain.tif"
    tifffile.imwrite(tif, frame(np.int32, seed=99))
    items = [(f"{master}::{k}", str(tmp_path / "out" / f"f{k}.chi")) for k in range(N)]
    items.append((str(tif), str(tmp_path / "out" / "plain.chi")))
    records = distributed._integrate_task(
        items,
        integ.calibration,
        integ.matrix,
        integ.matrix_key,
        backend="numpy",
        return_curves=True,
        device_decode=True,
    )
    return integ, {r[0]: r for r in records}, items


def check(records, items, cpu_integrator):
    from gpusaxs.io.chi import read_chi
    from gpusaxs.io.frames import read_frame
    from gpusaxs.io.images import read_image

    assert sorted(records) == sorted(i for i, _ in items)  # one record per item
    for image, curve in items:
        _, _, error, curves = records[image]
        if image.endswith(f"::{BAD}"):
            assert error is not None and curves is None
            continue
        assert error is None, error
        x = read_frame(image) if "::" in image else read_image(image)
        ref = cpu_integrator.integrate(x)[1]
        np.testing.assert_allclose(curves[0], ref, rtol=1e-6, equal_nan=True)
        np.testing.assert_allclose(read_chi(curve)[1], ref, rtol=1e-5, equal_nan=True)


def test_master_frames_go_to_sums_compressed(monkeypatch, tmp_path, master, cpu_integrator):
    integ, records, items = run_task(monkeypatch, tmp_path, master)
    assert integ.engine.compressed_frames == N and integ.engine.stack_frames == 1
    assert "bslz4" in str(records[f"{master}::{BAD}"][2])
    check(records, items, cpu_integrator)


def test_a_failing_device_call_goes_to_the_host_path(monkeypatch, tmp_path, master, cpu_integrator):
    integ, records, items = run_task(monkeypatch, tmp_path, master, fail=True)
    assert integ.engine.compressed_frames == 0 and integ.engine.stack_frames >= N
    check(records, items, cpu_integrator)


def test_off_by_default_on_numpy(monkeypatch, master):
    from gpusaxs.distributed_decode import chunk_sources

    monkeypatch.setenv("GPUSAXS_DEVICE_DECODE", "1")
    integ = Integrator(small_calibration(), backend="numpy", engine=CountingEngine)
    assert chunk_sources(integ) is None  # the rule: a CuPy engine only
    monkeypatch.setattr(integ.engine, "name", "cupy")
    sources = chunk_sources(integ)
    assert sources is not None
    sources.close()
