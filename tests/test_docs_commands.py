"""Every command line and Python example shown in README.md and docs/*.md runs (issue 22).

The fenced blocks are read from the documents themselves: a ``bash``/``sh`` block, or an
unlabelled one whose lines all start with one of the project's programs, is a command block;
each of its lines runs in order, through the shell, in a fresh folder that holds what the
examples name (``cal.json``, ``mask.msk``, ``data/``, ``x.poni``, ``scan_master.h5``, ...).
A line with ``[options]``-style brackets is a synopsis: its program's ``--help`` must work.
``python`` blocks run as scripts in the same kind of folder.

A block that cannot run in CI says so where a reader sees it: a line ``*Not run in CI: <the
reason>.*`` just above the fence; it is reported here as a skip with that reason.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import h5py
import hdf5plugin
import numpy as np
import pytest
import tifffile

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
PROGRAMS = (
    "saxsdog",
    "plotchi",
    "saxsconverter",
    "saxsleash",
    "saxsnetconf",
    "saxsdogserver",
    "saxsfeeder",
    "saxsdetsim",
    "gpusaxs-demo",
    "pip",
    "python",
)
FENCE = re.compile(r"^```(\w*)[^\n]*\n(.*?)^```", re.M | re.S)
MARKER = re.compile(r"\*Not run in CI: (.+?)\.?\*\s*$")
H, W = 200, 180


def _blocks():
    """(doc, line, kind, body, skip reason or None) of every command and Python block."""
    found = []
    for doc in DOCS:
        text = doc.read_text()
        for m in FENCE.finditer(text):
            lang, body = m.group(1), m.group(2)
            line = text[: m.start()].count("\n") + 1
            before = text[: m.start()].rstrip("\n").splitlines()[-2:]
            reason = next((r.group(1) for r in map(MARKER.search, before) if r), None)
            commands = [c for c in _command_lines(body)]
            if lang == "python":
                kind = "python"
            elif lang in ("bash", "sh") or (
                lang == "" and commands and all(c.split()[0] in PROGRAMS for c in commands)
            ):
                kind = "commands"
            else:
                continue
            found.append((doc.relative_to(ROOT).as_posix(), line, kind, body, reason))
    return found


def _command_lines(body):
    """The block's command lines, comments and continuation backslashes folded."""
    lines, current = [], ""
    for raw in body.splitlines():
        stripped = raw.strip()
        if not stripped or (stripped.startswith("#") and not current):
            continue
        current += (" " if current else "") + stripped.rstrip("\\").strip()
        if not stripped.endswith("\\"):
            lines.append(current)
            current = ""
    return lines


BLOCKS = _blocks()


def test_the_documents_have_blocks_to_run():
    """The collector finds the README's quick start and the tools' examples (it can fail)."""
    names = {(doc, kind) for doc, _, kind, _, _ in BLOCKS}
    assert ("README.md", "commands") in names and ("README.md", "python") in names
    assert ("docs/tools.md", "commands") in names
    runnable = [b for b in BLOCKS if b[4] is None]
    assert len(runnable) >= 8, runnable


# ------------------------------------------------------------------------------ the folder
def _frames(n, seed=0):
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:H, :W]
    r = np.hypot(yy - 95.5, xx - 88.25)
    ring = 200 * np.exp(-(((r - 60) / 4) ** 2)) + 50
    frames = rng.poisson(ring, size=(n, H, W)).astype(np.int32)
    frames[:, 100:104, :] = -1  # a module gap
    return frames


def _workspace(folder, reference):
    """The files the documents' examples name, small (200 x 180 pixels)."""
    from gpusaxs.calibration_model import Calibration
    from gpusaxs.integrator import Integrator
    from gpusaxs.io.chi import write_chi
    from gpusaxs.io.masks import write_fit2d_mask
    from gpusaxs.poni import format_poni

    folder.mkdir(parents=True, exist_ok=True)
    mask = np.zeros((H, W), bool)
    mask[90:100, 80:95] = True  # a beam stop
    write_fit2d_mask(folder / "mask.msk", mask)
    cal = {
        "Title": "docs example",
        "Imagesize": [H, W],
        "BeamCenter": [104.5, 88.25],
        "DedectorDistanceMM": 400.0,
        "PixelSizeMicroM": [172.0],
        "Wavelength": 1.54,
        "Tilt": {"TiltRotDeg": 0.0, "TiltAngleDeg": 0.0},
        "MaskFile": "mask.msk",
        "Oversampling": 2,
        "PixelPerRadialElement": 1,
    }
    (folder / "cal.json").write_text(json.dumps(cal))
    frames = _frames(6)
    for k, sub in enumerate(["", "", "sub/", "sub/"]):
        path = folder / "data" / f"{sub}d_{k:03d}.tif"
        path.parent.mkdir(parents=True, exist_ok=True)
        tifffile.imwrite(path, frames[k])
    (folder / "extra").mkdir()
    tifffile.imwrite(folder / "extra" / "f_001.tif", frames[4])
    tifffile.imwrite(folder / "frame.tif", frames[5])
    (folder / "frames").mkdir()
    for k in range(3):
        tifffile.imwrite(folder / "frames" / f"g_{k}.tif", frames[k].clip(0).astype(np.uint32))
    calibration = Calibration.from_file(folder / "cal.json")
    (folder / "x.poni").write_text(format_poni(calibration.to_poni()))
    # an EIGER-like series: master + bslz4 data file, 20 frames (the README reads frame 17)
    series = np.concatenate([_frames(10, 1), _frames(10, 2)]).clip(0).astype(np.uint32)
    with h5py.File(folder / "scan_data_000001.h5", "w") as f:
        f.create_dataset(
            "entry/data/data", data=series, chunks=(1, H, W), **hdf5plugin.Bitshuffle(cname="lz4")
        )
    with h5py.File(folder / "scan_master.h5", "w") as f:
        f["entry/data/data_000001"] = h5py.ExternalLink("scan_data_000001.h5", "/entry/data/data")
    with h5py.File(folder / "run.h5", "w") as f:
        f["entry/instrument/det/data"] = frames[:3]
    # curves for plotchi
    integ = Integrator(calibration, backend="numpy")
    (folder / "out").mkdir()
    for k in range(3):
        intensity, _std, err = integ.integrate_error(frames[k])
        write_chi(folder / "out" / f"c_{k}.chi", integ.q, intensity, err)
    if reference is not None:  # the reference frame, its mask, fit2d's curve and geometry
        for name in ("buf1_00000.tif", "AAA_integ.msk", "buf1_00000.fit2d.chi"):
            shutil.copy(reference / name, folder / name)
        shutil.copy(reference / "fit2d-calibration.txt", folder / "calibration.txt")
        ref_cal = Calibration.from_file(reference / "buf1_00000.calibration.json")
        ref_integ = Integrator(ref_cal, backend="numpy")
        intensity, _std, err = ref_integ.integrate_error(
            tifffile.imread(reference / "buf1_00000.tif")
        )
        write_chi(folder / "out" / "buf1_00000.chi", ref_integ.q, intensity, err)
    return folder


def _reference():
    from conftest import REFERENCE_DIR

    return REFERENCE_DIR if (REFERENCE_DIR / "buf1_00000.tif").is_file() else None


def _env():
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    env["PATH"] = str(Path(sys.executable).parent) + os.pathsep + env.get("PATH", "")
    env.setdefault("GPUSAXS_BACKEND", "numpy")
    env["MPLBACKEND"] = "Agg"
    return env


def _run(argv, folder):
    """Run ``argv`` in ``folder`` as a user would (no input), with the source tree's package."""
    return subprocess.run(
        argv,
        cwd=folder,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=600,
        stdin=subprocess.DEVNULL,
    )


def _needs_reference(text):
    return any(n in text for n in ("buf1_00000", "AAA_integ.msk", "calibration.txt"))


# ------------------------------------------------------------------------------ the tests
@pytest.mark.parametrize(
    "doc, line, kind, body, reason",
    BLOCKS,
    ids=[f"{d}:{n}" for d, n, *_ in BLOCKS],
)
def test_documented_block_runs(doc, line, kind, body, reason, tmp_path):
    if reason is not None:
        pytest.skip(f"{doc}:{line}: not run in CI: {reason}")
    reference = _reference()
    if _needs_reference(body) and reference is None:
        pytest.skip("the block uses ../shared/reference, which is absent")
    folder = _workspace(tmp_path / "work", reference)
    if kind == "python":
        _run_python(doc, line, body, folder)
    else:
        for command in _command_lines(body):
            _run_command(doc, line, command, folder)


def _run_command(doc, line, command, folder):
    if re.search(r"\[(-|options|arguments)", command):  # a synopsis: the program exists
        program = command.split()[0]
        command = f"{program} --help"
    # CI installed the package already; the install step of a quick start is not repeated
    command = re.sub(r"^pip install [^&]+&&\s*", "", command)
    program = command.split()[0]
    if shutil.which(program, path=_env()["PATH"]) is None:
        pytest.skip(f"{program} is not installed (pip install . first)")
    r = _run(["bash", "-c", command], folder)
    where = f"{doc}:{line}: `{command}`"
    assert r.returncode == 0, f"{where} exited {r.returncode}:\n{r.stderr[-3000:]}"
    assert "Traceback" not in r.stderr, f"{where}:\n{r.stderr[-3000:]}"


PRELUDE = """\
import numpy as np
import gpusaxs
stack = np.stack([gpusaxs.read_image("frame.tif")] * 4)
files = sorted(str(p) for p in __import__("pathlib").Path("data").rglob("*.tif"))
"""


def _run_python(doc, line, body, folder):
    script = folder / "example.py"
    script.write_text(PRELUDE + textwrap.dedent(body))
    r = _run([sys.executable, str(script)], folder)
    assert r.returncode == 0, f"{doc}:{line}: the example fails:\n{r.stderr[-3000:]}"
