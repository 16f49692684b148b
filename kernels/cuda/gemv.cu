// Skinny matrix products for decode steps: y[m, n] = sum_k x[m, k] * w[n, k] for M <= 32 rows
// of x. Memory-bound: every weight is read once with 16-byte streaming loads. Two kernels:
//
// 1 row: one warp per output column, four 16-byte loads in flight per lane (91% of copy
// bandwidth on an H100); x (a few KB) is read through the cache by every warp.
//
// 1-32 rows: tensor cores (mma.sync m16n8k16), 16 or 32 output columns a CTA, K split over its 8
// warps (17-32 rows with x staged through shared memory, below). The one-warp-per-column kernel re-reads all of x for every column (M 16-byte loads per
// weight load: L1-bound from ~4 rows); here a warp's x load serves 16 or 32 columns. A first
// tensor-core version (commit 0be6ffb) loaded weights straight in the mma fragment layout: each
// load instruction then touched 8 rows x 64 bytes, half of each 128-byte line, and it reached only
// 77% of copy bandwidth. Here every weight load instruction reads 4 whole 128-byte lines (8 lanes
// per row) and one exchange of half the registers with lane ^ 4 (8 shuffles per 64 bytes a lane)
// puts them in fragment layout; no shared memory, no barriers in the loop.
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
    const bool valid = n < N;
    const uint4* wr = (const uint4*)(w + (u64)(valid ? n : 0) * K);
    const uint4* xr = (const uint4*)x;
    const u32 chunks = K / 8;
    float acc[M];
#pragma unroll
    for (int m = 0; m < M; m++) acc[m] = 0.f;
    u32 c = lane;
    // Before waiting for x (PDL, common.cuh): this warp's first weights, into L2. They are
    // constant, so fetching them overlaps the end of the kernel that writes x (prefetches, not
    // loads, so no registers are held across the wait).
    if (valid && c + 96 < chunks) {
#pragma unroll
        for (int u = 0; u < 4; u++) prefetch_l2(wr + c + 32 * u);
    }
    pdl_enter();
    if (!valid) return;
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

// ---- 1-16 rows: tensor cores, x in registers ----
//
// A CTA computes 16 * TN output columns (TN = 1 or 2 tiles of 16 weight rows) for all M rows;
// its 8 warps take the 64-wide K steps warp, warp + 8, ... (so a CTA reads 1 KB contiguous of
// each weight row per round) and meet in shared memory at the end.
//
// One step of one tile is 16 weight rows x 64 k = 16 x 128 bytes. Lane l (q = l / 8, p = l % 8)
// loads 16-byte chunk p of rows 4q + j, j = 0..3: one load instruction per j, each reading 4
// whole lines. The mma A fragment wants lane (g = l / 4, t = l % 4) to hold rows g and g + 8 of
// the tile: we let fragment row g be weight row 2g and fragment row g + 8 be row 2g + 1 (g = 2q
// + h with h = (l / 4) % 2, so those are rows 4q + 2h and 4q + 2h + 1), and lanes l and l ^ 4
// (same q, h flipped, chunks p and p ^ 4) swap two of their four loads: then lane (g, t) holds
// chunks t and t + 4 of both its rows. The sum over k is order-free, so the 8 k-pairs of those two
// chunks are the logical k-pairs {2t, 2t + 8} of four k16 mma steps, as long as x uses the same
// map: lane (g, t) loads chunks t and t + 4 of x row g (B fragment: column g = x row g).

#define MMA_WARPS 8

struct Chunks2 {
    uint4 lo, hi;  // 16-byte chunks t and t + 4 of a 64-k step
};

__device__ __forceinline__ uint4 shfl_xor4(const uint4 v, int mask) {
    return make_uint4(__shfl_xor_sync(FULL_MASK, v.x, mask), __shfl_xor_sync(FULL_MASK, v.y, mask),
                      __shfl_xor_sync(FULL_MASK, v.z, mask), __shfl_xor_sync(FULL_MASK, v.w, mask));
}

__device__ __forceinline__ uint4 sel4(bool c, const uint4 a, const uint4 b) {
    return make_uint4(c ? a.x : b.x, c ? a.y : b.y, c ? a.z : b.z, c ? a.w : b.w);
}

// The A fragments of one 64-k step of one 16-row tile from v[j] = chunk p of row 4q + j (as
// loaded): aw / bw = fragment rows g (weight row 2g) / g + 8 (2g + 1), chunks t and t + 4.
__device__ __forceinline__ void mma_frags(const uint4 (&v)[4], bool h, u32 (&aw)[8],
                                          u32 (&bw)[8]) {
    // Partner l ^ 4 needs rows 4q + 2(1 - h) and 4q + 2(1 - h) + 1 of chunk p: my v[2(1 - h)], v[...+1].
    const uint4 r0 = shfl_xor4(sel4(h, v[0], v[2]), 4);
    const uint4 r1 = shfl_xor4(sel4(h, v[1], v[3]), 4);
    // My chunk p is t + 4h; the partner's (received) is t + 4(1 - h).
    Chunks2 a, b;  // fragment rows g (weight row 2g) and g + 8 (2g + 1)
    a.lo = sel4(h, r0, v[0]);
    a.hi = sel4(h, v[2], r0);
    b.lo = sel4(h, r1, v[1]);
    b.hi = sel4(h, v[3], r1);
    aw[0] = a.lo.x, aw[1] = a.lo.y, aw[2] = a.lo.z, aw[3] = a.lo.w;
    aw[4] = a.hi.x, aw[5] = a.hi.y, aw[6] = a.hi.z, aw[7] = a.hi.w;
    bw[0] = b.lo.x, bw[1] = b.lo.y, bw[2] = b.lo.z, bw[3] = b.lo.w;
    bw[4] = b.hi.x, bw[5] = b.hi.y, bw[6] = b.hi.z, bw[7] = b.hi.w;
}

// One 64-k step of one 16-row tile: v[j] = chunk p of row 4q + j (as loaded) times the x chunks
// of MT 8-row tiles, into acc[MT][4].
template <int MT>
__device__ __forceinline__ void mma_step(float (&acc)[MT][4], const uint4 (&v)[4],
                                         const Chunks2 (&xv)[MT], bool h) {
    u32 aw[8], bw[8];
    mma_frags(v, h, aw, bw);
#pragma unroll
    for (int i = 0; i < 4; i++) {
        const u32 frag[4] = {aw[2 * i], bw[2 * i], aw[2 * i + 1], bw[2 * i + 1]};
#pragma unroll
        for (int mt = 0; mt < MT; mt++) {
            const u32 xw[8] = {xv[mt].lo.x, xv[mt].lo.y, xv[mt].lo.z, xv[mt].lo.w,
                               xv[mt].hi.x, xv[mt].hi.y, xv[mt].hi.z, xv[mt].hi.w};
            mma_bf16(acc[mt], frag, xw[2 * i], xw[2 * i + 1]);
        }
    }
}

// ---- Fused epilogues (tensor-core kernels, bf16 out) ----
//
// The small kernels between a decode step's GEMVs cost more than their bytes: each is a few
// microseconds of latency on the step's critical path. EPI_ROPE_KV runs RoPE + KV write at the
// end of the QKV projection instead, on the f32 sums before any bf16 rounding: RoPE on q and k
// (interleaved pairs (2i, 2i + 1): both columns of a pair always land in one CTA) and the write
// of k and v into the paged cache, as rope_kv_write_kernel (rope.cu) does. Measured on H100s
// (cuda_bench, 2026-11-26, PAGEDSERVE_CUDA_FUSE=0 against 1, one binary, three rounds on three
// machines): nothing measurable at 1-2 sequences, 0.7-1.2% faster at 4-32 in the last round
// (within +-0.5% at 1-16 and 0.6-1.8% at 32 in the first two). SiLU*mul could go into the
// gate/up GEMV the same way (with gate and up rows interleaved at load, and the cuBLAS path's
// kernel reading pairs); with gains of that size it was written, tested and left out.
// The residual add + RMSNorm after o_proj and down was tried the same way (the last CTA to
// finish, found with a counter as decode attention combines, adding the delta to the residual
// and writing the norm): every step got slower, batch 1 5.89 against 5.69 ms and batch 8 7.97
// against 6.15 (H100, cuda_bench, 2026-11-26). One CTA doing a whole row after the GEMV is a
// longer chain than the norm kernel's 1,024 threads, and every CTA paid the fence and atomic.
#define EPI_NONE 0
#define EPI_ROPE_KV 1

struct GemvEpi {
    // EPI_ROPE_KV: caches [num_blocks, KVH, block_size, D]; tables [max_pos, rope_half].
    bf16* kc;
    bf16* vc;
    const u32* pos;
    const u32* slots;
    const float* cos_t;
    const float* sin_t;
    u64 num_slots;
    u32 H, KVH, D, rope_half, block_size, max_pos;
};

// What the RoPE epilogue needs besides the sums, read into shared memory before the kernel
// waits for x (PDL): positions, slots and tables are step metadata and constants, so this
// takes the epilogue's two dependent loads (position, then table) off the end of the GEMV.
// Without it the fused kernel was slower than GEMV + rope kernel at 1-2 rows (H100, 2026-11-26).
#define STAGE_ROWS 32   // GEMV_MAX_ROWS
#define STAGE_PAIRS 16  // column pairs of a 32-column CTA
struct RopeStage {
    float c[STAGE_ROWS][STAGE_PAIRS], s[STAGE_ROWS][STAGE_PAIRS];
    u32 slot[STAGE_ROWS];
};

// The epilogue's arguments and its shared staging area (null without an epilogue).
struct EpiRef {
    const GemvEpi* ep;
    RopeStage* st;
};

template <int EPI, int TN>
__device__ __forceinline__ void epi_stage(const EpiRef& e, u32 n0, u32 N, u32 M) {
    if constexpr (EPI == EPI_ROPE_KV) {
        const GemvEpi& ep = *e.ep;
        constexpr u32 PAIRS = 8 * TN;
        for (u32 i = threadIdx.x; i < M * PAIRS; i += MMA_WARPS * 32) {
            const u32 m = i / PAIRS, jj = i % PAIRS, n = n0 + 2 * jj;
            const u32 head = n / ep.D, j = (n % ep.D) / 2;
            float c = 1.f, sn = 0.f;
            if (n < N && head < ep.H + ep.KVH && j < ep.rope_half) {
                const u64 at = (u64)min(ep.pos[m], ep.max_pos - 1) * ep.rope_half + j;
                c = ep.cos_t[at];
                sn = ep.sin_t[at];
            }
            e.st->c[m][jj] = c;
            e.st->s[m][jj] = sn;
        }
        for (u32 m = threadIdx.x; m < M; m += MMA_WARPS * 32) e.st->slot[m] = ep.slots[m];
    }
}

// Columns n, n + 1 (n even) of row m, summed in f32: the pair's outputs. The tables and slot
// come from the stage (epi_stage, published by the barrier before the epilogue).
template <int EPI>
__device__ __forceinline__ void epi_pair(const EpiRef& e, bf16* __restrict__ y, u32 n0, u32 m,
                                         u32 n, u32 N, float v0, float v1) {
    const GemvEpi& ep = *e.ep;
    if constexpr (EPI == EPI_ROPE_KV) {
        const u32 head = n / ep.D, j = (n % ep.D) / 2;
        if (head < ep.H + ep.KVH && j < ep.rope_half) {
            const float c = e.st->c[m][(n - n0) / 2], s = e.st->s[m][(n - n0) / 2];
            const float r0 = v0 * c - v1 * s;
            v1 = v0 * s + v1 * c;
            v0 = r0;
        }
        const bf162 r = __floats2bfloat162_rn(v0, v1);
        *(bf162*)(y + (u64)m * N + n) = r;
        const u32 slot = e.st->slot[m];
        if (head >= ep.H && (u64)slot < ep.num_slots) {
            const bool v = head >= ep.H + ep.KVH;
            const u32 kvh = head - ep.H - (v ? ep.KVH : 0);
            const u64 blk = slot / ep.block_size, off = slot % ep.block_size;
            bf16* cache = v ? ep.vc : ep.kc;
            *(bf162*)(cache + ((blk * ep.KVH + kvh) * ep.block_size + off) * ep.D + n % ep.D) = r;
        }
    }
}

// The end of both tensor-core kernels: each warp's partial D fragments go to shared memory
// (red[warp][tn][mt][i][lane], MMA_WARPS * TN * MT * 128 floats), are summed in warp order and
// stored. D fragment element i of lane l: fragment row g = l / 4 (+ 8 for i >= 2), i.e. weight
// row 2g (+ 1), and x row 2t + i % 2 of its 8-row tile (t = l % 4).
template <int MT, int TN, typename OUT, int EPI = EPI_NONE>
__device__ __forceinline__ void gemv_mma_store(float* red, const float (&acc)[TN][MT][4],
                                               OUT* __restrict__ y, u32 n0, u32 N, u32 M,
                                               const EpiRef e = {}) {
    const u32 lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    constexpr u32 PER_WARP = TN * MT * 128;
#pragma unroll
    for (int tn = 0; tn < TN; tn++)
#pragma unroll
        for (int mt = 0; mt < MT; mt++)
#pragma unroll
            for (int i = 0; i < 4; i++)
                red[warp * PER_WARP + ((tn * MT + mt) * 4 + i) * 32 + lane] = acc[tn][mt][i];
    __syncthreads();
    if constexpr (EPI == EPI_NONE) {
        for (u32 e = threadIdx.x; e < PER_WARP; e += MMA_WARPS * 32) {
            float v = 0.f;
#pragma unroll
            for (int wi = 0; wi < MMA_WARPS; wi++) v += red[wi * PER_WARP + e];
            const u32 l = e & 31, i = (e >> 5) & 3, tile = e >> 7;
            const u32 n = n0 + 16 * (tile / MT) + 2 * (l >> 2) + (i >> 1);
            const u32 m = 8 * (tile % MT) + 2 * (l & 3) + (i & 1);
            if (n < N && m < M) store_out(y + (u64)m * N + n, v);
        }
    } else {
        // Column pairs (n even, n + 1): element e (i < 2) and e + 64 (i + 2) of one lane and
        // tile. N is even (checked by the wrappers).
        for (u32 pe = threadIdx.x; pe < PER_WARP / 2; pe += MMA_WARPS * 32) {
            const u32 el = ((pe >> 6) << 7) | (pe & 63);
            float v0 = 0.f, v1 = 0.f;
#pragma unroll
            for (int wi = 0; wi < MMA_WARPS; wi++) {
                v0 += red[wi * PER_WARP + el];
                v1 += red[wi * PER_WARP + el + 64];
            }
            const u32 l = el & 31, i = (el >> 5) & 1, tile = el >> 7;
            const u32 n = n0 + 16 * (tile / MT) + 2 * (l >> 2);
            const u32 m = 8 * (tile % MT) + 2 * (l & 3) + i;
            if (n < N && m < M) epi_pair<EPI>(e, y, n0, m, n, N, v0, v1);
        }
    }
}

// K % 8 == 0 (checked by the wrapper); 1 <= M <= 8 * MT. `red` holds MMA_WARPS * 2 * MT * 128
// floats.
template <int MT, int TN, typename OUT, int EPI = EPI_NONE>
__device__ __forceinline__ void gemv_mma_body(float* red, OUT* __restrict__ y,
                                              const bf16* __restrict__ x,
                                              const bf16* __restrict__ w, u32 N, u32 K, u32 M,
                                              const EpiRef e = {}) {
    // Steps a warp loads before it multiplies: 8 weight loads in flight per lane either way.
    constexpr int U = 2 / TN;
    const u32 lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const u32 q = lane >> 3, p = lane & 7, g = lane >> 2, t = lane & 3;
    const bool h = (g & 1) != 0;
    const u32 chunks = K >> 3;            // 16-byte chunks per row
    const u32 steps = (chunks + 7) >> 3;  // 64-k steps; all but the last are whole
    const u32 whole = chunks >> 3;
    const u32 n0 = blockIdx.x * (16 * TN);
    const uint4* wb = (const uint4*)w + (u64)n0 * chunks;
    // Chunk offsets from wb of the rows this lane loads (rows past N read row N - 1, unused).
    u32 woff[TN][4];
#pragma unroll
    for (int tn = 0; tn < TN; tn++)
#pragma unroll
        for (int j = 0; j < 4; j++) woff[tn][j] = (min(n0 + 16 * tn + 4 * q + j, N - 1) - n0) * chunks + p;
    const uint4* xb = (const uint4*)x;
    u32 xoff[MT];
    bool xok[MT];
#pragma unroll
    for (int mt = 0; mt < MT; mt++) {
        const u32 m = 8 * mt + g;
        xok[mt] = m < M;
        xoff[mt] = (xok[mt] ? m : 0) * chunks + t;
    }
    float acc[TN][MT][4];
#pragma unroll
    for (int tn = 0; tn < TN; tn++)
#pragma unroll
        for (int mt = 0; mt < MT; mt++)
#pragma unroll
            for (int i = 0; i < 4; i++) acc[tn][mt][i] = 0.f;
    const uint4 zero = make_uint4(0, 0, 0, 0);

    u32 s = warp;
    // Before waiting for x (PDL, common.cuh): the weights of this warp's first round, into L2.
    // They are constant, so fetching them overlaps the end of the kernel that writes x.
    if (s + (U - 1) * MMA_WARPS < whole) {
#pragma unroll
        for (int u = 0; u < U; u++)
#pragma unroll
            for (int tn = 0; tn < TN; tn++)
#pragma unroll
                for (int j = 0; j < 4; j++)
                    prefetch_l2(wb + woff[tn][j] + 8 * (s + u * MMA_WARPS));
    }
    epi_stage<EPI, TN>(e, n0, N, M);
    pdl_enter();
    // Whole steps, U at a time: all loads first (8 weight, 2 * U * MT x loads a lane), then mma.
    for (; s + (U - 1) * MMA_WARPS < whole; s += U * MMA_WARPS) {
        uint4 v[U][TN][4];
        Chunks2 xv[U][MT];
#pragma unroll
        for (int u = 0; u < U; u++)
#pragma unroll
            for (int tn = 0; tn < TN; tn++)
#pragma unroll
                for (int j = 0; j < 4; j++)
                    v[u][tn][j] = __ldcs(wb + woff[tn][j] + 8 * (s + u * MMA_WARPS));
#pragma unroll
        for (int u = 0; u < U; u++)
#pragma unroll
            for (int mt = 0; mt < MT; mt++) {
                const uint4* xp = xb + xoff[mt] + 8 * (s + u * MMA_WARPS);
                xv[u][mt].lo = xok[mt] ? __ldg(xp) : zero;
                xv[u][mt].hi = xok[mt] ? __ldg(xp + 4) : zero;
            }
#pragma unroll
        for (int u = 0; u < U; u++)
#pragma unroll
            for (int tn = 0; tn < TN; tn++) mma_step<MT>(acc[tn], v[u][tn], xv[u], h);
    }
    // The rest one step at a time; the last step may be partial (chunks past K read as zero).
    for (; s < steps; s += MMA_WARPS) {
        const u32 c0 = 8 * s;
        uint4 v[TN][4];
        Chunks2 xv[MT];
#pragma unroll
        for (int tn = 0; tn < TN; tn++)
#pragma unroll
            for (int j = 0; j < 4; j++)
                v[tn][j] = c0 + p < chunks ? __ldcs(wb + woff[tn][j] + c0) : zero;
#pragma unroll
        for (int mt = 0; mt < MT; mt++) {
            const uint4* xp = xb + xoff[mt] + c0;
            xv[mt].lo = xok[mt] && c0 + t < chunks ? __ldg(xp) : zero;
            xv[mt].hi = xok[mt] && c0 + t + 4 < chunks ? __ldg(xp + 4) : zero;
        }
#pragma unroll
        for (int tn = 0; tn < TN; tn++) mma_step<MT>(acc[tn], v[tn], xv, h);
    }

    gemv_mma_store<MT, TN, OUT, EPI>(red, acc, y, n0, N, M, e);
}

// ---- 17-32 rows: x through shared memory ----
//
// MT = 3 or 4 tiles of x (24 or 32 rows). The same tiles, fragments and warp split as above, but
// a 64-k step of x (MT * 8 rows x 128 bytes, as much as 1-2 tiles of weights) would take 8 * MT
// registers a lane next to the weights in flight: 146-198 registers for MT = 4 (1 block, 8 warps
// an SM). Instead each lane copies its own x chunks (chunks t and t + 4 of row 8 mt + g: the
// same ones it reads back, so only cp.async.wait_group orders them, no barrier) into a slot of
// shared memory with cp.async while its weight loads are in flight, and reads them back one
// 8-row tile at a time inside the mma loop. One step (U = 1) a round: 4 (16 columns a CTA) or 8
// (32 columns) weight loads in flight a lane; the x slots (MT KB a warp) then hold the partial
// sums (TN * MT * 512 bytes a warp) at the end.

__device__ __forceinline__ void gemv_cp_async16(u32 dst, const void* src) {
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16;\n" ::"r"(dst), "l"(src) : "memory");
}

// One 64-k step of one 16-row tile as mma_step, x from this lane's slots: xl[(2 mt + half) * 32]
// = chunk t + 4 half of x row 8 mt + g.
template <int MT>
__device__ __forceinline__ void mma_step_xs(float (&acc)[MT][4], const uint4 (&v)[4],
                                            const uint4* xl, bool h) {
    u32 aw[8], bw[8];
    mma_frags(v, h, aw, bw);
#pragma unroll
    for (int mt = 0; mt < MT; mt++) {
        const uint4 lo = xl[(2 * mt) * 32], hi = xl[(2 * mt + 1) * 32];
        const u32 xw[8] = {lo.x, lo.y, lo.z, lo.w, hi.x, hi.y, hi.z, hi.w};
#pragma unroll
        for (int i = 0; i < 4; i++) {
            const u32 frag[4] = {aw[2 * i], bw[2 * i], aw[2 * i + 1], bw[2 * i + 1]};
            mma_bf16(acc[mt], frag, xw[2 * i], xw[2 * i + 1]);
        }
    }
}

// K % 8 == 0 (checked by the wrapper); 1 <= M <= 8 * MT. `xs` holds MMA_WARPS * MT * 64 uint4
// (MT KB a warp).
template <int MT, int TN, typename OUT, int EPI = EPI_NONE>
__device__ __forceinline__ void gemv_mma_xs_body(uint4* xs, OUT* __restrict__ y,
                                                 const bf16* __restrict__ x,
                                                 const bf16* __restrict__ w, u32 N, u32 K,
                                                 u32 M, const EpiRef e = {}) {
    const u32 lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const u32 q = lane >> 3, p = lane & 7, g = lane >> 2, t = lane & 3;
    const bool h = (g & 1) != 0;
    const u32 chunks = K >> 3;            // 16-byte chunks per row
    const u32 steps = (chunks + 7) >> 3;  // 64-k steps; all but the last are whole
    const u32 whole = chunks >> 3;
    const u32 n0 = blockIdx.x * (16 * TN);
    const uint4* wb = (const uint4*)w + (u64)n0 * chunks;
    // Chunk offsets from wb of the rows this lane loads (rows past N read row N - 1, unused).
    u32 woff[TN][4];
#pragma unroll
    for (int tn = 0; tn < TN; tn++)
#pragma unroll
        for (int j = 0; j < 4; j++) woff[tn][j] = (min(n0 + 16 * tn + 4 * q + j, N - 1) - n0) * chunks + p;
    // x rows past M read row 0: they only feed D columns (x rows) that are never stored.
    const uint4* xb = (const uint4*)x;
    u32 xoff[MT];
#pragma unroll
    for (int mt = 0; mt < MT; mt++) {
        const u32 m = 8 * mt + g;
        xoff[mt] = (m < M ? m : 0) * chunks + t;
    }
    // This lane's x slots: xl[(2 mt + half) * 32], chunk t + 4 half of x row 8 mt + g.
    uint4* xl = xs + warp * (MT * 64) + lane;
    const u32 xl_s = (u32)__cvta_generic_to_shared(xl);
    float acc[TN][MT][4];
#pragma unroll
    for (int tn = 0; tn < TN; tn++)
#pragma unroll
        for (int mt = 0; mt < MT; mt++)
#pragma unroll
            for (int i = 0; i < 4; i++) acc[tn][mt][i] = 0.f;
    const uint4 zero = make_uint4(0, 0, 0, 0);

    u32 s = warp;
    // Before waiting for x (PDL, common.cuh): the weights of this warp's first step, into L2.
    if (s < whole) {
#pragma unroll
        for (int tn = 0; tn < TN; tn++)
#pragma unroll
            for (int j = 0; j < 4; j++) prefetch_l2(wb + woff[tn][j] + 8 * s);
    }
    epi_stage<EPI, TN>(e, n0, N, M);
    pdl_enter();
    // Whole steps: weight loads, then x into the slots, wait for x, mma (waits for the weights).
    for (; s < whole; s += MMA_WARPS) {
        const u32 c0 = 8 * s;
        uint4 v[TN][4];
#pragma unroll
        for (int tn = 0; tn < TN; tn++)
#pragma unroll
            for (int j = 0; j < 4; j++) v[tn][j] = __ldcs(wb + woff[tn][j] + c0);
#pragma unroll
        for (int mt = 0; mt < MT; mt++) {
            gemv_cp_async16(xl_s + (2 * mt) * 512, xb + xoff[mt] + c0);
            gemv_cp_async16(xl_s + (2 * mt + 1) * 512, xb + xoff[mt] + c0 + 4);
        }
        asm volatile("cp.async.commit_group;\n" ::: "memory");
        asm volatile("cp.async.wait_group 0;\n" ::: "memory");
#pragma unroll
        for (int tn = 0; tn < TN; tn++) mma_step_xs<MT>(acc[tn], v[tn], xl, h);
    }
    // The last step if partial (chunks past K read as zero); at most one, warp whole % 8's.
    if (s < steps) {
        const u32 c0 = 8 * s;
        uint4 v[TN][4];
#pragma unroll
        for (int tn = 0; tn < TN; tn++)
#pragma unroll
            for (int j = 0; j < 4; j++)
                v[tn][j] = c0 + p < chunks ? __ldcs(wb + woff[tn][j] + c0) : zero;
#pragma unroll
        for (int mt = 0; mt < MT; mt++) {
            const uint4* xp = xb + xoff[mt] + c0;
            xl[(2 * mt) * 32] = c0 + t < chunks ? __ldg(xp) : zero;
            xl[(2 * mt + 1) * 32] = c0 + t + 4 < chunks ? __ldg(xp + 4) : zero;
        }
#pragma unroll
        for (int tn = 0; tn < TN; tn++) mma_step_xs<MT>(acc[tn], v[tn], xl, h);
    }

    // The partial sums go over the x slots, once every warp has read its last x.
    __syncthreads();
    static_assert(TN * MT * 128 * 4 <= MT * 64 * 16, "partial sums fit a warp's x slots");
    gemv_mma_store<MT, TN, OUT, EPI>((float*)xs, acc, y, n0, N, M, e);
}

// M = 1: the warp-per-column kernel. M > 1: the tensor-core kernel for M' <= M rows (`rows`; any
// 1 <= rows <= 8 * MT gives the same code, so the wrapper may run fewer rows through it) and
// `cols` = 16 or 32 columns a CTA; M = 24 and 32 (MT = 3, 4) with x through shared memory.
// EPI: the fused epilogue (tensor-core kernels only), with its arguments `ep`.
template <int M, typename OUT, int EPI = EPI_NONE>
__device__ __forceinline__ void gemv_entry(OUT* __restrict__ y, const bf16* __restrict__ x,
                                           const bf16* __restrict__ w, u32 N, u32 K, u32 rows,
                                           u32 cols, const GemvEpi* ep = nullptr) {
    if constexpr (M == 1) {
        static_assert(EPI == EPI_NONE, "the warp kernel has no epilogue");
        gemv_body<1, OUT>(y, x, w, N, K);
    } else {
        EpiRef e = {};
        if constexpr (EPI != EPI_NONE) {
            __shared__ RopeStage stage;
            e = {ep, &stage};
        }
        if constexpr (M > 16) {
            constexpr int MT = (M + 7) / 8;
            __shared__ uint4 xs[MMA_WARPS * MT * 64];
            if (cols == 32)
                gemv_mma_xs_body<MT, 2, OUT, EPI>(xs, y, x, w, N, K, rows, e);
            else
                gemv_mma_xs_body<MT, 1, OUT, EPI>(xs, y, x, w, N, K, rows, e);
        } else {
            constexpr int MT = M > 8 ? 2 : 1;
            __shared__ float red[MMA_WARPS * 2 * MT * 128];
            if (cols == 32)
                gemv_mma_body<MT, 2, OUT, EPI>(red, y, x, w, N, K, rows, e);
            else
                gemv_mma_body<MT, 1, OUT, EPI>(red, y, x, w, N, K, rows, e);
        }
    }
}

#define GEMV_KERNELS(M)                                                                        \
    extern "C" __global__ void __launch_bounds__(GEMV_WARPS * 32)                              \
        gemv_bf16_m##M(bf16* __restrict__ y, const bf16* __restrict__ x,                       \
                       const bf16* __restrict__ w, u32 N, u32 K, u32 rows, u32 cols) {         \
        gemv_entry<M, bf16>(y, x, w, N, K, rows, cols);                                        \
    }                                                                                          \
    extern "C" __global__ void __launch_bounds__(GEMV_WARPS * 32)                              \
        gemv_f32_m##M(float* __restrict__ y, const bf16* __restrict__ x,                       \
                      const bf16* __restrict__ w, u32 N, u32 K, u32 rows, u32 cols) {          \
        gemv_entry<M, float>(y, x, w, N, K, rows, cols);                                       \
    }

// The fused variant (bf16 out, tensor-core kernels only): gemv_rope_m{M} for every M but 1.
#define GEMV_EPI_KERNEL(NAME, EPI, M)                                                          \
    extern "C" __global__ void __launch_bounds__(GEMV_WARPS * 32)                              \
        gemv_##NAME##_m##M(bf16* __restrict__ y, const bf16* __restrict__ x,                   \
                           const bf16* __restrict__ w, u32 N, u32 K, u32 rows, u32 cols,       \
                           const GemvEpi ep) {                                                 \
        gemv_entry<M, bf16, EPI>(y, x, w, N, K, rows, cols, &ep);                              \
    }
#define GEMV_FUSED(M) GEMV_EPI_KERNEL(rope, EPI_ROPE_KV, M)

GEMV_KERNELS(1)
GEMV_KERNELS(2)
GEMV_KERNELS(3)
GEMV_KERNELS(4)
GEMV_KERNELS(5)
GEMV_KERNELS(6)
GEMV_KERNELS(7)
GEMV_KERNELS(8)
GEMV_KERNELS(9)
GEMV_KERNELS(10)
GEMV_KERNELS(11)
GEMV_KERNELS(12)
GEMV_KERNELS(13)
GEMV_KERNELS(14)
GEMV_KERNELS(15)
GEMV_KERNELS(16)
GEMV_KERNELS(24)
GEMV_KERNELS(32)

GEMV_FUSED(2)
GEMV_FUSED(3)
GEMV_FUSED(4)
GEMV_FUSED(5)
GEMV_FUSED(6)
GEMV_FUSED(7)
GEMV_FUSED(8)
GEMV_FUSED(9)
GEMV_FUSED(10)
GEMV_FUSED(11)
GEMV_FUSED(12)
GEMV_FUSED(13)
GEMV_FUSED(14)
GEMV_FUSED(15)
GEMV_FUSED(16)
GEMV_FUSED(24)
GEMV_FUSED(32)
