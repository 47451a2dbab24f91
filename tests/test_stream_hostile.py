"""Hostile or broken detector streams against the real server process (issue 23 cases 1-7, 18).

A simulated detector (a bound PUSH socket on loopback) feeds ``python -m
gpusaxs.server.saxsdogserver --detector ...``; real-size frames (PILATUS 1M, 1043 x 981).
Every image id must end as exactly one row or one error record, the server keeps answering,
and nothing is written outside the output folder.
"""

import json
import os
import signal
import subprocess
import sys
import threading

import numpy as np
import pytest

zmq = pytest.importorskip("zmq")
pytest.importorskip("cbor2")
pytest.importorskip("bitshuffle")

from net_support import env, wait_for
from test_stream_e2e import (  # noqa: F401 - setup is a fixture
    PX,
    Detector,
    error_records,
    series_stat,
    setup,
    start_server,
    streams,
    wait_series,
)

from gpusaxs.clients.saxsdetsim import Encoder, publish_series, send
from gpusaxs.io.nexus import read_nxazint
from gpusaxs.server.stream import v2

pytestmark = pytest.mark.slow


def _serve(setup, tmp_path, det, *extra):  # noqa: F811 - the fixture value
    """start_server, closing the detector socket if the server does not start."""
    try:
        return start_server(setup, tmp_path, det.url, 2, *extra)
    except BaseException:
        det.close()
        raise


def _image(sid, iid, f, uid="h"):
    return [v2.encode_image(sid, uid, iid, f, "bslz4")]


def _raw(msg):
    import cbor2

    return [cbor2.dumps(msg)]


def test_hostile_messages_never_stop_the_stream(setup, tmp_path):  # noqa: F811 - the imported fixture
    """Cases 1, 2, 3, 7: 2**62 announced images, an array modifier, image_id 2**63, a bignum
    series_id, 25 stray series; the live series loses nothing, stat answers, later series work."""
    import cbor2

    det = Detector(2)
    proc, client, out = _serve(setup, tmp_path, det)
    f = setup["frames"]["uint32"]
    try:
        send(det.sock, [v2.encode_start(1, "h", f[0].shape, PX, 8)])
        for i in range(3):
            send(det.sock, _image(1, i, f[i % 4]))
        tiny = np.zeros((2, 2), np.uint32)
        for k in range(25):  # strays of series never started
            send(det.sock, _image(100 + k, 0, tiny))
        bad_mod = cbor2.CBORTag(
            40, [[1043, 981], cbor2.CBORTag(70, cbor2.CBORTag(56500, ["bslz4", [4], b"x"]))]
        )
        send(
            det.sock, _raw({"type": "image", "series_id": 1, "image_id": 3, "data": {"t": bad_mod}})
        )
        send(det.sock, _raw({"type": "image", "series_id": 1, "image_id": 2**63, "data": {}}))
        send(det.sock, _raw({"type": "end", "series_id": 10**5000}))
        send(det.sock, [v2.encode_start(2, "huge", f[0].shape, PX, 2**62)])
        send(det.sock, [v2.encode_end(2, "huge")])
        st2 = wait_for(lambda: (series_stat(client, 2) or {}).get("state") == "done", 30, 0.1)
        assert st2, series_stat(client, 2)
        assert series_stat(client, 2)["missing"] == 2**62
        for i in range(4, 8):
            send(det.sock, _image(1, i, f[i % 4]))
        send(det.sock, [v2.encode_end(1, "h")])
        st = wait_series(client, 1)
        assert st["integrated"] == 7 and st["missing"] == 1 and st["lag"] == 0, st
        assert sorted(read_nxazint(out / "series_1.nxs")["image_ids"].tolist()) == [
            0,
            1,
            2,
            4,
            5,
            6,
            7,
        ]
        (miss,) = [r for r in error_records(out, 1) if r["kind"] == "missing"]
        assert miss["ranges"] == [[3, 4]]
        info = streams(client)
        assert info["failed"] == {}
        assert info["malformed"] >= 2  # the bad modifier and the bignum end name no series
        json.dumps(info)  # the answer holds no bignum
        det.series(3, f, 6, "bslz4")  # the consumer is alive for later series
        assert wait_series(client, 3)["integrated"] == 6
    finally:
        proc.stop()
        det.close()
    assert proc.p.returncode == 0, proc.output()


def test_chi_failure_is_a_record_and_links_are_never_followed(setup, tmp_path):  # noqa: F811 - the imported fixture
    """Cases 2 and 4: a file named like the --chi folder makes records, not a dead writer;
    links planted in the output folder (error logs, a dangling .nxs, the --chi folder) are
    neither followed nor written through."""
    out = tmp_path / "out"
    outside = tmp_path / "outside"
    out.mkdir()
    outside.mkdir()
    (out / "series_1").write_text("a file where the .chi folder goes\n")
    os.symlink(outside / "stream.jsonl", out / "stream.errors.jsonl")
    os.symlink(outside / "s2.jsonl", out / "series_2.errors.jsonl")
    os.symlink(outside / "s2.nxs", out / "series_2.nxs")  # dangling
    os.symlink(outside, out / "series_2")
    det = Detector(2)
    proc, client, _ = _serve(setup, tmp_path, det, "--chi")
    f = setup["frames"]["uint32"]
    try:
        det.series(1, f, 4, "bslz4")
        st = wait_series(client, 1)
        assert st["integrated"] == 4
        assert any(r["kind"] == "chi" for r in error_records(out, 1))
        send(det.sock, [b"\xff not cbor"])  # a record for stream.errors.jsonl
        send(det.sock, [v2.encode_start(2, "l", f[0].shape, PX, 3)])
        for i in (0, 1, 1, 2):  # one duplicate: a record for series_2.errors.jsonl
            send(det.sock, _image(2, i, f[i]))
        send(det.sock, [v2.encode_end(2, "l")])
        st = wait_series(client, 2)
        assert st["integrated"] == 3 and st["duplicates"] == 1
        assert st["file"] == "series_2.2.nxs"
        assert wait_for(lambda: streams(client)["malformed"] == 1, 30, 0.1)
        assert os.listdir(outside) == []
        assert os.path.islink(out / "series_2.nxs") and not os.path.exists(out / "series_2.nxs")
        recent = json.dumps(streams(client)["recent errors"])
        assert "chi" in recent
        det.series(4, f, 2, "bslz4")  # and the writer is alive
        assert wait_series(client, 4)["integrated"] == 2
    finally:
        proc.stop()
        det.close()
    assert proc.p.returncode == 0, proc.output()


def test_kill_9_then_restart_resumes_the_series_and_records_the_gap(setup, tmp_path):  # noqa: F811 - the imported fixture
    """Case 5: with --calibration, frames after a kill -9 and restart continue series 1 in
    series_1.2.nxs; every id is in one of the two files or in the missing record."""
    det = Detector(2, sndtimeo_ms=60_000)
    proc, client, out = _serve(setup, tmp_path, det)
    f = setup["frames"]["uint32"]
    halt = threading.Event()
    sent = []

    def progress(i):
        sent.append(i)
        if halt.is_set():
            raise InterruptedError

    def run():
        try:
            publish_series(
                det.sock,
                Encoder(2, "bslz4"),
                f,
                100_000,
                1,
                PX,
                rate=100,
                unique_id="r",
                progress=progress,
            )
        except (InterruptedError, zmq.ZMQError):
            pass

    sender = threading.Thread(target=run, daemon=True)
    sender.start()
    try:
        ok = wait_for(lambda: ((series_stat(client, 1) or {}).get("flushed") or 0) >= 30, 120, 0.1)
        assert ok, series_stat(client, 1)
        proc.stop(signal.SIGKILL)
        proc, client, out = start_server(setup, tmp_path, det.url, 2)
        ok = wait_for(
            lambda: ((series_stat(client, 1) or {}).get("integrated") or 0) >= 30, 120, 0.1
        )
        assert ok, (series_stat(client, 1), proc.output())
        halt.set()
        sender.join(30)
        assert not sender.is_alive()
        last = len(sent)  # images 0 .. last-1 were handed to the socket
        send(det.sock, [v2.encode_end(1, "r")])
        st = wait_series(client, 1)
        assert st["resumed"]["file"] == "series_1.nxs" and st["file"] == "series_1.2.nxs"
    finally:
        halt.set()
        proc.stop()
        det.close()
    before = read_nxazint(out / "series_1.nxs")["image_ids"].tolist()
    after = read_nxazint(out / "series_1.2.nxs")["image_ids"].tolist()
    recs = error_records(out, 1)
    (miss,) = [r for r in recs if r["kind"] == "missing"]
    gap = [i for a, b in miss["ranges"] for i in range(a, b)]
    assert any(r["kind"] == "resumed" for r in recs)
    others = [r["image_id"] for r in recs if r["image_id"] is not None]
    every = before + after + gap + others
    assert sorted(every) == list(range(max(every) + 1))  # each id exactly once
    assert max(every) + 1 >= last - 1000 and len(after) >= 30


def test_a_publisher_that_disappears_ends_the_series_after_the_timeout(setup, tmp_path):  # noqa: F811 - the imported fixture
    """Case 6: --stream-timeout 2: a series whose publisher vanished after 4 of 10 frames ends,
    its 6 missing ids reported."""
    det = Detector(2)
    proc, client, out = _serve(setup, tmp_path, det, "--stream-timeout", "2")
    f = setup["frames"]["uint32"]
    try:
        send(det.sock, [v2.encode_start(1, "gone", f[0].shape, PX, 10)])
        for i in range(4):
            send(det.sock, _image(1, i, f[i]))
        det.close()  # the publisher disappears
        det = None
        st = wait_series(client, 1, timeout=60)
        assert st["integrated"] == 4 and st["missing"] == 6
        assert st["ended by"].startswith("inactivity")
        (miss,) = [r for r in error_records(out, 1) if r["kind"] == "missing"]
        assert miss["ranges"] == [[4, 10]] and "inactivity" in miss["error"]
    finally:
        proc.stop()
        if det is not None:
            det.close()
    assert proc.p.returncode == 0, proc.output()


def test_saxsdetsim_binds_loopback_by_default(tmp_path):
    """Case 18 (simulator half): the default endpoint is 127.0.0.1, as the server's."""
    ready = tmp_path / "ready.json"
    p = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "gpusaxs.clients.saxsdetsim",
            "--frames",
            "1",
            "--ready-file",
            str(ready),
        ],
        env=env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        assert wait_for(lambda: ready.exists() or p.poll() is not None, 60)
        assert ready.exists(), p.stderr.read().decode()
        url = json.loads(ready.read_text())["url"]
        assert url.startswith("tcp://127.0.0.1:"), url
    finally:
        p.kill()
        p.wait(10)
