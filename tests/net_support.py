"""Helpers for the network tests (no tests here): synthetic data, processes, polling."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
SHAPE = (200, 180)
SECRET = "0123456789abcdef" * 4


def calibration_dict(shape=SHAPE, oversampling=2):
    h, w = shape
    return {
        "Title": "synthetic",
        "PixelSizeMicroM": [172.0],
        "Imagesize": [h, w],
        "PixelPerRadialElement": 1,
        "Tilt": {"TiltRotDeg": 0, "TiltAngleDeg": 0},
        "MaskFile": "mask.msk",
        "Oversampling": oversampling,
        "Wavelength": 1.54,
        "BeamCenter": [h * 0.45, w * 0.55],
        "DedectorDistanceMM": 1000.0,
    }


def mask_array(shape=SHAPE):
    m = np.zeros(shape, dtype=bool)
    m[:, :3] = True
    m[90:100, 80:100] = True
    return m


def write_setup(folder, shape=SHAPE, oversampling=2):
    """cal.json and mask.msk in ``folder``; returns (cal path, mask path)."""
    from gpusaxs.io.masks import write_fit2d_mask

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    cal = folder / "cal.json"
    cal.write_text(json.dumps(calibration_dict(shape, oversampling)))
    msk = folder / "mask.msk"
    write_fit2d_mask(msk, mask_array(shape))
    return cal, msk


def frame(i, shape=SHAPE):
    rng = np.random.default_rng(i)
    img = rng.poisson(50 + (i % 7), size=shape).astype(np.int32)
    img[0, :] = -1
    return img


def write_frames(folder, n, start=0, shape=SHAPE, prefix="img_", atomic=True):
    """Write ``n`` int32 TIFF frames (atomic: temporary name, then rename; else in place)."""
    import tifffile

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    base = frame(0, shape)
    paths = []
    for i in range(start, start + n):
        p = folder / f"{prefix}{i:05d}.tif"
        if atomic:
            tmp = folder / f".{prefix}{i:05d}.tif.part"
            tifffile.imwrite(tmp, np.roll(base, i, axis=1))
            os.replace(tmp, p)
        else:
            tifffile.imwrite(p, np.roll(base, i, axis=1))
        paths.append(p)
    return paths


def write_config(path, server_port, feeder_port=5556, secret=SECRET):
    path = Path(path)
    path.write_text(
        json.dumps(
            {
                "ServerUrl": f"tcp://127.0.0.1:{server_port}",
                "FeederUrl": f"tcp://127.0.0.1:{feeder_port}",
                "Secret": secret,
            }
        )
    )
    os.chmod(path, 0o600)
    return path


def free_port():
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(pred, timeout, interval=0.05):
    deadline = time.monotonic() + timeout
    while True:
        v = pred()
        if v or time.monotonic() > deadline:
            return v
        time.sleep(interval)


def env():
    e = dict(os.environ)
    e["PYTHONPATH"] = str(REPO) + os.pathsep + e.get("PYTHONPATH", "")
    e.setdefault("GPUSAXS_BACKEND", "numpy")
    return e


class Proc:
    """A server/feeder subprocess that writes a ready file; killed at the end."""

    def __init__(self, module, args, ready, log_path, timeout=60):
        self.ready = Path(ready)
        if self.ready.exists():
            self.ready.unlink()
        self.log_path = Path(log_path)
        self.log = open(self.log_path, "ab")
        self.p = subprocess.Popen(
            [sys.executable, "-m", module, *map(str, args), "--ready-file", str(self.ready)],
            cwd=str(REPO),
            env=env(),
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )
        ok = wait_for(lambda: self.ready.exists() or self.p.poll() is not None, timeout)
        if not ok or not self.ready.exists():
            self.stop()
            raise RuntimeError(f"{module} did not start:\n{self.output()}")
        self.info = json.loads(self.ready.read_text())

    def output(self):
        if not self.log.closed:
            self.log.flush()
        return self.log_path.read_text(errors="replace")[-5000:]

    def stop(self, sig=signal.SIGTERM, timeout=60):
        if self.p.poll() is None:
            self.p.send_signal(sig)
            try:
                self.p.wait(timeout)
            except subprocess.TimeoutExpired:
                self.p.kill()
                self.p.wait(10)
        self.log.close()
        return self.p.returncode

    def kill(self):
        return self.stop(signal.SIGKILL)


def start_server(tmp_path, base, config, extra=(), name="server"):
    return Proc(
        "gpusaxs.server.saxsdogserver",
        ["--config", config, "--bind", "127.0.0.1", "-p", "0", *extra, base],
        tmp_path / f"{name}.ready.json",
        tmp_path / f"{name}.log",
    )


def leash(config, url, *args, timeout=30):
    """Run saxsleash as a process; returns (rc, parsed answer or None, stderr)."""
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "gpusaxs.clients.saxsleash",
            *map(str, args),
            "--config",
            str(config),
            "-S",
            url,
        ],
        cwd=str(REPO),
        env=env(),
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    answer = None
    if r.stdout.strip():
        answer = json.loads(r.stdout.strip().splitlines()[-1])
    return r.returncode, answer, r.stderr


def chi_files(folder):
    return sorted(p for p in Path(folder).rglob("*.chi"))


def signed(req, attachments=(), secret=SECRET):
    """The frames of a request signed with ``secret``: [JSON, *attachments]."""
    from gpusaxs.server.auth import sign_request

    return [json.dumps(sign_request(secret, req, attachments)).encode()] + list(attachments)


def ask(svc, frames):
    """Answer of an in-process SaxsdogService, checked against the response schema."""
    from gpusaxs.server import protocol as P

    ans = svc.handle(frames)
    P.validate_response(json.loads(P.encode_response(ans)))
    return ans
