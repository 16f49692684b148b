//! CUDA backend: the Llama-family model on one NVIDIA GPU through cudarc (driver, NVRTC and
//! cuBLAS loaded at run time, so the binary still builds and runs its CPU path without CUDA).
//! Unlike the CPU backend it does not go through [`crate::backend::Backend`]: the GPU path
//! needs fused ops, preallocated buffers and CUDA graphs, which the op-by-op trait can't give.

mod buffers;
mod device;
mod gather;
mod gemm;
mod gemm_cache;
mod gemm_lt;
mod gemm_tune;
mod graphs;
mod kv;
mod launches;
mod linear;
mod load;
mod model;
mod ops;
mod pinned;
mod plan;
mod shapes;
mod staging;
pub mod tp;
mod weights;

pub use device::{cuda_device_count, parse_cuda_device};
pub use gemm::{Gemm, GemmShape, OutType};
pub use gemm_tune::{TuneReport, TuneShape};
pub use load::{load_cuda, load_cuda_tp, load_tp_model};
pub use model::CudaLlama;
pub use shapes::ModelShape;
pub use tp::TpConfig;
