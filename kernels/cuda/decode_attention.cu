// Paged decode attention: one query row per sequence, split over KV partitions, one launch.
// A sequence has max_parts = ceil(max_ctx / P) partition slots: P (64, 256 or 512, by launch
// size) is the longest partition (it sizes the score array). Grid (S, KVH, Z) with Z =
// min(max_parts, a few waves of CTAs over S * KVH), set on the host from S and max_ctx only,
// never from the step's lengths, so a captured CUDA graph can be replayed with new ctx_lens and
// block tables; a CTA takes partitions z, z + Z, ... Each sequence picks on the device how many
// of its slots to use (decode_split): at least ceil(ctx / P), and more when the launch's CTAs
// would not fill the GPU (target_ctas), down to 64-token partitions. (Z was max_parts itself
// until a long-context engine showed the cost of CTAs with nothing to do: max_ctx 131,072 made
// 32 sequences of 1k tokens 111.9 us against 57.6 with max_ctx 1,024; H100, 2026-11-26.)
// One CTA serves all G = H / KVH query heads of one KV group, so each K and V row is read once
// per group. It puts the scores of its partition in shared memory, turns them into
// probabilities and accumulates P·V (copying the first V rows into shared memory next to the
// K loads, cp.async, was tried: 0.3-0.9 us slower at batch 1-64 on an H100, 9f3f7bf; so was an
// L2 prefetch of each token's V row issued with its K loads: 5-18% slower at batch 1-16 even
// in launches of one wave, ~30% in big ones, attn_bench 2026-11-26). A
// sequence of one partition writes `out` directly; otherwise every CTA leaves (acc, max, sum) per head in the
// workspace and bumps a counter of its (sequence, KV head); the last one to arrive combines the
// partitions, writes `out` and puts the counter back to 0, so the next launch (a graph replay)
// finds it as the first one did. The counters sit at the end of the workspace, one u32 per
// (sequence, KV head) at a place that does not depend on S: launches of any batch size can
// share one buffer sized for the largest, zeroed once at allocation.
// The cache holds bf16 or fp8 e4m3 values (kv.rs); one template serves both, the kernels of an
// fp8 cache are named paged_decode_fp8_*. The fp8 kernels read one byte an element and widen
// it exactly (dec_widen_e4m3x4 below says how); everything after the loads is the bf16 code.
#include "common.cuh"

#define DEC_WARPS 4
#define DEC_THREADS (DEC_WARPS * 32)
// Shortest partition decode_split makes when it splits further than ceil(ctx / P).
#define DEC_MIN_CHUNK 64
// Tokens a CTA prefetches into L2 before it waits for the kernel before it (decode_impl).
#define DEC_PREFETCH 64
// Stands for "no partition yet" in the combine: finite, so differences never make NaN.
#define DEC_NO_MAX (-3.0e38f)

struct DecodeArgs {
    bf16* out;
    const bf16* qkv;
    const int* q_rows;
    const void* kc;  // the caches: bf16, or e4m3 bytes for the fp8 kernels (DecodeFp8)
    const void* vc;
    const int* block_tables;
    const int* ctx_lens;
    float* ws;
    u64 ws_len;  // f32 elements of ws; the counters are its last S * KVH words
    u32 qkv_stride, out_rows, H, KVH, block_size, bt_stride, num_blocks, max_ctx;
    u32 bs_log2, target_ctas;
    u32 max_parts;  // ceil(max_ctx / P): partition slots a (sequence, head) has in ws
    float scale_log2;
};

// An fp8 e4m3 cache element (the type of the fp8 kernels' caches): sign, 4 exponent bits (bias
// 7), 3 mantissa bits, stored unscaled; the largest finite value is 448, 0x7f / 0xff are NaN.
struct DecodeFp8 {
    unsigned char bits;
};

template <class T>
struct DecKv {
    enum { FP8 = 0 };
};
template <>
struct DecKv<DecodeFp8> {
    enum { FP8 = 1 };
};

// Widening e4m3 to f32 exactly, and cheaply. An e4m3 byte s.EEEE.MMM becomes the f32 whose bits
// are s at bit 31 and EEEE.MMM at bits 26..20: the f32 exponent field is then EEEE (bias 127
// instead of 7) and the mantissa MMM, so the f32 is exactly the e4m3 value times 2^-120, for
// normal values (E >= 1: 2^(E-127) (1 + M/8)) and subnormal ones alike (E = 0: 2^-126 (M/8),
// an f32 subnormal) and for +-0. Two bytes cost one PRMT (each byte next to its sign replicated
// over the byte above it) and a shift and a mask each: 2.5 integer instructions an element,
// where bf16 takes 1. (The hardware cvt.rn.f16x2.e4m3x2 exists only from sm_89 and still needs
// an f16 -> f32 step per element; this one path serves sm_80 to sm_90 alike.) NaN (E = 15,
// M = 7) reads as 480: the cache never holds one (the KV write saturates finite values, and a
// NaN there would have come from a NaN k or v row).
// The 2^-120 is folded into the operands the values meet: q is pre-scaled by 2^64 and each
// score by 2^56 after its dot product (2^120 on q alone would overflow q for |q * scale_log2|
// >= 256), the probabilities of P.V by 2^120 (at most 1, so at most 2^120; the sums l stay
// unscaled). The e4m3 subnormals are f32 subnormals here, which the --use_fast_math FMA
// (fma.rn.ftz) would flush to zero: the FMAs that take widened values are dec_fma, without
// .ftz (full rate on sm_80+). Products and sums are then those of the bf16 code; the scaled
// dot products may only lose what lies below 2^-70 in the log2 domain (flushed partial sums).
#define DEC_FP8_Q_SCALE 0x1p64f
#define DEC_FP8_S_SCALE 0x1p56f
#define DEC_FP8_P_SCALE 0x1p120f

// a * b + c, rounded once, subnormal operands and results kept: fma.rn.f32 without .ftz
// whatever --use_fast_math says (the intrinsic ignores -ftz=true; cuda_bf16.hpp uses it too).
__device__ __forceinline__ float dec_fma(float a, float b, float c) {
    return __fmaf_ieee_rn(a, b, c);
}

// prmt.b32 of x and 0 with selector SEL (a nibble with bit 3 set replicates the sign of the
// byte it selects).
template <u32 SEL>
__device__ __forceinline__ u32 dec_prmt(u32 x) {
    u32 r;
    asm("prmt.b32 %0, %1, 0, %2;" : "=r"(r) : "r"(x), "n"(SEL));
    return r;
}

// The four e4m3 bytes of w (little-endian: f[0] from the lowest byte), times 2^-120 as f32.
__device__ __forceinline__ void dec_widen_e4m3x4(u32 w, float* f) {
    // Bytes b1 and b3 at bits 23..16 with their sign over bits 31..24, b0 and b2 at bits 7..0
    // with theirs over bits 15..8: shifted left by 4 (20) the byte lands at bits 27..20 under
    // copies of its sign, and the mask keeps the sign at bit 31 and the 7 low bits.
    const u32 y01 = dec_prmt<0x9180>(w), y23 = dec_prmt<0xB3A2>(w);
    f[0] = __uint_as_float((y01 << 20) & 0x87f00000u);
    f[1] = __uint_as_float((y01 << 4) & 0x87f00000u);
    f[2] = __uint_as_float((y23 << 20) & 0x87f00000u);
    f[3] = __uint_as_float((y23 << 4) & 0x87f00000u);
}

__device__ __forceinline__ int decode_ctx_len(const DecodeArgs& a, int ctx) {
    ctx = min(ctx, (int)a.max_ctx);
    return min(ctx, (int)(a.bt_stride * a.block_size));
}

// How a sequence of `ctx` (> 0) tokens splits: n partitions of `chunk` tokens (the last shorter),
// chunk a multiple of the block size and at most P, n at most max_parts. A pure function of
// ctx and the launch, so every CTA of the sequence (and the one that combines) agrees.
struct DecodeSplit {
    u32 n, chunk;
};
template <int P>
__device__ __forceinline__ DecodeSplit decode_split(const DecodeArgs& a, u32 ctx) {
    const u32 n_min = (ctx + P - 1) / P;
    const u32 n_max = max(n_min, min(a.max_parts, (ctx + DEC_MIN_CHUNK - 1) / DEC_MIN_CHUNK));
    // As many partitions as keep the launch's busy CTAs within one wave of the GPU.
    const u32 want = max(1u, a.target_ctas / (gridDim.x * gridDim.y));
    const u32 n = min(max(want, n_min), n_max);
    // More than one wave even at P tokens a partition: keep P-token partitions (the last one
    // short), as the two-kernel version did. The first wave then holds full partitions and the
    // short ones fill the tail; balanced chunks would leave a second wave of long CTAs (H100,
    // 1,088 tokens x 32 sequences: 69.4 us balanced, 61.8 us with P-token partitions).
    if (n * gridDim.x * gridDim.y > a.target_ctas) return {n_min, P};
    u32 chunk = (ctx + n - 1) / n;
    chunk = (chunk + a.block_size - 1) & ~(a.block_size - 1);
    return {(ctx + chunk - 1) / chunk, chunk};
}

// Element offset of token `tok` (partition-relative) of this KV head in the cache.
__device__ __forceinline__ u64 tok_off(const DecodeArgs& a, const u64* blk_off, u32 tok, u32 D) {
    return blk_off[tok >> a.bs_log2] + (u64)((tok & (a.block_size - 1)) * D);
}

// Chunk (8 elements) c = 0, 1 of the 16 elements that thread r of a token's TG owns in
// decode_scores: chunks r and r + TG of a bf16 row (each 16-byte load of the TG threads reads
// one contiguous half row), chunks 2r and 2r + 1 of an fp8 row (one 16-byte load).
template <class T, int TG>
__device__ __forceinline__ u32 score_chunk(u32 r, u32 c) {
    return DecKv<T>::FP8 ? r * 2 + c : r + c * TG;
}

template <class T, int D, int G, int P, int U>
__device__ __forceinline__ void decode_scores(const DecodeArgs& a, const u64* blk_off, u32 plen,
                                              const float (&q)[G][16], float (*sc)[P]) {
    constexpr bool FP8 = DecKv<T>::FP8;
    constexpr int TG = D / 16;    // threads per token, each owning 16 elements (score_chunk)
    constexpr int TPP = 32 / TG;  // tokens per warp pass; U passes unrolled: 2U (bf16) or U
                                  // (fp8) 16-byte loads in flight
    constexpr int NL = FP8 ? 1 : 2;  // 16-byte loads a token
    const T* kc = static_cast<const T*>(a.kc);
    const u32 lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const u32 r = lane % TG, tsub = lane / TG;
    for (u32 base = warp * TPP * U; base < plen; base += DEC_WARPS * TPP * U) {
        uint4 kr[U][NL];
#pragma unroll
        for (int u = 0; u < U; ++u) {
            const u32 tok = base + u * TPP + tsub;
            if (tok < plen) {
                const T* kp = kc + tok_off(a, blk_off, tok, D);
                kr[u][0] = __ldg((const uint4*)(kp + score_chunk<T, TG>(r, 0) * 8));
                if constexpr (NL == 2)
                    kr[u][NL - 1] = __ldg((const uint4*)(kp + score_chunk<T, TG>(r, 1) * 8));
            } else {
                kr[u][0] = kr[u][NL - 1] = make_uint4(0, 0, 0, 0);
            }
        }
#pragma unroll
        for (int u = 0; u < U; ++u) {
            const u32 tok = base + u * TPP + tsub;
            if constexpr (FP8) {
                // Word by word (4 elements each), all heads at a time: 4 widened values live
                // instead of 16; each head still sums its 16 products in element order.
                const u32 w[4] = {kr[u][0].x, kr[u][0].y, kr[u][0].z, kr[u][0].w};
                float acc[G];
#pragma unroll
                for (int g = 0; g < G; ++g) acc[g] = 0.f;
#pragma unroll
                for (int j = 0; j < 4; ++j) {
                    float kf[4];
                    dec_widen_e4m3x4(w[j], kf);
#pragma unroll
                    for (int g = 0; g < G; ++g)
#pragma unroll
                        for (int e = 0; e < 4; ++e)
                            acc[g] = dec_fma(q[g][j * 4 + e], kf[e], acc[g]);
                }
#pragma unroll
                for (int g = 0; g < G; ++g) {
#pragma unroll
                    for (int o = TG / 2; o > 0; o >>= 1)
                        acc[g] += __shfl_xor_sync(FULL_MASK, acc[g], o);
                    if (r == 0 && tok < plen) sc[g][tok] = acc[g] * DEC_FP8_S_SCALE;
                }
            } else {
                float kf[16];
                unpack8(kr[u][0], kf);
                unpack8(kr[u][NL - 1], kf + 8);
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
}

// The 8 elements of a V row that a lane owns in decode_pv: 16 bytes of bf16, 8 of e4m3.
template <class T>
struct DecVChunk {
    typedef uint4 type;
};
template <>
struct DecVChunk<DecodeFp8> {
    typedef uint2 type;
};

template <class T, int D, int G, int P, int U>
__device__ __forceinline__ void decode_pv(const DecodeArgs& a, const u64* blk_off, u32 plen,
                                          float (*sc)[P], float (&acc)[G][8]) {
    constexpr bool FP8 = DecKv<T>::FP8;
    typedef typename DecVChunk<T>::type Chunk;
    constexpr int CH = D / 8;     // 8-element chunks per row (16 bytes of bf16, 8 of e4m3)
    constexpr int TPI = 32 / CH;  // tokens per warp load; U loads in flight
    const T* vc = static_cast<const T*>(a.vc);
    const u32 lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const u32 c = lane % CH, vsub = lane / CH;
    for (u32 base = warp * TPI * U; base < plen; base += DEC_WARPS * TPI * U) {
        Chunk vr[U];
#pragma unroll
        for (int u = 0; u < U; ++u) {
            const u32 tok = base + u * TPI + vsub;
            vr[u] = Chunk{};
            if (tok < plen) vr[u] = __ldg((const Chunk*)(vc + tok_off(a, blk_off, tok, D) + c * 8));
        }
#pragma unroll
        for (int u = 0; u < U; ++u) {
            const u32 tok = base + u * TPI + vsub;
            if (tok < plen) {
                float vf[8];
                if constexpr (FP8) {
                    dec_widen_e4m3x4(vr[u].x, vf);
                    dec_widen_e4m3x4(vr[u].y, vf + 4);
                } else {
                    unpack8(vr[u], vf);
                }
#pragma unroll
                for (int g = 0; g < G; ++g) {
                    const float p = sc[g][tok];
#pragma unroll
                    for (int e = 0; e < 8; ++e)
                        acc[g][e] = FP8 ? dec_fma(p, vf[e], acc[g][e]) : fmaf(p, vf[e], acc[g][e]);
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

// Run by the last CTA of (sequence s, KV head kvh) to finish: combines the n partitions of its
// G heads from the workspace (read through L2: other CTAs wrote them during this launch) into
// `out`. First per head the largest partition max M and the denominator sum_p 2^(m_p - M) l_p
// (online over p, one pass); then D/4-thread groups sum 2^(m_p - M) acc_p over disjoint
// partitions with G*U float4 loads in flight per thread, and combine through `red`.
template <int D, int G>
__device__ __forceinline__ void decode_combine(const DecodeArgs& a, u32 s, u32 kvh, u32 qrow,
                                               u32 n, float (*red)[G][D], float* head_max,
                                               float* head_sum) {
    const u32 lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const u32 Z = a.max_parts;
    const u64 n_acc = (u64)gridDim.x * a.H * Z;
    const u64 base = ((u64)s * a.H + kvh * G) * Z;  // head g of the group adds g * Z
    const float* wmax = a.ws + n_acc * D;
    const float* wsum = wmax + n_acc;
    for (u32 g = warp; g < G; g += DEC_WARPS) {
        float m = DEC_NO_MAX, l = 0.f;
        for (u32 p = lane; p < n; p += 32) {
            const float mp = __ldcg(wmax + base + g * Z + p), lp = __ldcg(wsum + base + g * Z + p);
            const float mn = fmaxf(m, mp);
            l = l * exp2f(m - mn) + lp * exp2f(mp - mn);
            m = mn;
        }
#pragma unroll
        for (int o = 16; o > 0; o >>= 1) {
            const float mo = __shfl_xor_sync(FULL_MASK, m, o);
            const float lo = __shfl_xor_sync(FULL_MASK, l, o);
            const float mn = fmaxf(m, mo);
            l = l * exp2f(m - mn) + lo * exp2f(mo - mn);
            m = mn;
        }
        if (lane == 0) {
            head_max[g] = m;
            head_sum[g] = l;
        }
    }
    __syncthreads();

    constexpr u32 VT = D / 4;             // threads per partition vector (float4 each)
    constexpr u32 VPW = 32 / VT;          // vectors per warp at a time
    constexpr u32 STEP = DEC_WARPS * VPW;  // partitions per CTA pass
    constexpr u32 U = G >= 4 ? 2 : 8 / G;  // passes unrolled: G*U loads in flight per thread
    const u32 c4 = lane % VT, sub = lane / VT;
    float M[G];
    float4 acc[G];
#pragma unroll
    for (int g = 0; g < G; ++g) {
        M[g] = head_max[g];
        acc[g] = make_float4(0.f, 0.f, 0.f, 0.f);
    }
    for (u32 p0 = warp * VPW + sub; p0 < n; p0 += STEP * U) {
        float w[U][G];
        float4 v[U][G];
#pragma unroll
        for (u32 u = 0; u < U; ++u)
#pragma unroll
            for (int g = 0; g < G; ++g) {
                const u32 p = p0 + u * STEP;
                w[u][g] = DEC_NO_MAX;
                v[u][g] = make_float4(0.f, 0.f, 0.f, 0.f);
                if (p < n) {
                    const u64 idx = base + g * Z + p;
                    w[u][g] = __ldcg(wmax + idx);
                    v[u][g] = __ldcg((const float4*)(a.ws + idx * D) + c4);
                }
            }
#pragma unroll
        for (u32 u = 0; u < U; ++u)
#pragma unroll
            for (int g = 0; g < G; ++g) {
                const float e = exp2f(w[u][g] - M[g]);
                acc[g].x = fmaf(e, v[u][g].x, acc[g].x);
                acc[g].y = fmaf(e, v[u][g].y, acc[g].y);
                acc[g].z = fmaf(e, v[u][g].z, acc[g].z);
                acc[g].w = fmaf(e, v[u][g].w, acc[g].w);
            }
    }
#pragma unroll
    for (u32 o = VT; o < 32; o <<= 1)
#pragma unroll
        for (int g = 0; g < G; ++g) {
            acc[g].x += __shfl_xor_sync(FULL_MASK, acc[g].x, o);
            acc[g].y += __shfl_xor_sync(FULL_MASK, acc[g].y, o);
            acc[g].z += __shfl_xor_sync(FULL_MASK, acc[g].z, o);
            acc[g].w += __shfl_xor_sync(FULL_MASK, acc[g].w, o);
        }
    if (sub == 0)
#pragma unroll
        for (int g = 0; g < G; ++g) *(float4*)&red[warp][g][c4 * 4] = acc[g];
    __syncthreads();
    for (u32 i = threadIdx.x; i < G * D; i += DEC_THREADS) {
        const u32 g = i / D, d = i % D;
        float v = 0.f;
#pragma unroll
        for (int w = 0; w < DEC_WARPS; ++w) v += red[w][g][d];
        a.out[(u64)qrow * a.H * D + (kvh * G + g) * D + d] = __float2bfloat16(v / head_sum[g]);
    }
}

// Cache offsets of the blocks of partition [p0, p0 + plen) of sequence s, KV head kvh, into
// blk_off (read by the whole CTA after a barrier).
template <int D, int P>
__device__ __forceinline__ void decode_stage_blocks(const DecodeArgs& a, u32 s, u32 kvh, u32 p0,
                                                    u32 plen, u64* blk_off) {
    if (threadIdx.x < (plen + a.block_size - 1) >> a.bs_log2) {
        int b = a.block_tables[(u64)s * a.bt_stride + (p0 >> a.bs_log2) + threadIdx.x];
        b = (b < 0 || (u32)b >= a.num_blocks) ? 0 : b;
        blk_off[threadIdx.x] = (((u64)b * a.KVH + kvh) << a.bs_log2) * D;
    }
}

// Loads in flight per thread: U1 token passes of decode_scores, U2 of decode_pv. An fp8 row is
// half the bytes of a bf16 one, so the fp8 kernels take twice the passes where the partition
// has the tokens for them (P >= 256): the same bytes in flight per thread, in the same
// registers (8 uint4 of K, 16 uint2 of V). 64-token partitions are one pass of the CTA either
// way (D = 128).
template <class T, int P>
struct DecUnroll {
    enum { U1 = DecKv<T>::FP8 && P >= 256 ? 8 : 4, U2 = DecKv<T>::FP8 && P >= 256 ? 16 : 8 };
};

template <class T, int D, int G, int P, int U1 = DecUnroll<T, P>::U1,
          int U2 = DecUnroll<T, P>::U2>
__device__ __forceinline__ void decode_impl(const DecodeArgs& a) {
    constexpr bool FP8 = DecKv<T>::FP8;
    __shared__ float sc[G][P];
    __shared__ __align__(16) float red[DEC_WARPS][G][D];
    __shared__ u64 blk_off[P / 8];
    __shared__ float head_max[G], head_sum[G];
    __shared__ u32 is_last;

    const u32 s = blockIdx.x, kvh = blockIdx.y;
    u32 part = blockIdx.z;
    // Both loads issued before either is tested: they head the chain of dependent loads.
    const int ctx_in = a.ctx_lens[s];
    const int qrow = a.q_rows[s];
    const int ctx = decode_ctx_len(a, ctx_in);
    // Lengths, q rows and block tables are the step's metadata, copied in before its first
    // kernel: they may be read before pdl_wait (common.cuh); q and the cache (this step's k and
    // v rows come from rope_kv_write) only after it. Idle CTAs wait too, so that this grid never
    // completes before the one it follows.
    if (ctx <= 0 || qrow < 0 || (u32)qrow >= a.out_rows) {
        pdl_wait();
        return;
    }
    const DecodeSplit sp = decode_split<P>(a, (u32)ctx);
    if (part >= sp.n) {
        pdl_wait();
        return;
    }
    u32 p0 = part * sp.chunk;
    u32 plen = min(sp.chunk, (u32)ctx - p0);
    const u32 lane = threadIdx.x & 31, warp = threadIdx.x >> 5;

    decode_stage_blocks<D, P>(a, s, kvh, p0, plen, blk_off);
    __syncthreads();
    // Still before the wait: the K and V rows of this partition's first DEC_PREFETCH tokens into
    // L2, so that the loads after it find them there instead of in DRAM (two DRAM round trips
    // of the chain, K then V, at small batches). Rows of earlier steps are final; this step's
    // row is being written by the kernel before, and prefetching it is harmless: prefetches
    // fill L2 only, where that kernel's stores land, and the loads come after the wait. Capped
    // so that a full wave of CTAs (~500 resident) prefetches well under L2's 50 MB, and only in
    // launches of one wave: in bigger ones (128 x 4k tokens) it made attention 3-5% slower
    // (H100, attn_bench, 2026-11-26), where it gained 0.7 us at batch 1.
    if (sp.n * gridDim.x * gridDim.y <= a.target_ctas) {
        // 128-byte lines a row (a 64-byte fp8 row of D = 64 shares its line with the next token)
        constexpr u32 LINES = D * sizeof(T) / 128 > 0 ? D * sizeof(T) / 128 : 1;
        const u32 n = min(plen, (u32)DEC_PREFETCH) * LINES;
        for (u32 i = threadIdx.x; i < n; i += DEC_THREADS) {
            const u64 off =
                tok_off(a, blk_off, i / LINES, D) + (i % LINES) * (u32)(128 / sizeof(T));
            prefetch_l2(static_cast<const T*>(a.kc) + off);
            prefetch_l2(static_cast<const T*>(a.vc) + off);
        }
    }
    pdl_enter();
    // The grid's z may be smaller than the partitions a sequence splits into (the host caps it
    // at a few waves of CTAs, whatever max_ctx): a CTA then takes partitions z, z + gridDim.z,
    // ... one after the other.
    const bf16* qb = a.qkv + (u64)qrow * a.qkv_stride + (u64)kvh * G * D;
    for (;;) {
        // q of this group, pre-scaled into the log2 domain (and by 2^64 for fp8 K, see
        // dec_widen_e4m3x4); chunk layout matches decode_scores. Loaded again for each
        // partition a CTA takes (from L2), so that it is not held in registers across the loop
        // (157 registers instead of 128: 3 CTAs an SM instead of 4).
        constexpr int TG = D / 16;
        const float qs = FP8 ? a.scale_log2 * DEC_FP8_Q_SCALE : a.scale_log2;
        float q[G][16];
#pragma unroll
        for (int g = 0; g < G; ++g)
#pragma unroll
            for (int c = 0; c < 2; ++c) {
                unpack8(*(const uint4*)(qb + g * D + score_chunk<T, TG>(lane % TG, c) * 8),
                        &q[g][c * 8]);
#pragma unroll
                for (int e = 0; e < 8; ++e) q[g][c * 8 + e] *= qs;
            }
        // No barrier here (blk_off was published before): the first K loads may issue while q
        // is still on its way.
        decode_scores<T, D, G, P, U1>(a, blk_off, plen, q, sc);
        __syncthreads();
        for (int g = warp; g < G; g += DEC_WARPS) {
            float m = NEG_INF;
            for (u32 t = lane; t < plen; t += 32) m = fmaxf(m, sc[g][t]);
            m = warp_max(m);
            float l = 0.f;
            for (u32 t = lane; t < plen; t += 32) {
                const float e = exp2f(sc[g][t] - m);
                // P.V's weights; fp8 V rows come times 2^-120 (dec_widen_e4m3x4), e <= 1.
                sc[g][t] = FP8 ? e * DEC_FP8_P_SCALE : e;
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
        decode_pv<T, D, G, P, U2>(a, blk_off, plen, sc, acc);
        if (lane < D / 8)
#pragma unroll
            for (int g = 0; g < G; ++g)
#pragma unroll
                for (int e = 0; e < 8; ++e) red[warp][g][lane * 8 + e] = acc[g][e];
        __syncthreads();

        const u32 max_parts = a.max_parts;
        const u64 n_acc = (u64)gridDim.x * a.H * max_parts;
        for (u32 i = threadIdx.x; i < G * D; i += DEC_THREADS) {
            const u32 g = i / D, d = i % D;
            float v = 0.f;
#pragma unroll
            for (int w = 0; w < DEC_WARPS; ++w) v += red[w][g][d];
            const u32 h = kvh * G + g;
            if (sp.n == 1) {
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
        if (sp.n == 1) return;

        // Publish this partition, then count it; the last of the n to arrive combines them all and
        // puts the counter back to 0 for the next launch.
        __threadfence();
        __syncthreads();
        if (threadIdx.x == 0) {
            u32* ctr = reinterpret_cast<u32*>(a.ws) + (a.ws_len - 1 - ((u64)s * a.KVH + kvh));
            const bool last = atomicAdd(ctr, 1u) == sp.n - 1;
            if (last) atomicExch(ctr, 0u);
            is_last = last;
        }
        __syncthreads();
        if (is_last) {
            __threadfence();
            decode_combine<D, G>(a, s, kvh, (u32)qrow, sp.n, red, head_max, head_sum);
            return;
        }
        // This CTA's next partition, if any (the last arrival always comes at some CTA's last
        // partition, so a CTA that combined has none left).
        part += gridDim.z;
        if (part >= sp.n) return;
        p0 = part * sp.chunk;
        plen = min(sp.chunk, (u32)ctx - p0);
        decode_stage_blocks<D, P>(a, s, kvh, p0, plen, blk_off);
        __syncthreads();
    }
}

// Groups of up to 4 heads are held to 128 registers (4 CTAs an SM), which they fit without
// spills; the partition loop let them grow to 164 otherwise. Larger groups as they come (G = 8:
// 252, no spills; capped at 4 CTAs it spilled 1.4 KB).
#define DEC_MIN_BLOCKS(G) ((G) <= 4 ? 4 : 1)
// paged_decode[_fp8]_d{D}_g{G}_p{P}: NAME is paged_decode or paged_decode_fp8, T the cache type.
#define DECODE_ONE(T, NAME, D, G, P)                                               \
    extern "C" __global__ void __launch_bounds__(DEC_THREADS, DEC_MIN_BLOCKS(G))   \
        NAME##_d##D##_g##G##_p##P(DecodeArgs a) {                                  \
        decode_impl<T, D, G, P>(a);                                                \
    }
#define DECODE_PARTS(T, NAME, D, G) \
    DECODE_ONE(T, NAME, D, G, 64) DECODE_ONE(T, NAME, D, G, 256) DECODE_ONE(T, NAME, D, G, 512)

// PS_DECODE_PART (0-3) keeps a quarter of the (D, G) pairs, so that NVRTC can compile them in
// parallel at shard start (loader.rs), with PS_DECODE_FP8 the fp8 instances of that quarter
// instead of the bf16 ones (units.rs: decode0-3, decode_fp8_0-3); the whole source, without
// PS_DECODE_PART, holds all 96 (48 bf16, 48 fp8).
#if !defined(PS_DECODE_PART)
#define DECODE_INST(D, G) \
    DECODE_PARTS(bf16, paged_decode, D, G) DECODE_PARTS(DecodeFp8, paged_decode_fp8, D, G)
#elif defined(PS_DECODE_FP8)
#define DECODE_INST(D, G) DECODE_PARTS(DecodeFp8, paged_decode_fp8, D, G)
#else
#define DECODE_INST(D, G) DECODE_PARTS(bf16, paged_decode, D, G)
#endif

#if !defined(PS_DECODE_PART) || PS_DECODE_PART == 0
DECODE_INST(64, 1)
DECODE_INST(64, 2)
DECODE_INST(64, 3)
DECODE_INST(64, 4)
#endif
#if !defined(PS_DECODE_PART) || PS_DECODE_PART == 1
DECODE_INST(64, 5)
DECODE_INST(64, 6)
DECODE_INST(64, 7)
DECODE_INST(64, 8)
#endif
#if !defined(PS_DECODE_PART) || PS_DECODE_PART == 2
DECODE_INST(128, 1)
DECODE_INST(128, 2)
DECODE_INST(128, 3)
DECODE_INST(128, 4)
#endif
#if !defined(PS_DECODE_PART) || PS_DECODE_PART == 3
DECODE_INST(128, 5)
DECODE_INST(128, 6)
DECODE_INST(128, 7)
DECODE_INST(128, 8)
#endif
