"""saxsdog on a Dask cluster: a real LocalCluster of 2 worker processes on loopback.

Checks that a cluster run writes the same bytes as a local run, that bad files are reported as
locally, that a worker killed with SIGKILL mid-run loses and duplicates nothing, that resume
works, and that the array API equals ``integrate_batch``.  Frames are PILATUS 1M size.
"""

import os
import shutil
import signal
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest

distributed = pytest.importorskip("distributed")
da = pytest.importorskip("dask.array")

ROOT = Path(__file__).resolve().parents[1]
N_FRAMES = 24


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """The demo data set: calibration, mask and N_FRAMES PILATUS 1M frames, plus a bad file."""
    from gpusaxs.demo import make_demo_data

    folder = tmp_path_factory.mktemp("dask")
    cal, frames = make_demo_data(folder, n_frames=N_FRAMES, seed=3)
    (frames / "zz_truncated.tif").write_bytes((frames / "frame_00000.tif").read_bytes()[:5000])
    return cal, frames


@pytest.fixture(scope="module")
def client():
    from gpusaxs.distributed import close_client, connect

    c = connect("local:2")
    yield c
    close_client(c)


def saxsdog(*args, cwd):
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    return subprocess.run(
        [sys.executable, "-m", "gpusaxs.clients.saxsdog", *map(str, args)],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )


def tree(folder):
    """{relative path: bytes} of every file below ``folder`` (hidden temporaries included)."""
    return {
        str(p.relative_to(folder)): p.read_bytes()
        for p in sorted(Path(folder).rglob("*"))
        if p.is_file()
    }


def error_lines(stderr):
    return sorted(line for line in stderr.splitlines() if "error:" in line)


def test_cluster_run_writes_the_same_bytes_as_a_local_run(data, tmp_path):
    cal, frames = data
    local = saxsdog(
        "-S", "-c", cal, "-o", tmp_path / "local", "--format", "both", frames, cwd=tmp_path
    )
    dask = saxsdog(
        "-c",
        cal,
        "-o",
        tmp_path / "dask",
        "--format",
        "both",
        "--scheduler",
        "local:2",
        "--frames-per-task",
        "5",
        frames,
        cwd=tmp_path,
    )
    assert local.returncode == dask.returncode == 1  # the truncated file fails
    assert "Dask: 2 workers" in dask.stderr
    # every good frame a .chi, identical to the byte; the bad file reported the same way
    local_tree, dask_tree = tree(tmp_path / "local"), tree(tmp_path / "dask")
    chis = [k for k in local_tree if k.endswith(".chi")]
    assert len(chis) == N_FRAMES
    assert {k: v for k, v in dask_tree.items() if k.endswith(".chi")} == {
        k: local_tree[k] for k in chis
    }
    assert error_lines(dask.stderr) == error_lines(local.stderr)
    assert "zz_truncated.tif" in error_lines(dask.stderr)[0]
    # the HDF5 folder file, gathered on the client: row for row the same curves (float64
    # sums in another order: the local engine splits pixels over 2 threads, a worker uses 1)
    import h5py

    with (
        h5py.File(tmp_path / "local" / "frames.h5") as a,
        h5py.File(tmp_path / "dask" / "frames.h5") as b,
    ):
        assert list(a["entry/data/frame_names"][()]) == list(b["entry/data/frame_names"][()])
        for name in ("I", "errors"):
            np.testing.assert_allclose(
                b["entry/data"][name][()],
                a["entry/data"][name][()],
                rtol=1e-13,
                atol=0,
                equal_nan=True,
            )


def test_resume_on_a_cluster_skips_done_curves(data, tmp_path):
    cal, frames = data
    part = tmp_path / "part"
    shutil.copytree(frames, part, ignore=shutil.ignore_patterns("zz_*"))
    out = tmp_path / "out"
    first = sorted(part.glob("*.tif"))[:10]
    r = saxsdog("-S", "-c", cal, "-o", out, *first, cwd=tmp_path)
    assert r.returncode == 0
    before = {p.name: p.stat().st_mtime_ns for p in out.glob("*.chi")}
    assert len(before) == 10
    r = saxsdog("-r", "-c", cal, "-o", out, "--scheduler", "local:2", part, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "10 skipped" in r.stderr
    assert len(list(out.glob("*.chi"))) == N_FRAMES
    assert {n: (out / n).stat().st_mtime_ns for n in before} == before  # untouched


def test_a_worker_killed_mid_run_loses_and_duplicates_nothing(data, client, tmp_path):
    from gpusaxs.distributed import integrate_files

    cal, frames = data
    files = sorted(frames.glob("frame_*.tif"))
    files = files + [shutil.copy(f, tmp_path / f"copy_{f.name}") for f in files]  # 48 inputs
    pids = client.run(os.getpid)  # worker address -> process id
    first_done = threading.Event()
    result = {}

    def on_progress(done, failed, total):
        first_done.set()

    def run():
        result["summary"] = integrate_files(
            client,
            files,
            cal,
            out_dir=tmp_path / "out",
            in_root=tmp_path,
            frames_per_task=2,
            on_progress=on_progress,
        )

    worker = threading.Thread(target=run)
    worker.start()
    assert first_done.wait(240), "no task finished"
    busy = [addr for addr, keys in client.processing().items() if keys and addr in pids]
    assert busy, "the run ended before a worker could be killed"
    os.kill(pids[busy[0]], signal.SIGKILL)
    worker.join(300)
    assert not worker.is_alive()
    summary = result["summary"]
    assert summary["processed"] == len(files) and summary["failed"] == 0, summary
    curves = sorted(p.name for p in (tmp_path / "out").rglob("*.chi"))
    assert len(curves) == len(set(curves)) == len(files)
    leftovers = [
        p
        for p in (tmp_path / "out").rglob("*")
        if p.is_file() and not p.name.endswith(".chi") and not p.name.startswith(".")
    ]
    assert leftovers == []


def test_bad_files_are_error_records(data, client, tmp_path):
    from gpusaxs.distributed import integrate_files

    cal, frames = data
    files = sorted(frames.glob("*.tif"))
    summary = integrate_files(client, files, cal, out_dir=tmp_path, frames_per_task=8)
    assert summary["processed"] == N_FRAMES and summary["failed"] == 1
    ((bad, message),) = summary["errors"]
    assert bad.endswith("zz_truncated.tif") and "zz_truncated.tif" in message


@pytest.mark.filterwarnings("ignore:Sending large graph")  # the test's frames, in memory
def test_array_api_equals_integrate_batch(data, client):
    from gpusaxs import Integrator
    from gpusaxs.distributed import integrate_array
    from gpusaxs.io.images import read_image

    cal, frames = data
    stack = np.stack([read_image(p) for p in sorted(frames.glob("frame_*.tif"))[:12]])
    lazy = integrate_array(da.from_array(stack, chunks=(5, -1, -1)), cal)
    assert isinstance(lazy, da.Array) and lazy.shape == (12, len(Integrator(cal).q))
    expected = Integrator(cal, backend="numpy").integrate_batch(stack)
    np.testing.assert_array_equal(client.compute(lazy).result(), expected)


def _dectris_master(folder, frames):
    """A DECTRIS-like master: no entry/data/data, links data_000001, data_000002 to bslz4 data
    files, a bslz4 pixel mask."""
    import h5py
    import hdf5plugin

    bslz4 = hdf5plugin.Bitshuffle(cname="lz4")
    with h5py.File(folder / "master.h5", "w") as m:
        m.create_group("entry/data")
        det = m.create_group("entry/instrument/detector/detectorSpecific")
        det.create_dataset("pixel_mask", data=np.zeros(frames.shape[1:], np.uint32), **bslz4)
        for k, part in enumerate(np.array_split(frames, 2), 1):
            name = f"master_data_{k:06d}.h5"
            with h5py.File(folder / name, "w") as f:
                f.create_dataset(
                    "entry/data/data", data=part, chunks=(1, *frames.shape[1:]), **bslz4
                )
            m[f"entry/data/data_{k:06d}"] = h5py.ExternalLink(name, "/entry/data/data")


@pytest.mark.filterwarnings("ignore:Sending large graph")
def test_docs_python_example_runs_as_written(data, client, tmp_path, monkeypatch):
    """docs/distributed.md's Python block, on a DECTRIS master with bslz4 data, on worker
    processes (which must load the HDF5 filter themselves)."""
    import re

    from gpusaxs import Integrator
    from gpusaxs.io.images import read_image

    cal, frames = data
    tifs = sorted(frames.glob("frame_*.tif"))
    stack = np.stack([read_image(p) for p in tifs[:10]]).astype(np.uint32)
    _dectris_master(tmp_path, stack)
    shutil.copy(cal, tmp_path / "cal.json")
    for mask in Path(cal).parent.glob("*.msk"):
        shutil.copy(mask, tmp_path / mask.name)
    text = (ROOT / "docs" / "distributed.md").read_text()
    (block,) = re.findall(r"```python\n(.*?)```", text, re.S)
    assert 'Client("tcp://head:8786")' in block
    block = block.replace('Client("tcp://head:8786")', "client")
    monkeypatch.chdir(tmp_path)
    scope = {"files": [str(p) for p in tifs[:4]], "client": client}
    exec(compile(block, "docs/distributed.md", "exec"), scope)
    assert scope["summary"]["processed"] == 4 and scope["summary"]["failed"] == 0
    curves = scope["curves"]
    got = client.compute(curves).result()
    expected = Integrator(str(tmp_path / "cal.json"), backend="numpy").integrate_batch(stack)
    np.testing.assert_allclose(got, expected, rtol=1e-12)


def _crash_plugin(word):
    """A worker plugin: reading a file whose name holds ``word`` kills the worker process (as
    a segfault in a decoder would); re-applied to every restarted worker.  Defined here so that
    cloudpickle sends it by value (the workers cannot import the test module)."""
    from distributed import WorkerPlugin

    class CrashOn(WorkerPlugin):
        name = "gpusaxs-test-crash"

        def setup(self, worker):
            import gpusaxs.io.images as images

            real = images.read_image

            def read_image(path, *args, **kwargs):
                if word in str(path):
                    os.kill(os.getpid(), signal.SIGSEGV)
                return real(path, *args, **kwargs)

            images.read_image = read_image

    return CrashOn()


def test_frames_of_a_dead_worker_are_errors(data, tmp_path):
    from gpusaxs.distributed import close_client, connect, integrate_files

    cal, frames = data
    files = sorted(frames.glob("frame_*.tif"))[:6]
    shutil.copy(files[0], tmp_path / "crash.tif")
    c = connect("local:1")
    try:
        c.register_plugin(_crash_plugin("crash.tif"))
        summary = integrate_files(
            c, [*files, tmp_path / "crash.tif"], cal, out_dir=tmp_path / "out", frames_per_task=1
        )
    finally:
        close_client(c)
    # every frame is one curve or one error (innocent frames of a task lost with the worker's
    # shipped matrix are errors too); the crashing one is an error
    assert summary["processed"] + summary["failed"] == 7, summary
    assert summary["failed"] == len(summary["errors"]) >= 1
    assert any(bad.endswith("crash.tif") for bad, _ in summary["errors"])
    assert all("on the cluster" in message for _, message in summary["errors"])


def test_saxsdog_on_a_cluster_with_a_corrupt_bslz4_master(data, tmp_path):
    import struct

    import h5py

    cal, frames = data
    from gpusaxs.io.images import read_image

    stack = np.stack([read_image(p) for p in sorted(frames.glob("frame_*.tif"))[:4]])
    folder = tmp_path / "run"
    folder.mkdir()
    _dectris_master(folder, stack.astype(np.uint32))
    with h5py.File(folder / "master_data_000001.h5", "r+") as f:
        ds = f["entry/data/data"]
        _, raw = ds.id.read_direct_chunk((1, 0, 0))
        raw = bytearray(raw)
        raw[12:16] = struct.pack(">I", 1 << 20)  # a lying block size
        ds.id.write_direct_chunk((1, 0, 0), bytes(raw))
    r = saxsdog("-c", cal, "--scheduler", "local:2", "-o", tmp_path / "out", folder, cwd=tmp_path)
    assert r.returncode == 1, r.stderr[-3000:]
    assert "corrupt chunk" in r.stderr and "1 failed" in r.stderr
    assert len(list((tmp_path / "out").rglob("*.chi"))) == 3
