// gpusaxs bitshuffle-LZ4 decoder (CUDA C++17, compiled by NVRTC through CuPy).
//
// Read by gpusaxs.gpu_decode (decode_source()), by the CI compile/SASS tests (NVRTC wheel) and by
// the CPU emulation shim of the tests (g++), so it uses no standard include.
//
// Input: a batch of compressed chunks (HDF5 filter 32008 framing, one frame each) laid end to end
// in one buffer of in_bytes bytes; chunk f is [chunk_off[f], chunk_off[f+1]).  A chunk is a
// 12-byte header (uint64 BE total bytes, uint32 BE block bytes), then the blocks, each a uint32
// BE compressed size and an LZ4 block (bitshuffle has no "stored" block: an incompressible block
// is an LZ4 block of literals, longer than its input), then the last n_elems % 8 elements raw.
// Blocks hold block_elems elements (the last one n_elems % block_elems rounded down to 8);
// inside a block the bits are shuffled: row r = 8*byte + bit holds that bit of every element.
//
// Two kernels, in stream order:
//   gs_bslz4_index   one thread per frame: checks the header, walks the block chain (every size
//                    checked against the chunk), writes each block's position, copies the raw
//                    tail; status[f] != 0 on any inconsistency.
//   gs_bslz4_decode  one warp per block: LZ4 into shared memory (every read checked against the
//                    block, every write against the block size, every match against what is
//                    decoded), then the bit-unshuffle (an 8x8 bit transpose per byte) into the
//                    frame-major output (nf, frame_bytes / E) where the integration reads it.
// A hostile chunk fails its own frame (status) and reads or writes nothing outside the buffers.

#ifndef GS_SHARED
#define GS_SHARED(type, name, dims) __shared__ type name dims
#endif
#ifndef GS_SYNCWARP
#define GS_SYNCWARP() __syncwarp()
#endif
#ifndef GS_ATOMIC_MAX
#define GS_ATOMIC_MAX(ptr, value) atomicMax((ptr), (value))
#endif

// largest block (bytes) decoded in shared memory; a larger one fails the frame (GS_BS_BIG)
#define GS_BS_MAX_BLOCK 16384
// warps (blocks decoded) per thread block of gs_bslz4_decode
#define GS_BS_WARPS 2
#define GS_BS_THREADS (32 * GS_BS_WARPS)

// status codes (gpusaxs.gpu_decode.STATUS names them)
#define GS_BS_OK 0
#define GS_BS_CHUNK 1      // chunk offsets outside the input buffer
#define GS_BS_HEADER 2     // chunk shorter than its header
#define GS_BS_TOTAL 3      // header's total bytes != the frame's
#define GS_BS_BLOCKSIZE 4  // block size 0 or not a multiple of 8 elements
#define GS_BS_BIG 5        // block size above GS_BS_MAX_BLOCK
#define GS_BS_TABLE 6      // more blocks than the position table holds
#define GS_BS_TRUNC 7      // a block header or block runs past the chunk
#define GS_BS_CSIZE 8      // a compressed size above LZ4's bound
#define GS_BS_TRAILING 9   // bytes left between the last block and the raw tail
#define GS_BS_LZ4 10       // malformed LZ4 sequence (overrun, bad offset)
#define GS_BS_LENGTH 11    // a block decoded to the wrong length

__device__ __forceinline__ unsigned int gs_be32(const unsigned char* p) {
    return ((unsigned int)p[0] << 24) | ((unsigned int)p[1] << 16) | ((unsigned int)p[2] << 8) |
           (unsigned int)p[3];
}

// frame geometry from the block size (bytes): elements per block, blocks in the frame
struct gs_bs_geom {
    long long n_elems, block_elems, last_elems, n_blocks;
};
__device__ __forceinline__ gs_bs_geom gs_bs_geometry(long long frame_bytes, int E, long long block_bytes) {
    gs_bs_geom g;
    g.n_elems = frame_bytes / E;
    g.block_elems = block_bytes / E;
    const long long n_full = g.n_elems / g.block_elems;
    g.last_elems = (g.n_elems % g.block_elems) - (g.n_elems % 8);
    g.n_blocks = n_full + (g.last_elems > 0 ? 1 : 0);
    return g;
}

extern "C" __global__ void gs_bslz4_index(const unsigned char* __restrict__ in, long long in_bytes,
                                          const long long* __restrict__ chunk_off, int nf,
                                          long long frame_bytes, int E, long long* __restrict__ block_pos,
                                          int max_blocks, int* __restrict__ block_bytes,
                                          int* __restrict__ status, unsigned char* __restrict__ out,
                                          long long out_bytes) {
    const long long f = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (f >= nf) return;
    block_bytes[f] = 0;
    const long long a = chunk_off[f], b = chunk_off[f + 1];
    if (a < 0 || b < a || b > in_bytes || (f + 1) * frame_bytes > out_bytes) { status[f] = GS_BS_CHUNK; return; }
    if (b - a < 12) { status[f] = GS_BS_HEADER; return; }
    const unsigned char* p = in + a;
    const unsigned long long total = ((unsigned long long)gs_be32(p) << 32) | gs_be32(p + 4);
    if (total != (unsigned long long)frame_bytes) { status[f] = GS_BS_TOTAL; return; }
    const long long bsize = gs_be32(p + 8);
    if (bsize == 0 || bsize % (8 * E) != 0) { status[f] = GS_BS_BLOCKSIZE; return; }
    if (bsize > GS_BS_MAX_BLOCK) { status[f] = GS_BS_BIG; return; }
    const gs_bs_geom g = gs_bs_geometry(frame_bytes, E, bsize);
    if (g.n_blocks > max_blocks) { status[f] = GS_BS_TABLE; return; }
    const long long tail = (g.n_elems % 8) * E;
    if (b - a - 12 < tail) { status[f] = GS_BS_TRUNC; return; }
    const long long end = b - tail;
    long long pos = a + 12;
    for (long long k = 0; k < g.n_blocks; ++k) {
        const long long plain = (k == g.n_blocks - 1 && g.last_elems > 0) ? g.last_elems * E : bsize;
        if (pos + 4 > end) { status[f] = GS_BS_TRUNC; return; }
        const long long csize = gs_be32(in + pos);
        if (csize > plain + plain / 255 + 16) { status[f] = GS_BS_CSIZE; return; }
        block_pos[f * max_blocks + k] = pos;
        pos += 4 + csize;
        if (pos > end) { status[f] = GS_BS_TRUNC; return; }
    }
    if (pos != end) { status[f] = GS_BS_TRAILING; return; }
    unsigned char* o = out + f * frame_bytes + (frame_bytes - tail);
    for (long long i = 0; i < tail; ++i) o[i] = in[end + i];
    block_bytes[f] = (int)bsize;
    status[f] = GS_BS_OK;
}

template <int E> struct gs_bs_word;
template <> struct gs_bs_word<1> { typedef unsigned char t; };
template <> struct gs_bs_word<2> { typedef unsigned short t; };
template <> struct gs_bs_word<4> { typedef unsigned int t; };

// 8x8 bit transpose: byte k bit m -> byte m bit k (Hacker's Delight, transpose8)
__device__ __forceinline__ unsigned long long gs_bs_transpose8(unsigned long long x) {
    unsigned long long t;
    t = (x ^ (x >> 7)) & 0x00AA00AA00AA00AAull;
    x = x ^ t ^ (t << 7);
    t = (x ^ (x >> 14)) & 0x0000CCCC0000CCCCull;
    x = x ^ t ^ (t << 14);
    t = (x ^ (x >> 28)) & 0x00000000F0F0F0F0ull;
    x = x ^ t ^ (t << 28);
    return x;
}

// One warp decodes one block: every lane parses the same sequence headers (same addresses:
// broadcast loads, uniform control flow), the copies are spread over the lanes.  Returns
// GS_BS_OK or an error code; dst holds `plain` bytes when it succeeds.
__device__ __forceinline__ int gs_lz4_block(const unsigned char* __restrict__ src, long long csize,
                                            unsigned char* dst, int plain, int lane) {
    long long ip = 0;
    int op = 0;
    for (;;) {
        if (ip >= csize) return GS_BS_LZ4;
        const unsigned int token = src[ip++];
        long long lit = token >> 4;
        if (lit == 15) {
            unsigned int x;
            do {
                if (ip >= csize) return GS_BS_LZ4;
                x = src[ip++];
                lit += x;
                if (lit > plain) return GS_BS_LZ4;
            } while (x == 255);
        }
        if (ip + lit > csize || op + lit > plain) return GS_BS_LZ4;
        for (int i = lane; i < (int)lit; i += 32) dst[op + i] = src[ip + i];
        ip += lit;
        op += (int)lit;
        if (ip == csize) break;  // the last sequence has literals only
        if (ip + 2 > csize) return GS_BS_LZ4;
        const int off = (int)src[ip] | ((int)src[ip + 1] << 8);
        ip += 2;
        if (off == 0 || off > op) return GS_BS_LZ4;
        long long len = token & 15;
        if (len == 15) {
            unsigned int x;
            do {
                if (ip >= csize) return GS_BS_LZ4;
                x = src[ip++];
                len += x;
                if (len > plain) return GS_BS_LZ4;
            } while (x == 255);
        }
        len += 4;
        if (op + len > plain) return GS_BS_LZ4;
        GS_SYNCWARP();  // the literals of every lane are in dst
        // an overlapping match (off < 32) repeats: copy off bytes per round
        const int step = off < 32 ? off : 32;
        for (int done = 0; done < (int)len; done += step) {
            const int i = done + lane;
            if (lane < step && i < (int)len) dst[op + i] = dst[op + i - off];
            GS_SYNCWARP();
        }
        op += (int)len;
    }
    return op == plain ? GS_BS_OK : GS_BS_LENGTH;
}

template <int E>
__global__ void __launch_bounds__(GS_BS_THREADS)
gs_bslz4_decode(const unsigned char* __restrict__ in, long long in_bytes,
                const long long* __restrict__ chunk_off, int nf, long long frame_bytes,
                const long long* __restrict__ block_pos, int max_blocks,
                const int* __restrict__ block_bytes, int* status,
                typename gs_bs_word<E>::t* __restrict__ out, long long out_bytes) {
    typedef typename gs_bs_word<E>::t W;
    GS_SHARED(unsigned char, buf, [GS_BS_WARPS][GS_BS_MAX_BLOCK]);
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    const long long w = (long long)blockIdx.x * GS_BS_WARPS + warp;
    const long long f = w / max_blocks, k = w % max_blocks;
    if (f >= nf) return;
    // block_bytes[f] > 0 only for a frame the index kernel accepted.  status[f] is not read
    // here: other warps write it during this launch, and lanes reading it at different moments
    // would leave part of the warp at the __syncwarp below (undefined on the device; a hang on
    // the CPU shim, seen once in CI).  A frame that fails in one block still decodes its others.
    const int bsize = block_bytes[f];
    if (bsize <= 0 || bsize > GS_BS_MAX_BLOCK) return;
    const gs_bs_geom g = gs_bs_geometry(frame_bytes, E, bsize);
    if (k >= g.n_blocks) return;
    const int n = (int)((k == g.n_blocks - 1 && g.last_elems > 0) ? g.last_elems : g.block_elems);
    const int plain = n * E;
    // the index kernel checked these; checked again against the buffers before any access
    const long long pos = block_pos[f * max_blocks + k];
    const long long end = chunk_off[f + 1];
    if (pos < chunk_off[f] || end > in_bytes || pos + 4 > end) { GS_ATOMIC_MAX(&status[f], GS_BS_TRUNC); return; }
    const long long csize = gs_be32(in + pos);
    if (pos + 4 + csize > end) { GS_ATOMIC_MAX(&status[f], GS_BS_TRUNC); return; }
    const long long first = k * g.block_elems;  // first element of the block in the frame
    if ((f * g.n_elems + first + n) * E > out_bytes) { GS_ATOMIC_MAX(&status[f], GS_BS_CHUNK); return; }
    unsigned char* b = buf[warp];
    const int err = gs_lz4_block(in + pos + 4, csize, b, plain, lane);
    if (err != GS_BS_OK) {
        if (lane == 0) GS_ATOMIC_MAX(&status[f], err);
        return;
    }
    GS_SYNCWARP();
    // bit-unshuffle: rows of n/8 bytes, row 8*j+bit; lane handles 8 elements per step
    const int row = n / 8;
    W* o = out + f * g.n_elems + first;
    for (int c = lane; c < row; c += 32) {
        W v[8];
#pragma unroll
        for (int m = 0; m < 8; ++m) v[m] = 0;
#pragma unroll
        for (int j = 0; j < E; ++j) {
            unsigned long long x = 0;
#pragma unroll
            for (int bit = 0; bit < 8; ++bit) x |= (unsigned long long)b[(8 * j + bit) * row + c] << (8 * bit);
            x = gs_bs_transpose8(x);
#pragma unroll
            for (int m = 0; m < 8; ++m) v[m] |= (W)(((x >> (8 * m)) & 0xFFull) << (8 * j));
        }
#pragma unroll
        for (int m = 0; m < 8; ++m) o[8 * c + m] = v[m];
    }
}
