"""The quick-start demo, run as a user runs it."""

import subprocess
import sys

import numpy as np

import gpusaxs
from gpusaxs.demo import AGBH_D_NM, pilatus_gaps


def test_demo_writes_data_integrates_it_and_finds_the_rings(tmp_path):
    out = tmp_path / "demo"
    proc = subprocess.run(
        [sys.executable, "-m", "gpusaxs.clients.demo", str(out), "--frames", "3"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr + proc.stdout
    assert sorted(p.name for p in (out / "out").glob("*.chi")) == [
        "frame_00000.chi",
        "frame_00001.chi",
        "frame_00002.chi",
    ]
    assert (out / "demo.png").stat().st_size > 10_000
    frame = gpusaxs.read_image(out / "frames" / "frame_00001.tif")
    assert frame.dtype == np.int32 and frame.shape == (1043, 981)
    assert np.isin(frame[pilatus_gaps(frame.shape)], (-1, -2)).all() and (frame == -2).any()
    assert (frame[~pilatus_gaps(frame.shape)] >= -2).all() and frame.max() > 100
    curve = gpusaxs.read_chi(out / "out" / "frame_00001.chi")
    first_ring = 2 * np.pi / AGBH_D_NM
    near = np.abs(curve.q - first_ring) < 0.05
    peak_q = curve.q[near][np.nanargmax(curve.intensity[near])]
    assert abs(peak_q - first_ring) < curve.q[1] - curve.q[0]
    assert "largest ring offset" in proc.stdout


def test_pilatus_gaps_have_the_module_layout():
    gaps = pilatus_gaps()
    assert gaps.shape == (1043, 981)
    assert gaps[:, 487:494].all() and not gaps[:195, 486].any() and not gaps[:195, 494].any()
    assert gaps[195:212].all() and not gaps[194, :487].any() and not gaps[212, :487].any()
    assert gaps.sum() == 1043 * 981 - 10 * 487 * 195
