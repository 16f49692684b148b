// RoPE on every q and k head of the fused qkv rows, fused with the KV-cache write of k and v.
#include "common.cuh"
#include <cuda_fp8.h>

// One warp per (row, head), ROPE_HEADS heads a block: grid (T, ceil((H + KVH) / ROPE_HEADS)).
// It was one 64-thread block per (row, head): 40 blocks a row for Llama-3-8B, and a 256-row
// step's 10,240 tiny blocks took 14.7 us for ~7 MB of traffic (H100, ncu, 2026-11-26); a decode
// row still spreads over ceil(40 / 8) = 5 blocks.
#define ROPE_HEADS 8
#define ROPE_THREADS (32 * ROPE_HEADS)

// The cache write of two neighbouring elements: bf16 as they are, or e4m3 (rounded to nearest
// even, saturated to +-448: the fp8 KV cache, kv.rs) two bytes at once.
__device__ __forceinline__ void rope_store2(bf16* dst, bf162 x) { *(bf162*)dst = x; }

__device__ __forceinline__ void rope_store2(unsigned char* dst, bf162 x) {
    *(__nv_fp8x2_storage_t*)dst =
        __nv_cvt_float2_to_fp8x2(__bfloat1622float2(x), __NV_SATFINITE, __NV_E4M3);
}

// qkv bf16 [T, stride]: q heads, k heads, v heads. Interleaved pairs (2i, 2i+1), i < rope_dim/2.
// Cache layout [num_blocks, KVH, block_size, D] of C (bf16, or unsigned char: e4m3 of the bf16
// k after RoPE and of the bf16 v); a slot >= num_slots (u32::MAX: padding) is not written.
// Positions past the table are clamped to its last row (the host validates lengths).
template <typename C>
__device__ __forceinline__ void rope_kv_write(bf16* __restrict__ qkv, C* __restrict__ kc,
                                              C* __restrict__ vc, const u32* __restrict__ pos,
                                              const u32* __restrict__ slots,
                                              const float* __restrict__ cos_t,
                                              const float* __restrict__ sin_t, u32 H, u32 KVH,
                                              u32 D, u32 rope_dim, u32 block_size, u32 max_pos,
                                              u64 num_slots, u32 stride) {
    const u64 t = blockIdx.x;
    const u32 head = blockIdx.y * ROPE_HEADS + threadIdx.x / 32, lane = threadIdx.x % 32;
    // Positions and slots are step metadata, uploaded before the step, and the tables are
    // constants: read them before waiting for the qkv GEMM (PDL).
    const u32 p = min(pos[t], max_pos - 1);
    const u32 slot = slots[t];
    pdl_enter();
    if (head >= H + KVH) return;
    const bool write = (u64)slot < num_slots && head >= H;
    const u64 blk = slot / block_size, off = slot % block_size;
    bf16* row = qkv + t * stride;
    const u32 half = D / 2, rhalf = rope_dim / 2;
    const u64 cache_at = ((blk * KVH + (head - H)) * block_size + off) * D;
    for (u32 j = lane; j < half; j += 32) {
        bf162* ptr = (bf162*)(row + head * D + 2 * j);
        bf162 r = *ptr;
        if (j < rhalf) {
            const float2 v = __bfloat1622float2(r);
            const float c = cos_t[(u64)p * rhalf + j], s = sin_t[(u64)p * rhalf + j];
            r = __floats2bfloat162_rn(v.x * c - v.y * s, v.x * s + v.y * c);
            *ptr = r;
        }
        if (write) {
            rope_store2(kc + cache_at + 2 * j, r);
            // The k head's block also stores the matching v head.
            rope_store2(vc + cache_at + 2 * j, *(const bf162*)(row + (head + KVH) * D + 2 * j));
        }
    }
}

extern "C" __global__ void __launch_bounds__(ROPE_THREADS)
    rope_kv_write_kernel(bf16* __restrict__ qkv, bf16* __restrict__ kc, bf16* __restrict__ vc,
                         const u32* __restrict__ pos, const u32* __restrict__ slots,
                         const float* __restrict__ cos_t, const float* __restrict__ sin_t,
                         u32 H, u32 KVH, u32 D, u32 rope_dim, u32 block_size, u32 max_pos,
                         u64 num_slots, u32 stride) {
    rope_kv_write(qkv, kc, vc, pos, slots, cos_t, sin_t, H, KVH, D, rope_dim, block_size, max_pos,
                  num_slots, stride);
}

// The same for an fp8 (e4m3) cache: kc and vc hold one byte an element.
extern "C" __global__ void __launch_bounds__(ROPE_THREADS)
    rope_kv_write_fp8_kernel(bf16* __restrict__ qkv, unsigned char* __restrict__ kc,
                             unsigned char* __restrict__ vc, const u32* __restrict__ pos,
                             const u32* __restrict__ slots, const float* __restrict__ cos_t,
                             const float* __restrict__ sin_t, u32 H, u32 KVH, u32 D,
                             u32 rope_dim, u32 block_size, u32 max_pos, u64 num_slots,
                             u32 stride) {
    rope_kv_write(qkv, kc, vc, pos, slots, cos_t, sin_t, H, KVH, D, rope_dim, block_size, max_pos,
                  num_slots, stride);
}
