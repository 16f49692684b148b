//! The element types of the paged KV cache: bf16 (the model's own precision) or fp8 e4m3
//! (`--kv-cache-dtype fp8`, as vLLM names it: half the bytes a token, so twice the tokens in the
//! same memory and half the bytes decode attention reads).
//!
//! fp8 values are stored unscaled (a scale of 1.0, which is what vLLM uses for a checkpoint
//! without calibrated KV scales): `e4m3(x)` of the bf16 value `x`, rounded to nearest even and
//! saturated to ±448 (CUDA's `__NV_SATFINITE`, float8's `F8E4M3::from_f32`). The kernels widen
//! them back exactly (every e4m3 value is a bf16 value).

use cudarc::driver::{DeviceRepr, ValidAsZeroBits};
use half::bf16;

pub use float8::F8E4M3;

/// Which element type a KV cache holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum KvDtype {
    /// bf16, two bytes an element.
    Bf16,
    /// fp8 e4m3 with a scale of 1.0, one byte an element.
    Fp8E4m3,
}

impl KvDtype {
    /// Bytes an element.
    pub const fn bytes(self) -> usize {
        match self {
            KvDtype::Bf16 => 2,
            KvDtype::Fp8E4m3 => 1,
        }
    }

    /// The suffix of a kernel's base name that reads or writes this cache type: `""` for bf16,
    /// `"_fp8"` for e4m3 (e.g. `rope_kv_write_fp8_kernel`, `paged_decode_fp8_d128_g4_p256`).
    pub(crate) const fn tag(self) -> &'static str {
        match self {
            KvDtype::Bf16 => "",
            KvDtype::Fp8E4m3 => "_fp8",
        }
    }

    /// vLLM's name of the type (`--kv-cache-dtype`).
    pub const fn name(self) -> &'static str {
        match self {
            KvDtype::Bf16 => "bf16",
            KvDtype::Fp8E4m3 => "fp8_e4m3",
        }
    }
}

/// A KV-cache element type the kernels take: the caches of [`crate::RopeKv`] and of the
/// attention wrappers are `CudaView`s of one of these.
pub trait KvElem: DeviceRepr + ValidAsZeroBits + Copy + Default + Send + Sync + 'static {
    /// The type's tag.
    const DTYPE: KvDtype;
}

impl KvElem for bf16 {
    const DTYPE: KvDtype = KvDtype::Bf16;
}

impl KvElem for F8E4M3 {
    const DTYPE: KvDtype = KvDtype::Fp8E4m3;
}

/// Every cache type, for loops over kernel variants.
pub(crate) const KV_DTYPES: [KvDtype; 2] = [KvDtype::Bf16, KvDtype::Fp8E4m3];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn e4m3_rounds_to_nearest_even_and_saturates() {
        // 448 is the largest finite e4m3 value; past it the conversion saturates.
        assert_eq!(F8E4M3::from_f32(1000.0).to_f32(), 448.0);
        assert_eq!(F8E4M3::from_f32(-1000.0).to_f32(), -448.0);
        // 1 + 1/16 lies halfway between 1 and 1.125 (3 mantissa bits): ties to even (1.0).
        assert_eq!(F8E4M3::from_f32(1.0625).to_f32(), 1.0);
        assert_eq!(F8E4M3::from_f32(1.1875).to_f32(), 1.25);
        // Subnormals: the smallest is 2^-9.
        assert_eq!(F8E4M3::from_f32(2f32.powi(-9)).to_f32(), 2f32.powi(-9));
        assert_eq!(KvDtype::Fp8E4m3.bytes(), 1);
        assert_eq!(<F8E4M3 as KvElem>::DTYPE.tag(), "_fp8");
    }
}
