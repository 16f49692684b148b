// Sampling on the device, one CTA per row: greedy argmax, or temperature + top-k + top-p and a
// Gumbel-max draw from a counter-based hash of (seed, counter, token). No sort. Top-k with
// k <= TOPK_MAX (with or without top-p): two passes over the row gather candidates into shared
// memory, the rest works on those (sample_top_k). Otherwise (top-p alone, larger k, or too many
// candidates, e.g. ties at the k-th value): rejection (sample_filtered); with both on, the top-k
// threshold comes from a bitwise binary search over the order-preserving u32 key of the scaled
// logits (one block-wide count per bit). NaN logits count as -inf.
#include "common.cuh"

#define SAMPLE_THREADS 1024

// Order-preserving map f32 -> u32 (larger float, larger key).
__device__ __forceinline__ u32 f2key(float f) {
    const u32 b = __float_as_uint(f);
    return (b & 0x80000000u) ? ~b : (b | 0x80000000u);
}

__device__ __forceinline__ float scaled(const float* lg, u32 i, float inv_t) {
    const float z = lg[i] * inv_t;
    return isnan(z) ? NEG_INF : z;
}

// Gumbel noise -log(-log(u)) of token i, with u uniform in (0, 1) from hash(seed, counter, i).
__device__ __forceinline__ float gumbel(u64 seed, u64 counter, u32 i) {
    const u64 h = hash3(seed, counter, i);
    const float u = ((float)(h >> 40) + 0.5f) * (1.f / 16777216.f);
    return -__logf(-__logf(u));
}

// Block-wide argmax of (value, index): larger value wins, ties go to the lower index. The
// index in every thread.
__device__ __forceinline__ u32 block_argmax(float v, u32 idx, float* sv, u32* si) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) {
        const float ov = __shfl_xor_sync(FULL_MASK, v, o);
        const u32 oi = __shfl_xor_sync(FULL_MASK, idx, o);
        if (ov > v || (ov == v && oi < idx)) {
            v = ov;
            idx = oi;
        }
    }
    __syncthreads();
    if ((threadIdx.x & 31) == 0) {
        sv[threadIdx.x >> 5] = v;
        si[threadIdx.x >> 5] = idx;
    }
    __syncthreads();
    if (threadIdx.x < 32) {
        v = sv[threadIdx.x];
        idx = si[threadIdx.x];
#pragma unroll
        for (int o = 16; o > 0; o >>= 1) {
            const float ov = __shfl_xor_sync(FULL_MASK, v, o);
            const u32 oi = __shfl_xor_sync(FULL_MASK, idx, o);
            if (ov > v || (ov == v && oi < idx)) {
                v = ov;
                idx = oi;
            }
        }
    }
    __syncthreads();
    if (threadIdx.x == 0) si[0] = idx;
    __syncthreads();
    return si[0];
}

// Largest key t with count(key(z_i) >= t) >= k: the key of the k-th largest scaled logit.
__device__ u32 top_k_key(const float* lg, u32 V, float inv_t, u32 k, float* scratch) {
    u32 res = 0;
    for (int bit = 31; bit >= 0; --bit) {
        const u32 cand = res | (1u << bit);
        float cnt = 0.f;
        for (u32 i = threadIdx.x; i < V; i += SAMPLE_THREADS)
            cnt += f2key(scaled(lg, i, inv_t)) >= cand ? 1.f : 0.f;
        if (block_sum<SAMPLE_THREADS>(cnt, scratch) >= (float)k) res = cand;
    }
    return res;
}

// Largest key t >= lo whose kept mass sum(exp(z_i - m) : key >= t) reaches p * (mass at lo).
__device__ u32 top_p_key(const float* lg, u32 V, float inv_t, float m, u32 lo, float p,
                         float* scratch) {
    float total = 0.f;
    for (u32 i = threadIdx.x; i < V; i += SAMPLE_THREADS) {
        const float z = scaled(lg, i, inv_t);
        if (f2key(z) >= lo) total += exp2f((z - m) * LOG2E);
    }
    // The most likely token alone has mass exp(0) = 1: a target of at least 1 keeps it even
    // for p = 0, and changes nothing else (any qualifying set contains it).
    const float target = fmaxf(p * block_sum<SAMPLE_THREADS>(total, scratch), 1.f);
    u32 res = 0;
    for (int bit = 31; bit >= 0; --bit) {
        const u32 cand = max(res | (1u << bit), lo);
        float mass = 0.f;
        for (u32 i = threadIdx.x; i < V; i += SAMPLE_THREADS) {
            const float z = scaled(lg, i, inv_t);
            if (f2key(z) >= cand) mass += exp2f((z - m) * LOG2E);
        }
        if (block_sum<SAMPLE_THREADS>(mass, scratch) >= target) res = res | (1u << bit);
    }
    return max(res, lo);
}

#define SAMPLE_ROUNDS 16
#define ROUND_SEED 0x9e3779b97f4a7c15ULL

// Gumbel-max draw (argmax when greedy) over tokens whose key is >= lo, noise from
// hash(seed, counter, token); the token (or 0xffffffff if none) in every thread.
__device__ u32 draw(const float* lg, u32 V, float inv_t, u32 lo, bool greedy, u64 seed,
                    u64 counter, float* sv, u32* si) {
    float best = NEG_INF;
    u32 best_i = 0xffffffffu;
    for (u32 i = threadIdx.x; i < V; i += SAMPLE_THREADS) {
        const float z = scaled(lg, i, inv_t);
        if (z == NEG_INF || f2key(z) < lo) continue;
        float v = z;
        if (!greedy) v = z + gumbel(seed, counter, i);
        if (v > best || best_i == 0xffffffffu) {
            best = v;
            best_i = i;
        }
    }
    return block_argmax(best, best_i, sv, si);
}

// Count and mass (exp(z - m)) of the tokens whose key is > kx.
__device__ void above(const float* lg, u32 V, float inv_t, float m, u32 kx, float& cnt,
                      float& mass, float* scratch) {
    float c = 0.f, s = 0.f;
    for (u32 i = threadIdx.x; i < V; i += SAMPLE_THREADS) {
        const float z = scaled(lg, i, inv_t);
        if (f2key(z) > kx) {
            c += 1.f;
            s += exp2f((z - m) * LOG2E);
        }
    }
    cnt = block_sum<SAMPLE_THREADS>(c, scratch);
    mass = block_sum<SAMPLE_THREADS>(s, scratch);
}

// Top-k alone or top-p by rejection: draw from the tokens above the last rejected one; accept
// a token x when fewer than k tokens beat it (top-k) or the tokens more likely than x weigh less
// than the top-p target (x is inside the nucleus). The final set is always a subset of what is
// left, so an accepted draw follows the renormalized distribution exactly; usually in one or two
// rounds (three passes each) instead of 32 bisection passes. After SAMPLE_ROUNDS rejections,
// the bisection finds the threshold and a fresh draw is made. `lo`: keys below are out (top-k
// already applied when both are on).
__device__ u32 sample_filtered(const float* lg, u32 V, float inv_t, u32 lo, int k, float p,
                               bool count_k, u64 seed, u64 counter, float* scratch, float* sv,
                               u32* si) {
    float m = NEG_INF, target = 0.f;
    if (!count_k) {
        for (u32 i = threadIdx.x; i < V; i += SAMPLE_THREADS) {
            const float z = scaled(lg, i, inv_t);
            if (f2key(z) >= lo) m = fmaxf(m, z);
        }
        m = block_max<SAMPLE_THREADS>(m, scratch);
        float total = 0.f;
        for (u32 i = threadIdx.x; i < V; i += SAMPLE_THREADS) {
            const float z = scaled(lg, i, inv_t);
            if (f2key(z) >= lo) total += exp2f((z - m) * LOG2E);
        }
        // The most likely token alone has mass exp(0) = 1: a target of at least 1 keeps it
        // even for p = 0, and changes nothing else (any qualifying set contains it).
        target = fmaxf(fmaxf(p, 0.f) * block_sum<SAMPLE_THREADS>(total, scratch), 1.f);
    }
    u32 low = lo;
    for (int r = 0; r < SAMPLE_ROUNDS; ++r) {
        const u32 x = draw(lg, V, inv_t, low, false, seed + r * ROUND_SEED, counter, sv, si);
        if (x == 0xffffffffu) break;
        const u32 kx = f2key(scaled(lg, x, inv_t));
        float cnt, mass;
        above(lg, V, inv_t, m, kx, cnt, mass, scratch);
        if (count_k ? cnt < (float)k : mass < target) return x;
        low = kx + 1;
    }
    const u32 t = count_k ? top_k_key(lg, V, inv_t, (u32)k, scratch)
                          : top_p_key(lg, V, inv_t, m, lo, fmaxf(p, 0.f), scratch);
    return draw(lg, V, inv_t, t, false, seed + SAMPLE_ROUNDS * ROUND_SEED, counter, sv, si);
}

// ---- Top-k (k <= TOPK_MAX) from candidates in shared memory ----
// Pass 1 reads the row once and keeps each thread's 4 largest keys (a pool of 4096 distinct
// tokens); T = the k-th largest pooled key is a lower bound of the k-th largest key of the row
// (k pooled tokens reach it). Pass 2 reads the row again (from L2 at small batch) and gathers
// the finite tokens with key >= T into per-warp segments of shared memory (usually a few more
// than k), in an order fixed by the row alone, so sums over them are reproducible. The exact
// k-th key, the Gumbel-max draw and the top-p rejection rounds then touch only the candidates,
// 4 per thread in registers. A segment that overflows sends the row to sample_filtered.
#define TOPK_MAX 1024
#define CAND_SEG 128                              // candidates per warp
#define CAND_SLOTS (CAND_SEG * SAMPLE_THREADS / 32)  // 4096 = 4 per thread

__device__ __forceinline__ float key2f(u32 k) {
    return __uint_as_float((k & 0x80000000u) ? (k & 0x7fffffffu) : ~k);
}

// Key of x * inv_t, NaN as -inf.
__device__ __forceinline__ u32 zkey(float x, float inv_t) {
    const float z = x * inv_t;
    return f2key(isnan(z) ? NEG_INF : z);
}

// Calls f(i, x) for every i < V of the row, warp-uniformly (every lane takes every iteration;
// `valid` false for lanes past the end). float4 loads, four in flight, when the row is 16-byte
// aligned.
template <typename F>
__device__ __forceinline__ void row_pass(const float* lg, u32 V, F f) {
    const u32 nv = ((reinterpret_cast<size_t>(lg) & 15) == 0) ? V / 4 : 0;
    const float4* lg4 = reinterpret_cast<const float4*>(lg);
    for (u32 base = 0; base < nv; base += 4 * SAMPLE_THREADS) {
        float4 r[4];
#pragma unroll
        for (int u = 0; u < 4; ++u) {
            const u32 v = base + u * SAMPLE_THREADS + threadIdx.x;
            r[u] = v < nv ? __ldg(lg4 + v) : make_float4(0.f, 0.f, 0.f, 0.f);
        }
#pragma unroll
        for (int u = 0; u < 4; ++u) {
            const u32 v = base + u * SAMPLE_THREADS + threadIdx.x;
            const bool ok = v < nv;
            f(4 * v, r[u].x, ok);
            f(4 * v + 1, r[u].y, ok);
            f(4 * v + 2, r[u].z, ok);
            f(4 * v + 3, r[u].w, ok);
        }
    }
    for (u32 base = 4 * nv; base < V; base += SAMPLE_THREADS) {
        const u32 i = base + threadIdx.x;
        const bool ok = i < V;
        f(i, ok ? __ldg(lg + i) : 0.f, ok);
    }
}

// The k-th largest (k >= 1) of the nonzero keys key[0..4) of all threads, by an MSB-first
// radix select with 8-bit digits (warp-aggregated shared atomics; counts, so deterministic);
// 0 if there are fewer than k. `hist`: 256 u32, `bc`: 2 u32. Every thread gets the result.
__device__ u32 select_kth(const u32 (&key)[4], u32 k, u32* hist, u32* bc) {
    const u32 lane = threadIdx.x & 31;
    u32 prefix = 0, pmask = 0;
    for (int shift = 24; shift >= 0; shift -= 8) {
        if (threadIdx.x < 256) hist[threadIdx.x] = 0;
        __syncthreads();
#pragma unroll
        for (int j = 0; j < 4; ++j) {
            const bool act = key[j] != 0 && (key[j] & pmask) == prefix;
            const u32 d = act ? (key[j] >> shift) & 255u : 256u;
            const u32 peers = __match_any_sync(FULL_MASK, d);
            if (act && lane == (u32)(__ffs(peers) - 1)) atomicAdd(&hist[d], __popc(peers));
        }
        __syncthreads();
        if (threadIdx.x < 32) {
            // Lane l holds digits 255 - 8l down to 248 - 8l: a scan from the largest digit.
            u32 s = 0;
#pragma unroll
            for (int j = 0; j < 8; ++j) s += hist[255 - 8 * lane - j];
            u32 incl = s;
#pragma unroll
            for (int o = 1; o < 32; o <<= 1) {
                const u32 t = __shfl_up_sync(FULL_MASK, incl, o);
                if (lane >= (u32)o) incl += t;
            }
            const u32 excl = incl - s;
            if (lane == 31 && incl < k) bc[0] = 0xffffffffu;  // fewer than k keys
            if (excl < k && k <= incl) {
                u32 acc = excl;
#pragma unroll
                for (int j = 0; j < 8; ++j) {
                    const u32 c = hist[255 - 8 * lane - j];
                    if (acc < k && k <= acc + c) {
                        bc[0] = 255 - 8 * lane - j;
                        bc[1] = k - acc;
                    }
                    acc += c;
                }
            }
        }
        __syncthreads();
        const u32 d = bc[0];
        if (d == 0xffffffffu) return 0;  // uniform: only possible in the first round
        prefix |= d << shift;
        pmask |= 255u << shift;
        k = bc[1];
    }
    return prefix;
}

// Gumbel-max draw among the candidates (ck, ci) with key >= lo; token or 0xffffffff, in every
// thread.
__device__ u32 cand_draw(const u32 (&ck)[4], const u32 (&ci)[4], u32 lo, u64 seed, u64 counter,
                         float* sv, u32* si) {
    float best = NEG_INF;
    u32 best_i = 0xffffffffu;
#pragma unroll
    for (int j = 0; j < 4; ++j) {
        if (ck[j] == 0 || ck[j] < lo) continue;
        const u32 i = ci[j];
        const float v = key2f(ck[j]) + gumbel(seed, counter, i);
        if (best_i == 0xffffffffu || v > best || (v == best && i < best_i)) {
            best = v;
            best_i = i;
        }
    }
    return block_argmax(best, best_i, sv, si);
}

// Mass sum(exp(z - m)) of the candidates with key >= lo.
__device__ __forceinline__ float cand_mass(const u32 (&ck)[4], u32 lo, float m, float* scratch) {
    float s = 0.f;
#pragma unroll
    for (int j = 0; j < 4; ++j)
        if (ck[j] != 0 && ck[j] >= lo) s += exp2f((key2f(ck[j]) - m) * LOG2E);
    return block_sum<SAMPLE_THREADS>(s, scratch);
}

struct CandSmem {
    u32 key[CAND_SLOTS];
    u32 idx[CAND_SLOTS];
    u32 hist[256];
    u32 bc[2];
    u32 overflow;
};

// Top-k (1 <= k <= TOPK_MAX, k < V), then top-p when p < 1. Returns false (every thread) when
// the candidates do not fit: the caller then takes the general path.
//
// With p_only (top-p alone, k = TOPK_MAX): the candidates are the tokens at or above a lower
// bound of the k-th largest key, i.e. a prefix of the row in descending order, and the nucleus
// (the shortest such prefix holding p of the row's whole softmax mass) lies inside them
// whenever their mass reaches p times the row's. Pass 1 then also sums the row's mass (online
// max and sum per thread), and the rejection rounds run on the candidates with that target;
// the draw is the same as over the whole row (the accepted set is the nucleus either way).
// Where they hold less (a flat distribution: random logits, a high temperature), it returns
// false after pass 1 and the row takes the general path. Real models' next-token
// distributions put nearly all their mass in far fewer than 1,024 tokens.
__device__ bool sample_top_k(const float* lg, u32 V, float inv_t, u32 k, bool p_only,
                             const float* top_p, const u64* seeds, const u64* counters,
                             CandSmem& sm, float* scratch, float* sv, u32* si, u32& out) {
    // Pass 1: the 4 largest keys of this thread's tokens (0 = none); for p_only also the max
    // and the mass sum(exp(z - max)) of its finite tokens.
    u32 pool[4] = {0, 0, 0, 0};
    float om = NEG_INF, os = 0.f;
    row_pass(lg, V, [&](u32, float x, bool ok) {
        u32 t = ok ? zkey(x, inv_t) : 0u;
#pragma unroll
        for (int j = 0; j < 3; ++j) {
            const u32 a = max(pool[j], t);
            t = min(pool[j], t);
            pool[j] = a;
        }
        pool[3] = max(pool[3], t);
        if (p_only && ok) {
            const float z = x * inv_t;
            if (z > om) {  // false for NaN and -inf: they weigh nothing
                os = os * exp2f((om - z) * LOG2E) + 1.f;
                om = z;
            } else if (z > NEG_INF) {
                os += exp2f((z - om) * LOG2E);
            }
        }
    });
    if (threadIdx.x == 0) sm.overflow = 0;
    u32 T = select_kth(pool, k, sm.hist, sm.bc);
    if (T == 0) T = 1;  // fewer than k pooled (tiny V): every token is a candidate
    // p_only: the row's max M and mass, and the target p * mass. The pooled tokens at or above
    // T are candidates, so when their mass reaches the target the nucleus is inside the
    // candidates; when it does not (a flat row) the row goes to the general path now, before
    // the second pass. (Candidates outside the pool could still make up the difference; those
    // rare rows take the general path too, which is exact as well.)
    float row_target = 0.f;
    if (p_only) {
        const float M = block_max<SAMPLE_THREADS>(om, scratch);
        if (M == NEG_INF) return false;  // no finite token: the general path says so
        const float row =
            block_sum<SAMPLE_THREADS>(om > NEG_INF ? os * exp2f((om - M) * LOG2E) : 0.f, scratch);
        row_target = fmaxf(fmaxf(top_p[blockIdx.x], 0.f) * row, 1.f);
        float pooled = 0.f;
#pragma unroll
        for (int j = 0; j < 4; ++j)
            if (pool[j] != 0 && pool[j] >= T) pooled += exp2f((key2f(pool[j]) - M) * LOG2E);
        if (block_sum<SAMPLE_THREADS>(pooled, scratch) < row_target) return false;
    }
    // Pass 2: gather the finite tokens with key >= T, per warp in token order.
    const u32 lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const u32 lt = (1u << lane) - 1u;
    u32 n = 0;  // this warp's count, warp-uniform
    u32* wk = sm.key + warp * CAND_SEG;
    u32* wi = sm.idx + warp * CAND_SEG;
    const u32 kinf = f2key(NEG_INF);
    row_pass(lg, V, [&](u32 i, float x, bool ok) {
        const u32 key = ok ? zkey(x, inv_t) : 0u;
        const bool take = ok && key >= T && key != kinf;
        const u32 bal = __ballot_sync(FULL_MASK, take);
        if (bal) {
            const u32 pos = n + __popc(bal & lt);
            if (take && pos < CAND_SEG) {
                wk[pos] = key;
                wi[pos] = i;
            }
            n += __popc(bal);
        }
    });
    if (lane == 0 && n > CAND_SEG) sm.overflow = 1;
    // Every thread takes slots lane, lane + 32, ... of its warp's segment into registers.
    u32 ck[4], ci[4];
    __syncwarp();
#pragma unroll
    for (int j = 0; j < 4; ++j) {
        const u32 s = lane + 32 * j;
        ck[j] = s < n ? wk[s] : 0u;
        ci[j] = s < n ? wi[s] : 0u;
    }
    __syncthreads();
    if (sm.overflow) return false;
    // The exact k-th largest key (all kept when fewer than k finite candidates); for p_only
    // every candidate stays (no top-k cut).
    u32 tk = p_only ? 0u : select_kth(ck, k, sm.hist, sm.bc);
    if (tk == 0) tk = 1;
    const u64 seed = seeds[blockIdx.x], counter = counters[blockIdx.x];
    const float p = top_p[blockIdx.x];
    if (!(p < 1.f)) {
        out = cand_draw(ck, ci, tk, seed, counter, sv, si);
        return true;
    }
    // Top-p inside the top-k set, by rejection as in sample_filtered (see there).
    float m = NEG_INF;
#pragma unroll
    for (int j = 0; j < 4; ++j)
        if (ck[j] != 0) m = fmaxf(m, key2f(ck[j]));
    m = block_max<SAMPLE_THREADS>(m, scratch);
    if (m == NEG_INF) {  // no finite token
        out = 0xffffffffu;
        return true;
    }
    // Top-k's target is p times the top-k set's mass; top-p alone's, p times the row's (m is
    // the row's max M: the largest candidate is the row's largest token).
    const float target =
        p_only ? row_target : fmaxf(fmaxf(p, 0.f) * cand_mass(ck, tk, m, scratch), 1.f);
    u32 low = tk;
    for (int r = 0; r < SAMPLE_ROUNDS; ++r) {
        const u32 x = cand_draw(ck, ci, low, seed + r * ROUND_SEED, counter, sv, si);
        if (x == 0xffffffffu) break;
        const u32 kx = f2key(scaled(lg, x, inv_t));
        if (cand_mass(ck, kx + 1, m, scratch) < target) {
            out = x;
            return true;
        }
        low = kx + 1;
    }
    // Bisection for the largest key t >= tk whose kept mass reaches the target.
    u32 res = 0;
    for (int bit = 31; bit >= 0; --bit) {
        const u32 cand = max(res | (1u << bit), tk);
        if (cand_mass(ck, cand, m, scratch) >= target) res |= 1u << bit;
    }
    out = cand_draw(ck, ci, max(res, tk), seed + SAMPLE_ROUNDS * ROUND_SEED, counter, sv, si);
    return true;
}

// No minimum of 2 CTAs an SM: that capped the kernel at 32 registers and made it spill 44 B,
// and top-p alone ran 7-13% slower for it (H100, attn_bench, 2026-11-26: top-p 0.9 at batch
// 1 / 128 90.0 / 283.5 us against 96.7 / 326.0; top-k 50 + top-p 0.9 60.6 against 63.9 us at
// 128; greedy, temperature and top-k alone within 1 us).
extern "C" __global__ void __launch_bounds__(SAMPLE_THREADS)
    sample_kernel(u32* __restrict__ out, const float* __restrict__ logits,
                  const float* __restrict__ temperature, const int* __restrict__ top_k,
                  const float* __restrict__ top_p, const u64* __restrict__ seeds,
                  const u64* __restrict__ counters, u32 V) {
    pdl_enter();
    __shared__ float scratch[32];
    __shared__ float sv[32];
    __shared__ u32 si[32];
    const u32 b = blockIdx.x;
    const float* lg = logits + (u64)b * V;
    const float t = temperature[b];
    const bool greedy = !(t >= 1e-5f);  // NaN temperature: greedy too
    const float inv_t = greedy ? 1.f : 1.f / t;
    const u64 seed = seeds[b], counter = counters[b];
    const int k = top_k[b];
    const float p = top_p[b];
    const bool k_on = !greedy && k > 0 && (u32)k < V, p_on = !greedy && p < 1.f;
    u32 idx;
    __shared__ CandSmem cand;
    if (!k_on && !p_on) {
        idx = draw(lg, V, inv_t, 0, greedy, seed, counter, sv, si);
    } else if (!(k_on && k <= TOPK_MAX &&
                 sample_top_k(lg, V, inv_t, (u32)k, false, top_p, seeds, counters, cand,
                              scratch, sv, si, idx)) &&
               !(!k_on && sample_top_k(lg, V, inv_t, TOPK_MAX, true, top_p, seeds, counters,
                                       cand, scratch, sv, si, idx))) {
        // With both on, the top-k set is found exactly first; top-p then works inside it.
        const u32 lo = (k_on && p_on) ? top_k_key(lg, V, inv_t, (u32)k, scratch) : 0;
        idx = sample_filtered(lg, V, inv_t, lo, k, p, !p_on, seed, counter, scratch, sv, si);
    }
    if (threadIdx.x == 0) out[b] = idx == 0xffffffffu ? 0u : idx;
}

// Overlapped steps: tokens[feeds[2i]] = draws[feeds[2i + 1]] for i < n. A step launched before
// the host has read the last step's draws gets them here, on the device, before its embedding
// reads `tokens`. Indices out of either buffer are skipped (the host checks them too).
extern "C" __global__ void feed_tokens_kernel(u32* __restrict__ tokens, u32 num_tokens,
                                              const u32* __restrict__ draws, u32 num_draws,
                                              const u32* __restrict__ feeds, u32 n) {
    const u32 i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    const u32 row = feeds[2 * i], k = feeds[2 * i + 1];
    if (row < num_tokens && k < num_draws) tokens[row] = draws[k];
}
