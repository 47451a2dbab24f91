"""gpusaxs.pipeline: curve_path and FramePipeline with a stub integrator and real files."""

import threading
from pathlib import Path

import numpy as np
import pytest
import tifffile

from gpusaxs.errors import ImageReadError
from gpusaxs.pipeline import FramePipeline, curve_path

H, W = 12, 10


class StubIntegrator:
    """Bins = columns: I = column mean, err = sqrt(column sum)/H; records batch sizes."""

    def __init__(self, gate=None, fail_on=None):
        self.shape = (H, W)
        self.q = np.linspace(0.1, 1.0, W)
        self.batches = []
        self.gate = gate  # threading.Event the engine waits for (to hold frames)
        self.fail_on = fail_on  # a pixel value that makes integration raise
        self.entered = threading.Event()

    def integrate_batch_error(self, stack, std=True):
        assert stack.ndim == 3 and stack.shape[1:] == (H, W)
        self.entered.set()
        if self.gate is not None:
            assert self.gate.wait(10)
        if self.fail_on is not None and (stack == self.fail_on).any():
            raise RuntimeError("engine failure")
        self.batches.append(len(stack))
        x = stack.astype(np.float64)
        intensity = x.mean(axis=1)
        err = np.sqrt(x.sum(axis=1)) / H
        return intensity, x.std(axis=1), err

    def integrate_batch(self, stack):
        return self.integrate_batch_error(stack)[0]


def make_frames(folder, n, value0=1):
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for k in range(n):
        p = folder / f"f{k:03d}.tif"
        tifffile.imwrite(p, np.full((H, W), value0 + k, np.int32))
        paths.append(p)
    return paths


def read_rows(path):
    from gpusaxs.io.chi import read_chi

    return read_chi(path)


def test_curve_path_mirrors_tree(tmp_path):
    root = tmp_path / "data"
    img = root / "a" / "b" / "x_001.tif"
    assert curve_path(img, root, tmp_path / "out") == tmp_path / "out" / "a" / "b" / "x_001.chi"
    assert curve_path(img, root, inplace=True) == root / "a" / "b" / "x_001.chi"
    assert curve_path(img, root) == Path("out") / "a" / "b" / "x_001.chi"
    assert curve_path(img, root, tmp_path / "o", suffix=".dat").suffix == ".dat"
    # an image outside the root lands in the output folder itself
    assert curve_path(tmp_path / "y.tif", root, tmp_path / "o") == tmp_path / "o" / "y.chi"


def test_pipeline_writes_every_frame(tmp_path):
    paths = make_frames(tmp_path / "in", 37)
    stub = StubIntegrator()
    done = []
    pipe = FramePipeline(
        stub, batch_size=8, read_threads=2, on_done=lambda ip, op, q, i: done.append((ip, op))
    )
    outs = [tmp_path / "out" / p.with_suffix(".chi").name for p in paths]
    for p, o in zip(paths, outs, strict=True):
        pipe.submit(p, o)
    assert pipe.wait_idle(timeout=30)
    st = pipe.stats
    assert st["processed"] == 37 and st["failed"] == 0 and st["queued"] == 0
    assert sum(stub.batches) == 37 and max(stub.batches) <= 8
    assert len(done) == 37
    for k, o in enumerate(outs):
        c = read_rows(o)
        np.testing.assert_allclose(c.intensity, 1 + k)
        np.testing.assert_allclose(c.error, np.sqrt(H * (1 + k)) / H, rtol=1e-6)
        np.testing.assert_allclose(c.q, stub.q, rtol=1e-7)
    assert pipe.close() == 0
    assert set(st["timings"]) == {"read", "integrate", "write"}
    assert pipe.stats["frames_per_sec"] > 0
    with pytest.raises(RuntimeError):
        pipe.submit(paths[0], outs[0])
    # no temporary file is left behind
    assert not [p for p in (tmp_path / "out").iterdir() if p.name.startswith(".")]


def test_pipeline_batches_frames_that_wait(tmp_path):
    """Frames that pile up while the engine is busy go into one engine call."""
    paths = make_frames(tmp_path / "in", 9)
    gate = threading.Event()
    stub = StubIntegrator(gate=gate)
    pipe = FramePipeline(stub, batch_size=16, read_threads=2)
    pipe.submit(paths[0], tmp_path / "o" / "0.chi")
    assert stub.entered.wait(10)  # the engine holds frame 0
    for k, p in enumerate(paths[1:], 1):
        pipe.submit(p, tmp_path / "o" / f"{k}.chi")
    # wait (bounded) until the 8 later frames are decoded and waiting for the engine
    assert _poll(lambda: pipe._ready_q.qsize() == 8)
    gate.set()
    assert pipe.wait_idle(timeout=30)
    pipe.close()
    assert stub.batches == [1, 8]


def test_bad_files_go_to_on_error_rest_continues(tmp_path):
    paths = make_frames(tmp_path / "in", 6)
    trunc = tmp_path / "in" / "trunc.tif"
    trunc.write_bytes(paths[0].read_bytes()[:-100])
    text = tmp_path / "in" / "text.tif"
    text.write_text("this is not an image\n")
    wrong = tmp_path / "in" / "wrong.tif"
    tifffile.imwrite(wrong, np.zeros((H + 1, W), np.int32))
    missing = tmp_path / "in" / "missing.tif"
    errors = {}
    pipe = FramePipeline(
        StubIntegrator(),
        batch_size=4,
        on_error=lambda ip, exc: errors.__setitem__(Path(ip).name, exc),
    )
    for p in [paths[0], trunc, paths[1], text, wrong, missing] + paths[2:]:
        pipe.submit(p, tmp_path / "out" / p.with_suffix(".chi").name)
    pipe.wait_idle()
    st = pipe.stats
    pipe.close()
    assert st["processed"] == 6 and st["failed"] == 4
    assert set(errors) == {"trunc.tif", "text.tif", "wrong.tif", "missing.tif"}
    assert all(isinstance(e, ImageReadError) for e in errors.values())
    assert "expected 12x10" in str(errors["wrong.tif"])
    written = sorted(p.name for p in (tmp_path / "out").iterdir())
    assert written == [f"f{k:03d}.chi" for k in range(6)]


def test_engine_failure_isolates_the_frame(tmp_path):
    paths = make_frames(tmp_path / "in", 5)
    gate = threading.Event()
    stub = StubIntegrator(gate=gate, fail_on=3)  # frame f002 holds value 3
    errors = []
    pipe = FramePipeline(stub, batch_size=8, on_error=lambda ip, e: errors.append(Path(ip).name))
    pipe.submit(paths[0], tmp_path / "o" / "0.chi")
    assert stub.entered.wait(10)
    for k, p in enumerate(paths[1:], 1):
        pipe.submit(p, tmp_path / "o" / f"{k}.chi")
    assert _poll(lambda: pipe._ready_q.qsize() == 4)
    gate.set()
    pipe.wait_idle()
    pipe.close()
    assert errors == ["f002.tif"]
    assert pipe.stats["processed"] == 4


def test_writer_failure_and_custom_writer(tmp_path):
    paths = make_frames(tmp_path / "in", 4)
    seen = []

    def writer(image_path, out_path, q, intensity, err):
        if Path(image_path).name == "f001.tif":
            raise OSError("disk full")
        seen.append((Path(image_path).name, float(intensity[0]), err is None))

    errors = []
    pipe = FramePipeline(
        StubIntegrator(),
        errors=False,
        writer=writer,
        on_error=lambda ip, e: errors.append((Path(ip).name, str(e))),
    )
    for p in paths:
        pipe.submit(p, tmp_path / "x.chi")
    pipe.close()  # close without abort finishes everything
    assert sorted(seen) == [
        ("f000.tif", 1.0, True),
        ("f002.tif", 3.0, True),
        ("f003.tif", 4.0, True),
    ]
    assert errors == [("f001.tif", "disk full")]
    assert pipe.stats["processed"] == 3 and pipe.stats["failed"] == 1


def test_close_abort_finishes_in_flight_and_drops_the_rest(tmp_path):
    paths = make_frames(tmp_path / "in", 30)
    gate = threading.Event()
    stub = StubIntegrator(gate=gate)
    pipe = FramePipeline(stub, batch_size=4, read_threads=1)
    for k, p in enumerate(paths):
        pipe.submit(p, tmp_path / "o" / f"{k:03d}.chi")
    assert stub.entered.wait(10)  # the engine holds the first frame(s)
    result = {}
    closer = threading.Thread(target=lambda: result.setdefault("d", pipe.close(abort=True)))
    closer.start()
    assert _poll(lambda: pipe._closed)
    gate.set()
    closer.join(30)
    assert not closer.is_alive()
    st = pipe.stats
    assert result["d"] == st["dropped"] > 0
    assert st["processed"] + st["failed"] + st["dropped"] == 30
    assert st["queued"] == 0
    written = list((tmp_path / "o").iterdir())
    assert len(written) == st["processed"]
    assert all(not p.name.startswith(".") for p in written)


def test_submit_is_thread_safe(tmp_path):
    paths = make_frames(tmp_path / "in", 40)
    pipe = FramePipeline(StubIntegrator(), batch_size=5, read_threads=3)
    chunks = [paths[i::4] for i in range(4)]
    threads = [
        threading.Thread(
            target=lambda c=c: [
                pipe.submit(p, tmp_path / "o" / p.with_suffix(".chi").name) for p in c
            ]
        )
        for c in chunks
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert pipe.wait_idle(timeout=30)
    pipe.close()
    assert pipe.stats["processed"] == 40
    assert len(list((tmp_path / "o").iterdir())) == 40


def _poll(cond, timeout=10.0):
    """Bounded polling: True as soon as ``cond()`` holds, False after ``timeout`` seconds."""
    import time

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return True
        time.sleep(0.005)
    return cond()
