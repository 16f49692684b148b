//! `--kv-cache-dtype`: the element type of the paged KV cache, with vLLM's names. Here, where
//! the launcher (which checks the flag before anything starts) and the shard (which sizes and
//! types its cache from it) both read it.
//!
//! `auto` (the default) stores the model's own precision: bf16 on CUDA. `fp8` / `fp8_e4m3`
//! store e4m3 with a scale of 1.0, as vLLM does for a checkpoint without calibrated KV scales:
//! half the bytes a token of bf16, so twice the tokens in the same memory and half the bytes
//! decode attention reads; CUDA only. The CPU backend keeps its cache in f32 whatever is asked
//! (the shard refuses fp8 there and notes that bf16 changes nothing).

use std::fmt;
use std::str::FromStr;

/// What `--kv-cache-dtype` asked for.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub enum KvCacheDtype {
    /// The model's dtype (bf16 on CUDA; the CPU backend's cache is f32).
    #[default]
    Auto,
    /// bf16 (`bf16`, `bfloat16`).
    Bf16,
    /// fp8 e4m3, scale 1.0 (`fp8`, `fp8_e4m3`). CUDA only.
    Fp8E4m3,
}

/// The values `--kv-cache-dtype` accepts, as error messages and help list them.
pub const SUPPORTED_KV_CACHE_DTYPES: &str = "auto, bf16 (or bfloat16), fp8 (or fp8_e4m3)";

/// Why fp8 is refused on the CPU, in the same words from the launcher (`--device cpu`, before
/// the model fetch) and from a shard (`--device auto` without a GPU, or one started by hand).
pub const FP8_NEEDS_CUDA: &str = "--kv-cache-dtype fp8 needs a CUDA device: the CPU backend \
     keeps its KV cache in f32 and has no fp8 cache (on the CPU leave --kv-cache-dtype out or \
     use auto; for fp8, serve on a GPU with --device cuda)";

/// A `--kv-cache-dtype` value pagedserve does not serve.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KvCacheDtypeError {
    /// A type vLLM knows that pagedserve has no kernels for (`fp8_e5m2`, `fp8_inc`, ...).
    #[error(
        "{0} is not supported: pagedserve's fp8 KV cache is e4m3 only (supported: \
         {SUPPORTED_KV_CACHE_DTYPES})"
    )]
    Unsupported(String),
    /// Anything else.
    #[error("unknown KV cache dtype `{0}` (supported: {SUPPORTED_KV_CACHE_DTYPES})")]
    Unknown(String),
}

impl FromStr for KvCacheDtype {
    type Err = KvCacheDtypeError;

    /// vLLM's spellings, ASCII case aside.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "auto" => Ok(KvCacheDtype::Auto),
            "bf16" | "bfloat16" => Ok(KvCacheDtype::Bf16),
            "fp8" | "fp8_e4m3" => Ok(KvCacheDtype::Fp8E4m3),
            "fp8_e5m2" | "fp8_inc" | "fp8_ds_mla" => Err(KvCacheDtypeError::Unsupported(s.into())),
            _ => Err(KvCacheDtypeError::Unknown(s.into())),
        }
    }
}

impl KvCacheDtype {
    /// The canonical name: `auto`, `bf16` or `fp8_e4m3` (parses back to the same value).
    pub const fn name(self) -> &'static str {
        match self {
            KvCacheDtype::Auto => "auto",
            KvCacheDtype::Bf16 => "bf16",
            KvCacheDtype::Fp8E4m3 => "fp8_e4m3",
        }
    }
}

impl fmt::Display for KvCacheDtype {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_vllms_names() {
        let parse = |s: &str| s.parse::<KvCacheDtype>();
        assert_eq!(parse("auto"), Ok(KvCacheDtype::Auto));
        assert_eq!(parse("bf16"), Ok(KvCacheDtype::Bf16));
        assert_eq!(parse("bfloat16"), Ok(KvCacheDtype::Bf16));
        assert_eq!(parse("fp8"), Ok(KvCacheDtype::Fp8E4m3));
        assert_eq!(parse("fp8_e4m3"), Ok(KvCacheDtype::Fp8E4m3));
        assert_eq!(parse("FP8_E4M3"), Ok(KvCacheDtype::Fp8E4m3));
        for d in [
            KvCacheDtype::Auto,
            KvCacheDtype::Bf16,
            KvCacheDtype::Fp8E4m3,
        ] {
            assert_eq!(parse(d.name()), Ok(d), "the name parses back");
        }
        assert_eq!(KvCacheDtype::default(), KvCacheDtype::Auto);
    }

    #[test]
    fn refuses_e5m2_and_the_rest_naming_what_is_supported() {
        let err = "fp8_e5m2".parse::<KvCacheDtype>().expect_err("e5m2");
        assert_eq!(err, KvCacheDtypeError::Unsupported("fp8_e5m2".into()));
        let msg = err.to_string();
        assert!(
            msg.contains("fp8_e5m2") && msg.contains("e4m3 only"),
            "{msg}"
        );
        assert!(msg.contains(SUPPORTED_KV_CACHE_DTYPES), "{msg}");
        for bad in ["fp16", "float16", "int8", ""] {
            let msg = bad.parse::<KvCacheDtype>().expect_err(bad).to_string();
            assert!(msg.contains(SUPPORTED_KV_CACHE_DTYPES), "{msg}");
        }
    }
}
