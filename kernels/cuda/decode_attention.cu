// Paged decode attention: one query row per sequence, split over KV partitions of P tokens (64,
// 256 or 512 by launch size: small launches need many CTAs, large ones fewer partials).
// Grid (S, KVH, max_parts): one CTA serves all G = H / KVH query heads of one KV group, so each K
// and V row is read once per group. Phase 1 puts the scores of the partition in shared memory,
// phase 2 turns them into probabilities, phase 3 accumulates P·V. A sequence whose context fits
// one partition writes `out` directly; longer ones leave (acc, max, sum) per partition in the
// workspace for paged_decode_reduce. The grid depends only on max_ctx, never on the step's lengths,
// so a captured CUDA graph can be replayed with new ctx_lens and block tables.
#include "common.cuh"

#define DEC_WARPS 4
#define DEC_THREADS (DEC_WARPS * 32)

struct DecodeArgs {
    bf16* out;
    const bf16* qkv;
    const int* q_rows;
    const bf16* kc;
    const bf16* vc;
    const int* block_tables;
    const int* ctx_lens;
    float* ws;
    u32 qkv_stride, out_rows, H, KVH, block_size, bt_stride, num_blocks, max_ctx;
    u32 bs_log2, part;
    float scale_log2;
};

__device__ __forceinline__ int decode_ctx_len(const DecodeArgs& a, u32 s) {
    int ctx = a.ctx_lens[s];
    ctx = min(ctx, (int)a.max_ctx);
    return min(ctx, (int)(a.bt_stride * a.block_size));
}

// Element offset of token `tok` (partition-relative) of this KV head in the cache.
__device__ __forceinline__ u64 tok_off(const DecodeArgs& a, const u64* blk_off, u32 tok, u32 D) {
    return blk_off[tok >> a.bs_log2] + (u64)((tok & (a.block_size - 1)) * D);
}

template <int D, int G, int P, int U>
__device__ __forceinline__ void decode_scores(const DecodeArgs& a, const u64* blk_off, u32 plen,
                                              const float (&q)[G][16], float (*sc)[P]) {
    constexpr int TG = D / 16;    // threads per token, each owning two 16-byte chunks
    constexpr int TPP = 32 / TG;  // tokens per warp pass; U passes unrolled: 2U loads in flight
    const u32 lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const u32 r = lane % TG, tsub = lane / TG;
    for (u32 base = warp * TPP * U; base < plen; base += DEC_WARPS * TPP * U) {
        uint4 kr[U][2];
#pragma unroll
        for (int u = 0; u < U; ++u) {
            const u32 tok = base + u * TPP + tsub;
            if (tok < plen) {
                const bf16* kp = a.kc + tok_off(a, blk_off, tok, D);
                kr[u][0] = __ldg((const uint4*)(kp + r * 8));
                kr[u][1] = __ldg((const uint4*)(kp + (r + TG) * 8));
            } else {
                kr[u][0] = kr[u][1] = make_uint4(0, 0, 0, 0);
            }
        }
#pragma unroll
        for (int u = 0; u < U; ++u) {
            float kf[16];
            unpack8(kr[u][0], kf);
            unpack8(kr[u][1], kf + 8);
            const u32 tok = base + u * TPP + tsub;
#pragma unroll
            for (int g = 0; g < G; ++g) {
                float acc = 0.f;
#pragma unroll
                for (int e = 0; e < 16; ++e) acc = fmaf(q[g][e], kf[e], acc);
#pragma unroll
                for (int o = TG / 2; o > 0; o >>= 1) acc += __shfl_xor_sync(FULL_MASK, acc, o);
                if (r == 0 && tok < plen) sc[g][tok] = acc;
            }
        }
    }
}

template <int D, int G, int P, int U>
__device__ __forceinline__ void decode_pv(const DecodeArgs& a, const u64* blk_off, u32 plen,
                                          float (*sc)[P], float (&acc)[G][8]) {
    constexpr int CH = D / 8;     // 16-byte chunks per row
    constexpr int TPI = 32 / CH;  // tokens per warp load; U loads in flight
    const u32 lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const u32 c = lane % CH, vsub = lane / CH;
    for (u32 base = warp * TPI * U; base < plen; base += DEC_WARPS * TPI * U) {
        uint4 vr[U];
#pragma unroll
        for (int u = 0; u < U; ++u) {
            const u32 tok = base + u * TPI + vsub;
            vr[u] = make_uint4(0, 0, 0, 0);
            if (tok < plen)
                vr[u] = __ldg((const uint4*)(a.vc + tok_off(a, blk_off, tok, D) + c * 8));
        }
#pragma unroll
        for (int u = 0; u < U; ++u) {
            const u32 tok = base + u * TPI + vsub;
            if (tok < plen) {
                float vf[8];
                unpack8(vr[u], vf);
#pragma unroll
                for (int g = 0; g < G; ++g) {
                    const float p = sc[g][tok];
#pragma unroll
                    for (int e = 0; e < 8; ++e) acc[g][e] = fmaf(p, vf[e], acc[g][e]);
                }
            }
        }
    }
#pragma unroll
    for (int o = CH; o < 32; o <<= 1)
#pragma unroll
        for (int g = 0; g < G; ++g)
#pragma unroll
            for (int e = 0; e < 8; ++e) acc[g][e] += __shfl_xor_sync(FULL_MASK, acc[g][e], o);
}

template <int D, int G, int P, int U1 = 4, int U2 = 8>
__device__ __forceinline__ void decode_impl(const DecodeArgs& a) {
    __shared__ float sc[G][P];
    __shared__ float red[DEC_WARPS][G][D];
    __shared__ u64 blk_off[P / 8];
    __shared__ float head_max[G], head_sum[G];

    const u32 s = blockIdx.x, kvh = blockIdx.y, part = blockIdx.z;
    const int ctx = decode_ctx_len(a, s);
    const u32 p0 = part * P;
    if (ctx <= 0 || p0 >= (u32)ctx) return;
    const int qrow = a.q_rows[s];
    if (qrow < 0 || (u32)qrow >= a.out_rows) return;
    const u32 plen = min((u32)P, (u32)ctx - p0);
    const u32 nparts = ((u32)ctx + P - 1) / P;
    const u32 lane = threadIdx.x & 31, warp = threadIdx.x >> 5;

    if (threadIdx.x < (plen + a.block_size - 1) >> a.bs_log2) {
        int b = a.block_tables[(u64)s * a.bt_stride + (p0 >> a.bs_log2) + threadIdx.x];
        b = (b < 0 || (u32)b >= a.num_blocks) ? 0 : b;
        blk_off[threadIdx.x] = (((u64)b * a.KVH + kvh) << a.bs_log2) * D;
    }
    // q of this group, pre-scaled into the log2 domain; chunk layout matches decode_scores.
    constexpr int TG = D / 16;
    float q[G][16];
    const bf16* qb = a.qkv + (u64)qrow * a.qkv_stride + (u64)kvh * G * D;
#pragma unroll
    for (int g = 0; g < G; ++g)
#pragma unroll
        for (int c = 0; c < 2; ++c) {
            unpack8(*(const uint4*)(qb + g * D + ((lane % TG) + c * TG) * 8), &q[g][c * 8]);
#pragma unroll
            for (int e = 0; e < 8; ++e) q[g][c * 8 + e] *= a.scale_log2;
        }
    __syncthreads();

    decode_scores<D, G, P, U1>(a, blk_off, plen, q, sc);
    __syncthreads();
    for (int g = warp; g < G; g += DEC_WARPS) {
        float m = NEG_INF;
        for (u32 t = lane; t < plen; t += 32) m = fmaxf(m, sc[g][t]);
        m = warp_max(m);
        float l = 0.f;
        for (u32 t = lane; t < plen; t += 32) {
            const float e = exp2f(sc[g][t] - m);
            sc[g][t] = e;
            l += e;
        }
        l = warp_sum(l);
        if (lane == 0) {
            head_max[g] = m;
            head_sum[g] = l;
        }
    }
    __syncthreads();

    float acc[G][8];
#pragma unroll
    for (int g = 0; g < G; ++g)
#pragma unroll
        for (int e = 0; e < 8; ++e) acc[g][e] = 0.f;
    decode_pv<D, G, P, U2>(a, blk_off, plen, sc, acc);
    if (lane < D / 8)
#pragma unroll
        for (int g = 0; g < G; ++g)
#pragma unroll
            for (int e = 0; e < 8; ++e) red[warp][g][lane * 8 + e] = acc[g][e];
    __syncthreads();

    const u32 max_parts = gridDim.z;
    const u64 n_acc = (u64)gridDim.x * a.H * max_parts;
    for (u32 i = threadIdx.x; i < G * D; i += DEC_THREADS) {
        const u32 g = i / D, d = i % D;
        float v = 0.f;
#pragma unroll
        for (int w = 0; w < DEC_WARPS; ++w) v += red[w][g][d];
        const u32 h = kvh * G + g;
        if (nparts == 1) {
            a.out[(u64)qrow * a.H * D + h * D + d] = __float2bfloat16(v / head_sum[g]);
        } else {
            const u64 idx = ((u64)s * a.H + h) * max_parts + part;
            a.ws[idx * D + d] = v;
            if (d == 0) {
                a.ws[n_acc * D + idx] = head_max[g];
                a.ws[n_acc * D + n_acc + idx] = head_sum[g];
            }
        }
    }
}

#define DECODE_ONE(D, G, P)                                                            \
    extern "C" __global__ void __launch_bounds__(DEC_THREADS)                          \
        paged_decode_d##D##_g##G##_p##P(DecodeArgs a) {                                \
        decode_impl<D, G, P>(a);                                                       \
    }
#define DECODE_INST(D, G) DECODE_ONE(D, G, 64) DECODE_ONE(D, G, 256) DECODE_ONE(D, G, 512)

DECODE_INST(64, 1)
DECODE_INST(64, 2)
DECODE_INST(64, 3)
DECODE_INST(64, 4)
DECODE_INST(64, 5)
DECODE_INST(64, 6)
DECODE_INST(64, 7)
DECODE_INST(64, 8)
DECODE_INST(128, 1)
DECODE_INST(128, 2)
DECODE_INST(128, 3)
DECODE_INST(128, 4)
DECODE_INST(128, 5)
DECODE_INST(128, 6)
DECODE_INST(128, 7)
DECODE_INST(128, 8)

// Combines the partitions of sequences longer than one partition. Grid (S, H), RED_THREADS
// threads: the partition weights exp2(max_p - M) go to shared memory once, then D-wide groups of
// threads sum disjoint partitions (loads independent, unrolled) and combine through shared memory.
#define RED_THREADS 256
#define RED_MAX_PARTS 2048

extern "C" __global__ void __launch_bounds__(RED_THREADS)
    paged_decode_reduce(DecodeArgs a, u32 D, u32 max_parts) {
    __shared__ float w[RED_MAX_PARTS];
    __shared__ float part_acc[RED_THREADS];
    __shared__ float scratch[32];
    const u32 s = blockIdx.x, h = blockIdx.y, tid = threadIdx.x;
    const int ctx = decode_ctx_len(a, s);
    if (ctx <= (int)a.part) return;
    const int qrow = a.q_rows[s];
    if (qrow < 0 || (u32)qrow >= a.out_rows) return;
    const u32 nparts = min(((u32)ctx + a.part - 1) / a.part, (u32)RED_MAX_PARTS);
    const u64 n_acc = (u64)gridDim.x * a.H * max_parts;
    const u64 base = ((u64)s * a.H + h) * max_parts;
    const float* wmax = a.ws + n_acc * D + base;
    const float* wsum = wmax + n_acc;
    float m = NEG_INF;
    for (u32 p = tid; p < nparts; p += RED_THREADS) m = fmaxf(m, wmax[p]);
    m = block_max<RED_THREADS>(m, scratch);
    float den = 0.f;
    for (u32 p = tid; p < nparts; p += RED_THREADS) {
        const float e = exp2f(wmax[p] - m);
        w[p] = e;
        den += e * wsum[p];
    }
    den = block_sum<RED_THREADS>(den, scratch);  // its barriers also publish w[]
    const u32 groups = RED_THREADS / D, grp = tid / D, d = tid % D;
    float num = 0.f;
    if (grp < groups) {
        const float* acc = a.ws + base * D + d;
#pragma unroll 8
        for (u32 p = grp; p < nparts; p += groups) num = fmaf(w[p], acc[(u64)p * D], num);
    }
    part_acc[tid] = num;
    __syncthreads();
    if (grp == 0) {
        for (u32 g = 1; g < groups; ++g) num += part_acc[g * D + d];
        a.out[(u64)qrow * a.H * D + h * D + d] = __float2bfloat16(num / den);
    }
}
