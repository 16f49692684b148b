//! Wrapper of the projection-bias add (cuda/bias.cu).

use cudarc::driver::{CudaStream, CudaView, CudaViewMut, DevicePtr, DevicePtrMut};
use half::bf16;

use crate::error::{ensure, to_u32};
use crate::{KernelError, Kernels, grid_for};

impl Kernels {
    /// `x[t, n] += bias[n]` for `x` bf16 `[rows, n]`, `n = bias.len()` (even).
    pub fn add_bias(
        &self,
        stream: &CudaStream,
        x: &mut CudaViewMut<'_, bf16>,
        bias: &CudaView<'_, f32>,
    ) -> Result<(), KernelError> {
        const K: &str = "add_bias";
        let n = bias.len();
        ensure(K, n > 0 && n.is_multiple_of(2), || {
            format!("bias has {n} elements; a positive even count is needed")
        })?;
        ensure(K, x.len().is_multiple_of(n), || {
            format!("x has {} elements, not [rows, {n}]", x.len())
        })?;
        let rows = (x.len() / n) as u64;
        if rows == 0 {
            return Ok(());
        }
        let n32 = to_u32(K, "n", n)?;
        let cfg = grid_for(x.len() / 2, 256);
        let (xp, _g0) = x.device_ptr_mut(stream);
        let (bp, _g1) = bias.device_ptr(stream);
        let mut b = self.dependent_launch(stream, "add_bias_kernel")?;
        b.arg(&xp).arg(&bp).arg(&n32).arg(&rows);
        // SAFETY: the kernel touches pairs below rows * n / 2 = x.len() / 2 and bias below n.
        unsafe { b.launch(cfg) }?;
        Ok(())
    }
}
