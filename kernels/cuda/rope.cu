// RoPE on every q and k head of the fused qkv rows, fused with the KV-cache write of k and v.
#include "common.cuh"

#define ROPE_THREADS 128

// qkv bf16 [T, stride]: q heads, k heads, v heads. Interleaved pairs (2i, 2i+1), i < rope_dim/2.
// Cache layout [num_blocks, KVH, block_size, D]; a slot >= num_slots (u32::MAX: padding) is not
// written. Positions past the table are clamped to its last row (the host validates lengths).
extern "C" __global__ void __launch_bounds__(ROPE_THREADS)
    rope_kv_write_kernel(bf16* __restrict__ qkv, bf16* __restrict__ kc, bf16* __restrict__ vc,
                         const u32* __restrict__ pos, const u32* __restrict__ slots,
                         const float* __restrict__ cos_t, const float* __restrict__ sin_t,
                         u32 H, u32 KVH, u32 D, u32 rope_dim, u32 block_size, u32 max_pos,
                         u64 num_slots, u32 stride) {
    const u64 t = blockIdx.x;
    const u32 p = min(pos[t], max_pos - 1);
    const u32 slot = slots[t];
    const bool write = (u64)slot < num_slots;
    const u64 blk = slot / block_size, off = slot % block_size;
    bf16* row = qkv + t * stride;
    const u32 half = D / 2, rhalf = rope_dim / 2;
    for (u32 i = threadIdx.x; i < (H + KVH) * half; i += ROPE_THREADS) {
        const u32 head = i / half, j = i - head * half;
        bf162* ptr = (bf162*)(row + head * D + 2 * j);
        bf162 r = *ptr;
        if (j < rhalf) {
            const float2 v = __bfloat1622float2(r);
            const float c = cos_t[(u64)p * rhalf + j], s = sin_t[(u64)p * rhalf + j];
            r = __floats2bfloat162_rn(v.x * c - v.y * s, v.x * s + v.y * c);
            *ptr = r;
        }
        if (head >= H && write)
            *(bf162*)(kc + ((blk * KVH + (head - H)) * block_size + off) * D + 2 * j) = r;
    }
    if (!write) return;
    const bf16* vrow = row + (H + KVH) * D;
    for (u32 i = threadIdx.x; i < KVH * half; i += ROPE_THREADS) {
        const u32 kh = i / half, j = i - kh * half;
        *(bf162*)(vc + ((blk * KVH + kh) * block_size + off) * D + 2 * j) =
            *(const bf162*)(vrow + kh * D + 2 * j);
    }
}
