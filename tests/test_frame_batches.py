"""The frame pipelines' common core (gpusaxs.frame_batches): batches of what is ready, one bad
frame failing alone, every frame ending exactly once."""

import queue
import threading

import numpy as np
import pytest

from gpusaxs import Integrator
from gpusaxs.frame_batches import NOTHING, FrameLedger, gather, integrate_once
from tests.helpers import calibration_with_mask


def test_gather_takes_what_is_ready_and_stops_at_a_stranger():
    source = queue.Queue()
    for item in ("a2", "a3", "b1", "a4"):
        source.put(item)
    batch, left = gather("a1", source, limit=8, belongs=lambda x: x.startswith("a"))
    assert batch == ["a1", "a2", "a3"] and left == "b1"
    batch, left = gather(left, source, limit=8)
    assert batch == ["b1", "a4"] and left is NOTHING  # then empty: no wait for more
    for item in range(10):
        source.put(item)
    batch, _ = gather(-1, source, limit=4)
    assert batch == [-1, 0, 1, 2] and source.qsize() == 7


@pytest.fixture(scope="module")
def integrator(tmp_path_factory):
    cal = calibration_with_mask(tmp_path_factory.mktemp("cal"))
    return Integrator(cal, backend="numpy")


def test_one_bad_frame_fails_alone(integrator):
    """A PILATUS-size stack of Poisson frames with one frame the integration refuses: the
    others get the curves they get alone, the bad one its own exception."""
    rng = np.random.default_rng(3)
    stack = rng.poisson(50.0, (5,) + integrator.shape).astype(np.int32)
    stack[2, 0, 0] = -7  # the marker of the frame the stand-in device refuses
    calls = []

    def integrate(frames):
        calls.append(len(frames))
        if np.any(frames[:, 0, 0] == -7):
            raise RuntimeError("device refused the frame")
        intensity, _, err = integrator.integrate_batch_error(frames, std=False)
        return intensity, err

    intensity, err, failed = integrate_once(stack, integrate)
    assert list(failed) == [2] and "refused" in str(failed[2])
    assert calls == [5, 1, 1, 1, 1, 1]  # the batch once, then each frame once
    assert np.all(np.isnan(intensity[2])) and np.all(np.isnan(err[2]))
    for k in (0, 1, 3, 4):
        alone, _, alone_err = integrator.integrate_batch_error(stack[k : k + 1], std=False)
        np.testing.assert_allclose(intensity[k], alone[0], rtol=1e-12, equal_nan=True)
        np.testing.assert_allclose(err[k], alone_err[0], rtol=1e-12, equal_nan=True)


def test_a_good_batch_is_one_call(integrator):
    stack = np.ones((3,) + integrator.shape, dtype=np.uint16)
    calls = []

    def integrate(frames):
        calls.append(len(frames))
        return integrator.integrate_batch(frames), None

    intensity, err, failed = integrate_once(stack, integrate)
    assert calls == [3] and failed == {} and err is None and intensity.shape[0] == 3


def test_ledger_ends_each_frame_once():
    ledger = FrameLedger()
    ledger.submit(3)
    ledger.end("processed", 2)
    ledger.end("failed")
    assert ledger.pending == 0 and ledger.counts == {"processed": 2, "failed": 1, "dropped": 0}
    with pytest.raises(RuntimeError, match="reported twice"):
        ledger.end("processed")
    with pytest.raises(ValueError, match="kind"):
        ledger.end("lost")


def test_ledger_wait_idle_wakes_when_the_last_frame_ends():
    ledger = FrameLedger()
    ledger.submit(2)
    assert not ledger.wait_idle(timeout=0.01)
    ended = threading.Event()

    def finish():
        ledger.end("processed")
        ledger.end("dropped")
        ended.set()

    worker = threading.Thread(target=finish)
    worker.start()
    assert ledger.wait_idle(timeout=30)
    worker.join()
    assert ended.is_set() and ledger.pending == 0
