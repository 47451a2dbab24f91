"""The service run as users run it (issues 22 and 23): fresh output folders, paths with spaces,
a folder named ``work`` above the base, same-stem images, paths in answers."""

import json
import os
import subprocess
import sys
import time

import numpy as np
import pytest
import zmq
from net_support import (
    REPO,
    SECRET,
    Proc,
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


@pytest.fixture
def site(tmp_path):
    """A base folder with spaces in its path, below a folder named ``work``."""
    root = tmp_path / "work" / "beam time"
    base = root / "base dir"
    (base / "run 1").mkdir(parents=True)
    cal, msk = write_setup(root / "setup")
    cfg = write_config(root / "net.json", free_port(), free_port())
    procs = []
    yield {"root": root, "base": base, "cal": cal, "msk": msk, "cfg": cfg, "procs": procs}
    for p in procs:
        p.kill()


def _stat(client):
    ans = client.request("stat", {})
    P.validate_response(ans)
    return ans["data"]


def _finished(client, n):
    def done():
        d = _stat(client)
        s = d["stat"]
        return d if s["pics"] + d["errors"]["count"] >= n and s["queue length"] == 0 else None

    return wait_for(done, 60, interval=0.1)


@pytest.mark.parametrize("where", ["inside", "outside"])
def test_out_dir_created_and_failed_frames_counted_apart(site, tmp_path, where):
    """Issue 22 case 1: -o DIR that does not exist yet (inside the base folder, as in
    docs/network.md, or beside it); stat counts failures apart."""
    top = site["base"] if where == "inside" else site["root"]
    out = top / "curves new" / "deep"  # neither level exists yet
    n = 4
    write_frames(site["base"] / "run 1", n)
    (site["base"] / "run 1" / "broken.tif").write_bytes(b"not a tiff at all")
    srv = start_server(
        tmp_path, site["base"], site["cfg"], ["-f", "none", "--settle", "0", "-o", out]
    )
    site["procs"].append(srv)
    url = srv.info["url"]
    rc, ans, err = leash(site["cfg"], url, "new", site["cal"], site["msk"], "run 1")
    assert rc == 0, err
    rc, ans, err = leash(site["cfg"], url, "readdir")
    assert rc == 0, err
    with P.Client(url, SECRET, timeout=10) as client:
        d = _finished(client, n + 1)
    assert d, _stat
    assert d["stat"]["pics"] == n, d
    assert d["stat"]["images processed"] == n, d  # curves only
    assert d["stat"]["images failed"] == 1, d
    assert [e["file"] for e in d["errors"]["recent"]] == [os.path.join("run 1", "broken.tif")]
    assert sorted(p.name for p in out.glob("*.chi")) == [f"img_{i:05d}.chi" for i in range(n)]
    assert srv.stop() == 0


def test_feeder_publishes_below_a_work_folder_and_says_what_it_skips(site, tmp_path):
    """Issue 22 case 3: a folder named work above the watched one; -v names what is skipped."""
    port = free_port()
    cfg = write_config(tmp_path / "feeder.json", 1, port)
    watched = site["base"] / "run 1"
    (watched / "work").mkdir()  # before the watch starts (inotify adds new folders late)
    ctx = zmq.Context()
    sub = ctx.socket(zmq.SUB)
    sub.setsockopt(zmq.SUBSCRIBE, b"")
    sub.setsockopt(zmq.RCVTIMEO, 200)
    sub.connect(f"tcp://127.0.0.1:{port}")
    feeder = Proc(
        "gpusaxs.server.feeder",
        ["--config", cfg, "-v", "-d", watched, "--heartbeat", "0.1", "--settle", "0.1"],
        tmp_path / "f.ready",
        tmp_path / "f.log",
    )
    site["procs"].append(feeder)
    got = []

    def new_files():
        try:
            msg = json.loads(sub.recv())
        except zmq.Again:
            return False
        if msg.get("command") == "new file":
            got.append(msg["argument"])
        return any(p.endswith("img_00000.tif") for p in got)

    try:
        assert wait_for(lambda: _heartbeat(sub), 20)
        write_frames(watched / "work", 1, prefix="curve_")  # below the watched folder: skipped
        write_frames(watched, 1)
        assert wait_for(new_files, 20), (got, feeder.output())
        assert not any("curve_" in p for p in got)
        assert wait_for(lambda: "curve_00000.tif" in feeder.output(), 10), feeder.output()
        assert "skipped" in feeder.output()
    finally:
        sub.close(0)
        ctx.term()
        feeder.stop()


def _heartbeat(sub):
    try:
        return json.loads(sub.recv()).get("command") == "heartbeat"
    except zmq.Again:
        return False


def test_feeder_binds_loopback_by_default(site, tmp_path):
    """Issue 23 case 18 (feeder half): no --bind means 127.0.0.1."""
    cfg = write_config(tmp_path / "feeder.json", 1, 0)
    feeder = Proc(
        "gpusaxs.server.feeder",
        ["--config", cfg, "-p", "0", "-d", site["base"]],
        tmp_path / "f.ready",
        tmp_path / "f.log",
    )
    site["procs"].append(feeder)
    assert feeder.info["url"].startswith("tcp://127.0.0.1:"), feeder.info
    out = subprocess.run(
        [sys.executable, "-m", "gpusaxs.server.feeder", "--help"],
        cwd=str(REPO),
        env=env(),
        capture_output=True,
        text=True,
    ).stdout
    assert "default 127.0.0.1" in out


def _leash(*args, timeout=30):
    return subprocess.run(
        [sys.executable, "-m", "gpusaxs.clients.saxsleash", *map(str, args)],
        cwd=str(REPO),
        env=env(),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def test_leash_options_before_any_command(site, tmp_path):
    """Issue 22 case 4: --config before the command (dashboard included); --help lists it."""
    r = _leash("--help")
    assert r.returncode == 0 and "dashboard" in r.stdout.split("examples:")[0], r.stdout
    r = _leash("--config", site["cfg"], "dashboard", "--help")
    assert r.returncode == 0 and "saxsleash dashboard" in r.stdout, r.stderr
    ready = tmp_path / "dash.ready.json"
    p = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "gpusaxs.clients.saxsleash",
            "--config",
            str(site["cfg"]),
            "dashboard",
            "--port",
            "0",
            "--ready-file",
            str(ready),
        ],
        cwd=str(REPO),
        env=env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert wait_for(lambda: ready.exists() or p.poll() is not None, 60)
        assert ready.exists(), p.communicate(timeout=10)
    finally:
        p.terminate()
        p.wait(30)


def test_leash_new_without_mask_and_no_server(site, tmp_path):
    """Issue 22 case 4: new CAL DIR when the calibration names its mask; no server: fast."""
    cal = json.loads(site["cal"].read_text())
    cal["MaskFile"] = str(site["msk"])
    cal_file = site["root"] / "setup" / "cal with mask.json"
    cal_file.write_text(json.dumps(cal))
    dead = f"tcp://127.0.0.1:{free_port()}"
    t0 = time.monotonic()
    r = _leash("--config", site["cfg"], "-S", dead, "new", cal_file, "run 1", timeout=60)
    dt = time.monotonic() - t0
    assert r.returncode == 3, r.stderr
    assert "is saxsdogserver running" in r.stderr, r.stderr
    assert dt < 8, dt  # was 21 s
    srv = start_server(tmp_path, site["base"], site["cfg"], ["-f", "none"])
    site["procs"].append(srv)
    r = _leash("--config", site["cfg"], "-S", srv.info["url"], "new", cal_file, "run 1")
    assert r.returncode == 0, r.stderr
    ans = json.loads(r.stdout.strip().splitlines()[-1])
    assert ans["result"] == "new queue"


def test_same_stem_images_each_end_as_curve_or_error(site, tmp_path):
    """Issue 23 case 13: s1.tif + s1.edf, s2.TIF + s2.tiff: one curve, one error each."""
    import fabio
    import tifffile
    from net_support import frame

    run = site["base"] / "run 1"
    img = frame(1)
    tifffile.imwrite(run / "s1.tif", img)
    fabio.edfimage.EdfImage(data=img.astype(np.int32)).write(str(run / "s1.edf"))
    tifffile.imwrite(run / "s2.TIF", img)
    tifffile.imwrite(run / "s2.tiff", img)
    srv = start_server(tmp_path, site["base"], site["cfg"], ["-f", "none", "--settle", "0"])
    site["procs"].append(srv)
    url = srv.info["url"]
    assert leash(site["cfg"], url, "new", site["cal"], site["msk"], "run 1")[0] == 0
    assert leash(site["cfg"], url, "readdir")[0] == 0
    with P.Client(url, SECRET, timeout=10) as client:
        d = _finished(client, 4)
        assert d, _stat(client)
        assert d["stat"]["pics"] == 2 and d["errors"]["count"] == 2, d
        clashes = {e["file"]: e["error"] for e in d["errors"]["recent"]}
        assert set(clashes) == {"run 1/s1.tif", "run 1/s2.tiff"}, clashes
        assert all("would overwrite the curve of" in e for e in clashes.values()), clashes
        # readdir again: the curves' owners are skipped, the clashes reported again
        assert leash(site["cfg"], url, "readdir")[0] == 0
        assert wait_for(lambda: _stat(client)["errors"]["count"] == 4, 30), _stat(client)
        assert _stat(client)["stat"]["pics"] == 2
    assert sorted(p.name for p in (run / "work").glob("*.chi")) == ["s1.chi", "s2.chi"]


def test_answers_carry_no_absolute_server_path(site, tmp_path):
    """Issue 23 case 15: error records and streams.output relative to the base folder."""
    run = site["base"] / "run 1"
    (run / "sub").mkdir()
    os.symlink(tmp_path, run / "sub" / "work")  # a curve folder leading out of the base
    write_frames(run / "sub", 1)
    out = site["base"] / "stream out"
    srv = start_server(
        tmp_path,
        site["base"],
        site["cfg"],
        ["-f", "none", "--settle", "0", "--detector", f"tcp://127.0.0.1:{free_port()}", "-o", out],
    )
    site["procs"].append(srv)
    url = srv.info["url"]
    with P.Client(url, SECRET, timeout=10) as client:
        d = _stat(client)
        assert d["streams"]["output"] == "stream out", d["streams"]
        texts = [json.dumps(d)]
    srv.stop()
    srv = start_server(tmp_path, site["base"], site["cfg"], ["-f", "none", "--settle", "0"])
    site["procs"].append(srv)
    url = srv.info["url"]
    rc, ans, err = leash(site["cfg"], url, "new", site["cal"], site["msk"], "run 1")
    assert rc == 0, err
    assert leash(site["cfg"], url, "readdir")[0] == 0
    with P.Client(url, SECRET, timeout=10) as client:
        d = _finished(client, 1)
        assert d and d["errors"]["count"] == 1, _stat(client)
        texts.append(json.dumps(d))
        assert "leads outside" in d["errors"]["recent"][0]["error"]
    leaked = [t for t in texts if str(tmp_path) in t]
    assert not leaked, leaked


def test_path_redactor_keeps_other_names():
    from gpusaxs.server.redact import PathRedactor

    r = PathRedactor("/data/base", ["/data/curves"])
    assert r.text("curve folder /data/base/run 1/work leads outside /data/base") == (
        "curve folder run 1/work leads outside ."
    )
    assert r.text("/data/base2/x and '/data/base'") == "/data/base2/x and '.'"
    assert r.text("cannot write /data/curves/a.chi") == "cannot write ../curves/a.chi"
    assert r.answer({"array": [[1.0]], "e": ["/data/base/x"]}) == {"array": [[1.0]], "e": ["x"]}
