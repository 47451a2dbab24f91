"""Issue 15, service side: confined writes, stale curves, leftovers, disk full, signed feeder
events, secrets and config permissions (in-process service; the process tests are in
test_net_hardening_proc.py)."""

import errno
import json
import os
import time

import pytest
from net_support import SECRET, ask, calibration_dict, mask_array, signed, wait_for, write_frames

from gpusaxs.server import protocol as P
from gpusaxs.server.auth import sign_request


@pytest.fixture
def service(tmp_path):
    from gpusaxs.server.saxsdogserver import SaxsdogService

    base = tmp_path / "base"
    (base / "data").mkdir(parents=True)
    svc = SaxsdogService(base, SECRET, threads=1, batch_size=4, backend="numpy")
    yield svc
    svc.shutdown(timeout=30)


def new(svc, cal=None, directory="data"):
    from gpusaxs.io.masks import fit2d_mask_bytes

    req, atts = P.new_request(
        cal or calibration_dict(), directory, fit2d_mask_bytes(mask_array()), "m.msk"
    )
    ans = ask(svc, signed(req, atts))
    assert ans["result"] == "new queue", ans
    return ans


def stat(svc):
    return ask(svc, signed({"command": "stat"}))["data"]


def readdir_and_wait(svc, n, timeout=90):
    assert ask(svc, signed({"command": "readdir"}))["result"] == "directory refilled queue"
    last = {}

    def done():
        d = stat(svc)
        last.update(d)
        q = d["queue"]
        return (
            d["stat"]["pics"] + d["errors"]["count"] + q["skipped"] >= n
            and d["stat"]["queue length"] == 0
            and q["state"] == "running"
        )

    assert wait_for(done, timeout, interval=0.05), last
    return last


def test_work_folder_linked_out_of_base_is_refused(service, tmp_path):
    """Item 2: a 'work' folder that is a symbolic link out of the base gets no curve."""
    data = tmp_path / "base" / "data"
    outside = tmp_path / "outside"
    outside.mkdir()
    victim = outside / "img_00000.chi"
    victim.write_text("precious\n")
    os.symlink(outside, data / "work")
    write_frames(data, 3)
    new(service)
    d = readdir_and_wait(service, 3)
    assert d["stat"]["pics"] == 0 and d["errors"]["count"] == 3, d
    assert "outside" in d["errors"]["recent"][0]["error"]
    assert victim.read_text() == "precious\n"
    assert sorted(p.name for p in outside.iterdir()) == ["img_00000.chi"]


def test_nested_curve_folder_link_refused_and_regular_folders_fine(service, tmp_path):
    """Item 2: a link deeper in the tree (sub/work -> outside) is refused too; others work."""
    data = tmp_path / "base" / "data"
    outside = tmp_path / "outside"
    outside.mkdir()
    write_frames(data / "ok", 2)
    write_frames(data / "bad", 2)
    os.symlink(outside, data / "bad" / "work")
    new(service)
    d = readdir_and_wait(service, 4)
    assert d["stat"]["pics"] == 2 and d["errors"]["count"] == 2, d
    assert sorted(p.name for p in (data / "ok" / "work").iterdir()) == [
        "img_00000.chi",
        "img_00001.chi",
    ]
    assert list(outside.iterdir()) == []


def test_readdir_redoes_curves_of_another_calibration(service, tmp_path):
    """Item 6: 'new' with another calibration, then readdir, redoes every curve."""
    from gpusaxs.io.chi import read_chi

    data = tmp_path / "base" / "data"
    write_frames(data, 5)
    new(service)
    d = readdir_and_wait(service, 5)
    assert d["stat"]["pics"] == 5
    first = read_chi(data / "work" / "img_00002.chi")
    cal_b = calibration_dict()
    cal_b["DedectorDistanceMM"] = 800.0
    new(service, cal_b)
    d = readdir_and_wait(service, 5)
    assert d["queue"]["skipped"] == 0 and d["stat"]["pics"] == 5, d
    assert d["queue"]["redone"] == 5
    second = read_chi(data / "work" / "img_00002.chi")
    assert second.q[-1] != pytest.approx(first.q[-1])  # made with the new geometry
    new(service, cal_b)  # same calibration again
    d = readdir_and_wait(service, 5)
    assert d["queue"]["skipped"] == 5 and d["stat"]["pics"] == 0, d


def test_curve_records_the_calibration_key(service, tmp_path):
    from gpusaxs.io.chi import read_chi_key
    from gpusaxs.matrix_cache import matrix_key

    data = tmp_path / "base" / "data"
    write_frames(data, 1)
    ans = new(service)
    readdir_and_wait(service, 1)
    key = read_chi_key(data / "work" / "img_00000.chi")
    assert key is not None and key.startswith(ans["data"]["cal"]["key"])
    from gpusaxs.calibration_model import Calibration

    cal = Calibration.from_dict(calibration_dict(), base_dir=str(data)).replace(mask_file=None)
    assert key == matrix_key(cal, mask=mask_array())  # the key of docs/ARCHITECTURE.md


def test_leftover_tmp_files_removed_by_readdir(service, tmp_path):
    """Item 8: hidden .tmp files of a killed writer go at readdir; young ones stay."""
    data = tmp_path / "base" / "data"
    write_frames(data, 2)
    work = data / "work"
    work.mkdir()
    old = [work / ".img_00000.chi.0a1b2c3d.tmp", work / ".img_00007.chi.deadbeef.tmp"]
    for p in old:
        p.write_text("half a curve")
        os.utime(p, (time.time() - 60, time.time() - 60))
    young = work / ".img_00001.chi.12345678.tmp"
    young.write_text("being written")
    keep = work / ".notes.tmp"  # not an atomic_write name: not touched
    keep.write_text("x")
    os.utime(keep, (time.time() - 60, time.time() - 60))
    new(service)
    d = readdir_and_wait(service, 2)
    assert d["queue"]["tmp removed"] == 2
    assert not any(p.exists() for p in old)
    assert young.exists() and keep.exists()


def test_disk_full_error_names_the_output_path(service, tmp_path, monkeypatch):
    """Item 8: ENOSPC while writing a curve: the error record names the curve file."""
    from gpusaxs.io import chi

    def full(path, *a, **k):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(chi, "write_chi", full)
    data = tmp_path / "base" / "data"
    write_frames(data, 2)
    new(service)
    d = readdir_and_wait(service, 2)
    assert d["errors"]["count"] == 2
    msg = d["errors"]["recent"][0]["error"]
    assert "No space left on device" in msg and "work/img_0000" in msg and ".chi" in msg, msg


def test_feeder_events_must_be_signed(service, tmp_path):
    """Item 7: unsigned or wrongly signed feeder events are rejected and counted apart."""
    data = tmp_path / "base" / "data"
    write_frames(data, 1)
    new(service)
    img = str(data / "img_00000.tif")
    for i in range(500):
        service.feeder_message(
            json.dumps({"command": "new file", "argument": f"/nonexistent/{i}.tif"}).encode()
        )
    forged = sign_request(
        "another secret of enough entropy 123", {"command": "new file", "argument": img}
    )
    service.feeder_message(json.dumps(forged).encode())
    service.feeder_message(b"\xff not json")
    f = stat(service)["feeder"]
    assert f["rejected"] == 502 and f["messages"] == 0 and f["files"] == 0
    ok = json.dumps(sign_request(SECRET, {"command": "new file", "argument": img})).encode()
    service.feeder_message(ok)
    service.feeder_message(ok)  # replayed: rejected
    assert wait_for(lambda: stat(service)["stat"]["pics"] == 1, 60)
    d = stat(service)
    assert d["feeder"]["files"] == 1 and d["feeder"]["rejected"] == 503
    assert d["errors"]["count"] == 0 and d["stat"]["images processed"] == 1


def test_rate_limited_log():
    import logging

    from gpusaxs.server.ratelimit import RateLimitedLog

    records = []

    class H(logging.Handler):
        def emit(self, r):
            records.append(r.getMessage())

    lg = logging.getLogger("test-ratelimit")
    lg.addHandler(H())
    lg.propagate = False
    rl = RateLimitedLog(lg, per_s=1e-6, burst=3)
    for i in range(10_000):
        rl.warning("bad event %d", i)
    assert len(records) == 3
    rl._tokens = 1.0
    rl.warning("again")
    assert records[-1] == "again (9997 similar messages suppressed)"


@pytest.mark.parametrize(
    "secret", ["aaaaaaaaaaaaaaaa", "abababababababababababab", "0000000011111111"]
)
def test_low_entropy_secret_refused(secret):
    from gpusaxs.server.netconfig import NetConfigError, parse_config

    with pytest.raises(NetConfigError, match="entropy"):
        parse_config({"ServerUrl": "tcp://a:1", "FeederUrl": "tcp://a:2", "Secret": secret})


def test_good_secrets_accepted():
    from gpusaxs.server.netconfig import new_secret, parse_config, secret_bits

    assert secret_bits(new_secret()) > 200
    for s in (new_secret(), SECRET, "correct horse battery staple"):
        parse_config({"ServerUrl": "tcp://a:1", "FeederUrl": "tcp://a:2", "Secret": s})


def test_build_manager_one_future_per_key_and_cancel():
    """Item 3 (unit): one build per key; cancel stops it at the next chunk; result raises."""
    import threading

    from gpusaxs.matrix import BuildCancelled
    from gpusaxs.server.builds import BuildManager

    started = threading.Event()
    calls = []

    def make(build):
        calls.append(1)
        started.set()
        for row in range(10_000):
            build.report(row, 10_000)
            time.sleep(0.001)
        return "integrator"

    m = BuildManager()
    b1 = m.get("k", make)
    b2 = m.get("k", make)
    assert b1 is b2
    assert started.wait(10)
    assert m.running()[0]["state"] == "building"
    t0 = time.monotonic()
    b1.cancel()
    with pytest.raises(BuildCancelled):
        b1.result(timeout=10)
    assert time.monotonic() - t0 < 1.0
    assert m.running() == [] and b1.state == "cancelled" and len(calls) == 1
    b3 = m.get("k", lambda b: "fast")
    assert b3 is not b1 and b3.result(timeout=10) == "fast"
    assert "k" in m and m.get("k", make) is b3


def test_build_matrix_should_stop():
    import numpy as np

    from gpusaxs.calibration_model import Calibration
    from gpusaxs.matrix import BuildCancelled, build_matrix

    cal = Calibration.from_dict(calibration_dict(oversampling=16), base_dir=".").replace(
        mask_file=None
    )
    seen = []
    with pytest.raises(BuildCancelled):
        build_matrix(
            cal,
            mask=np.zeros((200, 180), bool),
            should_stop=lambda: bool(seen),
            progress=lambda d, t: seen.append(d),
        )
    assert len(seen) == 1


class _Frame:
    def __init__(self, data):
        self.buffer = memoryview(data)


class _FakeSocket:
    """A REP socket stand-in: a queue of frames; recv of frame ``fail_at`` raises MemoryError."""

    def __init__(self, frames, fail_at=None):
        self.frames, self.fail_at, self.i, self.sent = list(frames), fail_at, 0, []

    def recv(self, copy=True, flags=0):
        i, self.i = self.i, self.i + 1
        if i == self.fail_at:
            raise MemoryError
        return _Frame(self.frames[i])

    def getsockopt(self, opt):
        return int(self.i < len(self.frames))

    def send(self, data):
        self.sent.append(json.loads(data))


def test_memory_error_in_receive_or_handling_answers_an_error(service, monkeypatch):
    """Item 1: a MemoryError while receiving (rest of the message drained) or handling a
    request is answered with an error; the next request is served."""
    from gpusaxs.server.saxsdogserver import _serve_one

    sock = _FakeSocket(signed({"command": "stat"}) + [b"x" * 1000] * 3, fail_at=1)
    _serve_one(sock, service)
    assert sock.i == 4 and sock.sent[0]["result"] == "Error"
    assert "out of memory" in sock.sent[0]["data"]["Error"]

    def oom(*a):
        raise MemoryError

    monkeypatch.setattr(service, "cmd_stat", oom)
    sock = _FakeSocket(signed({"command": "stat"}))
    _serve_one(sock, service)
    assert sock.sent[0]["result"] == "Error" and "out of memory" in sock.sent[0]["data"]["Error"]
    monkeypatch.undo()
    sock = _FakeSocket(signed({"command": "stat"}))
    _serve_one(sock, service)
    assert sock.sent[0]["result"] == "stat"


def test_too_many_frames_dropped_with_one_answer(service):
    from gpusaxs.server.saxsdogserver import _serve_one

    sock = _FakeSocket(signed({"command": "stat"}) + [b"y"] * 50)
    _serve_one(sock, service)
    assert sock.i == 51 and "too many frames" in sock.sent[0]["data"]["Error"]


def test_failed_build_fails_the_queue_not_the_server(tmp_path):
    """A build that runs out of memory: the queue reports it, the server answers on."""
    from gpusaxs.server.saxsdogserver import SaxsdogService

    class Boom:
        def __init__(self, *a, **k):
            raise MemoryError("matrix too large")

    base = tmp_path / "base"
    (base / "data").mkdir(parents=True)
    svc = SaxsdogService(
        base, SECRET, threads=1, batch_size=4, backend="numpy", integrator_class=Boom
    )
    try:
        new(svc)
        assert wait_for(lambda: stat(svc)["queue"]["state"] == "failed", 30)
        d = stat(svc)
        assert "MemoryError" in d["queue"]["failure"] and d["builds"] == []
    finally:
        svc.shutdown(timeout=30)


def test_new_refuses_a_calibration_beyond_the_library_limits(service):
    """Item 4's bounds in the server: 'new' answers the library's error, nothing is built."""

    import numpy as np

    from gpusaxs.io.masks import fit2d_mask_bytes

    shape = (2048, 2048)
    req, atts = P.new_request(
        calibration_dict(shape=shape, oversampling=16),
        "data",
        fit2d_mask_bytes(np.zeros(shape, bool)),
        "m.msk",
    )
    ans = ask(service, signed(req, atts))
    assert ans["result"] == "Error" and "Oversampling" in ans["data"]["Error"], ans
    assert service.queue is None and stat(service)["builds"] == []
