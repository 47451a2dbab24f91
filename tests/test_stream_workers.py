"""The stream's batch workers (server/stream/workers.py): each decodes a whole batch and
integrates it on a one-thread copy of the CPU engine; the rows reach the file in order."""

import threading

import numpy as np
import pytest

zmq = pytest.importorskip("zmq")
pytest.importorskip("cbor2")
pytest.importorskip("bitshuffle")

from gpusaxs.server.stream.workers import OrderedWorkers, runs_on_workers  # noqa: E402
from tests.test_stream_units import (  # noqa: E402
    frame,
    running_consumer,
    send_series,
    small_calibration,
)


@pytest.fixture(scope="module")
def integrator():
    from gpusaxs.integrator import Integrator

    return Integrator(small_calibration(), backend="numpy", threads=2)


def test_results_come_back_in_the_order_submitted():
    """A slow first batch holds back the control value and the quick batch behind it; an error
    raised on a worker is raised where the results are collected."""
    release = threading.Event()
    workers = OrderedWorkers(2)
    finished = threading.Semaphore(0)
    try:
        workers.submit(lambda: release.wait(30) and "slow", on_done=finished.release)
        workers.done("end of series 1")
        workers.submit(lambda: "quick", on_done=finished.release)
        assert finished.acquire(timeout=30)  # the quick one
        assert list(workers.ready()) == []  # its turn has not come
        release.set()
        assert finished.acquire(timeout=30)
        assert list(workers.ready()) == ["slow", "end of series 1", "quick"]

        def broken():
            raise RuntimeError("worker failed")

        workers.submit(broken)
        with pytest.raises(RuntimeError, match="worker failed"):
            list(workers.drain())
    finally:
        release.set()
        workers.shutdown()


def test_one_thread_copies_of_the_engine_agree_side_by_side(integrator):
    """Two one-thread copies run at once on two threads give the sums of the engine itself."""
    engine = integrator.engine
    stacks = [np.stack([frame(np.uint32, seed=10 * k + i) for i in range(8)]) for k in range(2)]
    expected = [engine.sums(s, errors="poisson") for s in stacks]
    copies = [engine.with_threads(1) for _ in stacks]
    assert all(c.threads == 1 and c.layout is engine.layout for c in copies)
    got = [None, None]
    start = threading.Barrier(2)

    def run(k):
        start.wait(30)
        for _ in range(5):
            got[k] = copies[k].sums(stacks[k], errors="poisson")

    threads = [threading.Thread(target=run, args=(k,)) for k in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    for g, e in zip(got, expected, strict=True):
        for name in ("signal", "norm", "variance"):
            np.testing.assert_allclose(getattr(g, name), getattr(e, name), rtol=1e-12)


def test_only_plain_cpu_integrators_go_to_the_workers(integrator):
    from gpusaxs.robust_curves import AveragedIntegrator

    assert runs_on_workers(integrator)
    averaged = AveragedIntegrator(integrator, {"average": "median", "percentile": 50})
    assert not runs_on_workers(averaged)


def test_a_series_through_the_workers_is_written_in_order(tmp_path, integrator):
    """13 batches of 3 frames on 2 workers, one frame that cannot be decoded: every other
    frame's row in the series file, in image order, equal to the integrator's own curve."""
    from gpusaxs.io.nexus import read_nxazint

    n, bad = 39, 17
    frames = [frame(np.uint32, seed=i) for i in range(n)]
    frames[bad] = frame(np.uint32, seed=bad)[:100]  # the wrong size: a decode record
    with running_consumer(tmp_path, integrator, batch_size=3, decode_threads=2) as (cons, push):
        send_series(push, 1, "ordered", frames)
        assert cons.book.wait(lambda b: (b.get(1) or {}).get("state") == "done", 60)
        names = {t.name.rsplit("_", 1)[0] for t in threading.enumerate()}
        assert "stream-worker" in names
    st = cons.book.get(1)
    assert st["integrated"] == n - 1 and st["errors"] == 1
    rows = read_nxazint(tmp_path / "series_1.nxs")
    assert rows["image_ids"].tolist() == [i for i in range(n) if i != bad]
    for row, i in zip(rows["intensity"], rows["image_ids"], strict=True):
        np.testing.assert_allclose(
            row, integrator.integrate(frames[i])[1], rtol=1e-9, equal_nan=True
        )
    (record,) = cons.book.info()["recent errors"]
    assert record["image_id"] == bad and record["kind"] == "decode"


class _Bug(BaseException):
    """Not an Exception: what kills a stage rather than failing one frame."""


def test_frames_in_flight_when_the_stage_dies_are_recorded(tmp_path, integrator, monkeypatch):
    """A batch whose integration raises a BaseException kills the integrator stage: its frames,
    and those of batches the workers finished but the stage never passed on, each get a record;
    no frame is lost without one."""
    from gpusaxs.server.stream import consumer

    real = consumer.one_thread_integrate

    def buggy(integ):
        integrate = real(integ)

        def run(frames):
            if np.any(frames[:, 1, 1] == 55_555):
                sent.wait(30)  # the series all sent: the consumer stops reading when it dies
                raise _Bug("simulated bug")
            return integrate(frames)

        return run

    sent = threading.Event()
    monkeypatch.setattr(consumer, "one_thread_integrate", buggy)
    n = 12
    frames = [frame(np.uint32, seed=i) for i in range(n)]
    frames[2][1, 1] = 55_555  # the second batch of 2
    fatal = []
    with running_consumer(
        tmp_path, integrator, batch_size=2, decode_threads=2, on_fatal=fatal.append
    ) as (cons, push):
        send_series(push, 1, "dies", frames)
        sent.set()
        cons.book.wait(lambda b: bool(fatal), 60)
        assert cons.book.wait(
            lambda b: (
                (b.get(1) or {}).get("integrated", 0) + (b.get(1) or {}).get("errors", 0) >= n
            ),
            60,
        )
    assert "_integrate_loop" in fatal[0] and "simulated bug" in fatal[0]
    st = cons.book.get(1)
    assert st["integrated"] + st["errors"] == n and st["errors"] >= 2
