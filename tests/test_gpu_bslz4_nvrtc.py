"""gpusaxs/kernels/bslz4.cu compiled in CI by NVRTC (the registry's wheel, CuPy's options) for
sm_80 and sm_90, every name the decoder requests, and its sm_90 machine code read back: no
warning, no spill, no stack or local memory, the shared buffer of two 16 KiB blocks, the
bit-unshuffle step of a lane branch-free (its 8*E shared-memory loads and 8 stores in one basic
block: the 8x8 bit transposes stay in registers), the literal copy unrolled (several byte loads
in flight per lane)."""

import re

import pytest
from nvrtc_support import ARCHS, Compiled, compile_source, find_tool, run_tool
from test_gpu_sass import basic_blocks

from gpusaxs.gpu_decode import DECODE_WARPS, MAX_BLOCK_BYTES, decode_names, decode_source

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


def compiled(arch):
    parts = compile_source(decode_source(), decode_names(), arch, chunks=1)
    return Compiled(*parts[0])


def ops(block):
    return [i.split()[1] if i.startswith("@") else i.split()[0] for i in block]


@pytest.fixture(scope="module")
def sm90(tmp_path_factory):
    nvdisasm = find_tool("nvdisasm")
    if nvdisasm is None:
        pytest.skip("nvdisasm not found (pip install nvidia-cuda-nvdisasm: part of .[test])")
    result = compiled("sm_90")
    path = tmp_path_factory.mktemp("bslz4_sass") / "bslz4.cubin"
    path.write_bytes(result.cubin)
    return result, run_tool(nvdisasm, "-c", str(path)), path


@pytest.mark.parametrize("arch", ARCHS)
def test_decoder_compiles_without_warning_or_spill(arch):
    result = compiled(arch)
    assert set(result.lowered) == set(decode_names())
    assert "warning" not in result.log.lower(), result.log[-4000:]
    usage = result.usage()
    for name in decode_names():
        info = usage[result.lowered[name]]
        assert info["spill_stores"] == 0 and info["spill_loads"] == 0, (name, info)
        assert info["stack"] == 0, (name, info)
        # 64-thread blocks: 128 registers would still let the shared memory, not the
        # registers, bound the blocks per SM
        assert 0 < info["registers"] <= 128, (name, info)


def test_unshuffle_step_is_one_basic_block(sm90):
    result, sass, _ = sm90
    funcs = basic_blocks(sass)
    store = {1: "STG.E.U8", 2: "STG.E.U16", 4: "STG.E"}
    for e in (1, 2, 4):
        blocks = funcs[result.lowered[f"gs_bslz4_decode<{e}>"]]
        steps = [
            b
            for b in blocks
            if sum(o == "LDS.U8" for o in ops(b)) == 8 * e
            and sum(o == store[e] for o in ops(b)) == 8
        ]
        assert steps, f"gs_bslz4_decode<{e}>: no basic block with {8 * e} LDS.U8 and 8 stores"
        assert not any(o.startswith(("LDL", "STL")) for b in blocks for o in ops(b))


def test_literal_copy_keeps_loads_in_flight(sm90):
    result, sass, _ = sm90
    funcs = basic_blocks(sass)
    for e in (1, 2, 4):
        blocks = funcs[result.lowered[f"gs_bslz4_decode<{e}>"]]
        best = max(sum(o.startswith("LDG.E.U8") for o in ops(b)) for b in blocks)
        assert best >= 4, f"gs_bslz4_decode<{e}>: at most {best} byte loads in one block"


def test_resource_usage_shared_and_local(sm90):
    result, _, path = sm90
    cuobjdump = find_tool("cuobjdump")
    if cuobjdump is None:
        pytest.skip("cuobjdump not found (pip install nvidia-cuda-cuobjdump: part of .[test])")
    out = run_tool(cuobjdump, "--dump-resource-usage", str(path))
    usage = {
        fn: (int(reg), int(shared), int(local))
        for fn, reg, shared, local in re.findall(
            r"Function (\S+):\s*\n\s*REG:(\d+) .*?SHARED:(\d+) LOCAL:(\d+)", out
        )
    }
    ptxas = result.usage()
    for name in decode_names():
        reg, shared, local = usage[result.lowered[name]]
        assert local == 0, name
        assert reg == ptxas[result.lowered[name]]["registers"], name
        if name.startswith("gs_bslz4_decode"):
            # the warps' block buffers (plus at most 1 KiB the driver reserves per block)
            assert DECODE_WARPS * MAX_BLOCK_BYTES <= shared <= DECODE_WARPS * MAX_BLOCK_BYTES + 1024
