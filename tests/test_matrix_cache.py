"""The on-disk matrix cache: default folder, LRU bound, concurrent processes (issue 15)."""

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from gpusaxs.calibration_model import Calibration
from gpusaxs.matrix_cache import (
    _MEMORY,
    default_cache_dir,
    evict,
    get_matrix,
    load_matrix,
    matrix_key,
    save_matrix,
)

ROOT = Path(__file__).resolve().parents[1]


def _cal(distance=1000.0, size=(120, 100)):
    return Calibration(
        beam_center=(60.0, 50.0),
        distance_mm=distance,
        imagesize=size,
        pixel_size_um=(172.0, 172.0),
        wavelength_A=1.54,
        oversampling=2,
    )


def test_default_folder(monkeypatch, tmp_path):
    monkeypatch.delenv("GPUSAXS_CACHE_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert default_cache_dir() == tmp_path / "xdg" / "gpusaxs"
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert default_cache_dir() == Path.home() / ".cache" / "gpusaxs"
    monkeypatch.setenv("GPUSAXS_CACHE_DIR", str(tmp_path / "mine"))
    assert default_cache_dir() == tmp_path / "mine"
    monkeypatch.setenv("GPUSAXS_CACHE_DIR", "off")
    assert default_cache_dir() is None


def test_second_process_loads_from_disk(_private_matrix_cache):
    cal = _cal()
    info = {}
    m = get_matrix(cal, info=info)
    assert info["source"] in ("built", "memory")
    _MEMORY.clear()
    info = {}
    m2 = get_matrix(cal, info=info)
    assert info["source"] == "disk" and info["key"] == matrix_key(cal)
    assert Path(info["path"]).parent == _private_matrix_cache
    for f in ("pixel_ptr", "bins", "weights", "pixel_scale", "norm", "q_edges"):
        np.testing.assert_array_equal(getattr(m, f), getattr(m2, f))
    info = {}
    get_matrix(cal, cache_dir=False, info=info)
    assert info["path"] is None


def test_corrupt_file_is_rebuilt(_private_matrix_cache):
    cal = _cal(distance=900.0)
    info = {}
    get_matrix(cal, info=info)
    Path(info["path"]).write_bytes(b"PK\x03\x04 not a whole file")
    _MEMORY.clear()
    info = {}
    get_matrix(cal, info=info)
    assert info["source"] == "built"
    good = load_matrix(info["path"])  # replaced by a good file
    whole = Path(info["path"]).read_bytes()
    Path(info["path"]).write_bytes(whole[: len(whole) // 2])  # a file cut short
    with pytest.raises(ValueError, match="truncated"):
        load_matrix(info["path"])
    _MEMORY.clear()
    info = {}
    again = get_matrix(cal, info=info)
    assert info["source"] == "built"
    np.testing.assert_array_equal(again.bins, good.bins)
    np.testing.assert_array_equal(load_matrix(info["path"]).weights, good.weights)


def test_lru_eviction(tmp_path):
    m = get_matrix(_cal(), cache_dir=False)
    paths = []
    for k in range(3):
        p = tmp_path / f"matrix-{k}.gsm"
        save_matrix(m, p)
        os.utime(p, (1000 + k, 1000 + k))
        paths.append(p)
    size = paths[0].stat().st_size
    os.utime(paths[0])  # used just now: the newest
    removed = evict(tmp_path, max_bytes=2 * size)
    assert removed == [paths[1]]
    assert paths[0].is_file() and paths[2].is_file()
    assert evict(tmp_path, max_bytes=0, keep=paths[2]) == [paths[0]]
    assert paths[2].is_file()


_WORKER = textwrap.dedent("""
    import os, sys, time
    from pathlib import Path
    sys.path.insert(0, {root!r})
    import numpy as np
    from gpusaxs.calibration_model import Calibration
    from gpusaxs import matrix_cache as mc
    role, folder, go = sys.argv[1], Path(sys.argv[2]), Path(sys.argv[3])
    cal = Calibration(beam_center=(60.0, 50.0), distance_mm=1000.0, imagesize=(120, 100),
                      pixel_size_um=(172.0, 172.0), wavelength_A=1.54, oversampling=2)
    (folder / f"ready-{{role}}").touch()
    deadline = time.monotonic() + 60
    while not go.exists() and time.monotonic() < deadline:
        time.sleep(0.005)                     # polling a ready file, bounded
    info = {{}}
    m = mc.get_matrix(cal, cache_dir=folder, info=info)
    path = Path(info["path"])
    checks = 0
    for i in range(150):
        if role == "writer":
            mc.save_matrix(m, path)           # rewrites the same key again and again
        else:
            got = mc.load_matrix(path)        # must always be a whole, equal file
            assert np.array_equal(got.bins, m.bins) and np.array_equal(got.weights, m.weights)
            checks += 1
    print(role, info["source"], checks)
""")


def test_two_processes_share_the_cache_safely(tmp_path):
    """Both build the same key at once from an empty cache, then one rewrites the file while
    the other reads it 150 times: no error, no partial file, no temporary file left."""
    script = tmp_path / "worker.py"
    script.write_text(_WORKER.format(root=str(ROOT)))
    folder = tmp_path / "cache"
    folder.mkdir()
    go = tmp_path / "go"
    procs = [
        subprocess.Popen(
            [sys.executable, str(script), role, str(folder), str(go)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for role in ("writer", "reader")
    ]
    import time

    deadline = time.monotonic() + 60
    while not all((folder / f"ready-{r}").exists() for r in ("writer", "reader")):
        assert time.monotonic() < deadline, "workers did not start"
        assert all(p.poll() is None for p in procs), [p.communicate() for p in procs]
        time.sleep(0.01)
    go.touch()
    outs = [p.communicate(timeout=120) for p in procs]
    for p, (_out, err) in zip(procs, outs, strict=True):
        assert p.returncode == 0, err
    assert "reader" in outs[1][0] and outs[1][0].split()[-1] == "150"
    assert len(list(folder.glob("matrix-*.gsm"))) == 1
    assert not [p for p in folder.iterdir() if p.name.startswith(".")]


# -- integrity (issue 23 case 12) -------------------------------------------------------------
def _cached(cal):
    info = {}
    m = get_matrix(cal, info=info)
    _MEMORY.clear()
    return m, Path(info["path"])


def _header_end(blob):
    return 17 + 8 + int.from_bytes(blob[17:25], "little")


def _reload(cal, good):
    """The next get_matrix rebuilds (never uses the bad file) and replaces the file."""
    info = {}
    again = get_matrix(cal, info=info)
    assert info["source"] == "built"
    np.testing.assert_array_equal(again.weights, good.weights)
    np.testing.assert_array_equal(load_matrix(info["path"], cal).bins, good.bins)


def test_flipped_bit_in_a_weight_is_caught_and_rebuilt(_private_matrix_cache):
    cal = _cal(distance=700.0)
    good, path = _cached(cal)
    blob = bytearray(path.read_bytes())
    start = _header_end(blob)
    import json

    header = json.loads(bytes(blob[25:start]))
    offset = {f[0]: f[3] for f in header["fields"]}["weights"]
    blob[start + offset + 4 * 1000 + 2] ^= 0x04  # one bit of weight 1000
    path.write_bytes(bytes(blob))
    with pytest.raises(ValueError, match="checksum"):
        load_matrix(path, cal)
    _reload(cal, good)


def test_bad_bins_entry_and_lying_header_are_rebuilt(_private_matrix_cache):
    import json

    cal = _cal(distance=710.0)
    good, path = _cached(cal)
    whole = path.read_bytes()
    start = _header_end(whole)
    header = json.loads(whole[25:start])
    for field, shape in (("bins", [1 << 31]), ("pixel_ptr", [1 << 30]), ("norm", [1 << 33])):
        lie = json.loads(json.dumps(header))
        for f in lie["fields"]:
            if f[0] == field:
                f[2] = shape
        lie["data_bytes"] = 8 << 30
        text = json.dumps(lie).encode()
        path.write_bytes(whole[:17] + len(text).to_bytes(8, "little") + text + whole[start:])
        with pytest.raises(ValueError, match=f"{path}"):
            load_matrix(path, cal)
        _reload(cal, good)
        _MEMORY.clear()


def test_out_of_range_bin_with_a_good_checksum_is_refused(_private_matrix_cache):
    from gpusaxs.matrix_cache import _matrix_bounds, load_arrays, save_arrays

    cal = _cal(distance=720.0)
    good, path = _cached(cal)
    arrays, meta, _ = load_arrays(path, _matrix_bounds(path, cal))
    arrays = {k: np.array(v) for k, v in arrays.items()}
    arrays["bins"][5] = len(arrays["norm"])  # a bin that does not exist
    save_arrays(path, arrays, meta)
    with pytest.raises(ValueError, match="field bins"):
        load_matrix(path, cal)
    _reload(cal, good)


def test_sparse_8gib_file_is_not_read(_private_matrix_cache):
    import time
    import tracemalloc

    cal = _cal(distance=730.0)
    good, path = _cached(cal)
    whole = path.read_bytes()
    with open(path, "r+b") as fh:  # the real header, then 8 GiB of holes
        fh.truncate(8 << 30)
        fh.write(whole[: _header_end(whole)])
    tracemalloc.start()
    t0 = time.perf_counter()
    with pytest.raises(ValueError, match="truncated"):
        load_matrix(path, cal)
    assert time.perf_counter() - t0 < 1.0
    assert tracemalloc.get_traced_memory()[1] < 10 << 20
    tracemalloc.stop()
    _reload(cal, good)


def test_matrix_of_another_calibration_is_refused(_private_matrix_cache):
    good, path = _cached(_cal(distance=740.0))
    with pytest.raises(ValueError, match="pixel_ptr has 12001 entries, the image 12100"):
        load_matrix(path, _cal(distance=740.0, size=(121, 100)))


def test_signed_markers_refuse_planted_files(tmp_path):
    """The signed markers of the schema-validation cache (gpusaxs.cache_dir, used by
    gpusaxs.calibration_file): only a marker this user signed for this digest counts."""
    import hashlib

    from gpusaxs.cache_dir import marker_valid, write_marker

    folder = tmp_path / "validated"
    good, other = (hashlib.sha256(t).hexdigest() for t in (b"good", b"other"))
    assert not marker_valid(folder, good)
    (folder / good[:40]).parent.mkdir(parents=True, exist_ok=True)
    (folder / good[:40]).touch()  # a planted empty marker (today's format)
    assert not marker_valid(folder, good)
    assert write_marker(folder, good) and marker_valid(folder, good)
    (folder / other[:40]).write_bytes((folder / good[:40]).read_bytes())  # copied signature
    assert not marker_valid(folder, other)
    os.chmod(folder / ".key", 0o644)  # a key others can read is no secret
    assert not marker_valid(folder, good)
