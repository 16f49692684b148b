//! Wrappers of the row-wise and elementwise kernels (cuda/elementwise.cu).

use cudarc::driver::{
    CudaStream, CudaView, CudaViewMut, DevicePtr, DevicePtrMut, LaunchConfig, PushKernelArg,
};
use half::bf16;

use crate::error::{ensure, expect_len, to_u32};
use crate::{KernelError, Kernels, grid_for};

/// Threads per row of the row kernels (ROW_THREADS in elementwise.cu).
const ROW_THREADS: u32 = 256;
/// Threads per row of the norms, and the widest row they keep in registers (NORM_THREADS,
/// NORM_ITERS in elementwise.cu).
const NORM_THREADS: u32 = 1024;
const NORM_MAX_HIDDEN: usize = 2 * 1024 * 8;

fn norm_config(rows: usize, hidden: usize) -> Result<LaunchConfig, KernelError> {
    ensure("rms_norm", hidden <= NORM_MAX_HIDDEN, || {
        format!("hidden {hidden} > {NORM_MAX_HIDDEN}")
    })?;
    Ok(LaunchConfig {
        grid_dim: (to_u32("rows", "rows", rows)?, 1, 1),
        block_dim: (NORM_THREADS, 1, 1),
        shared_mem_bytes: 0,
    })
}

fn rows_config(rows: usize) -> Result<LaunchConfig, KernelError> {
    Ok(LaunchConfig {
        grid_dim: (to_u32("rows", "rows", rows)?, 1, 1),
        block_dim: (ROW_THREADS, 1, 1),
        shared_mem_bytes: 0,
    })
}

/// Rows of a `[rows, width]` buffer of `len` elements; width must be even (pair loads).
fn rows_of(
    kernel: &'static str,
    what: &str,
    len: usize,
    width: usize,
) -> Result<usize, KernelError> {
    ensure(kernel, width > 0 && width.is_multiple_of(2), || {
        format!("width {width} must be even and > 0")
    })?;
    ensure(kernel, len.is_multiple_of(width), || {
        format!("{what} has {len} elements, not a multiple of {width}")
    })?;
    Ok(len / width)
}

impl Kernels {
    /// `out f32 [T, hidden] = table bf16 [V, hidden] [tokens[t]]`; T = tokens.len(). Tokens
    /// outside the vocabulary give zero rows.
    pub fn embedding(
        &self,
        stream: &CudaStream,
        out: &mut CudaViewMut<'_, f32>,
        table: &CudaView<'_, bf16>,
        tokens: &CudaView<'_, u32>,
        hidden: usize,
    ) -> Result<(), KernelError> {
        const K: &str = "embedding";
        let vocab = rows_of(K, "table", table.len(), hidden)?;
        let t = tokens.len();
        expect_len(K, "out", out.len(), t * hidden)?;
        if t == 0 {
            return Ok(());
        }
        let (hid, voc) = (to_u32(K, "hidden", hidden)?, to_u32(K, "vocab", vocab)?);
        let (o, _g0) = out.device_ptr_mut(stream);
        let (tb, _g1) = table.device_ptr(stream);
        let (tk, _g2) = tokens.device_ptr(stream);
        let mut b = stream.launch_builder(self.func("embedding_kernel")?);
        b.arg(&o).arg(&tb).arg(&tk).arg(&hid).arg(&voc);
        // SAFETY: sizes checked above match the kernel's indexing.
        unsafe { b.launch(rows_config(t)?) }?;
        Ok(())
    }

    /// `out bf16 [T, hidden] = x * rsqrt(mean(x^2) + eps) * w`; hidden = w.len().
    pub fn rms_norm(
        &self,
        stream: &CudaStream,
        out: &mut CudaViewMut<'_, bf16>,
        x: &CudaView<'_, f32>,
        w: &CudaView<'_, f32>,
        eps: f32,
    ) -> Result<(), KernelError> {
        const K: &str = "rms_norm";
        let hidden = w.len();
        let t = rows_of(K, "x", x.len(), hidden)?;
        expect_len(K, "out", out.len(), t * hidden)?;
        if t == 0 {
            return Ok(());
        }
        let hid = to_u32(K, "hidden", hidden)?;
        let (o, _g0) = out.device_ptr_mut(stream);
        let (xp, _g1) = x.device_ptr(stream);
        let (wp, _g2) = w.device_ptr(stream);
        let mut b = self.dependent_launch(stream, "rms_norm_kernel")?;
        b.arg(&o).arg(&xp).arg(&wp).arg(&hid).arg(&eps);
        // SAFETY: sizes checked above.
        unsafe { b.launch(norm_config(t, hidden)?) }?;
        Ok(())
    }

    /// Fused residual add + RMSNorm: `x += delta; out = bf16(x * rsqrt(mean(x^2) + eps) * w)`.
    pub fn add_rms_norm(
        &self,
        stream: &CudaStream,
        x: &mut CudaViewMut<'_, f32>,
        delta: &CudaView<'_, bf16>,
        out: &mut CudaViewMut<'_, bf16>,
        w: &CudaView<'_, f32>,
        eps: f32,
    ) -> Result<(), KernelError> {
        const K: &str = "add_rms_norm";
        let hidden = w.len();
        let t = rows_of(K, "x", x.len(), hidden)?;
        expect_len(K, "delta", delta.len(), t * hidden)?;
        expect_len(K, "out", out.len(), t * hidden)?;
        if t == 0 {
            return Ok(());
        }
        let hid = to_u32(K, "hidden", hidden)?;
        let (xp, _g0) = x.device_ptr_mut(stream);
        let (dp, _g1) = delta.device_ptr(stream);
        let (o, _g2) = out.device_ptr_mut(stream);
        let (wp, _g3) = w.device_ptr(stream);
        let mut b = self.dependent_launch(stream, "add_rms_norm_kernel")?;
        b.arg(&xp).arg(&dp).arg(&o).arg(&wp).arg(&hid).arg(&eps);
        // SAFETY: sizes checked above.
        unsafe { b.launch(norm_config(t, hidden)?) }?;
        Ok(())
    }

    /// `out bf16 [T, I] = silu(gate_up[:, :I]) * gate_up[:, I:]`, gate_up bf16 [T, 2I].
    pub fn silu_mul(
        &self,
        stream: &CudaStream,
        out: &mut CudaViewMut<'_, bf16>,
        gate_up: &CudaView<'_, bf16>,
        intermediate: usize,
    ) -> Result<(), KernelError> {
        const K: &str = "silu_mul";
        let t = rows_of(K, "gate_up", gate_up.len(), 2 * intermediate)?;
        ensure(K, intermediate.is_multiple_of(2), || {
            format!("intermediate {intermediate} must be even")
        })?;
        expect_len(K, "out", out.len(), t * intermediate)?;
        if t == 0 {
            return Ok(());
        }
        let (inter, rows) = (to_u32(K, "intermediate", intermediate)?, t as u64);
        let (o, _g0) = out.device_ptr_mut(stream);
        let (g, _g1) = gate_up.device_ptr(stream);
        let mut b = self.dependent_launch(stream, "silu_mul_kernel")?;
        b.arg(&o).arg(&g).arg(&inter).arg(&rows);
        // One thread per 8 elements where the kernel takes them 8 at a time, else per 2.
        let per_thread = if intermediate.is_multiple_of(8) { 8 } else { 2 };
        // SAFETY: sizes checked above.
        unsafe { b.launch(grid_for(t * intermediate / per_thread, 256)) }?;
        Ok(())
    }

    /// Fills `out` with uniform values in `[-scale, scale]` (up to bf16 rounding) from a hash of
    /// (seed, index): random
    /// dummy weights, never zeros, the same for equal seeds.
    pub fn fill_random_bf16(
        &self,
        stream: &CudaStream,
        out: &mut CudaViewMut<'_, bf16>,
        seed: u64,
        scale: f32,
    ) -> Result<(), KernelError> {
        let n = out.len() as u64;
        if n == 0 {
            return Ok(());
        }
        let (o, _g) = out.device_ptr_mut(stream);
        let mut b = stream.launch_builder(self.func("fill_random_bf16_kernel")?);
        b.arg(&o).arg(&n).arg(&seed).arg(&scale);
        // SAFETY: the kernel writes indices < n = out.len().
        unsafe { b.launch(grid_for(n as usize, 256)) }?;
        Ok(())
    }

    /// Fills `out` with uniform values in `[center - scale, center + scale)` (e.g. norm weights
    /// near 1).
    pub fn fill_random_f32(
        &self,
        stream: &CudaStream,
        out: &mut CudaViewMut<'_, f32>,
        seed: u64,
        center: f32,
        scale: f32,
    ) -> Result<(), KernelError> {
        let n = out.len() as u64;
        if n == 0 {
            return Ok(());
        }
        let (o, _g) = out.device_ptr_mut(stream);
        let mut b = stream.launch_builder(self.func("fill_random_f32_kernel")?);
        b.arg(&o).arg(&n).arg(&seed).arg(&center).arg(&scale);
        // SAFETY: the kernel writes indices < n = out.len().
        unsafe { b.launch(grid_for(n as usize, 256)) }?;
        Ok(())
    }
}
