"""benchmarks/bench_gpu.py run on the NumPy module (its logic, not its figures): the JSON it
writes, the refusal to time wrong curves, and the bytes-moved model of docs/gpu.md."""

import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("bench_gpu", ROOT / "benchmarks" / "bench_gpu.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules["bench_gpu"] = mod
    spec.loader.exec_module(mod)
    return mod


def test_numpy_run_writes_the_json(bench, tmp_path, capsys):
    rc = bench.main(
        [
            "--xp",
            "numpy",
            "--cases",
            "tiny",
            "--repeats",
            "1",
            "--pyfai-frames",
            "2",
            "--out-dir",
            str(tmp_path),
        ]
    )
    assert rc == 0
    files = list(tmp_path.glob("gpu-*.json"))
    assert len(files) == 1
    report = json.loads(files[0].read_text())
    for key in (
        "device",
        "date",
        "commit",
        "device_resident_gpix_per_s",
        "host_fed_fraction_of_h2d",
        "max_rel_diff_vs_cpu",
        "pyfai_frames_per_s",
    ):
        assert key in report, key
    case = report["cases"]["tiny"]
    assert set(case["layouts"]) == {"pixel/8", "frame/8"}
    for r in case["layouts"].values():
        assert r["max_rel_diff_vs_cpu"] <= bench.MAX_REL_DIFF
        assert r["device_resident_gpix_per_s"] > 0 and r["host_fed_fraction_of_h2d"] > 0
    assert "pixel/8" in capsys.readouterr().out


def test_wrong_curves_give_no_throughput(bench, tmp_path, capsys, monkeypatch):
    import gpusaxs.gpu_engine as ge

    real = ge.DeviceEngine._spmm_into

    def off_by_a_bit(self, x, out, errors, dtype=None):
        real(self, x, out, errors, dtype)
        out[0] *= 1.0 + 1e-4  # signal 1e-4 too large

    monkeypatch.setattr(ge.DeviceEngine, "_spmm_into", off_by_a_bit)
    rc = bench.main(
        [
            "--xp",
            "numpy",
            "--cases",
            "tiny",
            "--repeats",
            "1",
            "--no-pyfai",
            "--out-dir",
            str(tmp_path),
        ]
    )
    out = capsys.readouterr()
    assert rc == 3
    assert "GPix/s" not in out.out and "no throughput" in out.err and "FAIL" in out.err
    assert not list(tmp_path.glob("*.json"))


def test_model_predictions(bench):
    det = bench.DETECTORS["PILATUS 1M"]
    hbm, l2 = bench.bytes_model("pixel", 64, det)
    assert hbm == pytest.approx(4 + 12 * 1.72 / 64)
    assert l2 == pytest.approx(4 * 1.72 + 12 * 1.72 / 8)
    fm = bench.predict("frame", 32, det)
    pm = bench.predict("pixel", 32, det)
    tr = bench.predict("pixel", 32, det, transpose=True)
    assert pm["predicted"] > 2 * fm["predicted"]  # the layout removes the L2 bound
    assert tr["hbm_bytes"] == pytest.approx(pm["hbm_bytes"] + 8)
    table = bench.model_table()
    assert table.count("\n") == 1 + 2 * 3 * len(bench.BATCHES)
    assert np.isfinite(pm["predicted"])
