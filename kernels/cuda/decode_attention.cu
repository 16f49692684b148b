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
// fp8 cache are named paged_decode_fp8_*. The fp8 kernels read one byte an element, widen it
// exactly to f16 and take scores and P.V on tensor cores (mma.sync m16n8k16, f16 operands, f32
// sums: decode_scores_mma, decode_pv_mma, the default) or on CUDA cores in f16x2
// (decode_scores_fp8, decode_pv_fp8: DecodeArgs::fp8_mma = 0, PAGEDSERVE_FP8_DECODE=cuda); the
// notes above dec_widen_e4m3x4 and above dec_mma_f16 say why and how exactly. The rest is the
// bf16 code.
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
    // fp8 kernels: 0 = scores and P.V on CUDA cores in f16x2 (decode_scores_fp8 /
    // decode_pv_fp8); else on tensor cores (decode_*_mma), 4 = with DecUnroll::UM4 steps in
    // flight a warp, any other value DecUnroll::UM.
    u32 fp8_mma;
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

// The fp8 kernels compute in f16x2 (two f16 a 32-bit register, one HFMA2 for two products):
// an e4m3 pair widens to one f16x2 exactly, and the f16 products and short sums are exact
// or rounded to 11 bits, where the f32 FFMA path of ff78324 spent one FFMA an element and a
// head on top of 2.5 integer instructions to widen (it was instruction-issue bound: 1.31-1.38x
// the bf16 kernel, 63% of copy bandwidth at 4k x 128, H100). Per element the f16 path issues
// 1.5 instructions to widen and G/2 HFMA2 (scores: q of two heads in one f16x2 times the
// element broadcast; P.V: p of two heads times the element broadcast), against 2.5 + G.
//
// Widening, exactly. An e4m3 byte s.EEEE.MMM (bias 7) becomes the f16 whose bits are s at
// bit 15, 0 at bit 14, EEEE.MMM at bits 13..7: the f16 exponent field is EEEE (bias 15
// instead of 7) and the mantissa MMM, so the f16 is the e4m3 value times 2^-8, normal values
// (E >= 1) and subnormal ones (E = 0: 2^-14 (M/8) is an f16 subnormal) and +-0 alike. Two
// bytes cost one PRMT (each byte under a byte of copies of its sign: a sign-extended 16-bit
// half), then a shift by 7 (sign copy to bit 15, the byte to bits 14..7) and a mask (clears
// bit 14, the byte's own sign, and the copies shifted into the other half): 1.5 instructions
// an element. NaN (E = 15, M = 7) reads as 480 (times 2^-8; NaN through the hardware conversion): the
// cache never holds one (the KV write saturates finite values), and the bounds below hold for
// 480 too (61,440). On sm_89+ the hardware conversion (cvt.rn.f16x2.e4m3x2,
// exact, one F2FP a pair with no PRMT: 0.5 instructions an element) widens instead, to the
// unscaled values; the scales below then move the 2^-8 into q and p, so both paths compute
// the same f16 numbers up to the rounding of q (q * scale * 2^-8 is an f16 subnormal below
// 2^-6: 2^-17 absolute, not 11 bits). It is the default there: on an H100 (attn_bench,
// 2026-11-27, two runs each, H=32 KVH=8 D=128) it made the big launches 2-4% faster than the
// PRMT path (4k x 128: 437 against 455 us; 1k x 128: 118.6 against 121.8 us), and both pass
// the same tests. PS_FP8_SW_CVT forces the PRMT path (what sm_80 / sm_86 builds always run;
// the sm_86 decode test covers it on an H100).
//
// Ranges and precision (the 2^-8 of the manual widening; HW: the same products):
// - Scores: q * scale_log2 rounded to f16 (11 significant bits, bf16 q has 8) and clamped
//   to +-2048 (DEC_FP8_Q_MAX: |q * scale| > 2048 would put thousands into one score's log2
//   units; no real query is near it, the clamp only keeps f16 finite for any finite q), k
//   times 2^-8 (|k| <= 448: <= 1.75). A thread sums its 16 products of a (token, head) in one
//   f16 chain: |partial| <= 16 * 2048 * 1.75 = 57,344 < 65,504, never infinite. The partial
//   then goes to f32 exactly, and the shuffle-reduce and everything after it is the f32 code.
//   The scores so come out times 2^-8: the softmax multiplies the 2^8 back into its
//   exp2f(s - m) FFMA (exact: a power of two) and into the max it leaves for the combine.
//   Errors: each of the 16 roundings is at most 2^-11 of the partial it rounds (relative),
//   f16 subnormals (kept: fma.rn.f16x2 without .ftz, whatever --use_fast_math says) put a
//   floor of 2^-25 * 2^8 = 2^-17 log2 units on a rounding. The roundings of a score of
//   magnitude S (log2 units; 16 a partial, partials of about S / 8) add up, at random, to
//   about 2^-12 S: for S = 45 (a large attention logit) 0.01 log2 units, 0.7% of a
//   probability, where the e4m3 rounding of k (2^-4 an element) already moves it by ~10%.
// - P.V: p = exp2(s - m) in [0, 1] rounded to f16 times 2^11 (<= 2048, exactly 2048 for the
//   max token), v times 2^-8 (<= 1.75): products p v 2^3 <= 3,584, summed over the U2 <= 16
//   tokens a lane takes in one pass (one f16 chain per head and element: <= 57,344, finite),
//   then moved to the f32 accumulators times 2^-3 (exact, one FFMA each, once a pass). The
//   probabilities keep 11 bits (the bf16 prefill kernel's P keeps 8), the partial sums an
//   error of at most 16 * 2^-12 of the pass's own partial; p below 2^-35 rounds to 0 (its
//   weight against the max token's 1 is below 2^-35). A one-token context has p = 1, and
//   the one product 2^11 * v 2^-8 = 8v is exact in f16 for every finite e4m3 v (2^-6 to
//   3,584): the output is v exactly, subnormals included.
#if !defined(PS_FP8_SW_CVT) && __CUDA_ARCH__ >= 890
#define DEC_FP8_HW 1
#define DEC_FP8_Q_SCALE 0x1p-8f  // f16 k unscaled: q carries the 2^-8
#define DEC_FP8_Q_MAX 0x4800u    // 8 (f16 bits): 2048 * 2^-8
#define DEC_FP8_P_SCALE 0x1p3f   // f16 v unscaled: products p v 2^3
#else
#define DEC_FP8_HW 0
#define DEC_FP8_Q_SCALE 1.0f
#define DEC_FP8_Q_MAX 0x6800u  // 2048 (f16 bits)
#define DEC_FP8_P_SCALE 0x1p11f
#endif
#define DEC_FP8_S_SCALE 0x1p8f     // the f16 scores are the log2-domain scores times 2^-8
#define DEC_FP8_PV_UNSCALE 0x1p-3f  // the f16 P.V partials are p v times 2^3

// prmt.b32 of x and 0 with selector SEL (a nibble with bit 3 set replicates the sign of the
// byte it selects).
template <u32 SEL>
__device__ __forceinline__ u32 dec_prmt(u32 x) {
    u32 r;
    asm("prmt.b32 %0, %1, 0, %2;" : "=r"(r) : "r"(x), "n"(SEL));
    return r;
}

// The four e4m3 bytes of w (little-endian) as two f16x2: h01 = (b0, b1) (b0 in the low
// half), h23 = (b2, b3); times 2^-8 (unscaled with DEC_FP8_HW).
__device__ __forceinline__ void dec_widen_e4m3x4(u32 w, u32& h01, u32& h23) {
#if DEC_FP8_HW
    asm("{.reg .b16 lo, hi;\n\tmov.b32 {lo, hi}, %2;\n\tcvt.rn.f16x2.e4m3x2 %0, lo;\n\t"
        "cvt.rn.f16x2.e4m3x2 %1, hi;}"
        : "=r"(h01), "=r"(h23)
        : "r"(w));
#else
    const u32 y01 = dec_prmt<0x9180>(w), y23 = dec_prmt<0xB3A2>(w);
    h01 = (y01 << 7) & 0xbf80bf80u;
    h23 = (y23 << 7) & 0xbf80bf80u;
#endif
}

// a * b + c in f16x2, rounded once per half, subnormals kept (no .ftz).
__device__ __forceinline__ u32 dec_hfma2(u32 a, u32 b, u32 c) {
    u32 d;
    asm("fma.rn.f16x2 %0, %1, %2, %3;" : "=r"(d) : "r"(a), "r"(b), "r"(c));
    return d;
}

// (x.lo, x.lo) and (x.hi, x.hi): ptxas folds them into the operand of the HFMA2 that takes
// them (.H0_H0, .H1_H1), no instruction of their own.
__device__ __forceinline__ u32 dec_h2_lo(u32 x) {
    u32 r;
    asm("{.reg .b16 l, h;\n\tmov.b32 {l, h}, %1;\n\tmov.b32 %0, {l, l};}" : "=r"(r) : "r"(x));
    return r;
}
__device__ __forceinline__ u32 dec_h2_hi(u32 x) {
    u32 r;
    asm("{.reg .b16 l, h;\n\tmov.b32 {l, h}, %1;\n\tmov.b32 %0, {h, h};}" : "=r"(r) : "r"(x));
    return r;
}

// The halves of an f16x2 as f32 (exact).
__device__ __forceinline__ void dec_h2_f32(u32 x, float& lo, float& hi) {
    asm("{.reg .f16 l, h;\n\tmov.b32 {l, h}, %2;\n\tcvt.f32.f16 %0, l;\n\tcvt.f32.f16 %1, h;}"
        : "=f"(lo), "=f"(hi)
        : "r"(x));
}

// (lo, hi) rounded to f16x2, then clamped to +-DEC_FP8_Q_MAX (an infinity from the rounding
// included).
__device__ __forceinline__ u32 dec_f32x2_q(float lo, float hi) {
    u32 r;
    asm("{.reg .b32 t;\n\tcvt.rn.f16x2.f32 t, %1, %2;\n\tmin.f16x2 t, t, %3;\n\t"
        "max.f16x2 %0, t, %4;}"
        : "=r"(r)
        : "f"(hi), "f"(lo), "r"(DEC_FP8_Q_MAX * 0x10001u),
          "r"((DEC_FP8_Q_MAX | 0x8000u) * 0x10001u));
    return r;
}

// x rounded to f16 (bits).
__device__ __forceinline__ unsigned short dec_f16(float x) {
    unsigned short r;
    asm("cvt.rn.f16.f32 %0, %1;" : "=h"(r) : "f"(x));
    return r;
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
// decode_scores (bf16): chunks r and r + TG of a row (each 16-byte load of the TG threads reads
// one contiguous half row); in decode_scores_fp8, chunks 2r and 2r + 1 (one 16-byte load).
template <class T, int TG>
__device__ __forceinline__ u32 score_chunk(u32 r, u32 c) {
    return DecKv<T>::FP8 ? r * 2 + c : r + c * TG;
}

// The scores of the bf16 kernels (the fp8 ones take decode_scores_fp8).
template <int D, int G, int P, int U>
__device__ __forceinline__ void decode_scores(const DecodeArgs& a, const u64* blk_off, u32 plen,
                                              const float (&q)[G][16], float (*sc)[P]) {
    constexpr int TG = D / 16;    // threads per token, each owning 16 elements (score_chunk)
    constexpr int TPP = 32 / TG;  // tokens per warp pass; U passes unrolled: 2U loads in flight
    const bf16* kc = static_cast<const bf16*>(a.kc);
    const u32 lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const u32 r = lane % TG, tsub = lane / TG;
    for (u32 base = warp * TPP * U; base < plen; base += DEC_WARPS * TPP * U) {
        uint4 kr[U][2];
#pragma unroll
        for (int u = 0; u < U; ++u) {
            const u32 tok = base + u * TPP + tsub;
            if (tok < plen) {
                const bf16* kp = kc + tok_off(a, blk_off, tok, D);
                kr[u][0] = __ldg((const uint4*)(kp + score_chunk<bf16, TG>(r, 0) * 8));
                kr[u][1] = __ldg((const uint4*)(kp + score_chunk<bf16, TG>(r, 1) * 8));
            } else {
                kr[u][0] = kr[u][1] = make_uint4(0, 0, 0, 0);
            }
        }
#pragma unroll
        for (int u = 0; u < U; ++u) {
            const u32 tok = base + u * TPP + tsub;
            float kf[16];
            unpack8(kr[u][0], kf);
            unpack8(kr[u][1], kf + 8);
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

// Sums decode_pv's per-lane accumulators over the lanes of the other tokens of a load.
template <int D, int G>
__device__ __forceinline__ void decode_pv_reduce(float (&acc)[G][8]) {
    constexpr int CH = D / 8;
#pragma unroll
    for (int o = CH; o < 32; o <<= 1)
#pragma unroll
        for (int g = 0; g < G; ++g)
#pragma unroll
            for (int e = 0; e < 8; ++e) acc[g][e] += __shfl_xor_sync(FULL_MASK, acc[g][e], o);
}

// P.V of the bf16 kernels (the fp8 ones take decode_pv_fp8).
template <int D, int G, int P, int U>
__device__ __forceinline__ void decode_pv(const DecodeArgs& a, const u64* blk_off, u32 plen,
                                          float (*sc)[P], float (&acc)[G][8]) {
    constexpr int CH = D / 8;     // 8-element chunks per row (16 bytes)
    constexpr int TPI = 32 / CH;  // tokens per warp load; U loads in flight
    const bf16* vc = static_cast<const bf16*>(a.vc);
    const u32 lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const u32 c = lane % CH, vsub = lane / CH;
    for (u32 base = warp * TPI * U; base < plen; base += DEC_WARPS * TPI * U) {
        uint4 vr[U];
#pragma unroll
        for (int u = 0; u < U; ++u) {
            const u32 tok = base + u * TPI + vsub;
            vr[u] = uint4{};
            if (tok < plen) vr[u] = __ldg((const uint4*)(vc + tok_off(a, blk_off, tok, D) + c * 8));
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
    decode_pv_reduce<D, G>(acc);
}

// The fp8 kernels' head pairs: heads 2i and 2i + 1 share an f16x2 (the even head in the low
// half) in q (decode_scores_fp8) and in p (decode_pv_fp8), DEC_NP of them; an odd G's last
// head stands alone (DEC_ODD), its q and p as element pairs. The probabilities of a token sit
// in DEC_NPS u32 of dec_fp8_probs (its pairs, then the odd head's (p, p), padded to 1, 2 or 4
// for one vector load).
#define DEC_NP(G) ((G) / 2)
#define DEC_ODD(G) ((G) & 1)
#define DEC_NPS(G) ((G) <= 2 ? 1 : (G) <= 4 ? 2 : 4)

// Row stride (f16) of the tensor-core path's probabilities, [G][DEC_PM_STRIDE(P)]: 16 halves
// of padding put the 8-byte B-fragment loads of lanes 0-15 (heads 0-3, token quads 0-3) and
// of lanes 16-31 each on 32 distinct banks (decode_pv_mma).
#define DEC_PM_STRIDE(P) ((P) + 16)
// u32 words of dec_fp8_probs: the f16x2 path's [P][DEC_NPS(G)] or the mma path's
// [G][DEC_PM_STRIDE(P)] f16, whichever is larger (one kernel holds both paths; fp8_mma picks).
#define DEC_PH_WORDS(G, P)                                                 \
    ((P) * DEC_NPS(G) > (G) * DEC_PM_STRIDE(P) / 2 ? (P) * DEC_NPS(G)      \
                                                    : (G) * DEC_PM_STRIDE(P) / 2)

// Probabilities of the fp8 kernels (decode_impl writes, decode_pv_fp8 / decode_pv_mma read).
// A static of its own instantiation, so the bf16 kernels do not have it.
template <int G, int P>
__device__ __forceinline__ u32* dec_fp8_probs() {
    __shared__ __align__(16) u32 ph[DEC_PH_WORDS(G, P)];
    return ph;
}

// The scores of the fp8 kernels: as decode_scores (8 or 4 threads a token, 16 elements each,
// one 16-byte load), in f16x2. qh holds this thread's 16 q elements of each head pair (pair
// i, element e at qh[16 i + e]), then an odd head's as 8 element pairs; all times
// scale_log2 * DEC_FP8_Q_SCALE, clamped (dec_f32x2_q). Scores come out times 2^-8.
template <int D, int G, int P, int U>
__device__ __forceinline__ void decode_scores_fp8(const DecodeArgs& a, const u64* blk_off,
                                                  u32 plen, const u32 (&qh)[G * 8],
                                                  float (*sc)[P]) {
    constexpr int TG = D / 16, TPP = 32 / TG, NP = DEC_NP(G), ODD = DEC_ODD(G);
    const DecodeFp8* kc = static_cast<const DecodeFp8*>(a.kc);
    const u32 lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const u32 r = lane % TG, tsub = lane / TG;
    for (u32 base = warp * TPP * U; base < plen; base += DEC_WARPS * TPP * U) {
        uint4 kr[U];
#pragma unroll
        for (int u = 0; u < U; ++u) {
            const u32 tok = base + u * TPP + tsub;
            kr[u] = make_uint4(0, 0, 0, 0);
            if (tok < plen)
                kr[u] = __ldg((const uint4*)(kc + tok_off(a, blk_off, tok, D) +
                                             score_chunk<DecodeFp8, TG>(r, 0) * 8));
        }
#pragma unroll
        for (int u = 0; u < U; ++u) {
            const u32 tok = base + u * TPP + tsub;
            const u32 w[4] = {kr[u].x, kr[u].y, kr[u].z, kr[u].w};
            // One f16 chain of 16 products per head pair (HFMA2: q of the pair times the
            // element broadcast), one of 8 element pairs for the odd head.
            u32 acc[NP + ODD];
#pragma unroll
            for (int i = 0; i < NP + ODD; ++i) acc[i] = 0u;
#pragma unroll
            for (int j = 0; j < 4; ++j) {
                u32 k01, k23;
                dec_widen_e4m3x4(w[j], k01, k23);
#pragma unroll
                for (int i = 0; i < NP; ++i) {
                    acc[i] = dec_hfma2(qh[16 * i + 4 * j], dec_h2_lo(k01), acc[i]);
                    acc[i] = dec_hfma2(qh[16 * i + 4 * j + 1], dec_h2_hi(k01), acc[i]);
                    acc[i] = dec_hfma2(qh[16 * i + 4 * j + 2], dec_h2_lo(k23), acc[i]);
                    acc[i] = dec_hfma2(qh[16 * i + 4 * j + 3], dec_h2_hi(k23), acc[i]);
                }
                if constexpr (ODD) {
                    acc[NP] = dec_hfma2(qh[16 * NP + 2 * j], k01, acc[NP]);
                    acc[NP] = dec_hfma2(qh[16 * NP + 2 * j + 1], k23, acc[NP]);
                }
            }
            float s[G];
#pragma unroll
            for (int i = 0; i < NP; ++i) dec_h2_f32(acc[i], s[2 * i], s[2 * i + 1]);
            if constexpr (ODD) {
                float lo, hi;
                dec_h2_f32(acc[NP], lo, hi);
                s[G - 1] = lo + hi;
            }
#pragma unroll
            for (int g = 0; g < G; ++g) {
#pragma unroll
                for (int o = TG / 2; o > 0; o >>= 1) s[g] += __shfl_xor_sync(FULL_MASK, s[g], o);
                if (r == 0 && tok < plen) sc[g][tok] = s[g];
            }
        }
    }
}

// P.V of the fp8 kernels: as decode_pv (D / 8 lanes a token, 8 elements each, one 8-byte
// load), in f16x2: per pass of U tokens a lane sums p v 2^3 in f16 chains (a head pair's p
// times the element broadcast; the odd head's (p, p) times element pairs), then adds them
// into the f32 accumulators times 2^-3.
template <int D, int G, int P, int U>
__device__ __forceinline__ void decode_pv_fp8(const DecodeArgs& a, const u64* blk_off, u32 plen,
                                              const u32* ph, float (&acc)[G][8]) {
    constexpr int CH = D / 8, TPI = 32 / CH;
    constexpr int NP = DEC_NP(G), ODD = DEC_ODD(G), NPS = DEC_NPS(G);
    static_assert(U <= 16, "f16 P.V partials: at most 16 terms (57,344 < 65,504)");
    const DecodeFp8* vc = static_cast<const DecodeFp8*>(a.vc);
    const u32 lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const u32 c = lane % CH, vsub = lane / CH;
    for (u32 base = warp * TPI * U; base < plen; base += DEC_WARPS * TPI * U) {
        uint2 vr[U];
#pragma unroll
        for (int u = 0; u < U; ++u) {
            const u32 tok = base + u * TPI + vsub;
            vr[u] = make_uint2(0, 0);
            if (tok < plen) vr[u] = __ldg((const uint2*)(vc + tok_off(a, blk_off, tok, D) + c * 8));
        }
        u32 hp[NP > 0 ? NP : 1][8], ho[4];  // (hp unused for G = 1)
#pragma unroll
        for (int i = 0; i < NP; ++i)
#pragma unroll
            for (int e = 0; e < 8; ++e) hp[i][e] = 0u;
#pragma unroll
        for (int e = 0; e < 4; ++e) ho[e] = 0u;
#pragma unroll
        for (int u = 0; u < U; ++u) {
            const u32 tok = base + u * TPI + vsub;
            // Past the partition: p = 0 (and v = 0), no branch.
            u32 pp[NPS];
#pragma unroll
            for (int i = 0; i < NPS; ++i) pp[i] = 0u;
            if (tok < plen) {
                if constexpr (NPS == 4) {
                    const uint4 t = *(const uint4*)(ph + tok * 4);
                    pp[0] = t.x, pp[1] = t.y, pp[2] = t.z, pp[3] = t.w;
                } else if constexpr (NPS == 2) {
                    const uint2 t = *(const uint2*)(ph + tok * 2);
                    pp[0] = t.x, pp[1] = t.y;
                } else {
                    pp[0] = ph[tok];
                }
            }
            u32 v[4];
            dec_widen_e4m3x4(vr[u].x, v[0], v[1]);
            dec_widen_e4m3x4(vr[u].y, v[2], v[3]);
#pragma unroll
            for (int i = 0; i < NP; ++i)
#pragma unroll
                for (int e = 0; e < 4; ++e) {
                    hp[i][2 * e] = dec_hfma2(pp[i], dec_h2_lo(v[e]), hp[i][2 * e]);
                    hp[i][2 * e + 1] = dec_hfma2(pp[i], dec_h2_hi(v[e]), hp[i][2 * e + 1]);
                }
            if constexpr (ODD)
#pragma unroll
                for (int e = 0; e < 4; ++e) ho[e] = dec_hfma2(pp[NP], v[e], ho[e]);
        }
#pragma unroll
        for (int i = 0; i < NP; ++i)
#pragma unroll
            for (int e = 0; e < 8; ++e) {
                float lo, hi;
                dec_h2_f32(hp[i][e], lo, hi);
                acc[2 * i][e] = fmaf(lo, DEC_FP8_PV_UNSCALE, acc[2 * i][e]);
                acc[2 * i + 1][e] = fmaf(hi, DEC_FP8_PV_UNSCALE, acc[2 * i + 1][e]);
            }
        if constexpr (ODD)
#pragma unroll
            for (int e = 0; e < 4; ++e) {
                float lo, hi;
                dec_h2_f32(ho[e], lo, hi);
                acc[G - 1][2 * e] = fmaf(lo, DEC_FP8_PV_UNSCALE, acc[G - 1][2 * e]);
                acc[G - 1][2 * e + 1] = fmaf(hi, DEC_FP8_PV_UNSCALE, acc[G - 1][2 * e + 1]);
            }
    }
    decode_pv_reduce<D, G>(acc);
}

// ---- The tensor-core path of the fp8 kernels (fp8_mma != 0, the default) ----
// The f16x2 path above is issue-bound: 5.9 (scores) and 6.4 (P.V) instructions an element on
// CUDA cores plus the f32 shuffle reductions, 73-82% of copy bandwidth on an H100 where the
// bf16 kernel reaches 89-93% (docs/perf.md, "FP8 KV cache"). Here both products run on
// mma.sync.m16n8k16 with f16 operands and f32 accumulators, the cache bytes widened exactly to
// f16 as above (dec_widen_e4m3x4: cvt.rn.f16x2.e4m3x2 on sm_89+, the PRMT path before), with
// the same scales: q times scale_log2 * DEC_FP8_Q_SCALE, clamped (scores come out times 2^-8),
// p times DEC_FP8_P_SCALE (P.V comes out times 2^3). Only the sums differ: f32 in the tensor
// core instead of f16 chains, so the partial-sum bounds above no longer apply (products of
// f16 operands are exact in f32) and the roundings are f32 ones.
//
// Both products are taken transposed, tokens on the M side and the G <= 8 heads on N (n8, so
// no group wastes more than half the columns, where heads on M would pad G to 16 rows):
// - scores: S^T (16 tokens x 8 heads) = K (16 tokens x 16 dims, A) . q^T (16 dims x 8 heads,
//   B), D / 16 k-steps a 16-token tile. The sum over dims may take the dims in any order as
//   long as A and B agree, so lane (g = lane / 4, t = lane % 4) loads its own 32 contiguous
//   bytes (D = 128; 16 at D = 64) of tokens 2g and 2g + 1 of the step, A's rows g and g + 8
//   (two 16-byte loads each, 64 contiguous bytes of 8 rows an instruction; the two tokens
//   share a block, so one address), and k-step j takes its word j: bytes (0, 1) are A's
//   columns 2t, 2t + 1, bytes (2, 3) columns 2t + 8, 2t + 9, so one widening of the word gives
//   a0 / a2 (token 2g) and one a1 / a3 (token 2g + 1); q (B: column g = head g, rows 2t.. =
//   the same four dims) is built once in registers in that order (decode_q_mma). The C
//   fragment's (c0, c2) and (c1, c3) are then one float2 each of the score rows.
// - P.V: O^T (16 dims x 8 heads) = V^T (16 dims x 16 tokens, A) . P^T (16 tokens x 8 heads,
//   B), D / 16 m-tiles a 16-token k-step. The sum over tokens and the rows' dims are free in
//   the same way: lane (g, t) loads tokens 4t..4t + 3 of the step (A's columns 2t, 2t + 1,
//   2t + 8, 2t + 9; one block, one address), each its D / 8 contiguous bytes at dim D / 8 * g
//   (one 16-byte load a token at D = 128: 8 lanes read a whole 128-byte row, 4 rows an
//   instruction), and m-tile i's rows g / g + 8 are dims D / 8 * g + 2i and + 2i + 1. A's
//   a0 = (V[4t][d], V[4t + 1][d]) pairs two tokens of one dim: one PRMT of the two tokens'
//   words puts (V[4t][d], V[4t + 1][d], V[4t][d + 1], V[4t + 1][d + 1]) in one register, whose
//   widening is a0 / a1 (a2 / a3 from tokens 4t + 2, 4t + 3). Per element: 0.25 PRMT + the
//   widening (0.5 cvt on sm_89+) + 1/8 mma, in registers. The other way, V widened to f16 in
//   shared memory and read back with ldmatrix.trans, would add a shared store and load of 2
//   bytes an element, a barrier, and the same widening: more issue and shared-memory traffic
//   for nothing the PRMT does not already give. P^T's b0 / b1 = the f16 probabilities of head
//   g, tokens 4t..4t + 3: one 8-byte shared load of row g of the [G][DEC_PM_STRIDE(P)] f16
//   array (heads g >= G take zeros and their columns are dropped).
// Tokens past the partition: no loads (zeros), scores not stored (the softmax reads none past
// plen), probabilities 0 (decode_impl writes zeros up to the next multiple of 16), so no NaN
// of a stale row can reach the sums. A warp takes 16-token steps warp, warp + 4, ... (UM of
// them unrolled: 2 UM loads of K and 4 UM of V in flight a lane at D = 128; UM = 2 is 128
// bytes, as the f16x2 path).
// SASS (ptxas 12.9, sm_90, d128_g4_p512, this path alone): the scores loop is 217
// instructions for 2 steps (128 elements a lane: 1.7 an element; 64 F2FP, 16 HMMA, 8 LDG), the
// P.V loop 219 (64 F2FP, 32 PRMT, 16 HMMA, 8 LDG, 4 LDS), against 5.9 and 6.4 an element on
// CUDA cores. The index algebra of both was checked by a NumPy emulation of the fragments
// (D = 64 / 128, G = 1-8, partitions of 1-512 tokens) against q.K^T and P.V.

// D += A.B on tensor cores: A 16x16 f16 (row), B 16x8 f16 (col), D 16x8 f32.
__device__ __forceinline__ void dec_mma_f16(float (&c)[4], u32 a0, u32 a1, u32 a2, u32 a3, u32 b0,
                                            u32 b1) {
    asm("mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, "
        "{%8,%9}, {%0,%1,%2,%3};"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "r"(b0), "r"(b1));
}

// prmt.b32 of x (bytes 0-3) and y (bytes 4-7) with selector SEL.
template <u32 SEL>
__device__ __forceinline__ u32 dec_prmt2(u32 x, u32 y) {
    u32 r;
    asm("prmt.b32 %0, %1, %2, %3;" : "=r"(r) : "r"(x), "r"(y), "n"(SEL));
    return r;
}

// (x.b[P], y.b[P], x.b[P + 1], y.b[P + 1]) for P = 0 or 2: dims P, P + 1 of a word of two tokens'
// rows, paired by dim (decode_pv_mma).
template <int P>
__device__ __forceinline__ u32 dec_pair_tokens(u32 x, u32 y) {
    return dec_prmt2<P == 0 ? 0x5140u : 0x7362u>(x, y);
}

#define DEC_MMA_TOK 16  // tokens of a warp's step (the m16 of S^T, the k16 of O^T)
#ifndef DEC_MMA_UNROLL
#define DEC_MMA_UNROLL 2  // DecUnroll::UM of P >= 256
#endif

// Lane (g, t)'s q fragments (B of decode_scores_mma): head g's dims of word j (D / 64 16-byte
// pieces of 16 dims at 64 v + 16 t, word j = dims 64 (j / 4) + 16 t + 4 (j % 4) + 0..3) as
// qm[2j] = dims (0, 1), qm[2j + 1] = dims (2, 3), times qs, rounded to f16 and clamped
// (dec_f32x2_q); zeros for heads g >= G.
template <int D, int G>
__device__ __forceinline__ void decode_q_mma(const bf16* qb, float qs, u32 (&qm)[D / 8]) {
    const u32 lane = threadIdx.x & 31, g = lane >> 2, t = lane & 3;
#pragma unroll
    for (int i = 0; i < D / 8; ++i) qm[i] = 0u;
    if (g < (u32)G) {
#pragma unroll
        for (int v = 0; v < D / 64; ++v)
#pragma unroll
            for (int c = 0; c < 2; ++c) {
                float f[8];
                unpack8(*(const uint4*)(qb + g * D + v * 64 + t * 16 + c * 8), f);
#pragma unroll
                for (int e = 0; e < 4; ++e)
                    qm[v * 8 + c * 4 + e] = dec_f32x2_q(f[2 * e] * qs, f[2 * e + 1] * qs);
            }
    }
}

// The scores of the fp8 kernels, tensor-core path (the notes above): qm from decode_q_mma,
// scores times 2^-8 into sc[head][token] for tokens < plen.
template <int D, int G, int P, int U>
__device__ __forceinline__ void decode_scores_mma(const DecodeArgs& a, const u64* blk_off,
                                                  u32 plen, const u32 (&qm)[D / 8],
                                                  float (*sc)[P]) {
    constexpr int NV = D / 64;  // 16-byte loads a token row a lane
    constexpr int KS = D / 16;  // k-steps: words of a token row a lane
    const DecodeFp8* kc = static_cast<const DecodeFp8*>(a.kc);
    const u32 lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const u32 g = lane >> 2, t = lane & 3;
    for (u32 base = warp * DEC_MMA_TOK; base < plen; base += DEC_WARPS * DEC_MMA_TOK * U) {
        // A's rows g and g + 8 are tokens 2g and 2g + 1 of the step: one block (blocks hold at
        // least 8 tokens, partitions start at block boundaries), one address.
        uint4 kr[U][2][NV];
#pragma unroll
        for (int u = 0; u < U; ++u) {
            const u32 tok = base + u * DEC_WARPS * DEC_MMA_TOK + 2 * g;
#pragma unroll
            for (int h = 0; h < 2; ++h)
#pragma unroll
                for (int v = 0; v < NV; ++v) kr[u][h][v] = make_uint4(0, 0, 0, 0);
            if (tok < plen) {
                const DecodeFp8* kp = kc + tok_off(a, blk_off, tok, D) + t * 16;
#pragma unroll
                for (int v = 0; v < NV; ++v) kr[u][0][v] = __ldg((const uint4*)(kp + v * 64));
                if (tok + 1 < plen)
#pragma unroll
                    for (int v = 0; v < NV; ++v)
                        kr[u][1][v] = __ldg((const uint4*)(kp + D + v * 64));
            }
        }
#pragma unroll
        for (int u = 0; u < U; ++u) {
            const u32 t0 = base + u * DEC_WARPS * DEC_MMA_TOK;
            if (t0 >= plen) break;  // warp-uniform: this and the later steps are past the end
            float c[4] = {0.f, 0.f, 0.f, 0.f};
#pragma unroll
            for (int j = 0; j < KS; ++j) {
                const uint4& w0 = kr[u][0][j / 4];
                const uint4& w1 = kr[u][1][j / 4];
                const u32 x0 = j % 4 == 0 ? w0.x : j % 4 == 1 ? w0.y : j % 4 == 2 ? w0.z : w0.w;
                const u32 x1 = j % 4 == 0 ? w1.x : j % 4 == 1 ? w1.y : j % 4 == 2 ? w1.z : w1.w;
                u32 a0, a1, a2, a3;
                // Row g (token 2g): dims (0, 1) -> cols 2t, 2t + 1, (2, 3) -> 2t + 8, 2t + 9.
                dec_widen_e4m3x4(x0, a0, a2);
                dec_widen_e4m3x4(x1, a1, a3);  // row g + 8: token 2g + 1
                dec_mma_f16(c, a0, a1, a2, a3, qm[2 * j], qm[2 * j + 1]);
            }
            // c0, c1: token 2g, heads 2t, 2t + 1; c2, c3: token 2g + 1.
            const u32 tk = t0 + 2 * g, h0 = 2 * t;
            if (tk + 1 < plen) {
                if (h0 < (u32)G) *(float2*)&sc[h0][tk] = make_float2(c[0], c[2]);
                if (h0 + 1 < (u32)G) *(float2*)&sc[h0 + 1][tk] = make_float2(c[1], c[3]);
            } else if (tk < plen) {
                if (h0 < (u32)G) sc[h0][tk] = c[0];
                if (h0 + 1 < (u32)G) sc[h0 + 1][tk] = c[1];
            }
        }
    }
}

// P.V of the fp8 kernels, tensor-core path (the notes above): pm the f16 probabilities
// [G][DEC_PM_STRIDE(P)] times DEC_FP8_P_SCALE, zero from plen to the next multiple of 16.
// o[i] is m-tile i's C fragment: o[i][0] / o[i][1] = heads 2t / 2t + 1 at dim D / 8 * g + 2i,
// o[i][2] / o[i][3] the same at dim D / 8 * g + 2i + 1; times 2^3 (DEC_FP8_PV_UNSCALE undoes it).
template <int D, int G, int P, int U>
__device__ __forceinline__ void decode_pv_mma(const DecodeArgs& a, const u64* blk_off, u32 plen,
                                              const unsigned short* pm, float (&o)[D / 16][4]) {
    constexpr int MT = D / 16;  // m-tiles of 16 dims
    constexpr int DW = D / 32;  // words of a token row a lane (D / 8 bytes)
    const DecodeFp8* vc = static_cast<const DecodeFp8*>(a.vc);
    const u32 lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const u32 g = lane >> 2, t = lane & 3;
    for (u32 base = warp * DEC_MMA_TOK; base < plen; base += DEC_WARPS * DEC_MMA_TOK * U) {
        // Tokens 4t..4t + 3 of the step: one block (blocks hold at least 8 tokens, partitions
        // start at block boundaries), one address.
        u32 vr[U][4][DW];
#pragma unroll
        for (int u = 0; u < U; ++u) {
            const u32 tok = base + u * DEC_WARPS * DEC_MMA_TOK + 4 * t;
#pragma unroll
            for (int j = 0; j < 4; ++j)
#pragma unroll
                for (int w = 0; w < DW; ++w) vr[u][j][w] = 0u;
            if (tok < plen) {
                const DecodeFp8* vp = vc + tok_off(a, blk_off, tok, D) + g * (D / 8);
#pragma unroll
                for (int j = 0; j < 4; ++j)
                    if (tok + j < plen) {
                        if constexpr (DW == 4) {
                            const uint4 r = __ldg((const uint4*)(vp + j * D));
                            vr[u][j][0] = r.x, vr[u][j][1] = r.y;
                            vr[u][j][2] = r.z, vr[u][j][3] = r.w;
                        } else {
                            const uint2 r = __ldg((const uint2*)(vp + j * D));
                            vr[u][j][0] = r.x, vr[u][j][1] = r.y;
                        }
                    }
            }
        }
#pragma unroll
        for (int u = 0; u < U; ++u) {
            const u32 t0 = base + u * DEC_WARPS * DEC_MMA_TOK;
            if (t0 >= plen) break;  // warp-uniform
            u32 b0 = 0u, b1 = 0u;
            if (g < (u32)G) {
                const uint2 pb = *(const uint2*)(pm + g * DEC_PM_STRIDE(P) + t0 + 4 * t);
                b0 = pb.x, b1 = pb.y;
            }
#pragma unroll
            for (int i = 0; i < MT; ++i) {
                const int w = i / 2;
                u32 x01, x23;
                if (i % 2 == 0) {
                    x01 = dec_pair_tokens<0>(vr[u][0][w], vr[u][1][w]);
                    x23 = dec_pair_tokens<0>(vr[u][2][w], vr[u][3][w]);
                } else {
                    x01 = dec_pair_tokens<2>(vr[u][0][w], vr[u][1][w]);
                    x23 = dec_pair_tokens<2>(vr[u][2][w], vr[u][3][w]);
                }
                u32 a0, a1, a2, a3;
                dec_widen_e4m3x4(x01, a0, a1);  // tokens 4t, 4t + 1: dim 2i -> a0, 2i + 1 -> a1
                dec_widen_e4m3x4(x23, a2, a3);  // tokens 4t + 2, 4t + 3
                dec_mma_f16(o[i], a0, a1, a2, a3, b0, b1);
            }
        }
    }
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
// UM: 16-token steps a warp has in flight in the fp8 kernels' tensor-core path (decode_*_mma):
// 2 K or 4 V loads of 16 bytes a lane a step at D = 128, so UM = 2 holds the same 128 bytes a
// lane as U1 / U2 above; a 64-token partition is one step a warp. UM4 (fp8_mma = 4, the
// default; fp8_mma = 1 is PAGEDSERVE_FP8_DECODE=mma-half) holds twice that where the partition
// has the tokens; both fit the registers without spills (ptxas, sm_90 and sm_86). On an H100
// UM4 was 3-15% faster (300 sequences x 500 tokens: 120.1 -> 113.8 us, 89.6% of copy bandwidth).
template <class T, int P>
struct DecUnroll {
    enum {
        U1 = DecKv<T>::FP8 && P >= 256 ? 8 : 4,
        U2 = DecKv<T>::FP8 && P >= 256 ? 16 : 8,
        UM = P >= 256 ? DEC_MMA_UNROLL : 1,
        UM4 = P >= 256 ? 4 : 1
    };
};

template <class T, int D, int G, int P, int U1 = DecUnroll<T, P>::U1,
          int U2 = DecUnroll<T, P>::U2>
__device__ __forceinline__ void decode_impl(const DecodeArgs& a) {
    constexpr bool FP8 = DecKv<T>::FP8;
    __shared__ __align__(16) float sc[G][P];  // (aligned: decode_scores_mma stores float2)
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
        // The fp8 kernels' tensor-core path (fp8_mma, uniform over the launch) or the others.
        const bool mma = FP8 && a.fp8_mma != 0;
        const float qs = FP8 ? a.scale_log2 * DEC_FP8_Q_SCALE : a.scale_log2;
        if (FP8 && mma) {
            u32 qm[D / 8];
            decode_q_mma<D, G>(qb, qs, qm);
            if (a.fp8_mma == 4)
                decode_scores_mma<D, G, P, DecUnroll<T, P>::UM4>(a, blk_off, plen, qm, sc);
            else
                decode_scores_mma<D, G, P, DecUnroll<T, P>::UM>(a, blk_off, plen, qm, sc);
        } else {
            // q of this group, pre-scaled into the log2 domain; chunk layout matches
            // decode_scores. Loaded again for each partition a CTA takes (from L2), so that it
            // is not held in registers across the loop (157 registers instead of 128: 3 CTAs an
            // SM instead of 4). The fp8 kernels take it as f16x2 (decode_scores_fp8).
            constexpr int TG = D / 16;
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
            // No barrier here (blk_off was published before): the first K loads may issue while
            // q is still on its way.
            if constexpr (FP8) {
                constexpr int NP = DEC_NP(G);
                u32 qh[G * 8];
#pragma unroll
                for (int i = 0; i < NP; ++i)
#pragma unroll
                    for (int e = 0; e < 16; ++e)
                        qh[16 * i + e] = dec_f32x2_q(q[2 * i][e], q[2 * i + 1][e]);
                if constexpr (DEC_ODD(G))
#pragma unroll
                    for (int e = 0; e < 8; ++e)
                        qh[16 * NP + e] = dec_f32x2_q(q[G - 1][2 * e], q[G - 1][2 * e + 1]);
                decode_scores_fp8<D, G, P, U1>(a, blk_off, plen, qh, sc);
            } else {
                decode_scores<D, G, P, U1>(a, blk_off, plen, q, sc);
            }
        }
        __syncthreads();
        for (int g = warp; g < G; g += DEC_WARPS) {
            float m = NEG_INF;
            for (u32 t = lane; t < plen; t += 32) m = fmaxf(m, sc[g][t]);
            m = warp_max(m);
            float l = 0.f;
            if constexpr (FP8) {
                // Scores times 2^-8 (decode_scores_fp8 / _mma): the 2^8 goes into the
                // subtraction's FFMA (exact) and the max. P.V's weights as f16 times
                // DEC_FP8_P_SCALE: for the f16x2 path into the head's half of the token's pair
                // (both halves for an odd G's last head); for the mma path into row g of
                // [G][DEC_PM_STRIDE(P)], zeros from plen up to the next multiple of 16 (the
                // last 16-token step's padding).
                const float ms = m * DEC_FP8_S_SCALE;
                u32* ph = dec_fp8_probs<G, P>();
                if (mma) {
                    unsigned short* pm =
                        reinterpret_cast<unsigned short*>(ph) + g * DEC_PM_STRIDE(P);
                    const u32 pend = (plen + DEC_MMA_TOK - 1) & ~(u32)(DEC_MMA_TOK - 1);
                    for (u32 t = lane; t < pend; t += 32) {
                        const float e =
                            t < plen ? exp2f(fmaf(sc[g][t], DEC_FP8_S_SCALE, -ms)) : 0.f;
                        pm[t] = dec_f16(e * DEC_FP8_P_SCALE);
                        l += e;
                    }
                } else {
                    for (u32 t = lane; t < plen; t += 32) {
                        const float e = exp2f(fmaf(sc[g][t], DEC_FP8_S_SCALE, -ms));
                        const unsigned short h = dec_f16(e * DEC_FP8_P_SCALE);
                        if (DEC_ODD(G) && g == G - 1)
                            ph[t * DEC_NPS(G) + g / 2] = h * 0x10001u;
                        else
                            reinterpret_cast<unsigned short*>(ph)[t * 2 * DEC_NPS(G) + g] = h;
                        l += e;
                    }
                }
                m = ms;
            } else {
                for (u32 t = lane; t < plen; t += 32) {
                    const float e = exp2f(sc[g][t] - m);
                    sc[g][t] = e;  // P.V's weights
                    l += e;
                }
            }
            l = warp_sum(l);
            if (lane == 0) {
                head_max[g] = m;
                head_sum[g] = l;
            }
        }
        __syncthreads();

        if (FP8 && mma) {
            float o[D / 16][4];
#pragma unroll
            for (int i = 0; i < D / 16; ++i) o[i][0] = o[i][1] = o[i][2] = o[i][3] = 0.f;
            const unsigned short* pm =
                reinterpret_cast<const unsigned short*>(dec_fp8_probs<G, P>());
            if (a.fp8_mma == 4)
                decode_pv_mma<D, G, P, DecUnroll<T, P>::UM4>(a, blk_off, plen, pm, o);
            else
                decode_pv_mma<D, G, P, DecUnroll<T, P>::UM>(a, blk_off, plen, pm, o);
            // Heads 2t, 2t + 1 (those < G) of dims D / 8 * g + 2i, + 2i + 1, times 2^-3.
            const u32 gi = lane >> 2, h0 = 2 * (lane & 3);
#pragma unroll
            for (int i = 0; i < D / 16; ++i) {
                const u32 d = gi * (D / 8) + 2 * i;
                if (h0 < (u32)G)
                    *(float2*)&red[warp][h0][d] = make_float2(o[i][0] * DEC_FP8_PV_UNSCALE,
                                                               o[i][2] * DEC_FP8_PV_UNSCALE);
                if (h0 + 1 < (u32)G)
                    *(float2*)&red[warp][h0 + 1][d] = make_float2(
                        o[i][1] * DEC_FP8_PV_UNSCALE, o[i][3] * DEC_FP8_PV_UNSCALE);
            }
        } else {
            float acc[G][8];
#pragma unroll
            for (int g = 0; g < G; ++g)
#pragma unroll
                for (int e = 0; e < 8; ++e) acc[g][e] = 0.f;
            if constexpr (FP8)
                decode_pv_fp8<D, G, P, U2>(a, blk_off, plen, dec_fp8_probs<G, P>(), acc);
            else
                decode_pv<D, G, P, U2>(a, blk_off, plen, sc, acc);
            if (lane < D / 8)
#pragma unroll
                for (int g = 0; g < G; ++g)
#pragma unroll
                    for (int e = 0; e < 8; ++e) red[warp][g][lane * 8 + e] = acc[g][e];
        }
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
