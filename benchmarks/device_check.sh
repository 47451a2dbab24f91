#!/usr/bin/env bash
# The GPU engine's device check (issue 25): one run on a lent H100/H200, under 6 minutes.
#
#   benchmarks/device_check.sh prepare   # HERE, after committing: wheels the device lacks -> .whl/
#   benchmarks/device_check.sh           # ON THE DEVICE, from the repository root (docs/gpu.md)
#
# On the device it installs the carried wheels (.whl/, no network there), prints the machine,
# runs the GPU tests (pytest -m gpu: full frame groups, odd batches, Poisson data, mapped upload,
# iterators, no fallback allowed), a compute-sanitizer initcheck of small batches (padding), and
# a memcheck of hostile bslz4 chunks decoded on the device (issue 26), and
# benchmarks/bench_gpu.py, which writes benchmarks/results/gpu-<device>.json (one record per
# case, layout and batch, and per case and source the bslz4 end-to-end records:
# benchmarks/gpu_result_schema.json).  Everything it writes is copied to
# $OUT (what the device tool brings back: 8 files at most).  Exit status: the first failing step's.
set -u
cd "$(dirname "$0")/.."
ROOT=$PWD
CASES=${CASES:-pilatus1m,eiger4m}
# Python 3.12 wheels of what the device image lacks (its package list: .library/device/KINDS.md)
# (bitshuffle: the reference decoder of the bslz4 tests and the benchmark's encoder, issue 26)
WHEELS="jsonschema==4.26.0 jsonschema-specifications==2025.9.1 referencing==0.37.0 rpds-py==0.30.0
bitshuffle==0.5.2"

if [ "${1:-}" = prepare ]; then
    rm -rf .whl && mkdir -p .whl || exit 1
    # shellcheck disable=SC2086
    python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
        --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
        --platform manylinux2014_x86_64 -d .whl $WHEELS || exit 1
    git rev-parse HEAD > .whl/COMMIT
    git status --porcelain --untracked-files=no | grep -q . && echo "+dirty" >> .whl/COMMIT
    ls -l .whl && du -sh .whl
    exit 0
fi

OUT=${OUT:-/tmp/device-check}
mkdir -p "$OUT"
t0=$(date +%s)
step() { echo "== $1 ($(( $(date +%s) - t0 )) s)"; }
status=0
note() { [ "$status" -eq 0 ] && status=$1; }

main() {
step "machine $(date -u +%FT%TZ)"
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm,clocks.max.mem --format=csv
PY=${PY:-python3}
if ls .whl/*.whl >/dev/null 2>&1; then
    $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target /tmp/site .whl/*.whl || return 2
    export PYTHONPATH=/tmp/site
fi
export PYTHONPATH=$ROOT:${PYTHONPATH:-}
export PYTHONUNBUFFERED=1 GPUSAXS_CACHE_DIR=off
[ -f .whl/COMMIT ] && export GPUSAXS_COMMIT="$(tr '\n' ' ' < .whl/COMMIT | sed 's/ *$//')"
$PY - <<'PY' || return 2
import sys, cupy, numpy, scipy
print("python", sys.version.split()[0], "cupy", cupy.__version__, "numpy", numpy.__version__,
      "scipy", scipy.__version__, "devices", cupy.cuda.runtime.getDeviceCount())
PY

step "GPU tests (pytest -m gpu) and the CuPy-name check"
timeout 115 $PY -m pytest -q -rs -p no:cacheprovider -m gpu tests/test_gpu_engine.py \
    tests/test_gpu_decode_device.py > "$OUT/pytest.txt" 2>&1; rc=$?; echo "pytest -m gpu rc=$rc"
note $rc
timeout 25 $PY -m pytest -q -rs -p no:cacheprovider tests/test_gpu_cupy_api.py \
    tests/test_gpu_pipeline.py tests/test_backend.py >> "$OUT/pytest.txt" 2>&1
rc=$?; echo "pytest (CuPy names, pipeline, backend) rc=$rc"; note $rc
tail -25 "$OUT/pytest.txt"

step "compute-sanitizer initcheck: batches of 1, 3, 8 and 13 frames"
if command -v compute-sanitizer >/dev/null; then
    timeout 45 compute-sanitizer --tool initcheck --error-exitcode 9 $PY - > "$OUT/initcheck.txt" 2>&1 <<'PY'
import sys
sys.path.insert(0, "tests")
import numpy as np, cupy as cp
from gpusaxs.gpu_engine import DeviceEngine
from test_gpu_engine import random_matrix, reference_sums, assert_sums_close
m = random_matrix((101, 131), np.random.default_rng(1), center=(50.2, 60.7))
x = np.random.default_rng(2).poisson(20.0, (13, 101, 131)).astype(np.int32)
ref = reference_sums(m, x)
for layout, upload in (("pixel", "copy"), ("pixel", "mapped"), ("frame", "copy")):
    for b in (1, 3, 8, 13):
        eng = DeviceEngine(m, xp=cp, batch_size=b, layout=layout, upload=upload)
        assert_sums_close(eng.sums(x, errors=True), ref, 1e-9)
        assert eng.path == "kernel" and not eng.fallbacks, eng.fallbacks
print("initcheck workload ok")
PY
    rc=$?; echo "initcheck rc=$rc"; tail -6 "$OUT/initcheck.txt"; note $rc
else
    echo "compute-sanitizer not found: skipped"
fi

step "compute-sanitizer memcheck: hostile bslz4 chunks decoded on the device (issue 26)"
if command -v compute-sanitizer >/dev/null; then
    timeout 20 compute-sanitizer --tool memcheck --error-exitcode 9 $PY - > "$OUT/memcheck.txt" 2>&1 <<'PY'
import sys
sys.path.insert(0, "tests")
import cupy as cp
from gpusaxs.gpu_decode import DeviceDecoder
from test_gpu_decode_device import hostile_batch
batch, good = hostile_batch()
out, status = DeviceDecoder(cp).decode(batch)
assert status[0] == 0 and status[-1] == 0 and (status[1:-1] != 0).all(), status
assert (cp.asnumpy(out[0]) == good).all()
print("memcheck workload ok", status.tolist())
PY
    rc=$?; echo "memcheck rc=$rc"; tail -6 "$OUT/memcheck.txt"; note $rc
else
    echo "compute-sanitizer not found: skipped"
fi

step "benchmark ($CASES, with the bslz4 end-to-end records)"
timeout 155 $PY benchmarks/bench_gpu.py --cases "$CASES" --no-pyfai --repeats 9 \
    --out-dir benchmarks/results
rc=$?; echo "bench rc=$rc"; note $rc
cp benchmarks/results/gpu-nvidia-*.json "$OUT/" 2>/dev/null
step "done, status $status"
return $status
}

main 2>&1 | tee "$OUT/device_check.log"
exit "${PIPESTATUS[0]}"
