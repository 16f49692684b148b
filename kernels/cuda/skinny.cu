// Skinny matrix products on tensor cores for small decode batches: y[m, n] = sum_k x[m, k] w[n, k]
// for M <= 64 rows of x. Still memory-bound (every weight is read once), but unlike the GEMV,
// whose warps each re-read all of x for one column, a block reads x once for 32 columns, and
// the products run on mma.sync (m16n8k16: 16 weight rows x 8 tokens).
//
// Block: 8 warps, 32 output columns (two 16-row A tiles). The warps split K: warp w takes the
// 32-wide chunks w, w + 8, ..., so the block streams 512 contiguous bytes of each weight row per
// round, and the partial sums meet in shared memory at the end. Each warp keeps 2-4 chunks of
// loads in flight while it multiplies (a first version that loaded two chunks, then multiplied,
// reached only 62% of copy bandwidth at 16 rows, against cuBLAS's 82%).
//
// No shared-memory staging: lane (g = lane / 4, c = lane % 4) loads 16 bytes of weight rows g and
// g + 8 at chunk offset 8c, and 16 bytes of x row g (its token) at the same offset. Those eight
// k values feed two mma k-steps: mma j takes physical k = 8c + 4j + {0, 1, 2, 3} as the logical
// k = {2c, 2c + 1, 2c + 8, 2c + 9} that the fragment layout gives lane c. A and B use the same
// map, so the sum over the chunk is unchanged.
#include "common.cuh"

#define SK_WARPS 8
#define SK_TILES 2
#define SK_COLS (16 * SK_TILES)

struct SkChunk {
    uint4 w[SK_TILES][2];
};

__device__ __forceinline__ void sk_load_w(SkChunk& s, const bf16* __restrict__ w, u32 n0, u32 g,
                                          u32 col, u32 K) {
#pragma unroll
    for (int t = 0; t < SK_TILES; t++) {
        s.w[t][0] = __ldcs((const uint4*)(w + (u64)(n0 + 16 * t + g) * K + col));
        s.w[t][1] = __ldcs((const uint4*)(w + (u64)(n0 + 16 * t + g + 8) * K + col));
    }
}

template <int MT>
__device__ __forceinline__ void sk_load_x(uint4 (&xv)[MT], const bf16* __restrict__ x, u32 M,
                                          u32 g, u32 col, u32 K) {
#pragma unroll
    for (int mt = 0; mt < MT; mt++) {
        const u32 row = 8 * mt + g;
        xv[mt] = row < M ? __ldg((const uint4*)(x + (u64)row * K + col)) : make_uint4(0, 0, 0, 0);
    }
}

template <int MT>
__device__ __forceinline__ void sk_mma(float (&acc)[SK_TILES][MT][4], const SkChunk& s,
                                       const uint4 (&xv)[MT]) {
#pragma unroll
    for (int t = 0; t < SK_TILES; t++) {
        const u32 a0[4] = {s.w[t][0].x, s.w[t][1].x, s.w[t][0].y, s.w[t][1].y};
        const u32 a1[4] = {s.w[t][0].z, s.w[t][1].z, s.w[t][0].w, s.w[t][1].w};
#pragma unroll
        for (int mt = 0; mt < MT; mt++) {
            mma_bf16(acc[t][mt], a0, xv[mt].x, xv[mt].y);
            mma_bf16(acc[t][mt], a1, xv[mt].z, xv[mt].w);
        }
    }
}

__device__ __forceinline__ void sk_store(bf16* y, float v) { *y = __float2bfloat16_rn(v); }
__device__ __forceinline__ void sk_store(float* y, float v) { *y = v; }

// Chunks each warp keeps in flight: loads of the next ST - 1 chunks overlap the products of the
// current one (registers allow more for fewer token tiles).
template <int MT>
struct SkStages {
    static constexpr int value = MT <= 2 ? 4 : (MT <= 4 ? 3 : 2);
};

// N % 32 == 0 and K % 32 == 0 (checked by the wrapper); 1 <= M <= 8 * MT.
template <int MT, typename OUT>
__device__ __forceinline__ void skinny_body(OUT* __restrict__ y, const bf16* __restrict__ x,
                                            const bf16* __restrict__ w, u32 M, u32 N, u32 K) {
    constexpr int ST = SkStages<MT>::value;
    // Partial sums of all warps, [column][token].
    __shared__ float part[SK_COLS * MT * 8];
    const u32 warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    const u32 g = lane >> 2, c = lane & 3;
    const u32 n0 = blockIdx.x * SK_COLS;
    for (u32 i = threadIdx.x; i < SK_COLS * MT * 8; i += blockDim.x) part[i] = 0.f;

    float acc[SK_TILES][MT][4];
#pragma unroll
    for (int t = 0; t < SK_TILES; t++)
#pragma unroll
        for (int mt = 0; mt < MT; mt++)
#pragma unroll
            for (int i = 0; i < 4; i++) acc[t][mt][i] = 0.f;

    // This warp's chunks: warp, warp + SK_WARPS, ...; the i-th starts at column col(i).
    const u32 chunks = K / 32;
    const u32 mine = warp < chunks ? (chunks - warp + SK_WARPS - 1) / SK_WARPS : 0;
    auto col = [&](u32 i) { return 32 * (warp + i * SK_WARPS) + 8 * c; };
    SkChunk s[ST];
    uint4 xv[ST][MT];
#pragma unroll
    for (int j = 0; j < ST; j++)
        if (j < mine) {
            sk_load_w(s[j], w, n0, g, col(j), K);
            sk_load_x<MT>(xv[j], x, M, g, col(j), K);
        }
    for (u32 i = 0; i < mine; i += ST) {
#pragma unroll
        for (int j = 0; j < ST; j++)
            if (i + j < mine) {
                sk_mma<MT>(acc, s[j], xv[j]);
                if (i + j + ST < mine) {
                    sk_load_w(s[j], w, n0, g, col(i + j + ST), K);
                    sk_load_x<MT>(xv[j], x, M, g, col(i + j + ST), K);
                }
            }
    }
    __syncthreads();  // `part` zeroed
    // D fragment: rows (weight columns) g and g + 8, columns (tokens) 2c and 2c + 1.
#pragma unroll
    for (int t = 0; t < SK_TILES; t++)
#pragma unroll
        for (int mt = 0; mt < MT; mt++) {
            float* p = part + (16 * t + g) * (MT * 8) + 8 * mt + 2 * c;
            atomicAdd(p, acc[t][mt][0]);
            atomicAdd(p + 1, acc[t][mt][1]);
            atomicAdd(p + 8 * (MT * 8), acc[t][mt][2]);
            atomicAdd(p + 8 * (MT * 8) + 1, acc[t][mt][3]);
        }
    __syncthreads();
    for (u32 i = threadIdx.x; i < M * SK_COLS; i += blockDim.x) {
        const u32 m = i / SK_COLS, cc = i % SK_COLS;
        sk_store(y + (u64)m * N + n0 + cc, part[cc * (MT * 8) + m]);
    }
}

#define SKINNY_KERNELS(MT)                                                                     \
    extern "C" __global__ void __launch_bounds__(SK_WARPS * 32)                                \
        skinny_bf16_t##MT(bf16* __restrict__ y, const bf16* __restrict__ x,                    \
                          const bf16* __restrict__ w, u32 M, u32 N, u32 K) {                   \
        skinny_body<MT, bf16>(y, x, w, M, N, K);                                               \
    }                                                                                          \
    extern "C" __global__ void __launch_bounds__(SK_WARPS * 32)                                \
        skinny_f32_t##MT(float* __restrict__ y, const bf16* __restrict__ x,                    \
                         const bf16* __restrict__ w, u32 M, u32 N, u32 K) {                    \
        skinny_body<MT, float>(y, x, w, M, N, K);                                              \
    }

SKINNY_KERNELS(1)
SKINNY_KERNELS(2)
SKINNY_KERNELS(3)
SKINNY_KERNELS(4)
SKINNY_KERNELS(5)
SKINNY_KERNELS(6)
SKINNY_KERNELS(7)
SKINNY_KERNELS(8)
