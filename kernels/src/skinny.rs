//! Wrapper of the tensor-core skinny matrix product for small decode batches (cuda/skinny.cu).

use cudarc::driver::{
    CudaStream, CudaView, CudaViewMut, DevicePtr, DevicePtrMut, LaunchConfig, PushKernelArg,
};
use half::bf16;

use crate::error::{ensure, expect_len, to_u32};
use crate::{GemvOut, KernelError, Kernels};

/// Most rows of `x` one launch takes (8 tiles of 8 tokens).
pub const SKINNY_MAX_ROWS: usize = 64;
/// Output columns per block; `n` must be a multiple of it.
pub const SKINNY_COLS: usize = 32;
/// `k` must be a multiple of the 32-wide chunks the warps split.
pub const SKINNY_K_STEP: usize = 32;
const WARPS: u32 = 8;

/// Whether [`Kernels::skinny_gemm`] takes these sizes.
pub fn skinny_supports(rows: usize, n: usize, k: usize) -> bool {
    (1..=SKINNY_MAX_ROWS).contains(&rows)
        && n > 0
        && n.is_multiple_of(SKINNY_COLS)
        && k > 0
        && k.is_multiple_of(SKINNY_K_STEP)
}

impl Kernels {
    /// `y[m, n] = sum_k x[m, k] * w[n, k]` for `rows = x.len() / k` rows (1..=64) on tensor
    /// cores: `x` bf16 `[rows, k]`, `w` bf16 `[n, k]` (row-major), `y` `[rows, n]`, f32
    /// accumulation. `n` must be a multiple of 32 and `k` of 32 ([`skinny_supports`]).
    pub fn skinny_gemm<O: GemvOut>(
        &self,
        stream: &CudaStream,
        y: &mut CudaViewMut<'_, O>,
        x: &CudaView<'_, bf16>,
        w: &CudaView<'_, bf16>,
        n: usize,
        k: usize,
    ) -> Result<(), KernelError> {
        const K: &str = "skinny_gemm";
        ensure(K, k > 0 && x.len().is_multiple_of(k), || {
            format!("x has {} elements, not [rows, {k}]", x.len())
        })?;
        let rows = x.len() / k;
        ensure(K, skinny_supports(rows, n, k), || {
            format!(
                "rows {rows} (1..={SKINNY_MAX_ROWS}), n {n} (multiple of {SKINNY_COLS}), \
                 k {k} (multiple of {SKINNY_K_STEP})"
            )
        })?;
        expect_len(K, "w", w.len(), n * k)?;
        expect_len(K, "y", y.len(), rows * n)?;
        let (m32, n32, k32) = (
            to_u32(K, "rows", rows)?,
            to_u32(K, "n", n)?,
            to_u32(K, "k", k)?,
        );
        let (yp, _g0) = y.device_ptr_mut(stream);
        let (xp, _g1) = x.device_ptr(stream);
        let (wp, _g2) = w.device_ptr(stream);
        let name = format!("skinny_{}_t{}", O::NAME, rows.div_ceil(8));
        let mut b = stream.launch_builder(self.func(&name)?);
        b.arg(&yp).arg(&xp).arg(&wp).arg(&m32).arg(&n32).arg(&k32);
        let cfg = LaunchConfig {
            grid_dim: (n32 / SKINNY_COLS as u32, 1, 1),
            block_dim: (WARPS * 32, 1, 1),
            shared_mem_bytes: 0,
        };
        // SAFETY: lengths checked above match the kernel's indexing (32 columns a block, rows
        // below `rows` read and written).
        unsafe { b.launch(cfg) }?;
        Ok(())
    }
}
