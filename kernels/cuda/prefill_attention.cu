// Paged prefill attention (causal, chunked), FlashAttention-2 style on tensor cores:
// paged_prefill_d64 / paged_prefill_d128, 128 query rows x 64 keys a step, and
// paged_prefill_d64_k32 / paged_prefill_d128_k32, the same with 32 keys a step (KT, below); each
// also as a 64-row kernel, name suffix _m64 (MT, below).
//
// Query row j of a sequence chunk sits at position start_pos + j and sees keys 0..=start_pos + j,
// all read from the paged cache through the block table (this step's K/V were written by
// rope_kv_write already). Grid (H, num_tiles) over the tile list of prefill_tiles (PF_M = 128
// query rows a tile, or 64 for the _m64 kernels; heaviest first): the heads of one tile are
// neighbours in launch order, so the G heads of a KV head (and all heads of a sequence) read the
// same K/V out of L2 at about the same time, and the heaviest tiles of every head start first. A
// CTA of 4 warps takes the 128 rows of one tile and one head, 32 rows a warp in two m16 tiles, so
// each K or V fragment read from shared memory by ldmatrix feeds two mma rows. Q sits in shared
// memory (its fragments are re-read each K/V tile: registers go to the 2 x D/8 x 4 O accumulators
// and the 2 x KT/8 x 4 scores); K/V tiles of KT keys, two stages of cp.async (the next tile loads
// while this one is computed).
// S = Q·K^T and O += P·V use mma.sync m16n8k16 (bf16 in, f32 accumulate) with an online softmax
// in the log2 domain; P stays in registers between the two mmas (the S accumulator layout of
// m16n8k16 is the A layout of the next one once packed to bf16). The causal mask is applied only
// to the tiles that cross a warp's diagonal; tiles wholly past a warp's last row are skipped, as
// are warps with no rows left. Q, the K/V stages and the block-table row (staged once per CTA)
// live in dynamic shared memory (PfSmem); the output goes out through the Q rows in 16-byte rows.
// The tiles, sequence table and block table are read before pdl_wait (step metadata).
// Why two key tiles: at D = 128, KT = 64 needs (128 + 4 x 64) x 136 x 2 + 4096 = 108,544 B of
// shared memory, within the opt-in limit per block of sm_80 (163 KB) and sm_90 (227 KB) but past
// that of sm_86 / sm_89 (99 KB: A10, A40, L4, L40S, RTX 30xx / 40xx), where the KT = 32 kernels
// (73,728 B) run instead. attention.rs picks, per device and head dim, KT = 64 where it fits.
// The 128 x 64 kernels replaced a 64-row x 32-key kernel: 1 x 512 tokens 60.7 -> 78.1 TFLOP/s,
// 1 x 2048 139.8 -> 247.8, 1 x 8192 191.4 -> 293.0, 4 x 1024 after 1024 180.4 -> 266.5
// (H=32 KVH=8 D=128; H100, attn_bench, 2026-11-26).
// Why 64-row tiles too (MT = 1: the same CTA of 4 warps, 16 rows a warp in one m16 tile, Q of 64
// rows in shared memory, 16 x D x 2 bytes less a warp-row; the K/V tiles and their pipeline are
// the 128-row kernels'): a short prompt gives the 128-row kernels too few CTAs. Steps of ShareGPT
// serving prefill one to three prompts of ~50-400 tokens: 1 x 512 tokens is 4 tiles x 32 heads =
// 128 CTAs of 4 warps on 132 SMs, one CTA an SM with nothing to hide its latency (68 TFLOP/s over
// an fp8 cache, against 250-290 at 2k-8k tokens; Nsight, H100). 64-row tiles double the CTAs
// (two an SM, which shared memory allows at D = 128: 91,136 B bf16, 89,088 B fp8, KT = 64) at the
// cost of ldmatrix reuse (a K/V fragment feeds one mma row, not two). prefill_tile_rows in
// attention.rs picks them for a step when its prefill tokens in 128-row tiles, times the heads, are
// at most the SM count (the 128-row grid would hold at most one CTA an SM, the 64-row one at most
// two: no second wave); the tile list and the launch both follow that choice. The key tile is the
// 128-row kernel's (the 64-row kernel of the same KT takes less shared memory, so it fits too).
// paged_prefill_fp8_d64 / _d128 / _d64_k32 / _d128_k32 (and their _m64) read an fp8 (e4m3)
// cache with the same CTA: its cp.async copies bring the raw e4m3 bytes of a K/V tile (16 dims
// of a key a copy) into two raw stages of their own, so the pipeline is unchanged (the next
// tile's bytes load while this one is computed); once a tile has landed, all threads widen it
// into a single bf16 K/V stage (exact: every e4m3 value is a bf16 value), and the mma code runs
// as for a bf16 cache. One bf16 stage is enough, as a tile is widened only after the previous
// one's reads are over (the barrier that ends the wait for its bytes). Their shared memory: Q,
// one bf16 K and V stage, the block ids, then 4 x KT x D raw bytes (two stages of K and V),
// (128 + 2 x 64) x 136 x 2 + 4096 + 32,768 = 106,496 B at D = 128, KT = 64 (two CTAs an H100
// SM, as for a bf16 cache), and 72,704 B with KT = 32 (the kernel of 99 KB cards).
#include "common.cuh"
#include <cuda_fp8.h>

// Query rows a tile of the default kernels (MT = 2); the _m64 ones (MT = 1) take 64.
#define PF_M 128
#define PF_THREADS 128
#define PF_WARPS (PF_THREADS / 32)
#define PF_BT_SMEM 1024  // block ids staged in shared memory; longer rows read global memory

struct PrefillArgs {
    bf16* out;
    const bf16* qkv;
    const bf16* kc;
    const bf16* vc;
    const int* block_tables;
    const int* seq_info;
    const int* tiles;
    u32 qkv_stride, H, KVH, block_size, bt_stride, num_blocks, num_seqs, bs_log2;
    float scale_log2;
};

__device__ __forceinline__ u32 smem_u32(const void* p) {
    return (u32)__cvta_generic_to_shared(p);
}

__device__ __forceinline__ void cp_async16(void* dst, const void* src, u32 src_bytes) {
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(smem_u32(dst)),
                 "l"(src), "r"(src_bytes));
}

__device__ __forceinline__ u32 pack_bf16(float lo, float hi) {
    const bf162 v = __floats2bfloat162_rn(lo, hi);
    return *(const u32*)&v;
}

// Dynamic shared memory of paged_prefill[_fp8]_d<D>[_k32][_m64] (prefill_smem_bytes in
// attention.rs mirrors it): Q [M][D + 8] (M = 64 MT query rows: PF_M = 128 for the default
// kernels, 64 for _m64), K and V [ST][KT][D + 8] each (bf16), then PF_BT_SMEM block ids;
// for an fp8 cache (FP8), then the raw e4m3 tiles as the copies land, K and V [2][KT][D] each
// (one byte an element, rows unpadded: only the widening pass reads them, 8 bytes a lane). ST:
// two bf16 stages for a bf16 cache (the copies' stages), one for FP8 (the widening's target).
// Only Q depends on MT: everything after it (LOAD_STAGE, RAW_KV, KV, ST, LDS) is the same for
// both row counts, so load_kv_tile and pf_widen_stage read those from PfSmem<D, KT, FP8>.
template <int D, int KT, bool FP8 = false, int MT = 2>
struct PfSmem {
    static_assert(KT == 32 || KT == 64, "KT: 32 or 64 keys a tile");
    static_assert(MT == 1 || MT == 2, "MT: 1 or 2 m16 tiles a warp");
    static constexpr int M = PF_WARPS * 16 * MT;  // query rows a tile
    static_assert(MT != 2 || M == PF_M, "the default kernels take PF_M rows");
    static constexpr int LDS = D + 8;  // padded rows: ldmatrix rows fall in distinct banks
    static constexpr int Q = M * LDS;
    static constexpr int KV = KT * LDS;
    static constexpr int ST = FP8 ? 1 : 2;  // bf16 K/V stages
    static constexpr int RAW = (Q + 2 * ST * KV) * 2 + PF_BT_SMEM * 4;  // byte offset of raw tiles
    static constexpr int RAW_KV = KT * D;  // bytes of one raw K or V tile
    static constexpr int BYTES = RAW + (FP8 ? 4 * RAW_KV : 0);
    // Where load_kv_tile's copies go: the bf16 stages, or the raw ones (bytes of a stage).
    static constexpr int LOAD_STAGE = FP8 ? RAW_KV : KV * 2;
    static_assert(RAW % 16 == 0, "16-byte copies into the raw tiles");
};

// mma.sync without `volatile`: a pure register operation the compiler may schedule freely.
__device__ __forceinline__ void pf_mma(float (&c)[4], const u32 (&a)[4], u32 b0, u32 b1) {
    asm("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, "
        "{%8,%9}, {%0,%1,%2,%3};\n"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

__device__ __forceinline__ void cp_async16_s(u32 dst, const void* src, u32 src_bytes) {
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(dst), "l"(src),
                 "r"(src_bytes));
}

// Keys kbase.. of K and V into one stage ([KT][D + 8] bf16 each, or for FP8 the raw [KT][D]
// e4m3 bytes): keys at or past nkeys, and keys of a block id outside the cache, become zeros
// (e4m3 0x00 is +0 too), so that a zero probability never meets a NaN from memory nothing wrote.
// Commits one cp.async group (with whatever this thread issued before it, e.g. the Q rows).
// kdst: the stage's K in the shared window (its V follows two stages later).
template <int D, int KT, bool FP8>
__device__ __forceinline__ void load_kv_tile(u32 kdst, const int* sbt, const int* bt_row,
                                             int kbase, int nkeys, u32 kvh, const PrefillArgs& a) {
    // Elements a 16-byte copy: 8 bf16 or 16 e4m3.
    constexpr int EL = FP8 ? 16 : 8, CH = D / EL, LDS = D + 8, ROWS = PF_THREADS / CH;
    constexpr u32 VOFF = 2 * PfSmem<D, KT, FP8>::LOAD_STAGE;
    const int c = threadIdx.x % CH;
#pragma unroll
    for (int r = threadIdx.x / CH; r < KT; r += ROWS) {
        const int key = kbase + r;
        u64 off = 0;
        u32 bytes = 0;
        if (key < nkeys) {
            const int bi = key >> a.bs_log2;
            const int b = bi < PF_BT_SMEM ? sbt[bi] : bt_row[bi];
            if (b >= 0 && (u32)b < a.num_blocks) {
                off = ((((u64)b * a.KVH + kvh) << a.bs_log2) + (key & (a.block_size - 1))) * D +
                      c * EL;
                bytes = 16;
            }
        }
        if constexpr (FP8) {
            const u32 d = kdst + r * D + c * EL;
            cp_async16_s(d, (const unsigned char*)a.kc + off, bytes);
            cp_async16_s(d + VOFF, (const unsigned char*)a.vc + off, bytes);
        } else {
            const u32 d = kdst + (r * LDS + c * 8) * 2;
            cp_async16_s(d, a.kc + off, bytes);
            cp_async16_s(d + VOFF, a.vc + off, bytes);
        }
    }
    asm volatile("cp.async.commit_group;\n" ::);
}

// Two e4m3 values (x's low 16 bits, the first in the low byte) as a bf16x2 word, exactly: e4m3
// -> f16 -> f32 -> bf16 loses nothing. sm_89+ converts e4m3 in hardware; older GPUs place the
// e4m3 bits in an f16 (its value x 2^-8: e4m3 has 8 less exponent bias; an e4m3 subnormal
// becomes an f16 subnormal, which the f16 -> f32 conversion keeps), then scale by 2^8 in f32.
__device__ __forceinline__ u32 pf_e4m3x2_to_bf16x2(u32 x) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 890
    const __half2 h = __nv_cvt_fp8x2_to_halfraw2((__nv_fp8x2_storage_t)x, __NV_E4M3);
    const float2 f = __half22float2(h);
    return pack_bf16(f.x, f.y);
#else
    const u32 t = __byte_perm(x, 0, 0x1404);  // byte i of x in the high byte of half i
    const u32 bits = (t & 0x80008000u) | ((t >> 1) & 0x3f803f80u);
    const float2 f = __half22float2(*(const __half2*)&bits);
    return pack_bf16(f.x * 256.f, f.y * 256.f);
#endif
}

// Widens one stage of raw e4m3 K and V tiles ([KT][D] bytes each, V 2 RAW_KV bytes after K) into
// the bf16 stage of K and V ([KT][D + 8] each, V KV elements after K): 8 bytes in, 16 out, a
// thread a step (a quarter warp reads 64 contiguous bytes and writes 128 of one row). Every
// address is a constant offset from the thread's first.
template <int D, int KT>
__device__ __forceinline__ void pf_widen_stage(const unsigned char* raw, bf16* kv) {
    using SM = PfSmem<D, KT, true>;
    constexpr int CH = D / 8, RS = PF_THREADS / CH;  // 8-element chunks a row, rows a step
    static_assert(KT % RS == 0, "whole steps");
    const int r0 = threadIdx.x / CH, c = threadIdx.x % CH;
    raw += r0 * D + c * 8;
    kv += r0 * SM::LDS + c * 8;
#pragma unroll
    for (int v = 0; v < 2; ++v)
#pragma unroll
        for (int r = 0; r < KT; r += RS) {
            const uint2 w = *(const uint2*)(raw + v * 2 * SM::RAW_KV + r * D);
            uint4 o;
            o.x = pf_e4m3x2_to_bf16x2(w.x);
            o.y = pf_e4m3x2_to_bf16x2(w.x >> 16);
            o.z = pf_e4m3x2_to_bf16x2(w.y);
            o.w = pf_e4m3x2_to_bf16x2(w.y >> 16);
            *(uint4*)(kv + v * SM::ST * SM::KV + r * SM::LDS) = o;
        }
}

__device__ __forceinline__ void ldsm_x4(u32 (&r)[4], u32 addr) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(addr));
}

__device__ __forceinline__ void ldsm_x4_t(u32 (&r)[4], u32 addr) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(addr));
}

// One K/V tile for this warp's 16 MT rows (MT m16 tiles): S = Q·K^T, the causal mask where MASK,
// online softmax (log2 domain), O += P·V. qa, ka and va are this lane's ldmatrix addresses
// (shared window) of the warp's Q rows and the stage's K and V, at fragment (0, 0); every other
// fragment is a constant offset from them. pos_g is the position of the lane's first row
// (warp row gid) and last_pos the chunk's last position (rows past the chunk repeat it).
template <int D, int KT, int MT, bool MASK>
__device__ __forceinline__ void prefill_tile(u32 qa, u32 ka, u32 va, float (&o)[MT][D / 8][4],
                                             float (&m)[MT][2], float (&l)[MT][2], int kbase,
                                             int pos_g, int last_pos, float scale_log2) {
    constexpr int LDS = D + 8, NT = KT / 8;
    const int tig = threadIdx.x & 3;
    float s[MT][NT][4];
#pragma unroll
    for (int mt = 0; mt < MT; ++mt)
#pragma unroll
        for (int i = 0; i < NT; ++i) s[mt][i][0] = s[mt][i][1] = s[mt][i][2] = s[mt][i][3] = 0.f;
#pragma unroll
    for (int kk = 0; kk < D / 16; ++kk) {
        u32 qf[MT][4];
#pragma unroll
        for (int mt = 0; mt < MT; ++mt) ldsm_x4(qf[mt], qa + (mt * 16 * LDS + kk * 16) * 2);
#pragma unroll
        for (int n2 = 0; n2 < KT / 16; ++n2) {
            u32 b[4];
            ldsm_x4(b, ka + (n2 * 16 * LDS + kk * 16) * 2);
#pragma unroll
            for (int mt = 0; mt < MT; ++mt) {
                pf_mma(s[mt][2 * n2], qf[mt], b[0], b[1]);
                pf_mma(s[mt][2 * n2 + 1], qf[mt], b[2], b[3]);
            }
        }
    }
    // P, packed to bf16 as soon as it is known: the A fragments of O += P·V.
    u32 p[MT][KT / 16][4];
#pragma unroll
    for (int mt = 0; mt < MT; ++mt) {
        float mx0 = m[mt][0], mx1 = m[mt][1];
#pragma unroll
        for (int nt = 0; nt < NT; ++nt)
#pragma unroll
            for (int e = 0; e < 4; ++e) {
                float v = s[mt][nt][e] * scale_log2;
                if (MASK && kbase + nt * 8 + tig * 2 + (e & 1) >
                                min(pos_g + mt * 16 + (e >> 1) * 8, last_pos))
                    v = NEG_INF;
                s[mt][nt][e] = v;
                if (e < 2) mx0 = fmaxf(mx0, v);
                else mx1 = fmaxf(mx1, v);
            }
        mx0 = fmaxf(mx0, __shfl_xor_sync(FULL_MASK, mx0, 1));
        mx0 = fmaxf(mx0, __shfl_xor_sync(FULL_MASK, mx0, 2));
        mx1 = fmaxf(mx1, __shfl_xor_sync(FULL_MASK, mx1, 1));
        mx1 = fmaxf(mx1, __shfl_xor_sync(FULL_MASK, mx1, 2));
        // Tile 0 holds key 0, visible to every row, so the max is finite from the first tile on
        // (and exp2(-inf - finite) = 0 scales the empty O of that first tile).
        const float al0 = exp2f(m[mt][0] - mx0), al1 = exp2f(m[mt][1] - mx1);
        m[mt][0] = mx0;
        m[mt][1] = mx1;
        float rs0 = 0.f, rs1 = 0.f;
#pragma unroll
        for (int nt = 0; nt < NT; ++nt) {
            const float e0 = exp2f(s[mt][nt][0] - mx0), e1 = exp2f(s[mt][nt][1] - mx0);
            const float e2 = exp2f(s[mt][nt][2] - mx1), e3 = exp2f(s[mt][nt][3] - mx1);
            rs0 += e0 + e1;
            rs1 += e2 + e3;
            p[mt][nt / 2][(nt & 1) * 2] = pack_bf16(e0, e1);
            p[mt][nt / 2][(nt & 1) * 2 + 1] = pack_bf16(e2, e3);
        }
        l[mt][0] = l[mt][0] * al0 + rs0;
        l[mt][1] = l[mt][1] * al1 + rs1;
#pragma unroll
        for (int dt = 0; dt < D / 8; ++dt) {
            o[mt][dt][0] *= al0;
            o[mt][dt][1] *= al0;
            o[mt][dt][2] *= al1;
            o[mt][dt][3] *= al1;
        }
    }
#pragma unroll
    for (int kk = 0; kk < KT / 16; ++kk)
#pragma unroll
        for (int d2 = 0; d2 < D / 16; ++d2) {
            u32 b[4];
            ldsm_x4_t(b, va + (kk * 16 * LDS + d2 * 16) * 2);
#pragma unroll
            for (int mt = 0; mt < MT; ++mt) {
                pf_mma(o[mt][2 * d2], p[mt][kk], b[0], b[1]);
                pf_mma(o[mt][2 * d2 + 1], p[mt][kk], b[2], b[3]);
            }
        }
}

template <int D, int KT, bool FP8 = false, int MT = 2>
__device__ __forceinline__ void prefill_impl(const PrefillArgs& a) {
    using SM = PfSmem<D, KT, FP8, MT>;
    constexpr int LDS = SM::LDS, CH = D / 8;
    constexpr int M = SM::M, WR = 16 * MT;  // query rows of the tile, of a warp
    extern __shared__ __align__(16) unsigned char pf_smem[];
    bf16* qsm = (bf16*)pf_smem;
    bf16* ksm = qsm + SM::Q;            // [ST][KT * LDS]
    bf16* vsm = ksm + SM::ST * SM::KV;  // [ST][KT * LDS]
    int* sbt = (int*)(vsm + SM::ST * SM::KV);
    const unsigned char* raw = pf_smem + SM::RAW;  // FP8: [K, V][2][KT * D] e4m3

    // Step metadata only (tiles, sequence table, block tables) before pdl_wait.
    const u32 h = blockIdx.x;
    const int s = a.tiles[2 * blockIdx.y], q0 = a.tiles[2 * blockIdx.y + 1];
    const bool valid = s >= 0 && (u32)s < a.num_seqs;
    const int row_start = valid ? a.seq_info[3 * s] : 0, nrows = valid ? a.seq_info[3 * s + 1] : 0;
    const int start_pos = valid ? a.seq_info[3 * s + 2] : 0;
    const bool work = valid && q0 >= 0 && q0 < nrows;
    const int nkeys =
        work ? min(start_pos + min(q0 + M, nrows), (int)(a.bt_stride * a.block_size)) : 0;
    const int* bt_row = a.block_tables + (u64)(work ? s : 0) * a.bt_stride;
    if (work) {
        const int nblk = min((nkeys + (int)a.block_size - 1) >> a.bs_log2, PF_BT_SMEM);
        for (int i = threadIdx.x; i < nblk; i += PF_THREADS) sbt[i] = bt_row[i];
    }
    pdl_enter();
    if (!work) return;
    __syncthreads();

    const u32 kvh = h / (a.H / a.KVH);
    const u32 lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const int gid = lane >> 2, tig = lane & 3;
    const int last = nrows - 1;

    // Q rows q0.. of head h (rows past the chunk read as zeros), with the first K/V tile.
    {
        const int c = threadIdx.x % CH;
        const bf16* qb = a.qkv + (u64)h * D + c * 8;
#pragma unroll
        for (int r = threadIdx.x / CH; r < M; r += PF_THREADS / CH) {
            const bool in = q0 + r < nrows;
            cp_async16(qsm + r * LDS + c * 8,
                       in ? qb + (u64)(row_start + q0 + r) * a.qkv_stride : a.qkv, in ? 16 : 0);
        }
    }
    const int ntiles = (nkeys + KT - 1) / KT;
    // Where the copies of stage 0's K land: the bf16 K stage, or the raw one.
    const u32 ks0 = FP8 ? smem_u32(raw) : smem_u32(ksm);
    load_kv_tile<D, KT, FP8>(ks0, sbt, bt_row, 0, nkeys, kvh, a);

    const int wr0 = q0 + (int)warp * WR;  // the warp's first row within the chunk
    const bool warp_rows = wr0 < nrows;
    const int warp_min_pos = start_pos + min(wr0, last);
    const int warp_max_pos = start_pos + min(wr0 + WR - 1, last);
    const int pos_g = start_pos + wr0 + gid, last_pos = start_pos + last;
    // This lane's ldmatrix addresses: Q (A operand: rows lane % 16, columns 8 (lane / 16)), K
    // (B operand, keys (lane % 8) + 8 (lane / 16), dims 8 ((lane / 8) % 2)) and V (transposed:
    // keys (lane % 8) + 8 ((lane / 8) % 2), dims 8 (lane / 16)), all of stage 0.
    const u32 qa = smem_u32(qsm) + ((warp * WR + (lane & 15)) * LDS + (lane >> 4) * 8) * 2;
    const u32 ka = smem_u32(ksm) +
                   (((lane & 7) + (lane >> 4) * 8) * LDS + ((lane >> 3) & 1) * 8) * 2;
    const u32 va = smem_u32(vsm) +
                   (((lane & 7) + ((lane >> 3) & 1) * 8) * LDS + (lane >> 4) * 8) * 2;

    float o[MT][D / 8][4];
    float m[MT][2], l[MT][2];
#pragma unroll
    for (int mt = 0; mt < MT; ++mt) {
#pragma unroll
        for (int i = 0; i < D / 8; ++i) o[mt][i][0] = o[mt][i][1] = o[mt][i][2] = o[mt][i][3] = 0.f;
        m[mt][0] = m[mt][1] = NEG_INF;
        l[mt][0] = l[mt][1] = 0.f;
    }

    for (int kt = 0; kt < ntiles; ++kt) {
        const int kbase = kt * KT, st = kt & 1;
        // Prefetch the next tile into the other stage (freed by the barrier that ended the
        // previous iteration; with FP8 the other raw stage, whose last reads, the widening of
        // tile kt - 1, ended at the barrier after it), then wait for this one (and, at kt = 0,
        // the Q rows).
        if (kt + 1 < ntiles) {
            load_kv_tile<D, KT, FP8>(ks0 + (st ^ 1) * SM::LOAD_STAGE, sbt, bt_row, kbase + KT,
                                     nkeys, kvh, a);
            asm volatile("cp.async.wait_group 1;\n" ::);
        } else {
            asm volatile("cp.async.wait_group 0;\n" ::);
        }
        // Every thread's copies of tile kt have landed. With FP8 this barrier also ends every
        // warp's reads of the single bf16 stage (the mma of tile kt - 1), so the widening may
        // overwrite it; the barrier after the widening orders its writes before the reads below
        // (and its reads of raw stage st before the next iteration's copies into it).
        __syncthreads();
        if constexpr (FP8) {
            pf_widen_stage<D, KT>(raw + st * SM::RAW_KV, ksm);
            __syncthreads();
        }
        const u32 so = FP8 ? 0 : st * SM::KV * 2;
        if (warp_rows && kbase <= warp_max_pos) {  // else every key is masked for this warp
            if (kbase + KT - 1 > warp_min_pos)
                prefill_tile<D, KT, MT, true>(qa, ka + so, va + so, o, m, l, kbase, pos_g, last_pos,
                                          a.scale_log2);
            else
                prefill_tile<D, KT, MT, false>(qa, ka + so, va + so, o, m, l, kbase, pos_g,
                                           last_pos, a.scale_log2);
        }
        // The next iteration's copies go to this stage, so its reads must end first. Not with
        // FP8: those copies go to raw stage st, whose reads (the widening) ended at the barrier
        // above, and the bf16 stage read here is next written by the widening of tile kt + 1,
        // after the next iteration's first barrier (which every warp reaches only once its
        // reads here are done).
        if constexpr (!FP8) __syncthreads();
    }
    // No copies in flight past here (only a table of width 0, no key tiles, leaves the first
    // group unawaited); the output goes through the Q rows (each warp's own: the last barrier
    // ordered every other warp's copies into them, and only this warp read them since).
    asm volatile("cp.async.wait_group 0;\n" ::);
    if (!warp_rows) return;

    // Normalize, stage the warp's WR rows in its own Q rows (only this warp reads them; the
    // loop's last barrier ordered its last reads), then write them out 16 bytes a lane.
    bf16* ow = qsm + warp * WR * LDS;
#pragma unroll
    for (int mt = 0; mt < MT; ++mt) {
#pragma unroll
        for (int i = 0; i < 2; ++i) {
            float li = l[mt][i];
            li += __shfl_xor_sync(FULL_MASK, li, 1);
            li += __shfl_xor_sync(FULL_MASK, li, 2);
            l[mt][i] = 1.f / li;
        }
#pragma unroll
        for (int dt = 0; dt < D / 8; ++dt) {
            bf16* p = ow + (mt * 16 + gid) * LDS + dt * 8 + tig * 2;
            *(u32*)p = pack_bf16(o[mt][dt][0] * l[mt][0], o[mt][dt][1] * l[mt][0]);
            *(u32*)(p + 8 * LDS) = pack_bf16(o[mt][dt][2] * l[mt][1], o[mt][dt][3] * l[mt][1]);
        }
    }
    __syncwarp();
    const u64 ostride = (u64)a.H * D;
    bf16* ob = a.out + (u64)h * D;
#pragma unroll
    for (int i = lane; i < WR * CH; i += 32) {
        const int r = i / CH, c = i % CH;
        if (wr0 + r < nrows)
            *(uint4*)(ob + (u64)(row_start + wr0 + r) * ostride + c * 8) =
                *(const uint4*)(ow + r * LDS + c * 8);
    }
}

extern "C" __global__ void __launch_bounds__(PF_THREADS) paged_prefill_d64(PrefillArgs a) {
    prefill_impl<64, 64>(a);
}

extern "C" __global__ void __launch_bounds__(PF_THREADS) paged_prefill_d128(PrefillArgs a) {
    prefill_impl<128, 64>(a);
}

// 32 keys a step: for GPUs whose opt-in shared memory per block (99 KB on sm_86 / sm_89) is
// below the 64-key kernels' (see the header).
extern "C" __global__ void __launch_bounds__(PF_THREADS) paged_prefill_d64_k32(PrefillArgs a) {
    prefill_impl<64, 32>(a);
}

extern "C" __global__ void __launch_bounds__(PF_THREADS) paged_prefill_d128_k32(PrefillArgs a) {
    prefill_impl<128, 32>(a);
}

// The same over an fp8 (e4m3) cache (see the header).
extern "C" __global__ void __launch_bounds__(PF_THREADS) paged_prefill_fp8_d64(PrefillArgs a) {
    prefill_impl<64, 64, true>(a);
}

extern "C" __global__ void __launch_bounds__(PF_THREADS) paged_prefill_fp8_d128(PrefillArgs a) {
    prefill_impl<128, 64, true>(a);
}

extern "C" __global__ void __launch_bounds__(PF_THREADS) paged_prefill_fp8_d64_k32(PrefillArgs a) {
    prefill_impl<64, 32, true>(a);
}

extern "C" __global__ void __launch_bounds__(PF_THREADS) paged_prefill_fp8_d128_k32(PrefillArgs a) {
    prefill_impl<128, 32, true>(a);
}

// 64 query rows a tile (MT = 1: one m16 tile a warp), for steps whose prefill would give the
// 128-row kernels at most one CTA an SM (prefill_tile_rows in attention.rs; see the header).
extern "C" __global__ void __launch_bounds__(PF_THREADS) paged_prefill_d64_m64(PrefillArgs a) {
    prefill_impl<64, 64, false, 1>(a);
}

extern "C" __global__ void __launch_bounds__(PF_THREADS) paged_prefill_d128_m64(PrefillArgs a) {
    prefill_impl<128, 64, false, 1>(a);
}

extern "C" __global__ void __launch_bounds__(PF_THREADS) paged_prefill_d64_k32_m64(PrefillArgs a) {
    prefill_impl<64, 32, false, 1>(a);
}

extern "C" __global__ void __launch_bounds__(PF_THREADS) paged_prefill_d128_k32_m64(PrefillArgs a) {
    prefill_impl<128, 32, false, 1>(a);
}

extern "C" __global__ void __launch_bounds__(PF_THREADS) paged_prefill_fp8_d64_m64(PrefillArgs a) {
    prefill_impl<64, 64, true, 1>(a);
}

extern "C" __global__ void __launch_bounds__(PF_THREADS) paged_prefill_fp8_d128_m64(PrefillArgs a) {
    prefill_impl<128, 64, true, 1>(a);
}

extern "C" __global__ void __launch_bounds__(PF_THREADS)
    paged_prefill_fp8_d64_k32_m64(PrefillArgs a) {
    prefill_impl<64, 32, true, 1>(a);
}

extern "C" __global__ void __launch_bounds__(PF_THREADS)
    paged_prefill_fp8_d128_k32_m64(PrefillArgs a) {
    prefill_impl<128, 32, true, 1>(a);
}
