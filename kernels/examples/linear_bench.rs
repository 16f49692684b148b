//! Linear layers of small decode batches: our GEMV (1-8 rows) and cuBLAS's bf16 GEMM on
//! Llama-3-8B's layer shapes (qkv 6144x4096, o 4096x4096, gate/up 28672x4096, down
//! 4096x14336), for 1..64 rows. Each case rotates over 4 copies of the weight
//! (never an L2 hit between calls), random inputs, CUDA events around back-to-back calls after
//! warm-up, median of 7 samples. Prints GB/s of weight bytes read (what bounds these shapes)
//! as a share of the device's copy bandwidth, and one layer's total time per kernel.
//!
//! Then prefill-sized steps (512, 2048, 8192 rows), where the FLOPs bound: cuBLAS's GEMM (what
//! the engine calls) against cuBLASLt's heuristic pick with a 32 MiB workspace, in TFLOP/s per
//! shape and for the whole layer, to tell how much of a prefill step's ~560 TFLOP/s gap to the
//! H100's 989 is in the GEMMs themselves (`scripts/sharegpt_bound.py` ranks it first).
//! Usage: `linear_bench [ptx-cache-dir]`.

mod common;

use common::{Bench, Res};
use cudarc::cublas::{CudaBlas, Gemm, GemmConfig, sys::cublasOperation_t};
use cudarc::cublaslt::{CudaBlasLT, Matmul, MatmulConfig};
use cudarc::driver::CudaSlice;
use half::bf16;
use pagedserve_kernels::GEMV_MAX_ROWS;

const SHAPES: [(&str, usize, usize); 4] = [
    ("qkv", 6144, 4096),
    ("o", 4096, 4096),
    ("gate_up", 28672, 4096),
    ("down", 4096, 14336),
];
const COPIES: usize = 4;
const REPS: usize = 8;

fn main() -> Res<()> {
    let cache = std::env::args().nth(1).map(std::path::PathBuf::from);
    let b = Bench::new(cache.as_deref(), REPS)?;
    let blas = CudaBlas::new(b.stream.clone())?;
    let copy = b.copy_bandwidth()?;
    println!("copy bandwidth: {copy:.0} GB/s");
    let weights: Vec<Vec<CudaSlice<bf16>>> = SHAPES
        .iter()
        .enumerate()
        .map(|(i, &(_, n, k))| {
            (0..COPIES)
                .map(|c| b.random_bf16(n * k, 100 + (i * COPIES + c) as u64, 0.05))
                .collect()
        })
        .collect::<Res<_>>()?;
    println!("\n| rows | kernel | qkv | o | gate_up | down | layer us | % copy BW |");
    println!("|---|---|---|---|---|---|---|---|");
    for rows in [1, 2, 3, 4, 8, 16, 24, 32, 48, 64] {
        let x = b.random_bf16(rows * 14336, 7, 0.05)?;
        let mut y = b.random_bf16(rows * 28672, 8, 0.05)?;
        for kernel in ["gemv", "cublas"] {
            if kernel == "gemv" && rows > GEMV_MAX_ROWS {
                continue;
            }
            let mut us = Vec::new();
            for (i, &(_, n, kk)) in SHAPES.iter().enumerate() {
                let w = &weights[i];
                let ms = b.time(|call| {
                    let w = &w[call % COPIES];
                    let xs = x.slice(..rows * kk);
                    match kernel {
                        "gemv" => b.k.gemv(
                            &b.stream,
                            &mut y.slice_mut(..rows * n),
                            &xs,
                            &w.as_view(),
                            n,
                            kk,
                        )?,
                        _ => {
                            let mut yv = y.slice_mut(..rows * n);
                            // SAFETY: views sized for this shape.
                            unsafe { blas.gemm(gemm_config(rows, n, kk), w, &xs, &mut yv) }?;
                        }
                    }
                    Ok(())
                })?;
                us.push(ms * 1e3);
            }
            let bytes: f64 = SHAPES.iter().map(|&(_, n, k)| (n * k * 2) as f64).sum();
            let total: f64 = us.iter().sum();
            println!(
                "| {rows} | {kernel} | {:.1} | {:.1} | {:.1} | {:.1} | {total:.1} | {:.1}% |",
                us[0],
                us[1],
                us[2],
                us[3],
                100.0 * bytes / (total * 1e-6) / 1e9 / copy
            );
        }
    }
    prefill(&b, &blas, &weights)
}

/// cuBLAS's `y[rows, n] = x[rows, k] @ w[n, k]^T`, as the engine's `Gemm::matmul` calls it:
/// column-major `y^T = w^T x^T`.
fn gemm_config(rows: usize, n: usize, k: usize) -> GemmConfig<bf16> {
    GemmConfig {
        transa: cublasOperation_t::CUBLAS_OP_T,
        transb: cublasOperation_t::CUBLAS_OP_N,
        m: n as i32,
        n: rows as i32,
        k: k as i32,
        alpha: bf16::ONE,
        lda: k as i32,
        ldb: k as i32,
        beta: bf16::ZERO,
        ldc: n as i32,
    }
}

/// Prefill-sized GEMMs: TFLOP/s of cuBLAS and cuBLASLt per shape and per layer.
fn prefill(b: &Bench, blas: &CudaBlas, weights: &[Vec<CudaSlice<bf16>>]) -> Res<()> {
    let lt = CudaBlasLT::new(b.stream.clone())?;
    println!("\n| rows | library | qkv | o | gate_up | down | layer TFLOP/s |");
    println!("|---|---|---|---|---|---|---|");
    for rows in [512usize, 2048, 8192] {
        let x = b.random_bf16(rows * 14336, 9, 0.05)?;
        let mut y = b.random_bf16(rows * 28672, 10, 0.05)?;
        for library in ["cublas", "cublaslt"] {
            let mut ms = Vec::new();
            for (i, &(_, n, kk)) in SHAPES.iter().enumerate() {
                let w = &weights[i];
                ms.push(b.time(|call| {
                    let w = &w[call % COPIES];
                    let xv = x.slice(..rows * kk);
                    let mut yv = y.slice_mut(..rows * n);
                    // Column-major y^T [n, rows] = w^T (w is [n, k] row-major) x^T, as the
                    // engine's Gemm::matmul computes it.
                    match library {
                        "cublas" => {
                            // SAFETY: views sized for this shape.
                            unsafe { blas.gemm(gemm_config(rows, n, kk), w, &xv, &mut yv) }?;
                        }
                        _ => {
                            let cfg = MatmulConfig {
                                transa: true,
                                transb: false,
                                transc: false,
                                m: n as u64,
                                n: rows as u64,
                                k: kk as u64,
                                alpha: 1.0,
                                lda: kk as i64,
                                ldb: kk as i64,
                                beta: 0.0,
                                ldc: n as i64,
                                stride_a: None,
                                stride_b: None,
                                stride_c: None,
                                stride_bias: None,
                                batch_size: None,
                            };
                            // SAFETY: views sized for this shape; no bias, no epilogue.
                            unsafe { lt.matmul(cfg, &w.as_view(), &xv, &mut yv, None, None) }?;
                        }
                    }
                    Ok(())
                })?);
            }
            let tflops = |n: usize, k: usize, ms: f64| 2.0 * (rows * n * k) as f64 / ms / 1e9;
            let flops: f64 = SHAPES
                .iter()
                .map(|&(_, n, k)| 2.0 * (rows * n * k) as f64)
                .sum();
            let total: f64 = ms.iter().sum();
            println!(
                "| {rows} | {library} | {:.0} | {:.0} | {:.0} | {:.0} | {:.0} |",
                tflops(SHAPES[0].1, SHAPES[0].2, ms[0]),
                tflops(SHAPES[1].1, SHAPES[1].2, ms[1]),
                tflops(SHAPES[2].1, SHAPES[2].2, ms[2]),
                tflops(SHAPES[3].1, SHAPES[3].2, ms[3]),
                flops / total / 1e9
            );
        }
    }
    Ok(())
}
