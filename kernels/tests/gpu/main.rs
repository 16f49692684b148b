//! Every kernel against a CPU reference on fresh random inputs, on the GPU. Where no CUDA driver
//! is found (CI), each test prints `skipped: no CUDA driver (...)` and passes.

mod attention_ref;
mod bias;
mod common;
mod decode;
mod elementwise;
mod gemv;
mod gemv_fused;
mod prefill;
mod rope;
mod sample;
