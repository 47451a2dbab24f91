"""benchmarks/bench_gpu.py run on the NumPy module (its logic, not its figures): the JSON it
writes, the refusal to time wrong curves, and the bytes-moved model of docs/gpu.md."""

import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
import pytest

from gpusaxs import gpu_fallbacks

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
    assert set(case["layouts"]) == {"pixel/8", "frame/8", "spmm/8"}
    for r in case["layouts"].values():
        assert r["max_rel_diff_vs_cpu"] <= bench.MAX_REL_DIFF
        assert r["device_resident_gpix_per_s"] > 0 and r["host_fed_fraction_of_h2d"] > 0
    assert "pixel/8" in capsys.readouterr().out
    validate_report(report)
    assert [(r["layout"], r["path"], r["fallbacks"]) for r in report["records"]] == [
        ("pixel", "kernel", []),
        ("frame", "kernel", []),
        ("spmm", "spmm", []),
    ]
    # the accuracy check ran full batches and a ragged one, errors on and off
    check = case["max_rel_diff_vs_cpu_check"]
    assert set(check) == {"pixel/8", "frame/8", "spmm/8"}
    assert all(set(d) == {"errors", "no_errors"} for d in check.values())
    assert all(0 < v <= bench.MAX_REL_DIFF for d in check.values() for v in d.values())
    # issue 26: bslz4 frames end to end, from a stream and from HDF5 chunks read as stored
    dec = report["decode_records"]
    assert [r["source"] for r in dec] == ["stream", "hdf5"]
    for r in dec:
        assert r["host_decode"] is True and r["decode_path"] == "host"  # NumPy: the host path
        assert r["path"] == "kernel" and r["fallbacks"] == [] and r["refused_frames"] == 0
        assert 0 < r["max_rel_diff_vs_cpu"] <= bench.MAX_REL_DIFF
        assert r["compression_ratio"] > 1.0 and r["end_to_end_frames_per_s"] > 0
    assert bench.bench_gpu_decode.wrong(dec, on_device=True)  # host decode fails a device run
    assert not bench.bench_gpu_decode.wrong(dec, on_device=False)


def validate_report(report):
    """The JSON schema of the device check's output (benchmarks/gpu_result_schema.json)."""
    import jsonschema

    schema = json.loads((ROOT / "benchmarks" / "gpu_result_schema.json").read_text())
    jsonschema.validate(report, schema)
    for r in report["records"]:
        assert r["device"] == report["device"] and r["commit"] == report["commit"]
        assert r["hbm_read_gb_per_s"] == report["hbm_read_gb_per_s"]


def test_schema_rejects_a_record_without_its_fields(bench):
    import jsonschema

    schema = json.loads((ROOT / "benchmarks" / "gpu_result_schema.json").read_text())
    record = {"device": "x", "layout": "pixel"}
    report = {
        "device": "x",
        "kind": "x",
        "date": "2026-12-06T00:00:00+00:00",
        "commit": "c",
        "hbm_read_gb_per_s": 1.0,
        "hbm_gb_per_s": 1.0,
        "h2d_gb_per_s": 1.0,
        "max_rel_diff_allowed": 1e-5,
        "timing": "t",
        "cases": {},
        "records": [record],
    }
    with pytest.raises(jsonschema.ValidationError, match="required"):
        jsonschema.validate(report, schema)


def test_a_fallback_is_reported_and_fails_the_run(bench, tmp_path, capsys, monkeypatch):
    """Issue 25: the benchmark never checked which path ran."""
    import gpusaxs.gpu_engine as ge

    def oom(self, *args):
        raise MemoryError("simulated")

    monkeypatch.setattr(ge.DeviceEngine, "_launch", oom)
    monkeypatch.setattr(gpu_fallbacks, "_FALLBACKS", [])
    rc = bench.main(
        ["--xp", "numpy", "--cases", "tiny", "--repeats", "1", "--no-pyfai"]
        + ["--out-dir", str(tmp_path)]
    )
    assert rc == 4
    assert "not on the measured path" in capsys.readouterr().err
    report = json.loads(next(tmp_path.glob("gpu-*.json")).read_text())
    validate_report(report)
    pixel = report["records"][0]
    assert pixel["path"] == "spmm" and pixel["fallbacks"][0]["reason"].startswith("out of memory")


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


def test_device_check_script_fits_the_lease(bench):
    """benchmarks/device_check.sh (run on a lent H100/H200, docs/gpu.md): valid bash, steps
    bounded to under 6 minutes, cases and test files that exist, results copied to $OUT."""
    import re
    import subprocess

    script = ROOT / "benchmarks" / "device_check.sh"
    text = script.read_text()
    assert subprocess.run(["bash", "-n", str(script)]).returncode == 0
    limits = [int(t) for t in re.findall(r"\btimeout (\d+) ", text)]
    assert len(limits) >= 4 and sum(limits) <= 360, limits
    cases = re.search(r"CASES=\$\{CASES:-([\w,]+)\}", text).group(1).split(",")
    assert cases and all(c in bench.CASES for c in cases)
    for path in re.findall(r"tests/test_\w+\.py", text):
        assert (ROOT / path).exists(), path
    assert "pytest" in text and "-m gpu" in text and "bench_gpu.py" in text
    assert 'cp benchmarks/results/gpu-nvidia-*.json "$OUT/"' in text
    assert "/.whl/" in (ROOT / ".gitignore").read_text().splitlines()


def test_decode_model(bench):
    """docs/gpu.md's compressed-input model: PCIe carries ratio x more frames compressed; the
    predicted rate is the tighter of that and the device decode bound."""
    dec = bench.bench_gpu_decode
    m = dec.model(72_000_000, 4.0)
    assert m["pcie_compressed"] == pytest.approx(4.0 * m["pcie_plain"])
    assert m["pcie_plain"] == pytest.approx(50e9 / 72e6)
    table = dec.model_table()
    assert table.count("\n") == 7 and "EIGER2 16M uint32 | 72.4 | 2.5" in table
