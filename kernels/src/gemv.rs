//! Wrapper of the skinny matrix products for decode steps (cuda/gemv.cu).

use cudarc::driver::{
    CudaStream, CudaView, CudaViewMut, DevicePtr, DevicePtrMut, DeviceRepr, LaunchConfig,
};
use half::bf16;

use crate::error::{ensure, expect_len, to_u32};
use crate::rope::RopeKv;
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
/// shared memory, gemv.cu; both run 2 blocks an SM). Measured (H100, linear_bench, 2026-11-26):
/// a Llama-3-8B layer at 24 rows in 169.3 us with 32 columns against 177.9 with 16; at 32 rows
/// 170.0 against 205.7.
const GEMV_WIDE_MIN_ROWS: usize = 17;
/// Rows from which [`Kernels::gemv`] runs the tensor-core kernel; fewer go to the warp kernel
/// (one warp per column). From 1: on an H100 the tensor-core kernel read a Llama-3-8B layer at
/// 1 row at 97.6% of copy bandwidth against the warp kernel's 94.7% (148.3 against 152.8 us).
const GEMV_MMA_MIN_ROWS: usize = 1;
/// Warps of a block, both kernels.
const WARPS: u32 = 8;

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

/// The fused-epilogue kernels (the loader's list): `gemv_rope_m{M}` for every tensor-core `M`.
pub(crate) fn gemv_fused_kernel_names() -> Vec<String> {
    let ms = gemv_kernel_ms().into_iter().filter(|&m| m > 1);
    ms.map(|m| format!("gemv_rope_m{m}")).collect()
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
        let max = if mma_cols.is_some() { GEMV_MAX_ROWS } else { 1 };
        let rows = gemv_rows(K, x.len(), w.len(), n, k, max)?;
        ensure(K, matches!(mma_cols, None | Some(16) | Some(32)), || {
            format!("{mma_cols:?} columns a block; 16 or 32")
        })?;
        expect_len(K, "y", y.len(), rows * n)?;
        let name = match mma_cols {
            None => format!("gemv_{}_m1", O::NAME),
            Some(_) => format!("gemv_{}_m{}", O::NAME, gemv_kernel_m(rows)),
        };
        let (yp, _g0) = y.device_ptr_mut(stream);
        // SAFETY: `y` holds rows * n elements, as the kernels write.
        unsafe { self.gemv_launch(stream, &name, yp, x, w, n, k, rows, mma_cols, None) }
    }

    /// [`Kernels::gemv`] of the QKV projection with RoPE and the KV-cache write done on its
    /// sums, as [`Kernels::rope_kv_write`] does after it: `qkv` bf16 `[rows, (H + 2 KVH) D]`
    /// gets q and k rotated and v; k and v go to slot `rope.slots[t]` of the caches. 1..=32
    /// rows.
    pub fn gemv_rope_kv(
        &self,
        stream: &CudaStream,
        qkv: &mut CudaViewMut<'_, bf16>,
        x: &CudaView<'_, bf16>,
        w: &CudaView<'_, bf16>,
        k: usize,
        rope: &mut RopeKv<'_>,
    ) -> Result<(), KernelError> {
        const K: &str = "gemv_rope_kv";
        let n = rope.heads.stride();
        let rows = gemv_rows(K, x.len(), w.len(), n, k, GEMV_MAX_ROWS)?;
        let g = rope.check(K, qkv.len(), rows)?;
        let (yp, _g0) = qkv.device_ptr_mut(stream);
        let p = rope.ptrs(stream);
        let [kc, vc, pos, slots, cos, sin] = p.ptrs;
        let epi = GemvEpi {
            kc,
            vc,
            pos,
            slots,
            cos,
            sin,
            num_slots: g.num_slots,
            h: g.h,
            kvh: g.kvh,
            d: g.d,
            rope_half: g.rope_half,
            block_size: g.block_size,
            max_pos: g.max_pos,
        };
        let name = format!("gemv_rope_m{}", gemv_kernel_m(rows));
        let cols = Self::gemv_mma_cols(rows, n);
        // SAFETY: `qkv` holds rows * n elements; the caches and tables were checked by
        // `rope.check` (slots past the cache are not written, positions clamped).
        unsafe { self.gemv_launch(stream, &name, yp, x, w, n, k, rows, cols, Some(epi)) }
    }

    /// Launches GEMV kernel `name` (checked shapes) writing `yp`, with the fused epilogue's
    /// arguments when it has one.
    ///
    /// # Safety
    /// `yp` must point to as many elements as kernel `name` writes for `rows` and `n`, and
    /// `epi`'s pointers to buffers its epilogue may touch.
    #[allow(clippy::too_many_arguments)]
    unsafe fn gemv_launch(
        &self,
        stream: &CudaStream,
        name: &str,
        yp: u64,
        x: &CudaView<'_, bf16>,
        w: &CudaView<'_, bf16>,
        n: usize,
        k: usize,
        rows: usize,
        mma_cols: Option<u32>,
        epi: Option<GemvEpi>,
    ) -> Result<(), KernelError> {
        const K: &str = "gemv";
        let (n32, k32, rows32) = (
            to_u32(K, "n", n)?,
            to_u32(K, "k", k)?,
            to_u32(K, "rows", rows)?,
        );
        let (cols, per_block) = match mma_cols {
            None => (0u32, WARPS),
            Some(c) => (c, c),
        };
        ensure(K, epi.is_none() || mma_cols.is_some(), || {
            format!("{name}: a fused epilogue needs the tensor-core kernel")
        })?;
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
        if let Some(e) = epi.as_ref() {
            b.arg(e);
        }
        let cfg = LaunchConfig {
            grid_dim: (n32.div_ceil(per_block), 1, 1),
            block_dim: (WARPS * 32, 1, 1),
            shared_mem_bytes: 0,
        };
        // SAFETY: x and w hold [rows, k] and [n, k] (gemv_rows); the caller vouches for y and
        // the epilogue. The warp kernel takes one column a warp, the tensor-core kernel `cols`
        // columns a block (rows past `n` are read as row n - 1 and not written) and `rows <= 8 *
        // MT` rows of x (`gemv_kernel_m(rows)` >= rows; m24 / m32 read x rows past `rows` as row
        // 0 and do not write them).
        unsafe { b.launch(cfg) }?;
        Ok(())
    }
}

/// Checks `x` `[rows, k]` and `w` `[n, k]` for a GEMV of 1..=`max_rows` rows; returns rows.
fn gemv_rows(
    kernel: &'static str,
    x_len: usize,
    w_len: usize,
    n: usize,
    k: usize,
    max_rows: usize,
) -> Result<usize, KernelError> {
    ensure(kernel, k > 0 && k.is_multiple_of(8), || {
        format!("k = {k} must be a positive multiple of 8")
    })?;
    ensure(kernel, n > 0, || "n = 0".to_string())?;
    expect_len(kernel, "w", w_len, n * k)?;
    ensure(kernel, x_len.is_multiple_of(k), || {
        format!("x has {x_len} elements, not [rows, {k}]")
    })?;
    let rows = x_len / k;
    ensure(kernel, (1..=max_rows).contains(&rows), || {
        format!("{rows} rows; 1..={max_rows} supported by this kernel")
    })?;
    Ok(rows)
}

/// Mirrors `struct GemvEpi` in gemv.cu field by field.
#[repr(C)]
#[derive(Clone, Copy)]
struct GemvEpi {
    kc: u64,
    vc: u64,
    pos: u64,
    slots: u64,
    cos: u64,
    sin: u64,
    num_slots: u64,
    h: u32,
    kvh: u32,
    d: u32,
    rope_half: u32,
    block_size: u32,
    max_pos: u32,
}

// SAFETY: plain numbers and device addresses, laid out as the kernels' struct.
unsafe impl DeviceRepr for GemvEpi {}

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
}
