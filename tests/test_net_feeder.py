"""saxsfeeder: publishes each file once it is completely written (and again when overwritten)."""

import json
import time

import numpy as np
import zmq
from net_support import SECRET, Proc, free_port, wait_for, write_config, write_frames

from gpusaxs.io.settle import FileSettler


def test_settler_waits_for_complete_image(tmp_path):
    import tifffile

    got = []
    settler = FileSettler(got.append, settle=0.05, give_up=30)
    try:
        full = tmp_path / "full.tif"
        tifffile.imwrite(full, np.arange(40 * 30, dtype=np.int32).reshape(40, 30))
        data = full.read_bytes()
        part = tmp_path / "part.tif"
        part.write_bytes(data[: len(data) // 2])  # half written
        settler.touch(str(part), closed=True)
        settler.touch(str(tmp_path / ".hidden.tif.tmp"), closed=True)
        time.sleep(0.3)
        assert got == []  # not complete yet: not published
        with open(part, "ab") as fh:
            fh.write(data[len(data) // 2 :])
        settler.touch(str(part))
        assert wait_for(lambda: got, 10)
        settler.touch(str(part), closed=True)  # duplicate event, same version
        time.sleep(0.3)
        assert got == [str(part)]
        time.sleep(0.01)
        part.write_bytes(data)  # overwritten: published again
        settler.touch(str(part), closed=True)
        assert wait_for(lambda: len(got) == 2, 10)
    finally:
        settler.stop()


def test_feeder_process_watch_and_simulate(tmp_path):
    port = free_port()
    folder = tmp_path / "d"
    folder.mkdir()
    ctx = zmq.Context()
    sub = ctx.socket(zmq.SUB)
    sub.setsockopt(zmq.SUBSCRIBE, b"")
    sub.setsockopt(zmq.RCVTIMEO, 200)
    sub.connect(f"tcp://127.0.0.1:{port}")
    from gpusaxs.server.auth import Authenticator

    cfg = write_config(tmp_path / "net.json", 1, port)
    feeder = Proc(
        "gpusaxs.server.feeder",
        ["--config", cfg, "--bind", "127.0.0.1", "-d", folder, "--heartbeat", "0.1"],
        tmp_path / "f.ready",
        tmp_path / "f.log",
    )
    files, beats = [], []
    auth = Authenticator(SECRET)

    def drain():
        try:
            raw = sub.recv()
        except zmq.Again:
            return False
        m = auth.verify_frame(raw, (), json.loads)  # every message signed (item 7)
        (files if m["command"] == "new file" else beats).append(m)
        return True

    try:
        assert wait_for(lambda: drain() and beats, 20, interval=0)
        write_frames(folder / "work", 2)  # the server's output folder: skipped
        (folder / "work" / "img_00000.chi").write_text("a curve\n")
        (folder / "notes.txt").write_text("not an image\n")
        write_frames(folder, 5, atomic=False)
        write_frames(folder / "sub", 2)  # subfolders too, renamed into place
        assert wait_for(lambda: drain() and len(files) >= 7, 20, interval=0)
        deadline = time.monotonic() + 0.5  # any duplicates would come now
        while time.monotonic() < deadline:
            drain()
        names = sorted(m["argument"].rsplit("/", 1)[1] for m in files)
        assert len(names) == 7 and len(set(names)) == 5  # img_00000/1 in both folders
        assert feeder.stop() == 0
        # --simulate replays existing files once
        sim = Proc(
            "gpusaxs.server.feeder",
            ["--config", cfg, "--bind", "127.0.0.1", "-d", folder, "--simulate", "--interval", "0"],
            tmp_path / "s.ready",
            tmp_path / "s.log",
        )
        files.clear()
        assert wait_for(lambda: drain() and len(files) >= 7, 20, interval=0)
        assert sim.p.wait(20) == 0
    finally:
        feeder.kill()
        sub.close(0)
        ctx.term()
