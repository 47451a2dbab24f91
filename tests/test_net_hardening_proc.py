"""Issue 15, service side, with real server processes on 127.0.0.1: memory before
authentication, builds beside the command loop (stat during a build, abort, SIGTERM), rogue
feeder, config permissions, CURVE, saxsleash plot -o.  Figures are printed (pytest -s)."""

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import zmq
from net_support import (
    REPO,
    SECRET,
    calibration_dict,
    env,
    free_port,
    leash,
    start_server,
    wait_for,
    write_config,
    write_frames,
    write_setup,
)

from gpusaxs.server import protocol as P

MB = 1 << 20


def status_kb(pid, field):
    with open(f"/proc/{pid}/status") as fh:
        for line in fh:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise KeyError(field)


def timed_stat(client):
    t0 = time.perf_counter()
    ans = client.request("stat", {})
    dt = time.perf_counter() - t0
    P.validate_response(ans)
    assert ans["result"] == "stat", ans
    return ans["data"], dt


@pytest.fixture
def net(tmp_path):
    base = tmp_path / "base"
    (base / "data").mkdir(parents=True)
    cfg = write_config(tmp_path / "net.json", 1, free_port())
    procs, clients = [], []
    yield {"tmp": tmp_path, "base": base, "cfg": cfg, "procs": procs, "clients": clients}
    for c in clients:
        c.close()
    for p in procs:
        p.kill()


def _answer_or_disconnect(sock, mon, timeout):
    """Wait until ``sock`` has an answer or its monitor ``mon`` reports a disconnect."""
    from zmq.utils.monitor import recv_monitor_message

    poller = zmq.Poller()
    poller.register(sock, zmq.POLLIN)
    poller.register(mon, zmq.POLLIN)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        ready = dict(poller.poll(100))
        if sock in ready:
            return "answer"
        if mon in ready and recv_monitor_message(mon)["event"] == zmq.EVENT_DISCONNECTED:
            return "disconnected"
    return None


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_unauthenticated_big_messages_keep_memory_bounded(net):
    """Item 1: oversized frames are dropped by libzmq before allocation; legal-size junk is
    answered with AuthenticationError; the server keeps answering; RSS growth measured."""
    srv = start_server(net["tmp"], net["base"], net["cfg"], ["-f", "none"])
    net["procs"].append(srv)
    url, pid = srv.info["url"], srv.info["pid"]
    client = P.Client(url, SECRET, timeout=10)
    net["clients"].append(client)
    timed_stat(client)
    rss0 = status_kb(pid, "VmRSS")
    ctx = zmq.Context()
    socks, mons = [], []
    try:
        # phase A: the attack, 4 frames of 60 MB per message, 6 peers (1.4 GB sent)
        big = b"\0" * (60 * MB)
        for _ in range(6):
            s = ctx.socket(zmq.DEALER)
            s.setsockopt(zmq.LINGER, 0)
            s.connect(url)
            mons.append(s.get_monitor_socket(zmq.EVENT_DISCONNECTED))
            socks.append(s)
        for s in socks:
            s.send_multipart([b"", b'{"command": "stat"}', big, big, big, big], copy=False)
        ended = 0
        for s, mon in zip(socks, mons, strict=True):
            # after the fix the server drops the peer (disconnect); before it, it answers
            if _answer_or_disconnect(s, mon, 60):
                ended += 1
        assert ended == len(socks)
        _, lat_a = timed_stat(client)
        hwm_a = status_kb(pid, "VmHWM")
        growth_a = (hwm_a - rss0) / 1024
        # phase B: messages of legal size (4 x 16 MB, under the 20 MiB frame limit), no secret
        mid = b"\1" * (16 * MB)
        answers = []
        for s in socks:
            s.send_multipart([b"", b'{"command": "stat"}', mid, mid, mid, mid], copy=False)
        for s in socks:
            assert s.poll(30_000), "no answer to an unauthenticated request"
            answers.append(json.loads(s.recv_multipart()[-1]))
        assert all(a["result"] == "AuthenticationError" for a in answers), answers
        # phase C: a message with many frames: one error answer, frames dropped
        socks[0].send_multipart([b"", b"{}"] + [b"x" * 1000] * 200)
        assert socks[0].poll(30_000)
        ans = json.loads(socks[0].recv_multipart()[-1])
        assert ans["result"] == "Error" and "too many frames" in ans["data"]["Error"], ans
        _, lat_b = timed_stat(client)
        hwm_b = status_kb(pid, "VmHWM")
        growth_b = (hwm_b - rss0) / 1024
        rss_end = status_kb(pid, "VmRSS")
    finally:
        for s in socks + mons:
            s.close(0)
        ctx.term()
    print(
        f"\nRSS before {rss0 / 1024:.0f} MB; peak growth after 6 peers x 4 x 60 MB: "
        f"{growth_a:.0f} MB (stat {lat_a * 1e3:.0f} ms); after 6 x 4 x 16 MB unauthenticated: "
        f"{growth_b:.0f} MB (stat {lat_b * 1e3:.0f} ms); RSS at end {rss_end / 1024:.0f} MB"
    )
    assert srv.p.poll() is None  # alive
    assert growth_a < 100, growth_a  # 60 MB frames never allocated
    assert growth_b < 6 * 4 * 16 + 150, growth_b  # at most what was queued, no copy
    assert srv.stop() == 0


def _new(client, cal, mask_shape):
    from gpusaxs.io.masks import fit2d_mask_bytes

    req, atts = P.new_request(cal, "data", fit2d_mask_bytes(np.zeros(mask_shape, bool)), "m.msk")
    t0 = time.perf_counter()
    ans = client.request("new", req["argument"], atts)
    dt = time.perf_counter() - t0
    assert ans["result"] == "new queue", ans
    return ans, dt


def test_big_build_beside_the_loop_abort_and_sigterm(net):
    """Item 3: a 2048^2 Oversampling-8 build (minutes) runs beside the command loop: stat
    answers during it with progress, a second 'new' answers at once and cancels it, abort
    and SIGTERM act within about a second."""
    shape = (2048, 2048)
    cal_a = calibration_dict(shape=shape, oversampling=8)  # 268 M sub-pixels
    cal_b = dict(cal_a, DedectorDistanceMM=800.0)
    cal_c = dict(cal_a, DedectorDistanceMM=700.0)
    srv = start_server(net["tmp"], net["base"], net["cfg"], ["-f", "none"])
    net["procs"].append(srv)
    client = P.Client(srv.info["url"], SECRET, timeout=10)
    net["clients"].append(client)
    _, t_new_a = _new(client, cal_a, shape)
    lat, seen = [], []

    def progressing():
        d, dt = timed_stat(client)
        lat.append(dt)
        builds = [b for b in d["builds"] if b["state"] == "building"]
        if builds:
            seen.append(builds[0]["rows"][0])
            assert d["queue"]["state"] == "building"
        return len(set(seen)) >= 3

    assert wait_for(progressing, 120, interval=0.05), seen
    assert seen == sorted(seen) and seen[-1] < shape[0]
    # a second 'new' with another calibration: answered at once, the first build cancelled
    ans_b, t_new_b = _new(client, cal_b, shape)
    key_b = ans_b["data"]["cal"]["key"]
    t0 = time.perf_counter()
    assert wait_for(
        lambda: [b["key"] for b in timed_stat(client)[0]["builds"]] == [key_b], 10, interval=0.02
    )
    t_cancel = time.perf_counter() - t0
    # abort: the build stops within a chunk
    t0 = time.perf_counter()
    ans = client.request("abort", {})
    assert ans["result"] == "queue stopped emptied and closed", ans
    assert wait_for(lambda: timed_stat(client)[0]["builds"] == [], 10, interval=0.02)
    t_abort = time.perf_counter() - t0
    assert timed_stat(client)[0]["queue"]["state"] == "aborted"
    # SIGTERM during a build
    _new(client, cal_c, shape)
    assert wait_for(
        lambda: any(b["rows"][0] > 0 for b in timed_stat(client)[0]["builds"]), 60, interval=0.05
    )
    t0 = time.perf_counter()
    srv.p.send_signal(signal.SIGTERM)
    rc = srv.p.wait(30)
    t_term = time.perf_counter() - t0
    print(
        f"\nnew answered in {t_new_a * 1e3:.0f} ms, second new {t_new_b * 1e3:.0f} ms; stat "
        f"during the build: median {np.median(lat) * 1e3:.1f} ms, max {max(lat) * 1e3:.0f} ms "
        f"({len(lat)} calls); first build gone {t_cancel:.2f} s after the second new; "
        f"abort -> no build {t_abort:.2f} s; SIGTERM -> exit {t_term:.2f} s"
    )
    assert rc == 0
    assert t_new_b < 5 and t_abort < 5 and t_term < 5  # ~1 s; loose for a loaded CI box


def test_rogue_publisher_on_the_feeder_port(net):
    """Item 7: a publisher without the secret: 20000 events rejected, counted apart, no error
    records, a few log lines; a signed heartbeat is accepted."""
    from gpusaxs.server.auth import sign_request

    fport = free_port()
    cfg = write_config(net["tmp"] / "feed.json", 1, fport)
    ctx = zmq.Context()
    pub = ctx.socket(zmq.XPUB)
    pub.setsockopt(zmq.SNDHWM, 0)
    pub.bind(f"tcp://127.0.0.1:{fport}")
    try:
        srv = start_server(net["tmp"], net["base"], cfg, ["-f", f"tcp://127.0.0.1:{fport}"])
        net["procs"].append(srv)
        assert pub.poll(30_000) and pub.recv()[:1] == b"\x01"  # the server subscribed
        client = P.Client(srv.info["url"], SECRET, timeout=10)
        net["clients"].append(client)
        cal, msk = write_setup(net["tmp"])
        rc, ans, err = leash(cfg, srv.info["url"], "new", cal, msk, "data")
        assert rc == 0, err
        n = 20_000
        for i in range(n):
            pub.send(
                json.dumps(
                    {"command": "new file", "argument": str(net["base"] / "data" / f"no_{i}.tif")}
                ).encode()
            )
        pub.send(json.dumps(sign_request(SECRET, {"command": "heartbeat"})).encode())
        assert wait_for(lambda: timed_stat(client)[0]["feeder"]["messages"] == 1, 60, interval=0.1)
        d = timed_stat(client)[0]
        assert d["feeder"]["rejected"] == n and d["feeder"]["files"] == 0, d["feeder"]
        assert d["errors"]["count"] == 0 and d["stat"]["images processed"] == 0
        assert srv.stop() == 0
        lines = [ln for ln in srv.output().splitlines() if "rejected a feeder message" in ln]
        print(f"\n{n} rogue events: rejected {d['feeder']['rejected']}, {len(lines)} log lines")
        assert 1 <= len(lines) <= 60
    finally:
        pub.close(0)
        ctx.term()


def test_group_readable_config_refused_by_server_warned_by_leash(net):
    """Item 8: a config readable by others: the server refuses to start, saxsleash warns."""
    cfg = net["cfg"]
    os.chmod(cfg, 0o644)
    try:
        r = subprocess.run(
            [
                sys.executable,
                "-m",
                "gpusaxs.server.saxsdogserver",
                "--config",
                str(cfg),
                "-p",
                "0",
                str(net["base"]),
            ],
            cwd=REPO,
            env=env(),
            capture_output=True,
            text=True,
            timeout=30,
        )
    except subprocess.TimeoutExpired:
        pytest.fail("the server started with a group-readable configuration")
    assert r.returncode == 2 and "chmod 600" in r.stderr, r.stderr
    rc, _, err = leash(
        cfg, f"tcp://127.0.0.1:{free_port()}", "stat", "--timeout", "0.3", "--retries", "0"
    )
    assert rc == 3 and "warning" in err and "chmod 600" in err


def test_curve_drops_peers_without_the_key_and_leash_plot_png(net):
    """CURVE option: a client without the derived keys gets no answer; saxsleash (config
    "Curve": true) works; plot --once -o writes the PNG and prints no JSON."""
    cfg_data = json.loads(net["cfg"].read_text())
    cfg_data["Curve"] = True
    net["cfg"].write_text(json.dumps(cfg_data))
    cal, msk = write_setup(net["tmp"])
    write_frames(net["base"] / "data", 3)
    srv = start_server(net["tmp"], net["base"], net["cfg"], ["-f", "none"])
    net["procs"].append(srv)
    url = srv.info["url"]
    plain = P.Client(url, SECRET, timeout=1, retries=0)
    net["clients"].append(plain)
    with pytest.raises(P.NoAnswer):
        plain.request("stat", {})
    good = P.Client(url, SECRET, timeout=10, curve=True)
    net["clients"].append(good)
    assert timed_stat(good)[0]["stat"]["pics"] == 0
    rc, ans, err = leash(net["cfg"], url, "new", cal, msk, "data")
    assert rc == 0, err
    assert leash(net["cfg"], url, "readdir")[0] == 0
    assert wait_for(lambda: timed_stat(good)[0]["stat"]["pics"] == 3, 60, interval=0.1)
    png = net["tmp"] / "p.png"
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "gpusaxs.clients.saxsleash",
            "plot",
            "--once",
            "-o",
            str(png),
            "--config",
            str(net["cfg"]),
            "-S",
            url,
        ],
        cwd=REPO,
        env=env(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 0 and r.stdout == "" and png.stat().st_size > 1000, r.stderr
    assert "saved" in r.stderr
    assert srv.stop() == 0


def test_leash_plot_defaults_to_log_y():
    from gpusaxs.clients.saxsleash import build_parser

    assert build_parser().parse_args(["plot"]).yaxisistype == "log"
