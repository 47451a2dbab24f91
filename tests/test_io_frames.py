"""Frames in: EIGER master + bslz4 data files, HDF5 datasets by name, multi-frame EDF/TIFF,
through gpusaxs.io.frames and saxsdog (one curve per frame, .chi or NXazint1d)."""

import functools
import json
import tracemalloc
from pathlib import Path

import h5py
import hdf5plugin
import numpy as np
import pytest
import tifffile
from helpers import run_saxsdog

from gpusaxs import Calibration, ImageReadError, Integrator, read_image
from gpusaxs.io.frames import FrameRef, frame_sources, iter_frames, pixel_mask, read_frame
from gpusaxs.io.nexus import read_nxazint

ROOT = Path(__file__).resolve().parents[1]
H, W = 1065, 1030  # EIGER 1M
N_FRAMES = (60, 40)  # frames per data file: 100 in all
GAP = np.iinfo(np.uint32).max


@functools.lru_cache(maxsize=4)
def _base(offset, shape):
    rng = np.random.default_rng(offset)
    y, x = np.indices(shape)
    ring = 20 + 200 * np.exp(-(((np.hypot(y - 500.0, x - 480.0) - 300.0) / 15.0) ** 2))
    return rng.poisson(ring).astype(np.uint32)


def eiger_frame(offset, j, shape=(H, W)):
    """Frame j of a data file whose first frame is number ``offset`` of the series."""
    frame = _base(offset, shape) * np.uint32(1 + (offset + j) % 7) + np.uint32(offset + j)
    frame[513:551, :] = GAP  # the horizontal module gap
    return frame


def eiger_frames(n, offset=0, shape=(H, W)):
    """n distinct uint32 frames: a ring pattern scaled per frame, Poisson noise, module gaps."""
    return np.stack([eiger_frame(offset, j, shape) for j in range(n)])


def write_eiger(folder, name="series", counts=N_FRAMES, shape=(H, W), bad=((10, 20), (700, 33))):
    """An EIGER-like master file with external links to bslz4-compressed data files."""
    folder.mkdir(parents=True, exist_ok=True)
    offset = 0
    with h5py.File(folder / f"{name}_master.h5", "w") as master:
        master.create_group("entry/data")
        det = master.create_group("entry/instrument/detector/detectorSpecific")
        mask = np.zeros(shape, np.uint32)
        for r, c in bad:
            mask[r, c] = 1
        mask[513:551, :] = 1  # EIGER flags its gaps in the pixel mask too
        det.create_dataset("pixel_mask", data=mask, **hdf5plugin.Bitshuffle(cname="lz4"))
        for k, n in enumerate(counts, 1):
            data_name = f"{name}_data_{k:06d}.h5"
            with h5py.File(folder / data_name, "w") as f:
                f.create_dataset(
                    "entry/data/data",
                    data=eiger_frames(n, offset, shape),
                    chunks=(1, *shape),
                    **hdf5plugin.Bitshuffle(cname="lz4"),
                )
            master[f"entry/data/data_{k:06d}"] = h5py.ExternalLink(data_name, "/entry/data/data")
            offset += n
    return folder / f"{name}_master.h5"


@pytest.fixture(scope="module")
def eiger(tmp_path_factory):
    folder = tmp_path_factory.mktemp("eiger")
    master = write_eiger(folder / "scan")
    cal = {
        "Imagesize": [H, W],
        "BeamCenter": [H - 500.0, 480.0],
        "DedectorDistanceMM": 300.0,
        "PixelSizeMicroM": [75.0],
        "Wavelength": 1.0,
        "MaskFile": None,
        "Oversampling": 1,
        "PixelPerRadialElement": 1,
        "Tilt": {"TiltRotDeg": 30.0, "TiltAngleDeg": 0.5},
    }
    (folder / "cal.json").write_text(json.dumps(cal))
    return folder, master


run = run_saxsdog  # tests/helpers.py


def expected_frame(k):
    """Frame k of the series as written, with the pixel mask applied (bad pixels invalid)."""
    counts = np.cumsum((0,) + N_FRAMES)
    part = int(np.searchsorted(counts, k, side="right") - 1)
    frame = eiger_frame(int(counts[part]), k - int(counts[part]))
    for r, c in ((10, 20), (700, 33)):
        frame[r, c] = GAP
    return frame


# -- reading ---------------------------------------------------------------------------------
def test_eiger_master_frames_lazily(eiger):
    folder, master = eiger
    sources = frame_sources(master, explicit=True)
    assert len(sources) == 100
    assert all(isinstance(s, FrameRef) for s in sources)
    assert sources[61] == f"{master}::61" and sources[61].index == 61
    for k in (0, 59, 60, 99):  # both data files, their first and last frames
        got = read_frame(sources[k], shape=(H, W))
        assert got.dtype == np.uint32
        np.testing.assert_array_equal(got, expected_frame(k))
    np.testing.assert_array_equal(read_image(f"{master}::7"), expected_frame(7))
    m = pixel_mask(master)
    assert m.shape == (H, W) and m[10, 20] and m[700, 33] and m.sum() == 2 + 38 * W
    # one frame in memory at a time: the peak stays far below the 440 MB of the series
    tracemalloc.start()
    n = 0
    for _src, frame in iter_frames(master):
        n += 1
        assert frame.shape == (H, W)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert n == 100
    assert peak < 6 * H * W * 4, peak


def test_hdf5_dataset_by_name(eiger):
    folder, master = eiger
    data1 = folder / "scan" / "series_data_000002.h5"
    refs = frame_sources(f"{data1}::/entry/data/data")
    assert len(refs) == 40 and refs[3] == f"{data1}::/entry/data/data::3"
    # a data file named alone has no pixel mask: gaps stay as written
    np.testing.assert_array_equal(read_frame(refs[3]), eiger_frames(40, 60)[3])
    assert (
        FrameRef(str(data1), "/entry/data/data", 3).curve_name() == "series_data_000002_00003.chi"
    )
    # a single 2D dataset is one frame
    single = folder / "single.h5"
    with h5py.File(single, "w") as f:
        f["img"] = np.arange(12, dtype=np.int32).reshape(3, 4)
    assert frame_sources(f"{single}::/img") == [f"{single}::/img"]
    np.testing.assert_array_equal(read_image(f"{single}::/img"), np.arange(12).reshape(3, 4))
    with pytest.raises(ImageReadError, match="no dataset '/nope'"):
        read_image(f"{single}::/nope")
    with pytest.raises(ImageReadError, match="no frame data found"):
        frame_sources(single, explicit=True)
    assert frame_sources(single) == []  # a walk: not an image file
    assert frame_sources(folder / "scan" / "series_data_000001.h5") == []  # via its master


def test_4m_frames(tmp_path):
    """EIGER 4M size (2167 x 2070): three frames through the master."""
    master = write_eiger(tmp_path, "big", counts=(3,), shape=(2167, 2070), bad=((5, 5),))
    refs = frame_sources(master, explicit=True)
    assert len(refs) == 3
    expect = eiger_frames(3, 0, (2167, 2070))
    expect[:, 5, 5] = GAP
    for k in range(3):
        np.testing.assert_array_equal(read_frame(refs[k]), expect[k])


def test_multi_frame_edf_and_tiff(tmp_path):
    from fabio.edfimage import EdfImage

    rng = np.random.default_rng(3)
    stack = rng.poisson(50, size=(4, 60, 80)).astype(np.int32)
    edf = EdfImage(data=stack[0])
    for k in range(1, 4):
        edf.append_frame(data=stack[k])
    edf.write(str(tmp_path / "m.edf"))
    tifffile.imwrite(tmp_path / "m.tif", stack, photometric="minisblack")  # 4 pages
    tifffile.imwrite(tmp_path / "one.tif", stack[0])
    for name in ("m.edf", "m.tif"):
        refs = frame_sources(tmp_path / name)
        assert [r.index for r in refs] == [0, 1, 2, 3], name
        for k, r in enumerate(refs):
            np.testing.assert_array_equal(read_image(r), stack[k])
    assert frame_sources(tmp_path / "one.tif") == [tmp_path / "one.tif"]  # unchanged path
    with pytest.raises(ImageReadError, match="multi-frame"):
        read_image(tmp_path / "m.tif")  # a stack is not one frame


def test_broken_external_link_is_named(tmp_path):
    master = write_eiger(tmp_path / "s", counts=(2, 2), shape=(40, 30), bad=())
    (tmp_path / "s" / "series_data_000002.h5").unlink()
    with pytest.raises(
        ImageReadError, match="data_000002: cannot open its data file series_data_000002.h5"
    ):
        frame_sources(master, explicit=True)


# -- saxsdog ---------------------------------------------------------------------------------
def test_saxsdog_eiger_master_to_chi_and_nexus(eiger, tmp_path):
    folder, master = eiger
    out = tmp_path / "out"
    r = run(
        ["-c", folder / "cal.json", "--format", "chi+nexus", "-o", out, "-t", "2", master],
        cwd=tmp_path,
    )
    assert r.returncode == 0, r.stderr
    assert "100 curves written" in r.stderr
    chis = sorted(out.glob("*.chi"))
    assert [p.name for p in chis[:2]] == ["series_master_00000.chi", "series_master_00001.chi"]
    assert len(chis) == 100
    from gpusaxs.io.chi import read_chi

    integ = Integrator(Calibration.from_file(folder / "cal.json"), backend="numpy")
    nx = read_nxazint(out / "scan.nxs")
    np.testing.assert_array_equal(nx["image_ids"], np.arange(100))
    assert nx["sources"][5] == f"{master.resolve()}::5"
    assert nx["inputs"] == [str(master.resolve())]
    assert nx["radial_unit"] == "q_nm^-1"
    assert nx["calibration"]["Imagesize"] == [H, W]
    np.testing.assert_allclose(nx["radial"], integ.q)
    for k in range(100):
        intensity, _, err = integ.integrate_error(expected_frame(k))
        c = read_chi(out / f"series_master_{k:05d}.chi")
        np.testing.assert_allclose(c.intensity, intensity, rtol=1e-6, equal_nan=True)
        np.testing.assert_allclose(c.error, err, rtol=1e-6, equal_nan=True)
        np.testing.assert_allclose(nx["intensity"][k], intensity, rtol=1e-6, equal_nan=True)
        np.testing.assert_allclose(nx["sigma"][k], err, rtol=1e-6, equal_nan=True)
    # the pixel mask counts: the bad pixels' bins differ from a run without it
    raw = eiger_frames(60, 0)[0]
    raw[10, 20] = 10**6
    assert not np.allclose(
        integ.integrate(raw)[1], integ.integrate(expected_frame(0))[1], equal_nan=True
    )
    # NeXus structure, as silx sees it
    from silx.io import nxdata

    with h5py.File(out / "scan.nxs", "r") as f:
        assert f["entry/definition"][()] == b"NXazint1d"
        nxd = nxdata.get_default(f)
        assert nxd.is_valid and nxd.signal.shape == (100, integ.q.size)
        assert f["entry/data/radial_axis"].attrs["units"] == "1/nm"
        assert f["entry/reduction/program"][()] == b"gpusaxs"


def test_saxsdog_walk_finds_masters_and_multi_frame_files(eiger, tmp_path):
    folder, master = eiger
    data = tmp_path / "data"
    data.mkdir()
    small = write_eiger(data, "small", counts=(2, 1), shape=(H, W), bad=())
    tifffile.imwrite(
        data / "stack.tif", eiger_frames(2, 5).astype(np.int32), photometric="minisblack"
    )
    (data / "notes.txt").write_text("not an image")
    r = run(["-c", folder / "cal.json", "-o", tmp_path / "out", data], cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    names = sorted(p.name for p in (tmp_path / "out").glob("*.chi"))
    assert names == [
        "small_master_00000.chi",
        "small_master_00001.chi",
        "small_master_00002.chi",
        "stack_00000.chi",
        "stack_00001.chi",
    ]
    assert small.exists()


def test_saxsdog_named_file_that_cannot_be_read_is_an_error(eiger, tmp_path):
    folder, _ = eiger
    master = write_eiger(tmp_path / "s", counts=(2, 2), shape=(H, W), bad=())
    (tmp_path / "s" / "series_data_000002.h5").unlink()
    r = run(["-c", folder / "cal.json", "-o", tmp_path / "out", master], cwd=tmp_path)
    assert r.returncode == 1
    assert "series_data_000002.h5" in r.stderr and "0 curves written, 1 failed" in r.stderr
    (tmp_path / "notes.txt").write_text("x")
    r = run(
        ["-c", folder / "cal.json", "-o", tmp_path / "out", tmp_path / "notes.txt"], cwd=tmp_path
    )
    assert r.returncode == 1 and "not an image or HDF5 file" in r.stderr
    # a dataset named on the command line
    good = write_eiger(tmp_path / "g", counts=(3,), shape=(H, W), bad=())
    data = tmp_path / "g" / "series_data_000001.h5"
    r = run(
        ["-c", folder / "cal.json", "-o", tmp_path / "out2", f"{data}::/entry/data/data"],
        cwd=tmp_path,
    )
    assert r.returncode == 0, r.stderr
    assert sorted(p.name for p in (tmp_path / "out2").glob("*.chi")) == [
        "series_data_000001_00000.chi",
        "series_data_000001_00001.chi",
        "series_data_000001_00002.chi",
    ]
    assert good.exists()


def test_saxsdog_with_a_poni_calibration(tmp_path):
    pytest.importorskip("pyFAI")
    from pyFAI.detectors import Detector
    from pyFAI.integrator.azimuthal import AzimuthalIntegrator

    det = Detector(pixel1=172e-6, pixel2=172e-6, max_shape=(120, 100), orientation=2)
    ai = AzimuthalIntegrator(
        dist=0.3, poni1=0.01, poni2=0.008, rot1=0.01, detector=det, wavelength=1e-10
    )
    ai.write(str(tmp_path / "g.poni"))
    img = np.random.default_rng(1).poisson(30, size=(120, 100)).astype(np.int32)
    tifffile.imwrite(tmp_path / "a.tif", img)
    r = run(["-c", tmp_path / "g.poni", "-o", tmp_path / "out", tmp_path / "a.tif"], cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    from gpusaxs.io.chi import read_chi

    q, intensity = Integrator(str(tmp_path / "g.poni"), backend="numpy").integrate(img)
    np.testing.assert_allclose(
        read_chi(tmp_path / "out" / "a.chi").intensity, intensity, rtol=1e-6, equal_nan=True
    )
    (tmp_path / "x.tif").write_bytes((tmp_path / "a.tif").read_bytes())
    r = run(["-c", tmp_path / "x.tif", tmp_path / "a.tif"], cwd=tmp_path)
    assert r.returncode == 2 and "expected a JSON calibration file" in r.stderr
