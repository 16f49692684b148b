// Shared helpers for every kernel. The loader concatenates this file in front of the others (NVRTC
// gets one translation unit), so each .cu file's `#include "common.cuh"` line is dropped there.
#pragma once
#include <cuda_bf16.h>

typedef unsigned int u32;
typedef unsigned long long u64;
typedef __nv_bfloat16 bf16;
typedef __nv_bfloat162 bf162;

#define FULL_MASK 0xffffffffu
#define NEG_INF __int_as_float(0xff800000)
#define LOG2E 1.4426950408889634f

// Programmatic dependent launch (src/launch.rs). A kernel launched with it may start while the
// stream's previous kernel still runs. It calls pdl_wait() in every CTA before it reads anything
// an earlier kernel writes, writes anything an earlier kernel reads, or exits (so that its
// completion implies its predecessors'). Before the wait it may read only what no kernel of the
// step writes: weights, and the step's metadata (lengths, block tables), which is copied in
// before the step's first kernel, launched without PDL. One exception, add_rms_norm's residual
// row: it was last written three kernels back, by a kernel that had completed before the kernel
// just before this one passed its own wait, which it has when this one starts (each kernel
// triggers its dependents only after its wait); it is read through L2 (ld.cg), never L1.
// pdl_launch_dependents() then lets the
// next kernel start (it will wait for this one in turn). Both are no-ops without PDL and before
// sm_90.
__device__ __forceinline__ void pdl_wait() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    asm volatile("griddepcontrol.wait;" ::: "memory");
#endif
}

__device__ __forceinline__ void pdl_launch_dependents() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    asm volatile("griddepcontrol.launch_dependents;" ::: "memory");
#endif
}

// Brings the line holding `p` into L2 without waiting for it (no register is written).
__device__ __forceinline__ void prefetch_l2(const void* p) {
    asm volatile("prefetch.global.L2 [%0];" ::"l"(p));
}

// Both at once, at the top of a kernel that has nothing to do before its inputs are ready.
__device__ __forceinline__ void pdl_enter() {
    pdl_wait();
    pdl_launch_dependents();
}

__device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(FULL_MASK, v, o);
    return v;
}

__device__ __forceinline__ float warp_max(float v) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(FULL_MASK, v, o));
    return v;
}

// Sum over the block; every thread gets the result. `scratch` holds 32 floats. The leading
// barrier lets back-to-back calls reuse one scratch array.
template <int NT>
__device__ __forceinline__ float block_sum(float v, float* scratch) {
    v = warp_sum(v);
    __syncthreads();
    if ((threadIdx.x & 31) == 0) scratch[threadIdx.x >> 5] = v;
    __syncthreads();
    v = (threadIdx.x & 31) < (NT / 32) ? scratch[threadIdx.x & 31] : 0.f;
    return warp_sum(v);
}

template <int NT>
__device__ __forceinline__ float block_max(float v, float* scratch) {
    v = warp_max(v);
    __syncthreads();
    if ((threadIdx.x & 31) == 0) scratch[threadIdx.x >> 5] = v;
    __syncthreads();
    v = (threadIdx.x & 31) < (NT / 32) ? scratch[threadIdx.x & 31] : NEG_INF;
    return warp_max(v);
}

// 64-bit finalizer of SplitMix64: a bijection with good avalanche, the base of our counter RNG.
__device__ __forceinline__ u64 mix64(u64 z) {
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
}

__device__ __forceinline__ u64 hash2(u64 a, u64 b) {
    return mix64(mix64(a + 0x9e3779b97f4a7c15ULL) ^ (b + 0x632be59bd9b4e019ULL));
}

__device__ __forceinline__ u64 hash3(u64 a, u64 b, u64 c) {
    return mix64(hash2(a, b) ^ (c + 0xd1b54a32d192ed03ULL));
}

// Eight bf16 packed in a uint4, widened to f32 (a bf16 is the top half of an f32).
__device__ __forceinline__ void unpack8(const uint4 r, float* f) {
    const u32 w[4] = {r.x, r.y, r.z, r.w};
#pragma unroll
    for (int i = 0; i < 4; ++i) {
        f[2 * i] = __uint_as_float(w[i] << 16);
        f[2 * i + 1] = __uint_as_float(w[i] & 0xffff0000u);
    }
}

// D += A·B on tensor cores: A 16x16 bf16 (row), B 16x8 bf16 (col), D 16x8 f32 (mma.sync).
__device__ __forceinline__ void mma_bf16(float (&c)[4], const u32 (&a)[4], u32 b0, u32 b1) {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, "
        "{%8,%9}, {%0,%1,%2,%3};\n"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}
