//! CUDA kernels for the shard's GPU backend.
//!
//! The sources live in `kernels/*.cu` and are compiled at shard start by NVRTC for the device's
//! architecture, then cached on disk. This crate is a skeleton until the CUDA backend lands: it
//! names the kernels so the shard can refer to them, and reports that none are compiled yet.

/// Every kernel the CUDA backend will compile. Kept in one place so the NVRTC cache key and the
/// launch wrappers cannot drift apart.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum KernelId {
    Embedding,
    ResidualRmsNorm,
    Rope,
    KvWrite,
    PagedDecodeAttention,
    PagedPrefillAttention,
    SiluMul,
    Sample,
}

impl KernelId {
    /// All kernels, in compilation order.
    pub const ALL: [KernelId; 8] = [
        KernelId::Embedding,
        KernelId::ResidualRmsNorm,
        KernelId::Rope,
        KernelId::KvWrite,
        KernelId::PagedDecodeAttention,
        KernelId::PagedPrefillAttention,
        KernelId::SiluMul,
        KernelId::Sample,
    ];

    /// The `.cu` file that holds this kernel.
    pub fn source_file(self) -> &'static str {
        match self {
            KernelId::Embedding => "embedding.cu",
            KernelId::ResidualRmsNorm => "rms_norm.cu",
            KernelId::Rope => "rope.cu",
            KernelId::KvWrite => "kv_write.cu",
            KernelId::PagedDecodeAttention => "paged_decode_attention.cu",
            KernelId::PagedPrefillAttention => "paged_prefill_attention.cu",
            KernelId::SiluMul => "silu_mul.cu",
            KernelId::Sample => "sample.cu",
        }
    }
}

/// Errors from kernel compilation and launch.
#[derive(Debug, thiserror::Error)]
pub enum KernelError {
    #[error("the CUDA backend is not built yet: kernel {0:?} is unavailable")]
    NotAvailable(KernelId),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kernel_has_a_distinct_source() {
        let mut files: Vec<_> = KernelId::ALL.iter().map(|k| k.source_file()).collect();
        files.sort_unstable();
        files.dedup();
        assert_eq!(files.len(), KernelId::ALL.len());
    }
}
