// The kernel of commit 9b1df5d (before round 2): a negative control for test_gpu_sass.py
// (its frame loads are serialised by  if (f < nf)  branches).

#ifndef GS_BLOCK
#define GS_BLOCK 256
#endif
#define GS_WARPS (GS_BLOCK / 32)

// Validity of a raw pixel value: x >= 0 and finite; the maximum of an unsigned type is a flag.
template <typename T> struct gs_valid {
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
template <> struct gs_valid<float> {
    static __device__ __forceinline__ bool ok(float x) { return x >= 0.0f && x <= 3.402823466e+38f; }
};
template <> struct gs_valid<double> {
    static __device__ __forceinline__ bool ok(double x) { return x >= 0.0 && x <= 1.7976931348623157e+308; }
};

__device__ __forceinline__ double gs_warp_sum(double v) {
    for (int off = 16; off > 0; off >>= 1) v += __shfl_down_sync(0xffffffffu, v, off);
    return v;
}

// One block = one segment (a run of <= segment_length entries of ONE bin) x one group of up
// to FB frames.  Blocks are numbered segment-major (block = seg * n_groups + group) so the
// groups sharing a segment run together and its matrix entries come from L2 after the first.
// frames: (n_frames, n_pixels) raw values.  out: (NQ, n_frames, n_bins) float64, zeroed;
// q = 0 signal, 1 norm, 2 variance, 3 squares (2 and 3 only when ERR).
template <typename T, int FB, bool ERR>
__global__ void __launch_bounds__(GS_BLOCK) gs_integrate(
        const T* __restrict__ frames, const long long n_pixels,
        const int n_frames, const int n_groups,
        const int* __restrict__ seg_bin, const long long* __restrict__ seg_start,
        const long long* __restrict__ seg_end,
        const int* __restrict__ pix, const float* __restrict__ wgt,
        const float* __restrict__ scl,
        const int n_bins, double* __restrict__ out)
{
    const int NQ = ERR ? 4 : 2;
    __shared__ double gs_red[GS_WARPS][4 * FB];
    const long long block = (long long)blockIdx.x;
    const int group = (int)(block % n_groups);
    const long long seg = block / n_groups;
    const int f0 = group * FB;
    const int nf = (n_frames - f0 < FB) ? (n_frames - f0) : FB;
    const long long e0 = seg_start[seg];
    const long long e1 = seg_end[seg];
    const T* base = frames + (long long)f0 * n_pixels;

    double acc[4][FB];
#pragma unroll
    for (int f = 0; f < FB; ++f) { acc[0][f] = 0.0; acc[1][f] = 0.0; acc[2][f] = 0.0; acc[3][f] = 0.0; }

    for (long long e = e0 + (long long)threadIdx.x; e < e1; e += GS_BLOCK) {
        const long long p = (long long)pix[e];
        const double w = (double)wgt[e];
        const double s = (double)scl[e];
#pragma unroll
        for (int f = 0; f < FB; ++f) {
            if (f < nf) {
                const T raw = base[(long long)f * n_pixels + p];
                if (gs_valid<T>::ok(raw)) {
                    const double v = s * (double)raw;
                    acc[0][f] += w * v;
                    acc[1][f] += w;
                    if (ERR) { acc[2][f] += w * s * v; acc[3][f] += w * v * v; }
                }
            }
        }
    }

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
    const int bin = seg_bin[seg];
    for (int i = threadIdx.x; i < NQ * FB; i += GS_BLOCK) {
        const int q = i / FB;
        const int f = i - q * FB;
        if (f < nf) {
            double t = 0.0;
            for (int k = 0; k < GS_WARPS; ++k) t += gs_red[k][i];
            atomicAdd(&out[((long long)q * n_frames + f0 + f) * n_bins + bin], t);
        }
    }
}
