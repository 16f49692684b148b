// Sampling on the device, one CTA per row: greedy argmax, or temperature + top-k + top-p and a
// Gumbel-max draw from a counter-based hash of (seed, counter, token). No sort: top-k alone and
// top-p use rejection (sample_filtered); with both on, the top-k threshold comes from a bitwise
// binary search over the order-preserving u32 key of the scaled logits (one block-wide count per
// bit). NaN logits count as -inf.
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

// Block-wide argmax of (value, index): larger value wins, ties go to the lower index.
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
    return idx;  // valid in thread 0
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
        if (!greedy) {
            const u64 h = hash3(seed, counter, i);
            const float u = ((float)(h >> 40) + 0.5f) * (1.f / 16777216.f);
            v = z - __logf(-__logf(u));
        }
        if (v > best || best_i == 0xffffffffu) {
            best = v;
            best_i = i;
        }
    }
    const u32 idx = block_argmax(best, best_i, sv, si);
    __syncthreads();
    if (threadIdx.x == 0) si[0] = idx;
    __syncthreads();
    return si[0];
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
    if (!k_on && !p_on) {
        idx = draw(lg, V, inv_t, 0, greedy, seed, counter, sv, si);
    } else {
        // With both on, the top-k set is found exactly first; top-p then works inside it.
        const u32 lo = (k_on && p_on) ? top_k_key(lg, V, inv_t, (u32)k, scratch) : 0;
        idx = sample_filtered(lg, V, inv_t, lo, k, p, !p_on, seed, counter, scratch, sv, si);
    }
    if (threadIdx.x == 0) out[b] = idx == 0xffffffffu ? 0u : idx;
}
