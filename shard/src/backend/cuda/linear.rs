//! Linear layers, `y[rows, n] = x[rows, k] @ w[n, k]^T`: our GEMV for decode steps of up to
//! [`GEMV_ROWS`] rows, cuBLAS's GEMMs for everything larger.
//!
//! Measured per Llama-3-8B layer on an H100 (2026-11-26, `kernels/examples/linear_bench.rs`,
//! share of copy bandwidth), before the tensor-core GEMV: the warp-per-column GEMV 92% at 1 row,
//! 86% at 2, 80% at 4, 51% at 8; cuBLAS 82-86% from 1 to 64 rows. A first tensor-core skinny
//! GEMM (mma.sync, weights loaded straight in fragment layout: half of each 128-byte line per
//! load instruction) reached only 77% at 1-8 rows and was dropped. The GEMV is a tensor-core one
//! again, with whole-line weight loads (`kernels/cuda/gemv.cu`): 97.6% at 1 row, 96.7% at 8,
//! 93.9% at 16 (H100, 2026-11-26), against cuBLAS's 84.3% at 16, 84.2% at 24, 83.9% at 32.

use std::sync::{Arc, OnceLock};

use cudarc::driver::{CudaSlice, CudaStream};
use half::bf16;
use pagedserve_kernels::{GEMV_MAX_ROWS, GemvOut, Kernels};

use super::device::cuda_err;
use super::gemm::{Gemm, OutType};
use super::ops::ptr;
use crate::backend::BackendResult;

/// Steps of at most this many rows use the GEMV kernel (`PAGEDSERVE_CUDA_GEMV_ROWS` overrides,
/// see [`gemv_rows`]). 32 covers the CUDA-graph buckets 1, 2, 4, 8, 16, 24 and 32: the
/// tensor-core GEMV reads weights at 94-98% of copy bandwidth at 1-16 rows against cuBLAS's
/// 84%, and at 86% at 24 and 32 rows (x through shared memory) against cuBLAS's 83% (H100,
/// `linear_bench`, 2026-11-26; only 2-3% ahead there, and noisy between runs).
/// It was 16 before the 17-32-row kernels; before the tensor-core GEMV it was 2: decode steps
/// of a Llama-3-8B shape on an H100 (2026-11-26, `cuda_bench`, context 1k): 1 row 5.91 ms with
/// the GEMV against 6.34 with cuBLAS; 4 rows 6.99 against 6.63 with cuBLAS, because every warp
/// of the warp-per-column GEMV re-read all of x for its one column.
pub(super) const GEMV_ROWS: usize = 32;
const _: () = assert!(GEMV_ROWS <= GEMV_MAX_ROWS);

/// The most rows a step may have to go through the GEMV: [`GEMV_ROWS`], or
/// `PAGEDSERVE_CUDA_GEMV_ROWS` (a row count, capped at the kernel's 32; 0: cuBLAS for every
/// step, as `PAGEDSERVE_CUDA_GEMV=0`; read once, so set it before the model loads its decode
/// graphs). An unparsable value leaves the default.
fn gemv_rows() -> usize {
    static ROWS: OnceLock<usize> = OnceLock::new();
    *ROWS.get_or_init(|| {
        std::env::var("PAGEDSERVE_CUDA_GEMV_ROWS")
            .ok()
            .and_then(|v| v.trim().parse::<usize>().ok())
            .map_or(GEMV_ROWS, |n| n.min(GEMV_MAX_ROWS))
    })
}

/// What a linear layer may run on.
#[derive(Clone, Copy)]
pub(super) struct Linear<'a> {
    pub gemm: &'a Gemm,
    pub kernels: &'a Kernels,
    /// Our GEMV for steps of up to [`gemv_rows`] rows (`PAGEDSERVE_CUDA_GEMV=0`: cuBLAS for
    /// every step).
    pub gemv: bool,
}

impl Linear<'_> {
    /// Whether a product of `rows` rows and inner size `k` runs on our GEMV kernel (which the
    /// fused epilogues of `Kernels::gemv_rope_kv` and friends need).
    pub fn on_gemv(&self, rows: usize, k: usize) -> bool {
        self.gemv && rows <= gemv_rows() && k.is_multiple_of(8)
    }
}

/// `y[rows, n] = x[rows, k] @ w[n, k]^T`.
#[allow(clippy::too_many_arguments)]
pub(super) fn linear<O: GemvOut>(
    lin: Linear<'_>,
    s: &Arc<CudaStream>,
    y: &mut CudaSlice<O>,
    x: &CudaSlice<bf16>,
    w: &CudaSlice<bf16>,
    rows: usize,
    n: usize,
    k: usize,
) -> BackendResult<()> {
    if lin.on_gemv(rows, k) {
        return lin
            .kernels
            .gemv(
                s,
                &mut y.slice_mut(..rows * n),
                &x.slice(..rows * k),
                &w.as_view(),
                n,
                k,
            )
            .map_err(cuda_err("gemv"));
    }
    let out = match O::NAME {
        "f32" => OutType::F32,
        _ => OutType::Bf16,
    };
    lin.gemm.matmul(s, x, w, ptr(y, s), out, rows, n, k)
}
