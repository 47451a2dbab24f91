"""saxsdog end to end, as a user runs it: real subprocesses, real files, bad files among them."""

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import tifffile
from helpers import run_saxsdog

H, W = 200, 180
ROOT = Path(__file__).resolve().parents[1]


# -- helpers ----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    """A small flat calibration (200 x 180 pixels) with a fit2d mask; returns its folder."""
    from gpusaxs.io.masks import write_fit2d_mask

    d = tmp_path_factory.mktemp("cal")
    mask = np.zeros((H, W), bool)
    mask[:, :4] = True  # a masked strip
    mask[90:110, 80:100] = True  # a beam stop
    write_fit2d_mask(d / "small.msk", mask)
    cal = {
        "Title": "synthetic 200x180",
        "PixelPerRadialElement": 1,
        "Imagesize": [H, W],
        "Tilt": {"TiltRotDeg": 20.0, "TiltAngleDeg": 1.0},
        "MaskFile": "small.msk",
        "Oversampling": 2,
        "Wavelength": 1.54,
        "BeamCenter": [95.5, 88.25],
        "DedectorDistanceMM": 400.0,
        "PixelSizeMicroM": [172.0, 172.0],
        "PolarizationCorrection": {"Fraction": 0.95, "Angle": 0.0},
    }
    (d / "cal.json").write_text(json.dumps(cal))
    return d


def frame(seed):
    rng = np.random.default_rng(seed)
    img = rng.poisson(100 + 10 * seed, size=(H, W)).astype(np.int32)
    img[50, 60] = -2  # a bad pixel
    return img


def write_frame(path, seed):
    path.parent.mkdir(parents=True, exist_ok=True)
    tifffile.imwrite(path, frame(seed))
    return path


run = run_saxsdog  # saxsdog in a subprocess (tests/helpers.py)


def wait_for(cond, timeout=60.0, interval=0.05):
    """Bounded polling: True once ``cond()`` holds, False when the deadline passes."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return True
        time.sleep(interval)
    return bool(cond())


def direct(cal_file, img):
    """(q, I, err) integrating directly with the library."""
    from gpusaxs.calibration_model import Calibration
    from gpusaxs.integrator import Integrator

    integ = Integrator(Calibration.from_file(cal_file), backend="numpy")
    intensity, _std, err = integ.integrate_error(img)
    return integ.q, intensity, err


def assert_curve_equal(chi_path, q, intensity, err):
    from gpusaxs.io.chi import read_chi

    c = read_chi(chi_path)
    np.testing.assert_allclose(c.q, q, rtol=1e-6)
    np.testing.assert_allclose(c.intensity, intensity, rtol=1e-6, equal_nan=True)
    np.testing.assert_allclose(c.error, err, rtol=1e-6, equal_nan=True)


def chi_files(folder):
    return sorted(str(p.relative_to(folder)) for p in Path(folder).rglob("*.chi"))


# -- tests ------------------------------------------------------------------------------------
def test_help_explains_every_option():
    r = subprocess.run(
        [sys.executable, "-m", "gpusaxs.clients.saxsdog", "--help"],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    assert r.returncode == 0
    for opt in (
        "-c",
        "-t",
        "-m",
        "-w",
        "-r",
        "-o",
        "-i",
        "-s",
        "-p",
        "-P",
        "-S",
        "-n",
        "-D",
        "--format",
        "--backend",
        "exit status",
        "saxsdog -c cal.json -w data/",
    ):
        assert opt in r.stdout, opt


def test_mirrors_tree_and_matches_library(synth, tmp_path):
    data = tmp_path / "data"
    write_frame(data / "a_000.tif", 0)
    write_frame(data / "sub" / "b_001.tif", 1)
    write_frame(data / "sub" / "deeper" / "c_002.tif", 2)
    single = write_frame(tmp_path / "elsewhere" / "single.tif", 3)
    r = run(
        [
            "-c",
            synth / "cal.json",
            "-o",
            "curves",
            "-t",
            "2",
            "--backend",
            "numpy",
            "-P",
            data,
            single,
        ],
        cwd=tmp_path,
    )
    assert r.returncode == 0, r.stderr
    assert chi_files(tmp_path / "curves") == [
        "a_000.chi",
        "single.chi",
        "sub/b_001.chi",
        "sub/deeper/c_002.chi",
    ]
    assert "4 curves written, 0 failed" in r.stderr
    for stage in ("read", "integrate", "write"):  # -P profile table
        assert stage in r.stderr
    q, intensity, err = direct(synth / "cal.json", frame(2))
    assert_curve_equal(tmp_path / "curves" / "sub" / "deeper" / "c_002.chi", q, intensity, err)
    assert np.isfinite(intensity).sum() > 50
    # nothing half-written or temporary left
    assert not [p for p in (tmp_path / "curves").rglob(".*")]


def test_inplace_svg_png_silent_parallel_walk(synth, tmp_path):
    data = tmp_path / "data"
    for k, sub in enumerate(["x", "y", "z"]):
        write_frame(data / sub / f"f{k}.tif", k)
    r = run(["-c", synth / "cal.json", "-i", "-s", "-p", "-S", "-D", data], cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert r.stderr == ""  # -S: no bar, no summary
    assert not (tmp_path / "out").exists()
    for k, sub in enumerate(["x", "y", "z"]):
        base = data / sub / f"f{k}"
        assert base.with_suffix(".chi").is_file()
        assert base.with_suffix(".svg").read_text().lstrip().startswith("<?xml")
        assert base.with_suffix(".png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_resume_does_not_touch_existing_curves(synth, tmp_path):
    data = tmp_path / "data"
    for k in range(3):
        write_frame(data / f"f{k}.tif", k)
    r = run(["-c", synth / "cal.json", data], cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    out = tmp_path / "out"
    old = 1_000_000_000
    for p in out.glob("*.chi"):
        os.utime(p, ns=(old * 10**9, old * 10**9))
    before = {p.name: (p.stat().st_mtime_ns, p.read_bytes()) for p in out.glob("*.chi")}
    write_frame(data / "f3.tif", 3)
    r = run(["-c", synth / "cal.json", "-r", data], cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "1 curves written" in r.stderr and "3 skipped" in r.stderr
    for name, (mtime, content) in before.items():
        p = out / name
        assert p.stat().st_mtime_ns == mtime and p.read_bytes() == content
    assert (out / "f3.chi").is_file()


def test_bad_files_reported_others_written(synth, tmp_path):
    data = tmp_path / "data"
    good = [write_frame(data / f"good{k}.tif", k) for k in range(3)]
    (data / "truncated.tif").write_bytes(good[0].read_bytes()[:50_000])
    (data / "text.tif").write_text("not an image at all\n")
    tifffile.imwrite(data / "wrongsize.tif", np.zeros((H, W + 7), np.int32))
    (data / "notes.txt").write_text("ignored: not an image suffix")
    r = run(["-c", synth / "cal.json", data], cwd=tmp_path)
    assert r.returncode == 1
    lines = r.stderr.splitlines()
    for name, reason in (
        ("truncated.tif", "truncated"),
        ("text.tif", "not a TIFF"),
        ("wrongsize.tif", "expected 200x180"),
    ):
        hit = [ln for ln in lines if name in ln and "error" in ln]
        assert hit and reason in hit[0], (name, r.stderr)
    assert "Traceback" not in r.stderr
    assert chi_files(tmp_path / "out") == ["good0.chi", "good1.chi", "good2.chi"]
    assert "3 curves written, 3 failed" in r.stderr


def test_bad_calibration_is_one_line(tmp_path):
    (tmp_path / "bad.json").write_text('{"Imagesize": [10, 10], ')
    write_frame(tmp_path / "d" / "a.tif", 0)
    r = run(["-c", tmp_path / "bad.json", tmp_path / "d"], cwd=tmp_path)
    assert r.returncode == 2
    assert "Traceback" not in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1
    assert "bad.json" in r.stderr and "not valid JSON" in r.stderr
    r = run(["-c", tmp_path / "missing.json", tmp_path / "d"], cwd=tmp_path)
    assert r.returncode == 2 and "missing.json" in r.stderr and "Traceback" not in r.stderr


def test_hdf5_output(synth, tmp_path):
    import h5py

    data = tmp_path / "data"
    for k in range(4):
        write_frame(data / f"f{k}.tif", k)
    write_frame(data / "sub" / "g.tif", 7)
    r = run(["-c", synth / "cal.json", "--format", "both", data], cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    out = tmp_path / "out"
    assert chi_files(out) == ["f0.chi", "f1.chi", "f2.chi", "f3.chi", "sub/g.chi"]
    q, intensity, err = direct(synth / "cal.json", frame(2))
    with h5py.File(out / "data.h5", "r") as f:
        d = f["entry/data"]
        assert f["entry"].attrs["NX_class"] == "NXentry"
        assert d.attrs["NX_class"] == "NXdata" and d.attrs["signal"] == "I"
        assert d["q"].attrs["units"] == "1/nm"
        assert d["q"].shape == q.shape
        assert d["I"].shape == (4, len(q)) and d["errors"].shape == (4, len(q))
        names = [n.decode() if isinstance(n, bytes) else n for n in d["frame_names"][()]]
        assert names == ["f0.tif", "f1.tif", "f2.tif", "f3.tif"]
        np.testing.assert_allclose(d["I"][2], intensity, rtol=1e-6, equal_nan=True)
        np.testing.assert_allclose(d["errors"][2], err, rtol=1e-6, equal_nan=True)
        note = json.loads(f["entry/calibration/data"][()])
        assert note["Imagesize"] == [H, W]
    with h5py.File(out / "sub" / "sub.h5", "r") as f:
        assert f["entry/data/I"].shape == (1, len(q))
    assert not list(out.rglob(".*"))
    # hdf5 only: no .chi files
    r = run(["-c", synth / "cal.json", "--format", "hdf5", "-o", "h5only", data], cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert chi_files(tmp_path / "h5only") == []
    assert (tmp_path / "h5only" / "data.h5").is_file()


def test_reference_frame_matches_integrator(reference_dir, tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    (data / "buf1_00000.tif").write_bytes((reference_dir / "buf1_00000.tif").read_bytes())
    cal = reference_dir / "buf1_00000.calibration.json"
    r = run(["-c", cal, data], cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    from gpusaxs.io.images import read_image

    q, intensity, err = direct(cal, read_image(reference_dir / "buf1_00000.tif"))
    assert_curve_equal(tmp_path / "out" / "buf1_00000.chi", q, intensity, err)


def test_watch_mode(synth, tmp_path):
    watched = tmp_path / "watched"
    watched.mkdir()
    write_frame(watched / "before.tif", 0)  # present at start: walked
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "gpusaxs.clients.saxsdog",
            "-c",
            str(synth / "cal.json"),
            "-w",
            "--wait-timeout",
            "3",
            str(watched),
        ],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    lines = []
    reader = threading.Thread(
        target=lambda: lines.extend(iter(proc.stderr.readline, "")), daemon=True
    )
    reader.start()
    out = tmp_path / "out"
    try:
        assert wait_for(lambda: (out / "before.chi").is_file()), "initial walk"
        write_frame(watched / "new1.tif", 1)
        # a file written slowly in two parts: must be waited for, not skipped or failed
        content = tifffile_bytes(frame(2))
        slow = watched / "slow.tif"
        with open(slow, "wb") as fh:
            fh.write(content[: len(content) // 2])
            fh.flush()
            assert wait_for(lambda: (out / "new1.chi").is_file())
            # not synchronisation: the first half stays on disk, unchanged, for many of
            # saxsdog's polls (0.1 s), so it has to recognise it as incomplete
            time.sleep(1.0)
            assert not (out / "slow.chi").exists()
            fh.write(content[len(content) // 2 :])
        write_frame(watched / "newdir" / "inner" / "deep.tif", 3)  # a new subfolder
        (watched / ".hidden.tif").write_bytes(content)  # temporary names ignored
        (watched / "part.tif.tmp").write_bytes(content)
        (watched / "garbage.tif").write_text("never an image")  # reported after timeout
        assert wait_for(
            lambda: (
                (out / "slow.chi").is_file() and (out / "newdir" / "inner" / "deep.chi").is_file()
            )
        )
        # the garbage file is reported once --wait-timeout has passed; then Ctrl-C
        assert wait_for(lambda: any("garbage.tif" in ln for ln in lines), timeout=30)
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=30)
        reader.join(10)
        stderr = "".join(lines)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 130, stderr
    assert "garbage.tif" in stderr and "incomplete" in stderr
    assert "interrupted: 4 curves written, 1 failed" in stderr, stderr
    assert chi_files(out) == ["before.chi", "new1.chi", "newdir/inner/deep.chi", "slow.chi"]
    q, intensity, err = direct(synth / "cal.json", frame(2))
    assert_curve_equal(out / "slow.chi", q, intensity, err)  # read once, complete


def tifffile_bytes(img):
    import io

    buf = io.BytesIO()
    tifffile.imwrite(buf, img)
    return buf.getvalue()


# -- start-up and first run (issue 15) ----------------------------------------------------------
def _key(cal_file):
    from gpusaxs.calibration_model import Calibration
    from gpusaxs.matrix_cache import matrix_key

    return matrix_key(Calibration.from_file(cal_file))


def test_output_that_is_a_file_is_one_error_before_any_frame(synth, tmp_path):
    data = tmp_path / "data"
    write_frame(data / "f0.tif", 0)
    (tmp_path / "taken").write_text("a file")
    for out in ("taken", "taken/below"):
        r = run(["-c", synth / "cal.json", "-o", out, data], cwd=tmp_path)
        assert r.returncode == 2, r.stderr
        lines = r.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith(f"saxsdog: error: -o {out}: "), r.stderr
        assert "file" in lines[0]
        assert "building" not in r.stderr and "curves written" not in r.stderr
    assert (tmp_path / "taken").read_text() == "a file"


@pytest.mark.skipif(os.geteuid() == 0, reason="root ignores permission bits")
def test_unwritable_output_is_one_error(synth, tmp_path):
    data = tmp_path / "data"
    write_frame(data / "f0.tif", 0)
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    try:
        r = run(["-c", synth / "cal.json", "-o", ro / "out", data], cwd=tmp_path)
    finally:
        ro.chmod(0o755)
    assert r.returncode == 2 and "not writable" in r.stderr, r.stderr


def test_folder_without_images_warns_and_exits_1(synth, tmp_path):
    data = tmp_path / "empty"
    data.mkdir()
    (data / "notes.txt").write_text("no images here")
    r = run(["-c", synth / "cal.json", data], cwd=tmp_path)
    assert r.returncode == 1, r.stderr
    assert "warning: no image found in" in r.stderr and str(data) in r.stderr
    assert "building" not in r.stderr  # nothing built for nothing
    assert not (tmp_path / "out").exists()


def test_matrix_cache_used_by_the_next_run_and_no_cache(synth, tmp_path, _private_matrix_cache):
    data = tmp_path / "data"
    write_frame(data / "f0.tif", 0)
    cache = _private_matrix_cache
    r = run(["-c", synth / "cal.json", "--no-cache", data], cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "built the integration matrix" in r.stderr and "matrix built" in r.stderr
    assert not list(cache.glob("matrix-*.gsm"))
    r = run(["-c", synth / "cal.json", "-o", "out1", data], cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "cached in" in r.stderr
    assert len(list(cache.glob("matrix-*.gsm"))) == 1
    r = run(["-c", synth / "cal.json", "-o", "out2", data], cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "built" not in r.stderr and "set-up" in r.stderr and "matrix from the cache" in r.stderr
    assert (tmp_path / "out1" / "f0.chi").read_bytes() == (
        tmp_path / "out2" / "f0.chi"
    ).read_bytes()
    assert (tmp_path / "out" / "f0.chi").read_bytes() == (tmp_path / "out2" / "f0.chi").read_bytes()


def test_curves_carry_the_key_and_resume_redoes_other_calibrations(synth, tmp_path):
    from gpusaxs.io.chi import read_chi, read_chi_key

    data = tmp_path / "data"
    for k in range(3):
        write_frame(data / f"f{k}.tif", k)
    cal_a = synth / "cal.json"
    d = json.loads(cal_a.read_text())
    d["DedectorDistanceMM"] = 450.0  # another calibration, same bins count or not
    d["MaskFile"] = str(synth / "small.msk")
    cal_b = tmp_path / "cal_b.json"
    cal_b.write_text(json.dumps(d))
    r = run(["-c", cal_a, data], cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    out = tmp_path / "out"
    assert {read_chi_key(p) for p in out.glob("*.chi")} == {_key(cal_a)}
    (out / "f1.chi").write_text(
        read_chi(out / "f1.chi").title
        + "\n"
        + "\n".join((out / "f1.chi").read_text().splitlines()[1:])
        + "\n"
    )
    assert read_chi_key(out / "f1.chi") is None  # a curve without a key
    r = run(["-c", cal_a, "-r", data], cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "1 curves written" in r.stderr and "2 skipped" in r.stderr and "1 redone" in r.stderr
    r = run(["-c", cal_b, "-r", data], cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "3 curves written" in r.stderr and "3 redone" in r.stderr
    assert {read_chi_key(p) for p in out.glob("*.chi")} == {_key(cal_b)}
    q, intensity, err = direct(cal_b, frame(2))
    assert_curve_equal(out / "f2.chi", q, intensity, err)


def test_hdf5_records_the_key_and_resume_redoes_other_calibrations(synth, tmp_path):
    import h5py

    data = tmp_path / "data"
    for k in range(2):
        write_frame(data / f"f{k}.tif", k)
    r = run(["-c", synth / "cal.json", "--format", "hdf5", data], cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    h5 = tmp_path / "out" / "data.h5"
    with h5py.File(h5, "r") as f:
        assert f["entry"].attrs["calibration_key"] == _key(synth / "cal.json")
    r = run(["-c", synth / "cal.json", "--format", "hdf5", "-r", data], cwd=tmp_path)
    assert "0 curves written" in r.stderr and "2 skipped" in r.stderr, r.stderr
    with h5py.File(h5, "r+") as f:
        f["entry"].attrs["calibration_key"] = "00" * 32
    r = run(["-c", synth / "cal.json", "--format", "hdf5", "-r", data], cwd=tmp_path)
    assert "2 curves written" in r.stderr, r.stderr


def test_too_large_calibration_is_one_error(synth, tmp_path):
    data = tmp_path / "data"
    write_frame(data / "f0.tif", 0)
    for field, value, expect in (
        ("Imagesize", [100000, 100000], "#/Imagesize"),
        ("Oversampling", 64, "#/Oversampling"),
        ("PixelPerRadialElement", 1e-4, "#/PixelPerRadialElement"),
    ):
        d = json.loads((synth / "cal.json").read_text())
        d[field] = value
        d["MaskFile"] = str(synth / "small.msk")  # checked before the mask is read
        if field == "Oversampling":
            d["Imagesize"] = [400, 400]
        cal = tmp_path / f"{field}.json"
        cal.write_text(json.dumps(d))
        r = run(["-c", cal, data], cwd=tmp_path)
        assert r.returncode == 2, r.stderr
        lines = r.stderr.strip().splitlines()
        assert len(lines) == 1 and expect in lines[0] and "limit" in lines[0], r.stderr
        assert "Traceback" not in r.stderr and "MemoryError" not in r.stderr


def test_build_progress_bar_counts_rows():
    import io

    from gpusaxs.clients.progress import Progress

    out = io.StringIO()
    bar = Progress(
        total=1043,
        enabled=True,
        stream=out,
        unit="rows",
        min_interval=0.0,
        label="saxsdog: building the integration matrix",
    )
    bar.set_done(512)
    assert "building the integration matrix" in out.getvalue()
    assert "512/1043" in out.getvalue() and "rows/s" in out.getvalue()
    bar.finish("saxsdog: built the integration matrix (1002 bins, 21 MB) in 3.0 s")
    assert out.getvalue().endswith("in 3.0 s\n")
