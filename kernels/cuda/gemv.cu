// Skinny matrix products for decode steps: y[m, n] = sum_k x[m, k] * w[n, k] for M <= 8 rows of
// x. Memory-bound: every weight is read once with 16-byte loads, one warp per output column,
// several loads in flight per lane; x (a few KB) is read through the cache by every warp.
#include "common.cuh"

#define GEMV_WARPS 8

__device__ __forceinline__ void fma8(float& acc, const uint4 w, const uint4 x) {
    const bf162* wp = (const bf162*)&w;
    const bf162* xp = (const bf162*)&x;
#pragma unroll
    for (int i = 0; i < 4; i++) {
        const float2 a = __bfloat1622float2(wp[i]);
        const float2 b = __bfloat1622float2(xp[i]);
        acc = fmaf(a.x, b.x, acc);
        acc = fmaf(a.y, b.y, acc);
    }
}

__device__ __forceinline__ void store_out(bf16* y, float v) { *y = __float2bfloat16_rn(v); }
__device__ __forceinline__ void store_out(float* y, float v) { *y = v; }

// K % 8 == 0 (checked by the wrapper); one warp per column n.
template <int M, typename OUT>
__device__ __forceinline__ void gemv_body(OUT* __restrict__ y, const bf16* __restrict__ x,
                                          const bf16* __restrict__ w, u32 N, u32 K) {
    const u32 lane = threadIdx.x & 31;
    const u32 n = blockIdx.x * GEMV_WARPS + (threadIdx.x >> 5);
    if (n >= N) return;
    const uint4* wr = (const uint4*)(w + (u64)n * K);
    const uint4* xr = (const uint4*)x;
    const u32 chunks = K / 8;
    float acc[M];
#pragma unroll
    for (int m = 0; m < M; m++) acc[m] = 0.f;
    u32 c = lane;
    // Four independent weight loads in flight per lane, then their products.
    for (; c + 96 < chunks; c += 128) {
        uint4 wv[4];
#pragma unroll
        for (int u = 0; u < 4; u++) wv[u] = __ldcs(wr + c + 32 * u);
#pragma unroll
        for (int u = 0; u < 4; u++)
#pragma unroll
            for (int m = 0; m < M; m++) fma8(acc[m], wv[u], __ldg(xr + (u64)m * chunks + c + 32 * u));
    }
    for (; c < chunks; c += 32) {
        const uint4 wv = __ldcs(wr + c);
#pragma unroll
        for (int m = 0; m < M; m++) fma8(acc[m], wv, __ldg(xr + (u64)m * chunks + c));
    }
#pragma unroll
    for (int m = 0; m < M; m++) acc[m] = warp_sum(acc[m]);
    if (lane == 0) {
#pragma unroll
        for (int m = 0; m < M; m++) store_out(y + (u64)m * N + n, acc[m]);
    }
}

// For 3..8 rows, re-reading x from the cache for every column costs more than the weights
// (x is M * K * 2 bytes a column). Here a block of 8 warps stages a K-tile of x in shared memory
// once and each warp computes 4 adjacent columns from it, so x is read once per 32 columns.
#define GEMV_TILE_K 2048
#define GEMV_COLS 4

template <int M, typename OUT>
__device__ __forceinline__ void gemv_tiled_body(OUT* __restrict__ y, const bf16* __restrict__ x,
                                                const bf16* __restrict__ w, u32 N, u32 K) {
    __shared__ uint4 xs[M][GEMV_TILE_K / 8];
    const u32 lane = threadIdx.x & 31;
    const u32 n0 = (blockIdx.x * GEMV_WARPS + (threadIdx.x >> 5)) * GEMV_COLS;
    const u32 chunks = K / 8;
    float acc[GEMV_COLS][M];
#pragma unroll
    for (int c = 0; c < GEMV_COLS; c++)
#pragma unroll
        for (int m = 0; m < M; m++) acc[c][m] = 0.f;
    const uint4* xr = (const uint4*)x;
    for (u32 t0 = 0; t0 < chunks; t0 += GEMV_TILE_K / 8) {
        const u32 tn = min((u32)(GEMV_TILE_K / 8), chunks - t0);
        __syncthreads();
        for (u32 i = threadIdx.x; i < M * tn; i += GEMV_WARPS * 32) {
            const u32 m = i / tn, c = i - m * tn;
            xs[m][c] = __ldg(xr + (u64)m * chunks + t0 + c);
        }
        __syncthreads();
        for (u32 c = lane; c < tn; c += 32) {
            uint4 wv[GEMV_COLS];
#pragma unroll
            for (int j = 0; j < GEMV_COLS; j++)
                wv[j] = n0 + j < N ? __ldcs((const uint4*)(w + (u64)(n0 + j) * K) + t0 + c)
                                   : make_uint4(0, 0, 0, 0);
#pragma unroll
            for (int m = 0; m < M; m++) {
                const uint4 xv = xs[m][c];
#pragma unroll
                for (int j = 0; j < GEMV_COLS; j++) fma8(acc[j][m], wv[j], xv);
            }
        }
    }
#pragma unroll
    for (int j = 0; j < GEMV_COLS; j++)
#pragma unroll
        for (int m = 0; m < M; m++) acc[j][m] = warp_sum(acc[j][m]);
    if (lane == 0) {
#pragma unroll
        for (int j = 0; j < GEMV_COLS; j++)
            if (n0 + j < N)
#pragma unroll
                for (int m = 0; m < M; m++) store_out(y + (u64)m * N + n0 + j, acc[j][m]);
    }
}

#define GEMV_TILED_KERNELS(M)                                                                  \
    extern "C" __global__ void __launch_bounds__(GEMV_WARPS * 32)                              \
        gemv_tiled_bf16_m##M(bf16* __restrict__ y, const bf16* __restrict__ x,                 \
                             const bf16* __restrict__ w, u32 N, u32 K) {                       \
        gemv_tiled_body<M, bf16>(y, x, w, N, K);                                               \
    }                                                                                          \
    extern "C" __global__ void __launch_bounds__(GEMV_WARPS * 32)                              \
        gemv_tiled_f32_m##M(float* __restrict__ y, const bf16* __restrict__ x,                 \
                            const bf16* __restrict__ w, u32 N, u32 K) {                        \
        gemv_tiled_body<M, float>(y, x, w, N, K);                                              \
    }

GEMV_TILED_KERNELS(1)
GEMV_TILED_KERNELS(2)
GEMV_TILED_KERNELS(3)
GEMV_TILED_KERNELS(4)
GEMV_TILED_KERNELS(5)
GEMV_TILED_KERNELS(6)
GEMV_TILED_KERNELS(7)
GEMV_TILED_KERNELS(8)

#define GEMV_KERNELS(M)                                                                        \
    extern "C" __global__ void __launch_bounds__(GEMV_WARPS * 32)                              \
        gemv_bf16_m##M(bf16* __restrict__ y, const bf16* __restrict__ x,                       \
                       const bf16* __restrict__ w, u32 N, u32 K) {                             \
        gemv_body<M, bf16>(y, x, w, N, K);                                                     \
    }                                                                                          \
    extern "C" __global__ void __launch_bounds__(GEMV_WARPS * 32)                              \
        gemv_f32_m##M(float* __restrict__ y, const bf16* __restrict__ x,                       \
                      const bf16* __restrict__ w, u32 N, u32 K) {                              \
        gemv_body<M, float>(y, x, w, N, K);                                                    \
    }

GEMV_KERNELS(1)
GEMV_KERNELS(2)
GEMV_KERNELS(3)
GEMV_KERNELS(4)
GEMV_KERNELS(5)
GEMV_KERNELS(6)
GEMV_KERNELS(7)
GEMV_KERNELS(8)
