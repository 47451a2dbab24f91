"""Loads in flight, checked in the machine code: the sm_90 cubins of integrate.cu (compiled by
NVRTC, see test_gpu_nvrtc.py) are disassembled with the registry's nvdisasm wheel, and in every
int32/uint32 kernel at the default frames per block all frame loads of one matrix entry must
issue in ONE basic block (no branch between them), so a warp has them all in flight.  The
kernel of commit 9b1df5d (tests/kernel_9b1df5d.cu) is the negative control: its
``if (f < nf)`` around each load serialises them, and the same check fails on it.
cuobjdump's resource usage gives the registers/spills table (docs/gpu.md)."""

import re
from pathlib import Path

import pytest
from nvrtc_support import compile_source, compiled, find_tool, run_tool

from gpusaxs.gpu_kernels import FRAMES_PER_BLOCK, kernel_names

INT32_KERNELS = [
    n
    for n in kernel_names()
    if n.startswith("gs_integrate") and ("<int," in n or "<unsigned int," in n)
]


def basic_blocks(sass):
    """{function: [list of instruction strings per basic block]} from nvdisasm output.
    A block ends at a label (branch target) and after any branch/exit instruction."""
    funcs = {}
    blocks = None
    for line in sass.splitlines():
        m = re.match(r"\s*\.text\.(\S+):", line)
        if m:
            blocks = funcs.setdefault(m.group(1), [[]])
            continue
        if blocks is None:
            continue
        if re.match(r"\s*\.L_\w+:", line):
            blocks.append([])
            continue
        m = re.search(r"/\*[0-9a-f]{4,}\*/\s+(.*?);", line)
        if not m:
            continue
        ins = m.group(1).strip()
        blocks[-1].append(ins)
        if re.search(r"\b(BRA|BRX|JMP|JMX|EXIT|RET|CALL|BREAK|BSSY|BSYNC|WARPSYNC)\b", ins):
            blocks.append([])
    return funcs


def frame_loads_per_block(instructions, wide):
    """Global loads of frame data in a block: 128-bit ones (pixel-major vector loads) or
    32-bit ones (frame-major)."""
    ops = [i.split()[1] if i.startswith("@") else i.split()[0] for i in instructions]
    loads = [op for op in ops if op.startswith("LDG.")]
    if wide:
        return sum(1 for op in loads if ".128" in op)
    return sum(1 for op in loads if not re.search(r"\.(64|128|U8|S8|U16|S16)\b", op))


def check_loads_in_one_block(sass, lowered, pixel_major):
    """Problems found (empty when every kernel has its FB frame loads in one block)."""
    per_entry = FRAMES_PER_BLOCK * 4 // 16 if pixel_major else FRAMES_PER_BLOCK
    problems = []
    funcs = basic_blocks(sass)
    for name, low in lowered.items():
        blocks = funcs.get(low)
        if blocks is None:
            problems.append(f"{name}: not in the disassembly")
            continue
        counts = [frame_loads_per_block(b, pixel_major) for b in blocks]
        if max(counts) < per_entry:
            problems.append(
                f"{name}: at most {max(counts)} frame loads in one basic block, {per_entry} needed"
            )
        if pixel_major and any(0 < c < per_entry for c in counts):
            problems.append(f"{name}: a block with {counts} vector loads splits an entry")
    return problems


def disassemble(cubin, tmp_path, name="k.cubin"):
    nvdisasm = find_tool("nvdisasm")
    if nvdisasm is None:
        pytest.skip("nvdisasm not found (pip install nvidia-cuda-nvdisasm: part of .[test])")
    path = tmp_path / name
    path.write_bytes(cubin)
    return run_tool(nvdisasm, "-c", str(path))


@pytest.fixture(scope="module")
def sm90(tmp_path_factory):
    result = compiled("sm_90")
    folder = tmp_path_factory.mktemp("sass")
    sass = "\n".join(disassemble(c, folder, f"part{i}.cubin") for i, c in enumerate(result.cubins))
    return result, sass, folder


def test_int32_frame_loads_issue_in_one_basic_block(sm90):
    result, sass, _ = sm90
    assert len(INT32_KERNELS) == 24
    for pixel_major in (True, False):
        names = [n for n in INT32_KERNELS if n.startswith("gs_integrate_pm") == pixel_major]
        lowered = {n: result.lowered[n] for n in names}
        assert check_loads_in_one_block(sass, lowered, pixel_major) == []


def test_old_kernel_fails_the_same_check(tmp_path):
    """Negative control: the 9b1df5d kernel serialises its frame loads behind branches."""
    old = (Path(__file__).parent / "kernel_9b1df5d.cu").read_text()
    names = ["gs_integrate<int, 8, false>", "gs_integrate<unsigned int, 8, true>"]
    parts = compile_source(old, names, "sm_90", chunks=1)
    sass = disassemble(parts[0][0], tmp_path)
    problems = check_loads_in_one_block(sass, parts[0][2], pixel_major=False)
    assert len(problems) == 2, problems
    assert all("frame loads in one basic block" in p for p in problems)


def test_resource_usage_table(sm90):
    """cuobjdump agrees with ptxas: no local memory (spills) in any kernel."""
    result, _, folder = sm90
    cuobjdump = find_tool("cuobjdump")
    if cuobjdump is None:
        pytest.skip("cuobjdump not found (pip install nvidia-cuda-cuobjdump: part of .[test])")
    usage = {}
    for i, _ in enumerate(result.cubins):
        out = run_tool(cuobjdump, "--dump-resource-usage", str(folder / f"part{i}.cubin"))
        for fn, reg, local in re.findall(r"Function (\S+):\s*\n\s*REG:(\d+) .*?LOCAL:(\d+)", out):
            usage[fn] = (int(reg), int(local))
    ptxas = result.usage()
    for name in kernel_names():
        low = result.lowered[name]
        reg, local = usage[low]
        assert local == 0, name
        assert reg == ptxas[low]["registers"], name
