"""gpusaxs/kernels/bslz4.cu run on the CPU: compiled with g++ against tests/cuda_shim.py's CUDA
emulation (blocks concurrent in a random order, a block's threads as fibers switched at
``__syncwarp``), with every buffer the kernels get placed against a PROT_NONE guard page, so a
read or write one byte outside any buffer kills the process (SIGSEGV) instead of passing.

``GS_GUARD=end`` (default) puts each buffer's last byte just before the guard page (overruns),
``GS_GUARD=start`` puts its first byte just after one (underruns).
"""

import os
import subprocess

import numpy as np
from cuda_shim import compile_with_shim

from gpusaxs.gpu_decode import blocks_per_frame, decode_source

DRIVER = r"""
#include <sys/mman.h>
#include <unistd.h>
// a buffer of n bytes between guard pages; GS_GUARD=start: first byte after the lower guard
static void* guarded(size_t n) {
    const size_t page = (size_t)sysconf(_SC_PAGESIZE);
    const size_t body = ((n + page - 1) / page) * page;
    char* base = (char*)mmap(nullptr, body + 2 * page, PROT_READ | PROT_WRITE,
                             MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (base == MAP_FAILED) { std::perror("mmap"); std::exit(5); }
    mprotect(base, page, PROT_NONE);
    mprotect(base + page + body, page, PROT_NONE);
    const char* mode = std::getenv("GS_GUARD");
    const bool start = mode && std::string(mode) == "start";
    char* p = start ? base + page : base + page + body - n;
    std::memset(p, 0xA5, n);  // what the device's fresh memory may hold
    return p;
}
static std::vector<char> slurp(const std::string& path) {
    FILE* f = std::fopen(path.c_str(), "rb");
    if (!f) { std::perror(path.c_str()); std::exit(3); }
    std::fseek(f, 0, SEEK_END); long n = std::ftell(f); std::fseek(f, 0, SEEK_SET);
    std::vector<char> v(n);
    if (n && std::fread(v.data(), 1, n, f) != (size_t)n) std::exit(4);
    std::fclose(f);
    return v;
}
template <int E> void run(const std::string& dir, int nf, long long frame_bytes, int max_blocks) {
    auto in_v = slurp(dir + "/in.bin");
    auto off_v = slurp(dir + "/off.bin");
    const long long in_bytes = (long long)in_v.size();
    auto* in = (unsigned char*)guarded(in_bytes ? in_bytes : 1);
    std::memcpy(in, in_v.data(), in_bytes);
    auto* off = (long long*)guarded(off_v.size());
    std::memcpy(off, off_v.data(), off_v.size());
    const long long out_bytes = nf * frame_bytes;
    auto* out = (unsigned char*)guarded(out_bytes);
    auto* pos = (long long*)guarded(sizeof(long long) * (size_t)nf * max_blocks);
    auto* bb = (int*)guarded(sizeof(int) * nf);
    auto* status = (int*)guarded(sizeof(int) * nf);
    const int tb = 32;
    gs_launch((nf + tb - 1) / tb, tb, [&] {
        gs_bslz4_index(in, in_bytes, off, nf, frame_bytes, E, pos, max_blocks, bb, status, out,
                       out_bytes); });
    const long long warps = (long long)nf * max_blocks;
    gs_launch((warps + GS_BS_WARPS - 1) / GS_BS_WARPS, GS_BS_THREADS, [&] {
        gs_bslz4_decode<E>(in, in_bytes, off, nf, frame_bytes, pos, max_blocks, bb, status,
                           (typename gs_bs_word<E>::t*)out, out_bytes); });
    FILE* f = std::fopen((dir + "/out.bin").c_str(), "wb");
    std::fwrite(out, 1, out_bytes, f);
    std::fclose(f);
    f = std::fopen((dir + "/status.bin").c_str(), "wb");
    std::fwrite(status, sizeof(int), nf, f);
    std::fclose(f);
}
int main(int argc, char** argv) {
    if (argc != 6) return 2;
    const std::string dir = argv[1];
    const int E = std::atoi(argv[2]), nf = std::atoi(argv[3]);
    const long long frame_bytes = std::atoll(argv[4]);
    const int max_blocks = std::atoi(argv[5]);
    if (E == 1) run<1>(dir, nf, frame_bytes, max_blocks);
    else if (E == 2) run<2>(dir, nf, frame_bytes, max_blocks);
    else if (E == 4) run<4>(dir, nf, frame_bytes, max_blocks);
    else return 2;
    return 0;
}
"""


def build(folder):
    """Compile bslz4.cu with the shim and the driver; (exe, None) or (None, reason)."""
    return compile_with_shim(decode_source() + DRIVER, folder, "bslz4_emu")


def run(
    exe, folder, chunks, frame_shape, dtype, max_blocks=None, offsets=None, guard="end", seed=1
):
    """Decode ``chunks`` (list of bytes, one frame each) with the emulated kernels.

    Returns (frames (nf, *frame_shape) of dtype, status int32 (nf,)).  offsets: the chunk
    offsets to pass instead of the true ones (hostile tables); max_blocks: the position table's
    blocks per frame (default: the frame in blocks of 8192 bytes)."""
    dtype = np.dtype(dtype)
    frame_bytes = int(np.prod(frame_shape)) * dtype.itemsize
    nf = len(chunks)
    data = b"".join(chunks)
    if offsets is None:
        offsets = np.cumsum([0] + [len(c) for c in chunks]).astype(np.int64)
    if max_blocks is None:
        max_blocks = blocks_per_frame(frame_bytes, dtype.itemsize, 8192)
    (folder / "in.bin").write_bytes(data)
    np.asarray(offsets, dtype=np.int64).tofile(folder / "off.bin")
    env = dict(os.environ, GS_SHIM_SEED=str(seed), GS_SHIM_RUNNERS="2", GS_GUARD=guard)
    proc = subprocess.run(
        [str(exe), str(folder), str(dtype.itemsize), str(nf), str(frame_bytes), str(max_blocks)],
        capture_output=True,
        text=True,
        timeout=600,
        env=env,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"emulator exit {proc.returncode}: {proc.stderr[-2000:]}")
    out = np.fromfile(folder / "out.bin", dtype=dtype).reshape((nf, *frame_shape))
    status = np.fromfile(folder / "status.bin", dtype=np.int32)
    return out, status
