//! Wrapper of the skinny matrix products for decode steps (cuda/gemv.cu).

use cudarc::driver::{
    CudaStream, CudaView, CudaViewMut, DevicePtr, DevicePtrMut, DeviceRepr, LaunchConfig,
    PushKernelArg,
};
use half::bf16;

use crate::error::{ensure, expect_len, to_u32};
use crate::{KernelError, Kernels};

/// Most rows of `x` one GEMV launch takes; larger steps belong to cuBLAS's GEMMs.
pub const GEMV_MAX_ROWS: usize = 8;
const WARPS: u32 = 8;

/// An output element type of [`Kernels::gemv`]: bf16 activations or f32 logits.
pub trait GemvOut: DeviceRepr {
    const NAME: &'static str;
}

impl GemvOut for bf16 {
    const NAME: &'static str = "bf16";
}

impl GemvOut for f32 {
    const NAME: &'static str = "f32";
}

impl Kernels {
    /// `y[m, n] = sum_k x[m, k] * w[n, k]` for `rows = x.len() / k` rows (1..=8): `x` bf16
    /// `[rows, k]`, `w` bf16 `[n, k]` (row-major, as linear layers store it), `y` `[rows, n]`.
    /// f32 accumulation; `k` must be a multiple of 8 (16-byte loads).
    pub fn gemv<O: GemvOut>(
        &self,
        stream: &CudaStream,
        y: &mut CudaViewMut<'_, O>,
        x: &CudaView<'_, bf16>,
        w: &CudaView<'_, bf16>,
        n: usize,
        k: usize,
    ) -> Result<(), KernelError> {
        const K: &str = "gemv";
        ensure(K, k > 0 && k.is_multiple_of(8), || {
            format!("k = {k} must be a positive multiple of 8")
        })?;
        expect_len(K, "w", w.len(), n * k)?;
        ensure(K, x.len().is_multiple_of(k), || {
            format!("x has {} elements, not [rows, {k}]", x.len())
        })?;
        let rows = x.len() / k;
        ensure(K, (1..=GEMV_MAX_ROWS).contains(&rows), || {
            format!("{rows} rows; 1..={GEMV_MAX_ROWS} supported")
        })?;
        expect_len(K, "y", y.len(), rows * n)?;
        let (n32, k32) = (to_u32(K, "n", n)?, to_u32(K, "k", k)?);
        let (yp, _g0) = y.device_ptr_mut(stream);
        let (xp, _g1) = x.device_ptr(stream);
        let (wp, _g2) = w.device_ptr(stream);
        let name = format!("gemv_{}_m{rows}", O::NAME);
        let mut b = stream.launch_builder(self.func(&name)?);
        b.arg(&yp).arg(&xp).arg(&wp).arg(&n32).arg(&k32);
        let cfg = LaunchConfig {
            grid_dim: (n32.div_ceil(WARPS), 1, 1),
            block_dim: (WARPS * 32, 1, 1),
            shared_mem_bytes: 0,
        };
        // SAFETY: lengths checked above match the kernel's indexing (one warp per column).
        unsafe { b.launch(cfg) }?;
        Ok(())
    }
}
