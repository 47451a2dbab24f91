"""A CPU emulation of the few CUDA features gpusaxs/kernels/integrate.cu uses, so the kernel
source itself is compiled with g++ and run in CI (no GPU).

Blocks run CONCURRENTLY in a random order (``GS_SHIM_RUNNERS`` runner threads, order shuffled
with ``GS_SHIM_SEED``); a block's threads are fibers (ucontext) of its runner thread, switched
at ``__syncthreads``, ``__syncwarp`` and warp shuffles (barriers).  A block whose threads all
wait at barriers that returned threads never reach (a warp split by a lane-dependent
``return``) ends the process with exit status 86 and a message, where it would hang.  Global
memory of the output is a type whose plain ``+=`` is a slow, non-atomic read-modify-write, so a
``+=`` where ``atomicAdd`` belongs loses updates (the race test shows it).  ``-DGS_SHIM_FTZ``
sets the x86 DAZ/FTZ flags in every kernel thread, as ``-ftz=true`` does on the GPU: subnormal
float inputs read as zero.
"""

import shutil
import subprocess

import numpy as np

SHIM = r"""
#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <memory>
#include <mutex>
#include <random>
#include <string>
#include <thread>
#include <vector>
#include <ucontext.h>
#if defined(GS_SHIM_FTZ)
#include <xmmintrin.h>
#endif
struct gs_dim3 { unsigned x, y, z; };
struct uint4 { unsigned x, y, z, w; };
struct uint2 { unsigned x, y; };
// The threads of a block are fibers (ucontext) on one runner thread, switched at barriers;
// blocks run concurrently on several runner threads.
struct gs_fiber_barrier { int n = 0, count = 0; long gen = 0; };
struct gs_block_ctx {
    std::vector<ucontext_t> fibers;
    ucontext_t sched;
    int current = 0;
    gs_fiber_barrier block, warp[64];
    double shfl[64][32];
    alignas(16) unsigned char shared[48 * 1024];
};
static thread_local gs_dim3 threadIdx, blockIdx, blockDim;
static thread_local gs_block_ctx* gs_ctx;
static thread_local bool gs_returned = false;
static thread_local long gs_progress = 0;  // barrier arrivals and returns of this runner
#define __global__
#define __device__
#define __forceinline__ inline
#define __launch_bounds__(...)
#define GS_SHARED(type, name, dims) type (&name) dims = *reinterpret_cast<type (*) dims>(gs_ctx->shared)
template <typename T> inline T __ldg(const T* p) { return *p; }
inline unsigned __float_as_uint(float x) { unsigned u; std::memcpy(&u, &x, 4); return u; }
inline long long __double_as_longlong(double x) { long long u; std::memcpy(&u, &x, 8); return u; }
inline void gs_wait(gs_fiber_barrier& b) {
    const long gen = b.gen;
    ++gs_progress;
    if (++b.count == b.n) { b.count = 0; ++b.gen; return; }
    while (b.gen == gen) swapcontext(&gs_ctx->fibers[threadIdx.x], &gs_ctx->sched);
}
inline void __syncthreads() { gs_wait(gs_ctx->block); }
inline void __syncwarp() { gs_wait(gs_ctx->warp[threadIdx.x >> 5]); }
inline double __shfl_down_sync(unsigned, double v, int off) {
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    gs_ctx->shfl[warp][lane] = v;
    gs_wait(gs_ctx->warp[warp]);
    const double r = (lane + off < 32) ? gs_ctx->shfl[warp][lane + off] : v;
    gs_wait(gs_ctx->warp[warp]);
    return r;
}
// global memory of the output: a plain += is a slow non-atomic read-modify-write
struct gs_racy {
    double v;
    gs_racy& operator+=(double x) {
        const double old = v;
        std::this_thread::sleep_for(std::chrono::microseconds(200));
        v = old + x;
        return *this;
    }
};
static std::mutex gs_atomic_mutex;
inline double atomicAdd(gs_racy* a, double x) {
    std::lock_guard<std::mutex> g(gs_atomic_mutex); double o = a->v; a->v = o + x; return o;
}
inline int atomicMax(int* a, int x) {
    std::lock_guard<std::mutex> g(gs_atomic_mutex); const int o = *a; if (x > o) *a = x; return o;
}
#define GS_OUT_T gs_racy

// run kernel(threadIdx, blockIdx set) for grid x block threads; blocks concurrently, shuffled
static void gs_launch(long long grid, int block, const std::function<void()>& kernel) {
    std::vector<long long> order(grid);
    for (long long i = 0; i < grid; ++i) order[i] = i;
    const char* seed = std::getenv("GS_SHIM_SEED");
    std::mt19937_64 rng(seed ? std::strtoull(seed, nullptr, 10) : 1);
    std::shuffle(order.begin(), order.end(), rng);
    const char* nr = std::getenv("GS_SHIM_RUNNERS");
    const int runners = nr ? std::atoi(nr) : 4;
    std::atomic<long long> next(0);
    std::vector<std::thread> pool;
    for (int r = 0; r < runners; ++r)
        pool.emplace_back([&] {
#if defined(GS_SHIM_FTZ)
            _mm_setcsr(_mm_getcsr() | 0x8040);  // FTZ | DAZ, as -ftz=true
#endif
            for (;;) {
                const long long k = next++;
                if (k >= grid) return;
                auto* ctx = new gs_block_ctx();
                ctx->block.n = block;
                for (int w = 0; w < (block + 31) / 32; ++w) ctx->warp[w].n = 32;
                ctx->fibers.resize(block);
                static thread_local std::vector<std::unique_ptr<char[]>> stacks;  // reused per runner
                const size_t stack_size = 64 * 1024;
                while ((int)stacks.size() < block) stacks.emplace_back(new char[stack_size]);
                std::vector<char> done(block, 0);
                gs_ctx = ctx;
                blockIdx.x = (unsigned)order[k];
                blockDim.x = (unsigned)block;
                static thread_local const std::function<void()>* gs_kernel;
                gs_kernel = &kernel;
                for (int t = 0; t < block; ++t) {
                    getcontext(&ctx->fibers[t]);
                    ctx->fibers[t].uc_stack.ss_sp = stacks[t].get();
                    ctx->fibers[t].uc_stack.ss_size = stack_size;
                    ctx->fibers[t].uc_link = &ctx->sched;
                    makecontext(&ctx->fibers[t], (void (*)())+[] { (*gs_kernel)(); gs_returned = true; }, 0);
                }
                // round-robin scheduler: resume each unfinished fiber until all have returned
                int left = block;
                while (left) {
                    // a round in which no fiber reached a barrier or returned: every one left
                    // waits at a barrier that threads which returned will never reach
                    const long before = gs_progress;
                    for (int t = 0; t < block; ++t) {
                        if (done[t]) continue;
                        threadIdx.x = t;
                        ctx->current = t;
                        swapcontext(&ctx->sched, &ctx->fibers[t]);
                        // back here after a barrier yield or the fiber's return
                        if (ctx->fibers[t].uc_link && gs_returned) { done[t] = 1; --left; gs_returned = false; ++gs_progress; }
                    }
                    if (left && gs_progress == before) {
                        std::fprintf(stderr, "gs_shim: deadlock in block %lld: %d of %d threads wait "
                                     "at a barrier that threads which returned never reach\n",
                                     order[k], left, block);
                        std::_Exit(86);
                    }
                }
                delete ctx;
            }
        });
    for (auto& th : pool) th.join();
}
"""

DRIVER = r"""
template <typename T> std::vector<T> load(const std::string& path) {
    FILE* f = std::fopen(path.c_str(), "rb");
    if (!f) { std::perror(path.c_str()); std::exit(3); }
    std::fseek(f, 0, SEEK_END); long n = std::ftell(f); std::fseek(f, 0, SEEK_SET);
    std::vector<T> v(n / sizeof(T));
    if (n && std::fread(v.data(), 1, n, f) != (size_t)n) std::exit(4);
    std::fclose(f);
    return v;
}

// frames.bin is frame-major (nf, P); layout "pixel" transposes it with gs_to_pixel_major first.
// pad > 0: the operand is a strided view, as the engine's last partial batch is: pixel-major
// rows pad frame groups longer than needed, frame-major rows pad*7 values apart beyond P (the
// gaps hold garbage); the kernels get the row stride and must follow it.
template <typename T, int MODE, bool OFF, bool PIXEL>
void run(const std::string& dir, long long P, int nf, int nb, int pad) {
    auto frames = load<T>(dir + "/frames.bin");
    auto seg_bin = load<int>(dir + "/seg_bin.bin");
    auto seg_start = load<long long>(dir + "/seg_start.bin");
    auto seg_end = load<long long>(dir + "/seg_end.bin");
    auto pix = load<int>(dir + "/pix.bin");
    auto w = load<float>(dir + "/w.bin");
    auto s = load<float>(dir + "/s.bin");
    std::vector<float> o = OFF ? load<float>(dir + "/o.bin") : std::vector<float>(1, 0.0f);
    const int NQ = MODE + 2;
    std::vector<gs_racy> out((size_t)NQ * nf * nb, gs_racy{0.0});
    const int n_groups = (nf + GS_FB - 1) / GS_FB;
    const long long grid = (long long)seg_bin.size() * n_groups;
    if (PIXEL) {
        const long long ld = (long long)(n_groups + pad) * GS_FB;
        std::vector<T> pm((size_t)(P * ld), T(0));
        for (auto& v : pm) std::memset(&v, 0xA5, sizeof(T));  // padding: garbage
        const long long tgrid = ((P + GS_TILE - 1) / GS_TILE) * ((nf + GS_TILE - 1) / GS_TILE);
        gs_launch(tgrid, GS_TBLOCK, [&] {
            gs_to_pixel_major<T>(frames.data(), P, nf, ld, pm.data()); });
        gs_launch(grid, GS_BLOCK, [&] {
            gs_integrate_pm<T, GS_FB, MODE, OFF>(pm.data(), ld, nf, n_groups, seg_bin.data(),
                seg_start.data(), seg_end.data(), pix.data(), w.data(), s.data(), o.data(), nb,
                out.data()); });
    } else {
        const long long stride = P + 7LL * pad;
        std::vector<T> fs((size_t)(nf * stride));
        for (auto& v : fs) std::memset(&v, 0xA5, sizeof(T));  // gaps between rows: garbage
        for (int f = 0; f < nf; ++f)
            std::memcpy(&fs[(size_t)f * stride], &frames[(size_t)f * P], sizeof(T) * P);
        gs_launch(grid, GS_BLOCK, [&] {
            gs_integrate<T, GS_FB, MODE, OFF>(fs.data(), stride, nf, n_groups, seg_bin.data(),
                seg_start.data(), seg_end.data(), pix.data(), w.data(), s.data(), o.data(), nb,
                out.data()); });
    }
    std::string name = dir + "/out.bin";
    FILE* f = std::fopen(name.c_str(), "wb");
    std::fwrite(out.data(), sizeof(double), out.size(), f);
    std::fclose(f);
}

int main(int argc, char** argv) {
    if (argc != 9 && argc != 10) return 2;
    const std::string type = argv[1], dir = argv[2], layout = argv[6];
    const long long P = std::atoll(argv[3]);
    const int nf = std::atoi(argv[4]), nb = std::atoi(argv[5]);
    const int mode = std::atoi(argv[7]), off = std::atoi(argv[8]);
    const bool pixel = layout == "pixel";
    const int pad = argc == 10 ? std::atoi(argv[9]) : 0;
DISPATCH
    return 2;
}
"""

#: numpy dtype name -> C type of the kernel template
CTYPE_OF = {
    "int8": "signed char",
    "uint8": "unsigned char",
    "int16": "short",
    "uint16": "unsigned short",
    "int32": "int",
    "uint32": "unsigned int",
    "float32": "float",
    "float64": "double",
    "int64": "long long",
    "uint64": "unsigned long long",
}


def dispatch(combos):
    """C++ dispatch over (dtype name, mode, offset, pixel) instantiations."""
    lines = []
    for name, mode, off, pixel in combos:
        lines.append(
            f'    if (type == "{name}" && mode == {mode} && off == {int(off)} && '
            f"pixel == {str(pixel).lower()}) {{ run<{CTYPE_OF[name]}, {mode}, "
            f"{str(off).lower()}, {str(pixel).lower()}>(dir, P, nf, nb, pad); return 0; }}"
        )
    return "\n".join(lines)


def compile_with_shim(code, folder, name, flags=()):
    """g++ ``SHIM + code`` into ``folder``/``name``: (exe path, None), or (None, reason) when
    g++ is missing; RuntimeError with the compiler's message when it fails."""
    cxx = shutil.which("g++")
    if cxx is None:
        return None, "g++ not available"
    src = folder / f"{name}.cpp"
    src.write_text(SHIM + code)
    exe = folder / name
    proc = subprocess.run(
        [cxx, "-std=c++20", "-O1", "-pthread", "-w", *flags, str(src), "-o", str(exe)],
        capture_output=True,
        text=True,
    )
    if proc.returncode != 0:
        raise RuntimeError(proc.stderr[-4000:])
    return exe, None


def build(source, combos, folder, block=64, fb=8, defines=()):
    """Compile kernel ``source`` with the shim and a driver for ``combos``; returns the exe
    path, or (None, reason) when g++ is missing."""
    return compile_with_shim(
        source + DRIVER.replace("DISPATCH", dispatch(combos)),
        folder,
        "emu",
        (f"-DGS_BLOCK={block}", f"-DGS_FB={fb}", *defines),
    )


def run(exe, folder, engine, frames, layout, errors, seed=1, runners=4, pad=0):
    """Run the emulated kernels on ``frames`` (nf, H, W) with ``engine``'s kernel arrays;
    returns the (nq, nf, n_bins) float64 output.  pad: run on a strided view (rows longer
    than needed, garbage in the gaps), as the engine's last partial batch is."""
    import os

    from gpusaxs.gpu_kernels import kernel_mode as _mode

    for key, value in engine.kernel_arrays().items():
        if value is not None:
            value.tofile(folder / f"{key}.bin")
    frames = np.ascontiguousarray(frames)
    frames.tofile(folder / "frames.bin")
    nf = frames.shape[0]
    mode = _mode(errors)
    off = engine.kernel_arrays()["o"] is not None
    env = dict(os.environ, GS_SHIM_SEED=str(seed), GS_SHIM_RUNNERS=str(runners))
    proc = subprocess.run(
        [
            str(exe),
            frames.dtype.name,
            str(folder),
            str(engine.n_pixels),
            str(nf),
            str(engine.n_bins),
            layout,
            str(mode),
            str(int(off)),
            str(int(pad)),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"emulator exit {proc.returncode}: {proc.stderr[-2000:]}")
    return np.fromfile(folder / "out.bin").reshape(mode + 2, nf, engine.n_bins)
