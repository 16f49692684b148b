// Row-wise and elementwise kernels: embedding gather, RMSNorm (plain and fused with the residual
// add), SiLU-mul, and random fills for dummy weights.
#include "common.cuh"

#define ROW_THREADS 256

// out f32 [T, hidden] = table[tokens[t]]; a token outside the vocabulary gives a zero row.
extern "C" __global__ void __launch_bounds__(ROW_THREADS)
    embedding_kernel(float* __restrict__ out, const bf16* __restrict__ table,
                     const u32* __restrict__ tokens, u32 hidden, u32 vocab) {
    const u64 t = blockIdx.x;
    const u32 tok = tokens[t];
    float* o = out + t * hidden;
    const bf16* row = table + (u64)tok * hidden;
    for (u32 i = threadIdx.x * 2; i < hidden; i += ROW_THREADS * 2) {
        float2 v = make_float2(0.f, 0.f);
        if (tok < vocab) v = __bfloat1622float2(*(const bf162*)(row + i));
        *(float2*)(o + i) = v;
    }
}

// The norms run one block of NORM_THREADS per row and keep the row in registers between the
// sum of squares and the scaling, so a decode step's single row costs one pass of loads and one
// barrier instead of a latency-bound loop on a few warps. hidden <= 2 * NORM_THREADS *
// NORM_ITERS (16,384; checked by the wrapper).
#define NORM_THREADS 1024
#define NORM_ITERS 8

// The norm weights of this thread's elements, loaded before the PDL wait (they are constants),
// so that no memory round trip follows the block's reduction.
__device__ __forceinline__ void norm_load_weights(float2* g, const float* __restrict__ w,
                                                  u32 hidden) {
#pragma unroll
    for (int it = 0; it < NORM_ITERS; it++) {
        const u32 i = (it * NORM_THREADS + threadIdx.x) * 2;
        g[it] = i < hidden ? *(const float2*)(w + i) : make_float2(0.f, 0.f);
    }
}

__device__ __forceinline__ void norm_scale_store(bf16* __restrict__ out, const float2* v,
                                                 const float2* g, u32 hidden, float ss,
                                                 float eps) {
    const float r = rsqrtf(ss / (float)hidden + eps);
#pragma unroll
    for (int it = 0; it < NORM_ITERS; it++) {
        const u32 i = (it * NORM_THREADS + threadIdx.x) * 2;
        if (i < hidden)
            *(bf162*)(out + i) =
                __floats2bfloat162_rn(v[it].x * r * g[it].x, v[it].y * r * g[it].y);
    }
}

// out bf16 = x * rsqrt(mean(x^2) + eps) * w, one block per row.
extern "C" __global__ void __launch_bounds__(NORM_THREADS)
    rms_norm_kernel(bf16* __restrict__ out, const float* __restrict__ x,
                    const float* __restrict__ w, u32 hidden, float eps) {
    float2 g[NORM_ITERS];
    norm_load_weights(g, w, hidden);
    pdl_enter();
    __shared__ float scratch[32];
    const u64 t = blockIdx.x;
    const float* xr = x + t * hidden;
    float2 v[NORM_ITERS];
    float ss = 0.f;
#pragma unroll
    for (int it = 0; it < NORM_ITERS; it++) {
        const u32 i = (it * NORM_THREADS + threadIdx.x) * 2;
        v[it] = i < hidden ? *(const float2*)(xr + i) : make_float2(0.f, 0.f);
        ss += v[it].x * v[it].x + v[it].y * v[it].y;
    }
    ss = block_sum<NORM_THREADS>(ss, scratch);
    norm_scale_store(out + t * hidden, v, g, hidden, ss, eps);
}

// x += delta (the residual add), then out = rms_norm(x) * w.
extern "C" __global__ void __launch_bounds__(NORM_THREADS)
    add_rms_norm_kernel(float* __restrict__ x, const bf16* __restrict__ delta,
                        bf16* __restrict__ out, const float* __restrict__ w, u32 hidden,
                        float eps) {
    // Before the wait: the norm weights, and this row of the residual through L2 (ld.cg). The
    // residual was last written by the norm three kernels back (before the GEMV, attention or
    // SiLU and GEMV that lead here), which had completed before the kernel before this one got
    // past its own wait, which it has when this one starts; L2 is coherent, L1 is bypassed.
    // Only delta, written by the kernel just before, waits.
    float2 g[NORM_ITERS];
    norm_load_weights(g, w, hidden);
    const u64 t = blockIdx.x;
    float* xr = x + t * hidden;
    const bf16* dr = delta + t * hidden;
    float2 v[NORM_ITERS];
#pragma unroll
    for (int it = 0; it < NORM_ITERS; it++) {
        const u32 i = (it * NORM_THREADS + threadIdx.x) * 2;
        v[it] = i < hidden ? __ldcg((const float2*)(xr + i)) : make_float2(0.f, 0.f);
    }
    pdl_enter();
    __shared__ float scratch[32];
    float ss = 0.f;
#pragma unroll
    for (int it = 0; it < NORM_ITERS; it++) {
        const u32 i = (it * NORM_THREADS + threadIdx.x) * 2;
        if (i < hidden) {
            const float2 d = __bfloat1622float2(*(const bf162*)(dr + i));
            v[it].x += d.x;
            v[it].y += d.y;
            *(float2*)(xr + i) = v[it];
        }
        ss += v[it].x * v[it].x + v[it].y * v[it].y;
    }
    ss = block_sum<NORM_THREADS>(ss, scratch);
    norm_scale_store(out + t * hidden, v, g, hidden, ss, eps);
}

__device__ __forceinline__ float silu(float x) { return x / (1.f + __expf(-x)); }

// The word that moves W bf16 in one load or store: a uint4 for 8 (16 bytes), a u32 for 2.
template <int W>
struct Bf16Word;
template <>
struct Bf16Word<8> {
    using T = uint4;
};
template <>
struct Bf16Word<2> {
    using T = u32;
};

// out [T, I] = silu(gu[:, :I]) * gu[:, I:], W elements a thread step (I % W == 0).
template <int W>
__device__ __forceinline__ void silu_mul_rows(bf16* __restrict__ out,
                                              const bf16* __restrict__ gu, u32 inter, u64 rows) {
    const u64 steps = rows * inter / W, stride = (u64)gridDim.x * blockDim.x;
    for (u64 p = (u64)blockIdx.x * blockDim.x + threadIdx.x; p < steps; p += stride) {
        const u64 e = p * W;
        const u64 t = e / inter;
        const u32 i = (u32)(e - t * inter);
        const bf16* row = gu + t * 2 * inter;
        using Word = typename Bf16Word<W>::T;
        const Word gw = *(const Word*)(row + i), uw = *(const Word*)(row + inter + i);
        const bf162* g = (const bf162*)&gw;
        const bf162* u = (const bf162*)&uw;
        Word rw;
        bf162* r = (bf162*)&rw;
#pragma unroll
        for (int k = 0; k < W / 2; k++) {
            const float2 a = __bfloat1622float2(g[k]), b = __bfloat1622float2(u[k]);
            r[k] = __floats2bfloat162_rn(silu(a.x) * b.x, silu(a.y) * b.y);
        }
        *(Word*)(out + e) = rw;
    }
}

// out [T, I] = silu(gu[:, :I]) * gu[:, I:]: eight elements (16-byte loads and stores) per
// thread step where I % 8 == 0 (every model we know), else two. The two-element loop read
// 22 MB of a 256-row Llama-3-8B step in 11.1 us, 66% of copy bandwidth (H100, ncu, 2026-11-26).
extern "C" __global__ void silu_mul_kernel(bf16* __restrict__ out, const bf16* __restrict__ gu,
                                           u32 inter, u64 rows) {
    pdl_enter();
    if (inter % 8 == 0)
        silu_mul_rows<8>(out, gu, inter, rows);
    else
        silu_mul_rows<2>(out, gu, inter, rows);
}

// Uniform in [center - scale, center + scale) from a hash of (seed, index / 4): one 64-bit hash
// gives four 16-bit uniforms, plenty for dummy weights and ~4x fewer multiplies.
__device__ __forceinline__ float rand_at(u64 seed, u64 i, float center, float scale) {
    const u64 h = hash2(seed, i >> 2);
    const u32 bits = (u32)(h >> (16 * (i & 3))) & 0xffffu;
    const float u = ((float)bits + 0.5f) * (1.f / 65536.f);
    return center + (2.f * u - 1.f) * scale;
}

extern "C" __global__ void fill_random_bf16_kernel(bf16* __restrict__ out, u64 n, u64 seed,
                                                   float scale) {
    for (u64 i = (u64)blockIdx.x * blockDim.x + threadIdx.x; i < n;
         i += (u64)gridDim.x * blockDim.x)
        out[i] = __float2bfloat16(rand_at(seed, i, 0.f, scale));
}

extern "C" __global__ void fill_random_f32_kernel(float* __restrict__ out, u64 n, u64 seed,
                                                  float center, float scale) {
    for (u64 i = (u64)blockIdx.x * blockDim.x + threadIdx.x; i < n;
         i += (u64)gridDim.x * blockDim.x)
        out[i] = rand_at(seed, i, center, scale);
}
