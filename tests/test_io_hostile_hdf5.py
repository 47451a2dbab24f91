"""Hostile HDF5 input (issue 23, cases 8, 9, 11): corrupt bslz4 chunks, shape bombs, external
links outside the master's folder and to a FIFO.  Every frame ends as one error, no crash."""

import json
import os
import struct
import subprocess
import sys
from pathlib import Path

import h5py
import hdf5plugin
import numpy as np
import pytest
from helpers import run_saxsdog

from gpusaxs import ImageReadError, read_image
from gpusaxs.io.frames import pixel_mask

ROOT = Path(__file__).resolve().parents[1]
H, W = 64, 48


def _frames(n=2):
    rng = np.random.default_rng(1)
    return rng.poisson(30, size=(n, H, W)).astype(np.uint32)


def write_bslz4(path, n=2, corrupt=None, chunks=(1, H, W)):
    """A stack of n bslz4 frames (one chunk a frame); ``corrupt`` rewrites chunk 0's bytes."""
    with h5py.File(path, "w") as f:
        ds = f.create_dataset(
            "entry/data/data",
            data=_frames(n),
            chunks=chunks,
            **hdf5plugin.Bitshuffle(cname="lz4", nelems=256),
        )
        if corrupt is not None:
            _, raw = ds.id.read_direct_chunk((0, 0, 0))
            ds.id.write_direct_chunk((0, 0, 0), corrupt(bytearray(raw)))
    return path


def lying_block(raw):
    """First block's compressed size set far beyond the chunk (bitshuffle trusts it)."""
    raw[12:16] = struct.pack(">I", 1 << 20)
    return bytes(raw)


def cut(raw):
    return bytes(raw[: len(raw) // 2])


def lying_total(raw):
    raw[0:8] = struct.pack(">Q", 1 << 34)
    return bytes(raw)


def _python(code, cwd, timeout=120):
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    return subprocess.run(
        [sys.executable, "-c", code],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
    )


@pytest.mark.parametrize("corrupt", [lying_block, cut, lying_total])
def test_corrupt_bslz4_chunk_is_an_error_not_a_crash(tmp_path, corrupt):
    bad = write_bslz4(tmp_path / "bad.h5", corrupt=corrupt)
    code = (
        "from gpusaxs import read_image, ImageReadError\n"
        "try:\n"
        "    read_image('bad.h5::0')\n"
        "except ImageReadError as exc:\n"
        "    print('ERROR', exc)\n"
        "print('frame 1', read_image('bad.h5::1').sum())\n"
    )
    r = _python(code, tmp_path)
    assert r.returncode == 0, (r.returncode, r.stderr[-2000:])
    assert "ERROR" in r.stdout and "bad.h5" in r.stdout and "/entry/data/data" in r.stdout
    assert f"frame 1 {_frames()[1].sum()}" in r.stdout  # the good frame is still read
    assert bad.exists()


@pytest.mark.parametrize("corrupt", [lying_block, cut])
def test_corrupt_chunk_of_several_frames_is_an_error(tmp_path, corrupt):
    """Chunks that are not one frame each go through the HDF5 filter after the check."""
    write_bslz4(tmp_path / "bad.h5", n=4, corrupt=corrupt, chunks=(2, H // 2, W))
    code = (
        "from gpusaxs import read_image, ImageReadError\n"
        "for i in range(4):\n"
        "    try:\n"
        "        print('frame', i, read_image(f'bad.h5::{i}').sum())\n"
        "    except ImageReadError as exc:\n"
        "        print('ERROR', i, exc)\n"
    )
    r = _python(code, tmp_path)
    assert r.returncode == 0, (r.returncode, r.stderr[-2000:])
    assert "ERROR 0" in r.stdout and "ERROR 1" in r.stdout and "corrupt chunk" in r.stdout
    for i in (2, 3):
        assert f"frame {i} {_frames(4)[i].sum()}" in r.stdout


def _cal(folder, shape=(H, W)):
    cal = {
        "Imagesize": list(shape),
        "BeamCenter": [shape[0] / 2, shape[1] / 2],
        "DedectorDistanceMM": 300.0,
        "PixelSizeMicroM": [75.0],
        "Wavelength": 1.0,
        "MaskFile": None,
        "Oversampling": 1,
        "PixelPerRadialElement": 1,
        "Tilt": {"TiltRotDeg": 0.0, "TiltAngleDeg": 0.0},
    }
    path = folder / "cal.json"
    path.write_text(json.dumps(cal))
    return path


_saxsdog = run_saxsdog  # tests/helpers.py


def test_saxsdog_folder_with_a_corrupt_master(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    with h5py.File(data / "scan_master.h5", "w") as m:
        m.create_group("entry/data")
        m["entry/data/data_000001"] = h5py.ExternalLink("scan_data_000001.h5", "/entry/data/data")
    write_bslz4(data / "scan_data_000001.h5", n=3, corrupt=lying_block)
    r = _saxsdog(["-c", _cal(tmp_path), "-o", tmp_path / "out", data], cwd=tmp_path)
    assert r.returncode == 1, (r.returncode, r.stderr[-2000:])
    assert "corrupt chunk" in r.stderr and "2 curves written, 1 failed" in r.stderr


def test_shape_bomb_is_refused_before_reading(tmp_path):
    path = tmp_path / "bomb.h5"
    with h5py.File(path, "w") as f:  # a few KB declaring 3.6 GB of frame
        f.create_dataset(
            "entry/data/data", shape=(1, 30000, 30000), dtype="u4", chunks=(1, 1000, 1000)
        )
    assert path.stat().st_size < 100_000
    import tracemalloc

    tracemalloc.start()
    with pytest.raises(ImageReadError, match=r"/entry/data/data: frames are 30000x30000"):
        read_image(f"{path}::0", shape=(H, W))
    with pytest.raises(ImageReadError, match="more than the limit"):
        read_image(f"{path}::0")
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak < 50e6


def test_oversized_pixel_mask_is_a_clear_error(tmp_path):
    path = tmp_path / "m_master.h5"
    with h5py.File(path, "w") as f:
        f.create_dataset("entry/data/data", data=_frames(2), chunks=(1, H, W))
        f.create_dataset(
            "entry/instrument/detector/detectorSpecific/pixel_mask",
            shape=(40000, 40000),
            dtype="u4",
            chunks=(1000, 1000),
        )
    with pytest.raises(ImageReadError, match=r"m_master.h5: /entry/.*pixel_mask is 40000x40000"):
        read_image(f"{path}::0", shape=(H, W))
    with pytest.raises(ImageReadError, match=r"m_master.h5: /entry/.*pixel_mask is 40000x40000"):
        pixel_mask(path)


def _master(path, target):
    with h5py.File(path, "w") as m:
        m.create_group("entry/data")
        m["entry/data/data_000001"] = h5py.ExternalLink(str(target), "/entry/data/data")


def test_external_link_outside_the_master_folder_is_refused(tmp_path, monkeypatch):
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    write_bslz4(outside / "x_data_000001.h5")
    scan = tmp_path / "beam" / "scan"
    scan.mkdir(parents=True)
    for name, target in (("abs", outside / "x_data_000001.h5"), ("rel", "../../elsewhere/x")):
        _master(scan / f"{name}_master.h5", target)
        with pytest.raises(ImageReadError, match="leads outside the master's folder"):
            read_image(f"{scan / f'{name}_master.h5'}::0")
    monkeypatch.setenv("GPUSAXS_LINK_ROOTS", str(outside))
    frame = read_image(f"{scan / 'abs_master.h5'}::1")
    assert np.array_equal(frame, _frames()[1])
    # inside the master's own folder tree: always allowed
    monkeypatch.delenv("GPUSAXS_LINK_ROOTS")
    write_bslz4(scan / "sub_data.h5")
    _master(scan / "in_master.h5", "sub_data.h5")
    assert np.array_equal(read_image(f"{scan / 'in_master.h5'}::0"), _frames()[0])


def test_link_to_a_fifo_does_not_hang(tmp_path):
    os.mkfifo(tmp_path / "pipe_data_000001.h5")
    _master(tmp_path / "pipe_master.h5", "pipe_data_000001.h5")
    os.mkfifo(tmp_path / "fifo.h5")
    os.mkfifo(tmp_path / "fifo.tif")
    code = (
        "from gpusaxs import read_image, ImageReadError\n"
        "for s in ('pipe_master.h5::0', 'fifo.h5::0', 'fifo.tif'):\n"
        "    try:\n"
        "        read_image(s)\n"
        "    except ImageReadError as exc:\n"
        "        print('ERROR', exc)\n"
    )
    r = _python(code, tmp_path, timeout=60)
    assert r.stdout.count("not a regular file") == 3, r.stdout + r.stderr


def test_nexus_default_signal_linked_to_a_fifo_or_outside(tmp_path):
    outside = tmp_path / "else"
    outside.mkdir()
    write_bslz4(outside / "x.h5")
    scan = tmp_path / "scan"
    scan.mkdir()
    os.mkfifo(scan / "pipe.h5")
    for name, target in (("fifo", "pipe.h5"), ("far", str(outside / "x.h5"))):
        with h5py.File(scan / f"{name}.nxs", "w") as f:
            f.attrs["default"] = "entry"
            entry = f.create_group("entry")
            entry.attrs["default"] = "plot"
            plot = entry.create_group("plot")
            plot.attrs["NX_class"] = "NXdata"
            plot.attrs["signal"] = "frames"
            plot["frames"] = h5py.ExternalLink(target, "/entry/data/data")
    code = (
        "from gpusaxs import read_image, ImageReadError\n"
        "for s in ('scan/fifo.nxs::0', 'scan/far.nxs::0'):\n"
        "    try:\n"
        "        read_image(s)\n"
        "    except ImageReadError as exc:\n"
        "        print('ERROR', exc)\n"
    )
    r = _python(code, tmp_path, timeout=60)
    assert r.stdout.count("ERROR") == 2, r.stdout + r.stderr
    assert "leads outside the master's folder" in r.stdout and "not a regular file" in r.stdout
