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
