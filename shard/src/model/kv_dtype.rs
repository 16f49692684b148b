//! `--kv-cache-dtype` ([`pagedserve_proto::kv_cache_dtype`], shared with the launcher) and the
//! element type it gives a CUDA cache.

use pagedserve_kernels::KvDtype;
pub use pagedserve_proto::kv_cache_dtype::{
    KvCacheDtype, KvCacheDtypeError, SUPPORTED_KV_CACHE_DTYPES,
};

/// The element type a CUDA cache holds for `dtype`: `auto` is the model's bf16.
pub const fn cuda_kv_dtype(dtype: KvCacheDtype) -> KvDtype {
    match dtype {
        KvCacheDtype::Auto | KvCacheDtype::Bf16 => KvDtype::Bf16,
        KvCacheDtype::Fp8E4m3 => KvDtype::Fp8E4m3,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auto_is_bf16_on_cuda_and_fp8_halves_the_bytes() {
        assert_eq!(cuda_kv_dtype(KvCacheDtype::Auto), KvDtype::Bf16);
        assert_eq!(cuda_kv_dtype(KvCacheDtype::Bf16), KvDtype::Bf16);
        assert_eq!(cuda_kv_dtype(KvCacheDtype::Fp8E4m3), KvDtype::Fp8E4m3);
        assert_eq!(
            2 * cuda_kv_dtype(KvCacheDtype::Fp8E4m3).bytes(),
            cuda_kv_dtype(KvCacheDtype::Auto).bytes()
        );
    }
}
