//! Linear layers, `y[rows, n] = x[rows, k] @ w[n, k]^T`, on whichever kernel suits the step:
//! our GEMV for one or two rows, our tensor-core skinny GEMM for small decode batches, and
//! cuBLAS's GEMMs for everything larger (prefill chunks, big decode batches), where they run
//! compute-bound near the tensor cores' rate.

use std::sync::{Arc, OnceLock};

use cudarc::driver::{CudaSlice, CudaStream};
use half::bf16;
use pagedserve_kernels::{GEMV_MAX_ROWS, GemvOut, Kernels, SKINNY_MAX_ROWS, skinny_supports};

use super::device::cuda_err;
use super::gemm::{Gemm, OutType};
use super::ops::ptr;
use crate::backend::BackendResult;

/// Steps of at most this many rows use the GEMV kernel. Decode steps of a Llama-3-8B shape on
/// an H100 (2026-11-26, `cuda_bench`, context 1k): 1 row 5.91 ms with the GEMV against 6.34
/// with cuBLAS; 4 rows 6.99 against 6.63 with cuBLAS, because every GEMV warp re-reads all of x
/// for its one column (a variant staging x in shared memory was slower still).
const GEMV_ROWS: usize = 2;
const _: () = assert!(GEMV_ROWS <= GEMV_MAX_ROWS);

/// Default for the largest step the skinny GEMM takes (`PAGEDSERVE_CUDA_SKINNY_ROWS`, 0 = off);
/// above it cuBLAS's GEMMs are as fast, since the products stop being purely memory-bound.
const SKINNY_ROWS_DEFAULT: usize = 32;

fn skinny_rows() -> usize {
    static ROWS: OnceLock<usize> = OnceLock::new();
    *ROWS.get_or_init(|| {
        std::env::var("PAGEDSERVE_CUDA_SKINNY_ROWS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(SKINNY_ROWS_DEFAULT)
            .min(SKINNY_MAX_ROWS)
    })
}

/// What a linear layer may run on.
#[derive(Clone, Copy)]
pub(super) struct Linear<'a> {
    pub gemm: &'a Gemm,
    pub kernels: &'a Kernels,
    /// Our own kernels for small steps (`PAGEDSERVE_CUDA_GEMV=0`: cuBLAS for every step).
    pub gemv: bool,
}

/// `y[rows, n] = x[rows, k] @ w[n, k]^T` (cuBLAS reaches only 60-85% of memory bandwidth on
/// the skinny shapes of decode steps, hence our kernels there).
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
    if lin.gemv && rows <= GEMV_ROWS && k.is_multiple_of(8) {
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
    if lin.gemv && rows <= skinny_rows() && skinny_supports(rows, n, k) {
        return lin
            .kernels
            .skinny_gemm(
                s,
                &mut y.slice_mut(..rows * n),
                &x.slice(..rows * k),
                &w.as_view(),
                n,
                k,
            )
            .map_err(cuda_err("skinny gemm"));
    }
    let out = match O::NAME {
        "f32" => OutType::F32,
        _ => OutType::Bf16,
    };
    lin.gemm.matmul(s, x, w, ptr(y, s), out, rows, n, k)
}
