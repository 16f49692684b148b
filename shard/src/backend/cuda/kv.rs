//! The paged KV cache on the GPU, in the element type `--kv-cache-dtype` picked: bf16 (the
//! model's own, `auto`) or fp8 e4m3 with a scale of 1.0 (`fp8`). Every layer's K (and V) lies
//! in one allocation, `[layers * num_blocks, KVH, block_size, D]`. The forward pass writes and
//! reads it through one generic function (`ops::attention`), called with either pair.

use std::sync::Arc;

use cudarc::driver::{CudaSlice, CudaStream, CudaView, CudaViewMut, DriverError};
use half::bf16;
use pagedserve_kernels::{F8E4M3, KernelError, Kernels, KvDtype, KvElem, RopeKv};

/// K and V of every layer, in the cache's element type.
pub enum KvCaches {
    Bf16 {
        k: CudaSlice<bf16>,
        v: CudaSlice<bf16>,
    },
    Fp8 {
        k: CudaSlice<F8E4M3>,
        v: CudaSlice<F8E4M3>,
    },
}

impl KvCaches {
    /// Zeroed K and V of `len` elements each.
    pub fn alloc(
        stream: &Arc<CudaStream>,
        dtype: KvDtype,
        len: usize,
    ) -> Result<Self, DriverError> {
        Ok(match dtype {
            KvDtype::Bf16 => KvCaches::Bf16 {
                k: stream.alloc_zeros(len)?,
                v: stream.alloc_zeros(len)?,
            },
            KvDtype::Fp8E4m3 => KvCaches::Fp8 {
                k: stream.alloc_zeros(len)?,
                v: stream.alloc_zeros(len)?,
            },
        })
    }

    pub fn dtype(&self) -> KvDtype {
        match self {
            KvCaches::Bf16 { .. } => KvDtype::Bf16,
            KvCaches::Fp8 { .. } => KvDtype::Fp8E4m3,
        }
    }
}

/// A cache element type as the forward pass writes it. Decode steps on the GEMV may write K
/// and V in the QKV GEMV's epilogue ([`Kernels::gemv_rope_kv`]), which exists for bf16 only:
/// an fp8 cache always takes the unfused path (QKV projection, then `rope_kv_write`).
pub trait CacheElem: KvElem {
    /// `qkv = x @ w^T` with RoPE and the KV write fused in, or `None` where this type has no
    /// fused kernel (nothing was launched; the caller runs the unfused path): the default.
    fn gemv_rope_kv(
        _kernels: &Kernels,
        _stream: &CudaStream,
        _qkv: &mut CudaViewMut<'_, bf16>,
        _x: &CudaView<'_, bf16>,
        _w: &CudaView<'_, bf16>,
        _k: usize,
        _rope: &mut RopeKv<'_, Self>,
    ) -> Option<Result<(), KernelError>> {
        None
    }
}

impl CacheElem for bf16 {
    fn gemv_rope_kv(
        kernels: &Kernels,
        stream: &CudaStream,
        qkv: &mut CudaViewMut<'_, bf16>,
        x: &CudaView<'_, bf16>,
        w: &CudaView<'_, bf16>,
        k: usize,
        rope: &mut RopeKv<'_, Self>,
    ) -> Option<Result<(), KernelError>> {
        Some(kernels.gemv_rope_kv(stream, qkv, x, w, k, rope))
    }
}

impl CacheElem for F8E4M3 {}
