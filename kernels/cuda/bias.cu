// Projection biases (Qwen2's q/k/v, Llama's attention_bias): x[t, n] += b[n] in bf16 storage,
// f32 arithmetic, two elements per thread step.
#include "common.cuh"

extern "C" __global__ void add_bias_kernel(bf16* __restrict__ x, const float* __restrict__ b,
                                           u32 n, u64 rows) {
    pdl_enter();
    const u64 pairs = rows * n / 2;
    for (u64 p = (u64)blockIdx.x * blockDim.x + threadIdx.x; p < pairs;
         p += (u64)gridDim.x * blockDim.x) {
        const u64 e = p * 2;
        const u32 c = (u32)(e % n);
        const float2 v = __bfloat1622float2(*(const bf162*)(x + e));
        *(bf162*)(x + e) = __floats2bfloat162_rn(v.x + b[c], v.y + b[c + 1]);
    }
}
