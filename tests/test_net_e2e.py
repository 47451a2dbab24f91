"""End to end on loopback with real processes: saxsnetconf, saxsfeeder, saxsdogserver, saxsleash."""

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
from net_support import (
    REPO,
    Proc,
    chi_files,
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
from gpusaxs.server.auth import sign_request


def stat(client):
    ans = client.request("stat", {})
    P.validate_response(ans)
    assert ans["result"] == "stat", ans
    return ans["data"]


def wait_done(client, n, timeout):
    last = {}

    def done():
        d = stat(client)
        last.update(d)
        s = d["stat"]
        return s["pics"] + d["errors"]["count"] >= n and s["queue length"] == 0

    ok = wait_for(done, timeout, interval=0.2)
    assert ok, f"not done within {timeout} s: {last}"
    return last


def check_curves(base_data, n_images):
    from gpusaxs.io.chi import read_chi

    images = sorted(Path(base_data).glob("*.tif"))
    curves = chi_files(base_data)
    assert len(images) == n_images
    assert [c.stem for c in curves] == [i.stem for i in images]  # exactly one per image
    assert all(c.parent.name == "work" for c in curves)
    n_rows = {len(read_chi(c).q) for c in curves}  # all complete
    assert len(n_rows) == 1
    return curves


@pytest.fixture
def setup(tmp_path):
    sport, fport = free_port(), free_port()
    cfg = tmp_path / "net.json"
    from gpusaxs.clients.saxsnetconf import main as netconf

    assert (
        netconf(
            [
                "--config",
                str(cfg),
                "--server",
                f"tcp://127.0.0.1:{sport}",
                "--feeder",
                f"tcp://127.0.0.1:{fport}",
            ]
        )
        == 0
    )
    base = tmp_path / "base"
    (base / "data").mkdir(parents=True)
    cal, msk = write_setup(tmp_path)
    secret = json.loads(cfg.read_text())["Secret"]
    procs = []
    yield {
        "cfg": cfg,
        "base": base,
        "cal": cal,
        "msk": msk,
        "secret": secret,
        "sport": sport,
        "fport": fport,
        "procs": procs,
        "tmp": tmp_path,
    }
    for p in procs:
        p.kill()


@pytest.mark.slow
def test_feeder_server_leash_1000_frames(setup):
    s = setup
    feeder = Proc(
        "gpusaxs.server.feeder",
        [
            "--config",
            s["cfg"],
            "--bind",
            "127.0.0.1",
            "-d",
            s["base"] / "data",
            "--heartbeat",
            "0.2",
        ],
        s["tmp"] / "feeder.ready",
        s["tmp"] / "feeder.log",
    )
    s["procs"].append(feeder)
    srv = Proc(
        "gpusaxs.server.saxsdogserver",
        ["--config", s["cfg"], "--bind", "127.0.0.1", "-t", "2", s["base"]],
        s["tmp"] / "server.ready",
        s["tmp"] / "server.log",
    )
    s["procs"].append(srv)
    url = f"tcp://127.0.0.1:{s['sport']}"
    client = P.Client(url, s["secret"], timeout=10)
    try:
        # the subscription is up once the server has seen a heartbeat
        assert wait_for(lambda: stat(client)["feeder"]["messages"] > 0, 30)
        rc, ans, err = leash(s["cfg"], url, "new", s["cal"], s["msk"], "data")
        assert rc == 0 and ans["result"] == "new queue", err
        n = 1000
        t0 = time.monotonic()
        write_frames(s["base"] / "data", n // 2, atomic=False)  # written in place
        write_frames(s["base"] / "data", n - n // 2, start=n // 2)  # renamed into place
        d = wait_done(client, n, 120)
        dt = time.monotonic() - t0
        assert d["stat"]["pics"] == n and d["errors"]["count"] == 0, d
        assert d["stat"]["images processed"] == n
        assert d["stat"]["frames per sec"] > 0
        check_curves(s["base"] / "data", n)
        print(f"\n{n} frames through feeder+server in {dt:.1f} s ({n / dt:.0f} frames/s)")
        # leash prints the answer, plot --once -o writes a PNG
        rc, ans, _ = leash(s["cfg"], url, "stat")
        assert rc == 0 and ans["data"]["stat"]["pics"] == n
        png = s["tmp"] / "plot.png"
        rc, ans, err = leash(s["cfg"], url, "plot", "--once", "-o", png, "-x", "log", "-s", "2")
        assert rc == 0 and ans is None and png.stat().st_size > 1000, err  # no JSON dump
        rc, ans, err = leash(s["cfg"], url, "plot", "--once", "-o", png, "--json")
        assert rc == 0 and ans["result"] == "plot data", err
        # overwrite one image: published again and integrated again
        before = (s["base"] / "data" / "work" / "img_00007.chi").stat().st_mtime_ns
        time.sleep(0.01)
        write_frames(s["base"] / "data", 1, start=7, atomic=False)
        assert wait_for(lambda: stat(client)["stat"]["pics"] == n + 1, 30)
        assert (s["base"] / "data" / "work" / "img_00007.chi").stat().st_mtime_ns > before
        rc, ans, _ = leash(s["cfg"], url, "close")
        assert rc == 0 and ans["result"] == "queue closed"
        write_frames(s["base"] / "data", 3, start=n + 10)  # ignored after close
        rc, ans, _ = leash(s["cfg"], url, "abort")
        assert ans["result"] == "queue stopped emptied and closed"
        assert stat(client)["stat"]["pics"] == n + 1
    finally:
        client.close()
    assert srv.stop() == 0  # SIGTERM: clean shutdown
    assert "stopped" in srv.output()
    assert feeder.stop() == 0


@pytest.mark.slow
def test_kill_mid_run_and_restart(setup):
    from gpusaxs.io.chi import read_chi

    s = setup
    n = 600
    write_frames(s["base"] / "data", n)
    srv = start_server(s["tmp"], s["base"], s["cfg"], ["-f", "none", "-t", "1", "-b", "4"])
    s["procs"].append(srv)
    url = srv.info["url"]
    client = P.Client(url, s["secret"], timeout=10)
    rc, ans, err = leash(s["cfg"], url, "new", s["cal"], s["msk"], "data")
    assert rc == 0, err
    leash(s["cfg"], url, "readdir")
    assert wait_for(lambda: stat(client)["stat"]["pics"] >= 60, 60, interval=0.02)
    srv.kill()  # SIGKILL mid-run
    client.close()
    done_before = chi_files(s["base"] / "data")
    assert 60 <= len(done_before) < n, len(done_before)
    for c in done_before:  # complete curves only, no partial .chi
        assert len(read_chi(c).q) > 10
    srv2 = start_server(s["tmp"], s["base"], s["cfg"], ["-f", "none"], name="server2")
    s["procs"].append(srv2)
    client = P.Client(srv2.info["url"], s["secret"], timeout=10)
    try:
        rc, ans, err = leash(s["cfg"], srv2.info["url"], "new", s["cal"], s["msk"], "data")
        assert rc == 0, err
        leash(s["cfg"], srv2.info["url"], "readdir")
        assert wait_for(
            lambda: (
                stat(client)["queue"]["skipped"] + stat(client)["stat"]["pics"] == n
                and stat(client)["stat"]["queue length"] == 0
            ),
            90,
            interval=0.2,
        )
        d = stat(client)
        assert d["queue"]["skipped"] == len(done_before)  # nothing done twice
        assert d["stat"]["pics"] == n - len(done_before)  # nothing lost
        assert d["errors"]["count"] == 0
    finally:
        client.close()
    check_curves(s["base"] / "data", n)
    assert srv2.stop() == 0


def test_watch_mode_security_and_robustness_over_the_wire(setup):
    s = setup
    srv = start_server(s["tmp"], s["base"], s["cfg"], ["-w", "--time-window", "60"])
    s["procs"].append(srv)
    url = srv.info["url"]
    client = P.Client(url, s["secret"], timeout=10)
    try:
        rc, ans, err = leash(s["cfg"], url, "new", s["cal"], s["msk"], "data", "--maskbin")
        assert rc == 0, err
        write_frames(s["base"] / "data", 20, atomic=False)
        d = wait_done(client, 20, 60)
        assert d["stat"]["pics"] == 20
        # wrong secret
        bad_cfg = write_config(s["tmp"] / "bad.json", 1, secret="not the right secret at all")
        rc, ans, err = leash(bad_cfg, url, "stat")
        assert rc == 1 and ans["result"] == "AuthenticationError"
        assert s["secret"] not in json.dumps(ans) + err
        # stale time, replay, path traversal
        assert client.request("stat", now=time.time() - 120)["result"] == "AuthenticationError"
        frames = [json.dumps(sign_request(s["secret"], {"command": "stat"})).encode()]
        assert client.request_raw(frames)["result"] == "stat"
        assert client.request_raw(frames)["result"] == "AuthenticationError"
        rc, ans, _ = leash(s["cfg"], url, "listdir", "../..")
        assert rc == 1 and "outside" in ans["data"]["Error"]
        # garbage over the wire
        for junk in (
            [b""],
            [b"\xff\xfe"],
            [b"[]"],
            [b"{}"],
            [b'{"command": "stat"}'],
            [b"{" * 5000],
            [b"null", b"x", b"y"],
            [b"1e999999"],
        ):
            ans = client.request_raw(junk)
            assert ans["result"] in ("Error", "AuthenticationError"), (junk, ans)
        assert stat(client)["stat"]["pics"] == 20  # still serving
    finally:
        client.close()
    # no answer: clear message, exit 3
    dead = free_port()
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "gpusaxs.clients.saxsleash",
            "stat",
            "--config",
            s["cfg"],
            "-S",
            f"tcp://127.0.0.1:{dead}",
            "--timeout",
            "0.3",
            "--retries",
            "1",
        ],
        capture_output=True,
        text=True,
        cwd=REPO,
        env=env(),
        timeout=60,
    )
    assert r.returncode == 3 and "no answer" in r.stderr
    assert srv.stop() == 0
