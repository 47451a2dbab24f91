// gpusaxs azimuthal-integration kernels (CUDA C++17, compiled by NVRTC through CuPy).
//
// Read by gpusaxs.gpu_engine (kernel_source()), by the CI compile/SASS tests (NVRTC wheel) and
// by the CPU emulation shim of the tests (g++), so it uses no standard include and nothing the
// shim cannot define.  Every name expression the engine may request is listed by
// gpusaxs.gpu_engine.kernel_names().
//
// Sums per (frame, bin) over valid pixels, with v = s * (x - offset):
//   q=0 signal   sum w*v          q=1 norm     sum w
//   q=2 variance sum w*s^2*x      q=3 squares  sum w*v^2      (MODE 0: q<2, 1: q<3, 2: q<4)
// Validity is judged on the raw value x: x >= 0 and finite (judged on the bits for floats, so
// -ftz=true gives the same answer as the CPU for subnormals); the maximum of an unsigned type
// is the detector's gap/overflow flag.

#ifndef GS_BLOCK
#define GS_BLOCK 256
#endif
#define GS_WARPS (GS_BLOCK / 32)
// transpose kernel: 256 threads, 32 x 32 tiles
#define GS_TILE 32
#define GS_TBLOCK 256
// accumulator type of the output (the CPU shim substitutes a type that exposes races)
#ifndef GS_OUT_T
#define GS_OUT_T double
#endif
#ifndef GS_SHARED
#define GS_SHARED(type, name, dims) __shared__ type name dims
#endif
#ifndef GS_ATOMIC_ADD
#define GS_ATOMIC_ADD(ptr, value) atomicAdd((ptr), (value))
#endif

template <typename T> struct gs_valid {  // signed integers
    static __device__ __forceinline__ bool ok(T x) { return x >= 0; }
};
template <> struct gs_valid<unsigned char> {
    static __device__ __forceinline__ bool ok(unsigned char x) { return x != (unsigned char)0xFFu; }
};
template <> struct gs_valid<unsigned short> {
    static __device__ __forceinline__ bool ok(unsigned short x) { return x != (unsigned short)0xFFFFu; }
};
template <> struct gs_valid<unsigned int> {
    static __device__ __forceinline__ bool ok(unsigned int x) { return x != 0xFFFFFFFFu; }
};
template <> struct gs_valid<unsigned long long> {
    static __device__ __forceinline__ bool ok(unsigned long long x) { return x != 0xFFFFFFFFFFFFFFFFull; }
};
// floats: +0, -0 and positive finite values (subnormals included) are valid, whatever -ftz does
template <> struct gs_valid<float> {
    static __device__ __forceinline__ bool ok(float x) {
        const unsigned int b = __float_as_uint(x);
        return b < 0x7F800000u || b == 0x80000000u;
    }
};
template <> struct gs_valid<double> {
    static __device__ __forceinline__ bool ok(double x) {
        const unsigned long long b = (unsigned long long)__double_as_longlong(x);
        return b < 0x7FF0000000000000ull || b == 0x8000000000000000ull;
    }
};

__device__ __forceinline__ double gs_warp_sum(double v) {
    for (int off = 16; off > 0; off >>= 1) v += __shfl_down_sync(0xffffffffu, v, off);
    return v;
}

// Accumulate the FB raw values of one matrix entry (all loads already issued).
template <typename T, int FB, int MODE, bool OFF>
__device__ __forceinline__ void gs_accumulate(double (&acc)[4][FB], const T (&raw)[FB],
                                              const int nf, const double w, const double s,
                                              const double o) {
#pragma unroll
    for (int f = 0; f < FB; ++f) {
        const bool ok = (f < nf) & gs_valid<T>::ok(raw[f]);
        const double x = ok ? (double)raw[f] : 0.0;
        const double wk = ok ? w : 0.0;
        const double v = OFF ? s * (x - (ok ? o : 0.0)) : s * x;
        acc[0][f] += wk * v;
        acc[1][f] += wk;
        if (MODE >= 1) acc[2][f] += OFF ? wk * s * s * x : wk * s * v;
        if (MODE == 2) acc[3][f] += wk * v * v;
    }
}

// Block reduction of acc, then one atomic add per (quantity, frame) into out[q, f0+f, bin].
template <int FB, int NQ>
__device__ __forceinline__ void gs_reduce_store(double (&acc)[4][FB], const int nf, const int f0,
                                                const int n_frames, const int bin,
                                                const int n_bins, GS_OUT_T* __restrict__ out) {
    GS_SHARED(double, gs_red, [GS_WARPS][NQ * FB]);
    const int lane = threadIdx.x & 31;
    const int warp = threadIdx.x >> 5;
#pragma unroll
    for (int q = 0; q < NQ; ++q) {
#pragma unroll
        for (int f = 0; f < FB; ++f) {
            const double v = gs_warp_sum(acc[q][f]);
            if (lane == 0) gs_red[warp][q * FB + f] = v;
        }
    }
    __syncthreads();
    for (int i = threadIdx.x; i < NQ * FB; i += GS_BLOCK) {
        const int q = i / FB;
        const int f = i - q * FB;
        if (f < nf) {
            double t = 0.0;
            for (int k = 0; k < GS_WARPS; ++k) t += gs_red[k][i];
            GS_ATOMIC_ADD(&out[((long long)q * n_frames + f0 + f) * n_bins + bin], t);
        }
    }
}

// The work of one block: segment seg (entries e0..e1 of ONE bin) x frames f0..f0+nf-1.
// Blocks are numbered segment-major (block = seg * n_groups + group) so the groups sharing a
// segment run together and its entries come from L2 after the first.  Zeroes acc.
struct gs_job { long long seg, e0, e1; int f0, nf; };

template <int FB>
__device__ __forceinline__ gs_job gs_block_job(const int n_frames, const int n_groups,
                                               const long long* __restrict__ seg_start,
                                               const long long* __restrict__ seg_end,
                                               double (&acc)[4][FB]) {
    gs_job j;
    const long long block = (long long)blockIdx.x;
    const int group = (int)(block % n_groups);
    j.seg = block / n_groups;
    j.f0 = group * FB;
    j.nf = (n_frames - j.f0 < FB) ? (n_frames - j.f0) : FB;
    j.e0 = seg_start[j.seg];
    j.e1 = seg_end[j.seg];
#pragma unroll
    for (int f = 0; f < FB; ++f) { acc[0][f] = 0.0; acc[1][f] = 0.0; acc[2][f] = 0.0; acc[3][f] = 0.0; }
    return j;
}

// Frame-major stack: frames[f * n_pixels + p], (n_frames, n_pixels).  One block = one segment
// x one group of FB frames (gs_block_job).  The FB loads of an entry are issued
// unconditionally (frame index clamped to 0 beyond nf) and tested afterwards, so they are in
// flight together.  out: (NQ, n_frames, n_bins), zeroed.  At most 255 registers (1 block of
// 256 threads per SM); the pixel-major kernel keeps 2 blocks per SM within 128.
template <typename T, int FB, int MODE, bool OFF>
__global__ void __launch_bounds__(GS_BLOCK, 1) gs_integrate(
        const T* __restrict__ frames, const long long n_pixels,
        const int n_frames, const int n_groups,
        const int* __restrict__ seg_bin, const long long* __restrict__ seg_start,
        const long long* __restrict__ seg_end,
        const int* __restrict__ pix, const float* __restrict__ wgt,
        const float* __restrict__ scl, const float* __restrict__ offs,
        const int n_bins, GS_OUT_T* __restrict__ out)
{
    double acc[4][FB];
    const gs_job j = gs_block_job<FB>(n_frames, n_groups, seg_start, seg_end, acc);
    const int nf = j.nf;
    const T* base = frames + (long long)j.f0 * n_pixels;

    for (long long e = j.e0 + (long long)threadIdx.x; e < j.e1; e += GS_BLOCK) {
        const long long p = (long long)pix[e];
        const double w = (double)wgt[e];
        const double s = (double)scl[e];
        const double o = OFF ? (double)offs[e] : 0.0;
        T raw[FB];
#pragma unroll
        for (int f = 0; f < FB; ++f) raw[f] = base[(long long)(f < nf ? f : 0) * n_pixels + p];
        gs_accumulate<T, FB, MODE, OFF>(acc, raw, nf, w, s, o);
    }
    gs_reduce_store<FB, MODE + 2>(acc, nf, j.f0, n_frames, seg_bin[j.seg], n_bins, out);
}

// FB consecutive values from a pixel-major row, with 16- or 8-byte vector loads when the
// row segment allows (ld and FB multiples that keep every row segment aligned: see the engine).
template <typename T, int FB>
__device__ __forceinline__ void gs_load_row(T (&raw)[FB], const T* __restrict__ row) {
    constexpr int BYTES = FB * (int)sizeof(T);
    if constexpr (BYTES % 16 == 0) {
        const uint4* src = reinterpret_cast<const uint4*>(row);
        uint4 tmp[BYTES / 16];
#pragma unroll
        for (int i = 0; i < BYTES / 16; ++i) tmp[i] = __ldg(src + i);
        memcpy(raw, tmp, BYTES);
    } else if constexpr (BYTES % 8 == 0) {
        const uint2* src = reinterpret_cast<const uint2*>(row);
        uint2 tmp[BYTES / 8];
#pragma unroll
        for (int i = 0; i < BYTES / 8; ++i) tmp[i] = __ldg(src + i);
        memcpy(raw, tmp, BYTES);
    } else {
#pragma unroll
        for (int f = 0; f < FB; ++f) raw[f] = row[f];
    }
}

// Pixel-major stack: frames[p * ld + f], (n_pixels, ld), ld >= n_groups * FB a multiple of FB
// (columns >= n_frames are padding, loaded and discarded).  The FB frames of one entry are
// FB * sizeof(T) contiguous bytes (one 32-byte sector for 8 int32 frames).  Same blocks, sums
// and output as gs_integrate.
template <typename T, int FB, int MODE, bool OFF>
__global__ void __launch_bounds__(GS_BLOCK, 2) gs_integrate_pm(
        const T* __restrict__ frames, const long long ld,
        const int n_frames, const int n_groups,
        const int* __restrict__ seg_bin, const long long* __restrict__ seg_start,
        const long long* __restrict__ seg_end,
        const int* __restrict__ pix, const float* __restrict__ wgt,
        const float* __restrict__ scl, const float* __restrict__ offs,
        const int n_bins, GS_OUT_T* __restrict__ out)
{
    double acc[4][FB];
    const gs_job j = gs_block_job<FB>(n_frames, n_groups, seg_start, seg_end, acc);
    const int nf = j.nf;
    const T* base = frames + j.f0;

    for (long long e = j.e0 + (long long)threadIdx.x; e < j.e1; e += GS_BLOCK) {
        const long long p = (long long)pix[e];
        const double w = (double)wgt[e];
        const double s = (double)scl[e];
        const double o = OFF ? (double)offs[e] : 0.0;
        T raw[FB];
        gs_load_row<T, FB>(raw, base + p * ld);
        gs_accumulate<T, FB, MODE, OFF>(acc, raw, nf, w, s, o);
    }
    gs_reduce_store<FB, MODE + 2>(acc, nf, j.f0, n_frames, seg_bin[j.seg], n_bins, out);
}

// (n_frames, n_pixels) frame-major -> (n_pixels, ld) pixel-major, through 32 x 32 tiles:
// reads coalesced along pixels, writes coalesced along frames.  src may be a mapped pinned host
// buffer (the upload and the transposition are then one pass).  1D grid:
// block = pixel_tile + n_pixel_tiles * frame_tile.
template <typename T>
__global__ void __launch_bounds__(GS_TBLOCK) gs_to_pixel_major(
        const T* __restrict__ src, const long long n_pixels, const int n_frames,
        const long long ld, T* __restrict__ dst)
{
    GS_SHARED(T, gs_tile, [GS_TILE][GS_TILE + 1]);
    const long long n_ptiles = (n_pixels + GS_TILE - 1) / GS_TILE;
    const long long pt = (long long)blockIdx.x % n_ptiles;
    const int ft = (int)((long long)blockIdx.x / n_ptiles);
    const int tx = threadIdx.x & (GS_TILE - 1);
    const int ty = threadIdx.x / GS_TILE;
    const long long p0 = pt * GS_TILE;
    const int fr0 = ft * GS_TILE;
    for (int j = ty; j < GS_TILE; j += GS_TBLOCK / GS_TILE) {
        const int f = fr0 + j;
        const long long p = p0 + tx;
        if (f < n_frames && p < n_pixels) gs_tile[j][tx] = src[(long long)f * n_pixels + p];
    }
    __syncthreads();
    for (int j = ty; j < GS_TILE; j += GS_TBLOCK / GS_TILE) {
        const long long p = p0 + j;
        const int f = fr0 + tx;
        if (f < n_frames && p < n_pixels) dst[p * ld + f] = gs_tile[tx][j];
    }
}
