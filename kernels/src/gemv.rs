//! Wrapper of the skinny matrix products for decode steps (cuda/gemv.cu).

use cudarc::driver::{
    CudaStream, CudaView, CudaViewMut, DevicePtr, DevicePtrMut, DeviceRepr, LaunchConfig,
};
use half::bf16;

use crate::error::{ensure, expect_len, to_u32};
use crate::{KernelError, Kernels};

/// Most rows of `x` one GEMV launch takes; larger steps belong to cuBLAS's GEMMs.
pub const GEMV_MAX_ROWS: usize = 32;
/// Most rows of the tensor-core kernels that keep x in registers (`gemv_*_m2`..`m16`); 17-24
/// rows run `gemv_*_m24`, 25-32 `gemv_*_m32`, which stage x through shared memory.
const GEMV_REG_ROWS: usize = 16;
/// Output columns from which [`Kernels::gemv_mma_cols`] gives the tensor-core kernel 32
/// columns a block instead of 16 (half the re-reads of x, but half the blocks) at 1-16 rows.
/// Never, today: on an H100 (linear_bench, 2026-11-26) 16 columns were as fast or faster for
/// every Llama-3-8B shape at 1-16 rows (gate/up at 1 row 77.5 against 78.8 us, lm_head 335
/// against 339 us); the 32-column variant stays for the benchmark and for other shapes.
const GEMV_WIDE_MIN_N: Option<usize> = None;
/// Rows from which [`Kernels::gemv_mma_cols`] gives 32 columns a block whatever `n`. 17: at
/// 17-32 rows the 16-column variant re-reads x (M * 128 bytes a 64-k step) at 1.5-2x the
/// weights' bytes, and the 32-column one keeps 8 weight loads in flight a lane against 4 (x in
/// shared memory, gemv.cu; both run 2 blocks an SM). Not yet measured: compare `mma16` with
/// `mma32` at 24 and 32 rows in linear_bench.
const GEMV_WIDE_MIN_ROWS: usize = 17;
/// Rows from which [`Kernels::gemv`] runs the tensor-core kernel; fewer go to the warp kernel
/// (one warp per column). From 1: on an H100 the tensor-core kernel read a Llama-3-8B layer at
/// 1 row at 97.6% of copy bandwidth against the warp kernel's 94.7% (148.3 against 152.8 us).
const GEMV_MMA_MIN_ROWS: usize = 1;
/// Warps of a block, both kernels.
const WARPS: u32 = 8;
/// Most rows of [`Kernels::gemv_silu`] (the x-in-registers tensor-core kernel).
const GEMV_SILU_MAX_ROWS: usize = GEMV_REG_ROWS;
/// Rows from which [`Kernels::gemv_silu_cols`] gives 32 columns a block. Every block computes
/// silu(gate) * up of all of x again (two MUFU operations an element: ex2 and the division's
/// reciprocal), once per 16 or 32 weight rows. With 16 columns a block that is 32 MUFU warp
/// instructions per 2 KB of weights at 1-8 rows (one x tile) and 64 at 9-16 (two tiles); at 16
/// MUFU lanes a clock per SM (sm_90) the two tiles would take ~128 clocks per 2 KB, about the
/// ~140 clocks an SM's share of HBM bandwidth takes to deliver them. 32 columns a block halve
/// that. An estimate, not yet measured: compare `gemv_silu_with` at 16 and 32 columns on an
/// H100 at 8, 9 and 16 rows (Llama-3-8B down: n 4096, k 14336).
const GEMV_SILU_WIDE_MIN_ROWS: usize = 9;

/// The `M` of the tensor-core kernel `gemv_*_m{M}` that runs `rows` rows (1..=32). gemv_*_m1 is
/// the warp kernel; gemv_*_m{2..=16} all hold the tensor-core kernel for up to 8 (m2..=m8) or
/// 16 rows, m24 and m32 the one for up to 24 or 32 rows with x in shared memory; all take the
/// row count and columns a block as arguments. So a row count runs through m{max(rows, 2)} up
/// to 16, then m24 or m32.
pub(crate) fn gemv_kernel_m(rows: usize) -> usize {
    match rows {
        0..=GEMV_REG_ROWS => rows.max(2),
        _ => rows.div_ceil(8) * 8,
    }
}

/// The `M` of the kernel `gemv_silu_bf16_m{M}` that runs `rows` rows (1..=16): m8 holds the
/// kernel for one x tile (up to 8 rows), m16 for two.
pub(crate) fn gemv_silu_kernel_m(rows: usize) -> usize {
    if rows <= 8 { 8 } else { 16 }
}

/// The `M`s of every `gemv_silu_bf16_m{M}` kernel (the loader's list).
pub(crate) fn gemv_silu_kernel_ms() -> [usize; 2] {
    [8, 16]
}

/// The `M`s of every `gemv_*_m{M}` kernel (the loader's list): the warp kernel's 1 and every
/// [`gemv_kernel_m`].
pub(crate) fn gemv_kernel_ms() -> Vec<usize> {
    let mut ms = vec![1];
    for rows in 1..=GEMV_MAX_ROWS {
        let m = gemv_kernel_m(rows);
        if !ms.contains(&m) {
            ms.push(m);
        }
    }
    ms
}

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
    /// The kernel [`Kernels::gemv`] runs for `rows` rows and `n` output columns: `None` for the
    /// warp-per-column kernel (1 row), `Some(16)` or `Some(32)` for the tensor-core kernel with
    /// that many output columns a block.
    pub fn gemv_mma_cols(rows: usize, n: usize) -> Option<u32> {
        if rows < GEMV_MMA_MIN_ROWS {
            None
        } else if rows >= GEMV_WIDE_MIN_ROWS || GEMV_WIDE_MIN_N.is_some_and(|min| n >= min) {
            Some(32)
        } else {
            Some(16)
        }
    }

    /// `y[m, n] = sum_k x[m, k] * w[n, k]` for `rows = x.len() / k` rows (1..=32): `x` bf16
    /// `[rows, k]`, `w` bf16 `[n, k]` (row-major, as linear layers store it), `y` `[rows, n]`.
    /// f32 accumulation; `k` must be a multiple of 8 (16-byte loads). Runs the kernel
    /// [`Kernels::gemv_mma_cols`] picks.
    pub fn gemv<O: GemvOut>(
        &self,
        stream: &CudaStream,
        y: &mut CudaViewMut<'_, O>,
        x: &CudaView<'_, bf16>,
        w: &CudaView<'_, bf16>,
        n: usize,
        k: usize,
    ) -> Result<(), KernelError> {
        let rows = x.len().checked_div(k).unwrap_or(0);
        self.gemv_with(stream, y, x, w, n, k, Self::gemv_mma_cols(rows, n))
    }

    /// [`Kernels::gemv`] on a chosen kernel (benchmarks, tests): `mma_cols` `None` for the warp
    /// kernel (1 row only), `Some(16)` or `Some(32)` for the tensor-core kernel (1..=32 rows).
    #[allow(clippy::too_many_arguments)]
    pub fn gemv_with<O: GemvOut>(
        &self,
        stream: &CudaStream,
        y: &mut CudaViewMut<'_, O>,
        x: &CudaView<'_, bf16>,
        w: &CudaView<'_, bf16>,
        n: usize,
        k: usize,
        mma_cols: Option<u32>,
    ) -> Result<(), KernelError> {
        const K: &str = "gemv";
        ensure(K, k > 0 && k.is_multiple_of(8), || {
            format!("k = {k} must be a positive multiple of 8")
        })?;
        ensure(K, n > 0, || "n = 0".to_string())?;
        expect_len(K, "w", w.len(), n * k)?;
        ensure(K, x.len().is_multiple_of(k), || {
            format!("x has {} elements, not [rows, {k}]", x.len())
        })?;
        let rows = x.len() / k;
        let max = if mma_cols.is_some() { GEMV_MAX_ROWS } else { 1 };
        ensure(K, (1..=max).contains(&rows), || {
            format!("{rows} rows; 1..={max} supported by this kernel ({mma_cols:?})")
        })?;
        ensure(K, matches!(mma_cols, None | Some(16) | Some(32)), || {
            format!("{mma_cols:?} columns a block; 16 or 32")
        })?;
        expect_len(K, "y", y.len(), rows * n)?;
        let (n32, k32, rows32) = (
            to_u32(K, "n", n)?,
            to_u32(K, "k", k)?,
            to_u32(K, "rows", rows)?,
        );
        let (name, cols, per_block) = match mma_cols {
            None => (format!("gemv_{}_m1", O::NAME), 0u32, WARPS),
            Some(c) => (format!("gemv_{}_m{}", O::NAME, gemv_kernel_m(rows)), c, c),
        };
        // SAFETY: lengths checked above match the kernels' indexing: the warp kernel takes one
        // column a warp, the tensor-core kernel `cols` columns a block (rows past `n` are read
        // as row n - 1 and not written) and `rows <= 8 * MT` rows of x (`gemv_kernel_m(rows)`
        // >= rows; m24 / m32 read x rows past `rows` as row 0 and do not write them).
        unsafe { self.launch_gemv(stream, &name, y, x, w, [n32, k32, rows32, cols], per_block) }
    }

    /// Columns a block [`Kernels::gemv_silu`] runs for `rows` rows: 16, or 32 from
    /// `GEMV_SILU_WIDE_MIN_ROWS` (9) rows, where each block's recomputation of silu(gate) * up
    /// would otherwise cost about as much time as its weights take to arrive.
    pub fn gemv_silu_cols(rows: usize) -> u32 {
        if rows >= GEMV_SILU_WIDE_MIN_ROWS {
            32
        } else {
            16
        }
    }

    /// Most rows [`Kernels::gemv_silu`] takes.
    pub const GEMV_SILU_MAX_ROWS: usize = GEMV_SILU_MAX_ROWS;

    /// The down projection of an MLP over its gate/up output, without the `silu_mul` kernel:
    /// `y[m, n] = sum_k bf16(silu(g[m, k]) * u[m, k]) * w[n, k]` with `gate_up` bf16
    /// `[rows, 2k]` (gate in columns `0..k`, up in `k..2k`, as [`Kernels::silu_mul`] reads it),
    /// `w` bf16 `[n, k]`, `y` bf16 `[rows, n]`, for `rows = gate_up.len() / 2k` rows (1..=16).
    /// The activation is computed as `silu_mul` computes it (f32, rounded to bf16), so `y` equals
    /// `silu_mul` followed by [`Kernels::gemv`] bit for bit. `k` must be a multiple of 8.
    pub fn gemv_silu(
        &self,
        stream: &CudaStream,
        y: &mut CudaViewMut<'_, bf16>,
        gate_up: &CudaView<'_, bf16>,
        w: &CudaView<'_, bf16>,
        n: usize,
        k: usize,
    ) -> Result<(), KernelError> {
        let rows = gate_up.len().checked_div(2 * k).unwrap_or(0);
        self.gemv_silu_with(stream, y, gate_up, w, n, k, Self::gemv_silu_cols(rows))
    }

    /// [`Kernels::gemv_silu`] with a chosen number of columns a block (16 or 32; benchmarks,
    /// tests).
    #[allow(clippy::too_many_arguments)]
    pub fn gemv_silu_with(
        &self,
        stream: &CudaStream,
        y: &mut CudaViewMut<'_, bf16>,
        gate_up: &CudaView<'_, bf16>,
        w: &CudaView<'_, bf16>,
        n: usize,
        k: usize,
        cols: u32,
    ) -> Result<(), KernelError> {
        const K: &str = "gemv_silu";
        ensure(K, k > 0 && k.is_multiple_of(8), || {
            format!("k = {k} must be a positive multiple of 8")
        })?;
        ensure(K, n > 0, || "n = 0".to_string())?;
        expect_len(K, "w", w.len(), n * k)?;
        ensure(K, gate_up.len().is_multiple_of(2 * k), || {
            format!(
                "gate_up has {} elements, not [rows, 2 * {k}]",
                gate_up.len()
            )
        })?;
        let rows = gate_up.len() / (2 * k);
        ensure(K, (1..=GEMV_SILU_MAX_ROWS).contains(&rows), || {
            format!("{rows} rows; 1..={GEMV_SILU_MAX_ROWS} supported")
        })?;
        ensure(K, matches!(cols, 16 | 32), || {
            format!("{cols} columns a block; 16 or 32")
        })?;
        expect_len(K, "y", y.len(), rows * n)?;
        let (n32, k32, rows32) = (
            to_u32(K, "n", n)?,
            to_u32(K, "k", k)?,
            to_u32(K, "rows", rows)?,
        );
        let name = format!("gemv_silu_bf16_m{}", gemv_silu_kernel_m(rows));
        // SAFETY: lengths checked above match the kernel's indexing: `cols` columns a block
        // (rows past `n` are read as row n - 1 and not written), rows m < `rows` <= 8 * MT of
        // gate_up read at m * 2k + c (gate) and m * 2k + k + c (up) for c < k, as in `gemv`.
        unsafe { self.launch_gemv(stream, &name, y, gate_up, w, [n32, k32, rows32, cols], cols) }
    }

    /// Launches `gemv_*` kernel `name` with arguments `(y, x, w, n, k, rows, cols)` on
    /// `n / per_block` blocks (rounded up) of [`WARPS`] warps.
    ///
    /// # Safety
    /// The buffers must hold what the kernel reads and writes for these sizes.
    #[allow(clippy::too_many_arguments)]
    unsafe fn launch_gemv<O: DeviceRepr>(
        &self,
        stream: &CudaStream,
        name: &str,
        y: &mut CudaViewMut<'_, O>,
        x: &CudaView<'_, bf16>,
        w: &CudaView<'_, bf16>,
        [n32, k32, rows32, cols]: [u32; 4],
        per_block: u32,
    ) -> Result<(), KernelError> {
        let (yp, _g0) = y.device_ptr_mut(stream);
        let (xp, _g1) = x.device_ptr(stream);
        let (wp, _g2) = w.device_ptr(stream);
        let mut b = self.dependent_launch(stream, name)?;
        b.arg(&yp)
            .arg(&xp)
            .arg(&wp)
            .arg(&n32)
            .arg(&k32)
            .arg(&rows32)
            .arg(&cols);
        let cfg = LaunchConfig {
            grid_dim: (n32.div_ceil(per_block), 1, 1),
            block_dim: (WARPS * 32, 1, 1),
            shared_mem_bytes: 0,
        };
        // SAFETY: the caller's.
        unsafe { b.launch(cfg) }?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kernel_m_covers_its_rows() {
        for rows in 1..=GEMV_MAX_ROWS {
            let m = gemv_kernel_m(rows);
            assert!(m >= rows && m >= 2, "{rows} rows on m{m}");
            assert!(gemv_kernel_ms().contains(&m));
        }
        assert_eq!(gemv_kernel_m(16), 16);
        assert_eq!(gemv_kernel_m(17), 24);
        assert_eq!(gemv_kernel_m(24), 24);
        assert_eq!(gemv_kernel_m(25), 32);
        assert_eq!(gemv_kernel_m(32), 32);
        let mut want: Vec<usize> = (1..=16).collect();
        want.extend([24, 32]);
        assert_eq!(gemv_kernel_ms(), want);
    }

    #[test]
    fn silu_kernel_m_covers_its_rows() {
        for rows in 1..=GEMV_SILU_MAX_ROWS {
            let m = gemv_silu_kernel_m(rows);
            assert!(
                m >= rows && gemv_silu_kernel_ms().contains(&m),
                "{rows} rows on m{m}"
            );
        }
        assert_eq!(gemv_silu_kernel_m(8), 8);
        assert_eq!(gemv_silu_kernel_m(9), 16);
    }
}
