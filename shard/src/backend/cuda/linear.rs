//! Linear layers, `y[rows, n] = x[rows, k] @ w[n, k]^T`: our GEMV for one or two rows, cuBLAS's
//! GEMMs for everything larger.
//!
//! Measured per Llama-3-8B layer on an H100 (2026-11-26, `kernels/examples/linear_bench.rs`,
//! share of copy bandwidth): the GEMV 92% at 1 row, 86% at 2; cuBLAS 86% from 1 to 64 rows. A
//! tensor-core skinny GEMM of ours (mma.sync, x read once per 32 columns, loads of 2-4 chunks in
//! flight per warp) reached only 77% at 1-8 rows and fell to 26% at 64, so it was dropped.

use std::sync::Arc;

use cudarc::driver::{CudaSlice, CudaStream};
use half::bf16;
use pagedserve_kernels::{GEMV_MAX_ROWS, GemvOut, Kernels};

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

/// What a linear layer may run on.
#[derive(Clone, Copy)]
pub(super) struct Linear<'a> {
    pub gemm: &'a Gemm,
    pub kernels: &'a Kernels,
    /// Our GEMV for one or two rows (`PAGEDSERVE_CUDA_GEMV=0`: cuBLAS for every step).
    pub gemv: bool,
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
    let out = match O::NAME {
        "f32" => OutType::F32,
        _ => OutType::Bf16,
    };
    lin.gemm.matmul(s, x, w, ptr(y, s), out, rows, n, k)
}
