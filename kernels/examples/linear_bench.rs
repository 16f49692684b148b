//! Linear layers of small decode batches: our GEMV (1-32 rows) and cuBLAS's bf16 GEMM on
//! Llama-3-8B's layer shapes (qkv 6144x4096, o 4096x4096, gate/up 28672x4096, down
//! 4096x14336) and its lm_head (128256x4096; bf16 output here, f32 logits in the engine: <1% of
//! the bytes), for 1..64 rows. Each case rotates over 4 copies of the weight (never an L2 hit
//! between calls), random inputs, CUDA events around back-to-back calls after warm-up, median of
//! 7 samples. Prints, per shape, us per call and GB/s of weight bytes read (what bounds these
//! shapes) as a share of the device's copy bandwidth; then one layer's (qkv + o + gate/up +
//! down) total time and share. Kernels: `gemv` is what `Kernels::gemv` picks (the engine's
//! GEMV), `cublas` the engine's cuBLAS call; `warp` (1 row), `mma16` and `mma32` (1-32 rows)
//! force one GEMV kernel, to tune `gemv.rs`'s GEMV_MMA_MIN_ROWS, GEMV_WIDE_MIN_N and
//! GEMV_WIDE_MIN_ROWS (24 and 32 rows run the kernels with x in shared memory).
//!
//! Then prefill-sized steps (512, 2048, 8192 rows), where the FLOPs bound: cuBLAS's GEMM (what
//! the engine calls) against cuBLASLt's heuristic pick with a 32 MiB workspace, in TFLOP/s per
//! shape and for the whole layer, to tell how much of a prefill step's ~560 TFLOP/s gap to the
//! H100's 989 is in the GEMMs themselves (`scripts/sharegpt_bound.py` ranks it first).
//! `LINEAR_BENCH_GEMM_ROWS=64,128,256` runs that table at other sizes, e.g. the mid-sized
//! decode steps (64-256 rows) that sit between the two bounds; its last columns give the
//! layer's time and its weight reads as a share of copy bandwidth.
//!
//! `LINEAR_BENCH_TUNE_ROWS=64,96,128,192,256,320,512` adds a last table: how much autotuning
//! would give over the heuristics at those rows. For each layer shape it asks cuBLASLt's
//! heuristic for up to 32 algorithms (32 MiB workspace, the prefill table's layouts), checks
//! each once against cuBLAS's output (more than 2e-2 off, relative to the largest value, and it
//! is skipped, so a wrong algorithm never wins), times the rest like everything above, and
//! prints cuBLAS, the heuristic's first pick and the fastest candidate (its place in the list,
//! how many ran of those listed, its share of copy bandwidth); then the layer's totals. Its
//! cuBLASLt calls reuse descriptors built once per shape, unlike `CudaBlasLT::matmul`, which
//! builds them and asks the heuristic again on every call. Skipped candidates (not run, wrong)
//! are named on stderr.
//! Usage: `linear_bench [ptx-cache-dir]`.

mod common;
#[path = "common/lt_tune.rs"]
mod lt_tune;

use common::{Bench, Res};
use cudarc::cublas::{CudaBlas, Gemm, GemmConfig, sys::cublasOperation_t};
use cudarc::cublaslt::{CudaBlasLT, Matmul, MatmulConfig};
use cudarc::driver::{CudaSlice, CudaView};
use half::bf16;
use lt_tune::{LtProblem, LtTuner};
use pagedserve_kernels::{GEMV_MAX_ROWS, Kernels};

const SHAPES: [(&str, usize, usize); 5] = [
    ("qkv", 6144, 4096),
    ("o", 4096, 4096),
    ("gate_up", 28672, 4096),
    ("down", 4096, 14336),
    ("lm_head", 128256, 4096),
];
/// The first LAYER shapes make one decoder layer.
const LAYER: usize = 4;
const ROWS: [usize; 12] = [1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64];
const COPIES: usize = 4;
const REPS: usize = 8;
/// Algorithms asked of cuBLASLt's heuristic per GEMM in the tuning table.
const TUNE_CANDIDATES: usize = 32;
/// Largest |candidate - cuBLAS| over the largest |cuBLAS| a tuning candidate may show: bf16
/// rounding and another summation order stay far below it, a wrong result does not.
const TUNE_MAX_REL_DIFF: f32 = 2e-2;

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
    let names: Vec<&str> = SHAPES.iter().map(|s| s.0).collect();
    println!(
        "\n| rows | kernel | {} | layer us | layer % copy |",
        names.join(" | ")
    );
    println!("|---|---|{}---|---|", "---|".repeat(SHAPES.len()));
    let max_n = SHAPES.iter().map(|s| s.1).max().unwrap_or(0);
    for rows in ROWS {
        let x = b.random_bf16(rows * 14336, 7, 0.05)?;
        let mut y = b.random_bf16(rows * max_n, 8, 0.05)?;
        // `None`: cuBLAS; `Some(None)`: what Kernels::gemv picks; `Some(Some(c))`: a forced
        // GEMV kernel (`c` as `Kernels::gemv_with` takes it).
        let mut kernels: Vec<(&str, Option<Option<Option<u32>>>)> = vec![("cublas", None)];
        if rows <= GEMV_MAX_ROWS {
            kernels.insert(0, ("gemv", Some(None)));
            if rows == 1 {
                kernels.push(("warp", Some(Some(None))));
            }
            kernels.push(("mma16", Some(Some(Some(16)))));
            kernels.push(("mma32", Some(Some(Some(32)))));
        }
        for (label, kernel) in kernels {
            let mut us = Vec::new();
            for (i, &(_, n, kk)) in SHAPES.iter().enumerate() {
                let w = &weights[i];
                let ms = b.time(|call| {
                    let w = &w[call % COPIES];
                    let xs = x.slice(..rows * kk);
                    let mut yv = y.slice_mut(..rows * n);
                    match kernel {
                        Some(None) => b.k.gemv(&b.stream, &mut yv, &xs, &w.as_view(), n, kk)?,
                        Some(Some(c)) => {
                            b.k.gemv_with(&b.stream, &mut yv, &xs, &w.as_view(), n, kk, c)?
                        }
                        // SAFETY: views sized for this shape.
                        None => unsafe { blas.gemm(gemm_config(rows, n, kk), w, &xs, &mut yv) }?,
                    }
                    Ok(())
                })?;
                us.push(ms * 1e3);
            }
            let pct = |bytes: f64, us: f64| 100.0 * bytes / (us * 1e-6) / 1e9 / copy;
            let cells: Vec<String> = SHAPES
                .iter()
                .zip(&us)
                .map(|(&(_, n, k), &t)| format!("{t:.1} ({:.1}%)", pct((n * k * 2) as f64, t)))
                .collect();
            let bytes: f64 = SHAPES[..LAYER]
                .iter()
                .map(|&(_, n, k)| (n * k * 2) as f64)
                .sum();
            let total: f64 = us[..LAYER].iter().sum();
            // The GEMV's pick per shape, e.g. "gemv mma16/mma16/mma32/mma16/mma32".
            let label = if label == "gemv" {
                let picks: Vec<&str> = SHAPES
                    .iter()
                    .map(|&(_, n, _)| match Kernels::gemv_mma_cols(rows, n) {
                        None => "warp",
                        Some(16) => "mma16",
                        Some(_) => "mma32",
                    })
                    .collect();
                format!("gemv {}", picks.join("/"))
            } else {
                label.to_string()
            };
            println!(
                "| {rows} | {label} | {} | {total:.1} | {:.1}% |",
                cells.join(" | "),
                pct(bytes, total)
            );
        }
    }
    prefill(&b, &blas, &weights, copy)?;
    tune(&b, &blas, &weights, copy)
}

/// The comma-separated row counts in env `name`, if it is set.
fn env_rows(name: &str) -> Option<Vec<usize>> {
    let list = std::env::var(name).ok()?;
    Some(
        list.split(',')
            .filter_map(|r| r.trim().parse().ok())
            .collect(),
    )
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
fn prefill(b: &Bench, blas: &CudaBlas, weights: &[Vec<CudaSlice<bf16>>], copy: f64) -> Res<()> {
    let lt = CudaBlasLT::new(b.stream.clone())?;
    println!(
        "\n| rows | library | qkv | o | gate_up | down | layer TFLOP/s | layer us | layer % copy |"
    );
    println!("|---|---|---|---|---|---|---|---|---|");
    let sizes = env_rows("LINEAR_BENCH_GEMM_ROWS").unwrap_or_else(|| vec![512, 2048, 8192]);
    for rows in sizes {
        let x = b.random_bf16(rows * 14336, 9, 0.05)?;
        let mut y = b.random_bf16(rows * 28672, 10, 0.05)?;
        for library in ["cublas", "cublaslt"] {
            let mut ms = Vec::new();
            for (i, &(_, n, kk)) in SHAPES[..LAYER].iter().enumerate() {
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
            let flops: f64 = SHAPES[..LAYER]
                .iter()
                .map(|&(_, n, k)| 2.0 * (rows * n * k) as f64)
                .sum();
            let total: f64 = ms.iter().sum();
            let bytes: f64 = SHAPES[..LAYER]
                .iter()
                .map(|&(_, n, k)| (n * k * 2) as f64)
                .sum();
            println!(
                "| {rows} | {library} | {:.0} | {:.0} | {:.0} | {:.0} | {:.0} | {:.1} | {:.1}% |",
                tflops(SHAPES[0].1, SHAPES[0].2, ms[0]),
                tflops(SHAPES[1].1, SHAPES[1].2, ms[1]),
                tflops(SHAPES[2].1, SHAPES[2].2, ms[2]),
                tflops(SHAPES[3].1, SHAPES[3].2, ms[3]),
                flops / total / 1e9,
                total * 1e3,
                100.0 * bytes / (total * 1e-3) / 1e9 / copy
            );
        }
    }
    Ok(())
}

/// One layer shape at one row count in the tuning table.
struct Tuned {
    cublas_us: f64,
    /// The heuristic's first pick; `None` when it could not run or failed the check.
    first_us: Option<f64>,
    /// The fastest candidate: its place in the heuristic's list and us per call.
    best: Option<(usize, f64)>,
    /// Candidates that passed the check and were timed, of those listed.
    ran: usize,
    listed: usize,
}

/// The tuning table (only with `LINEAR_BENCH_TUNE_ROWS`): per shape, cuBLAS against cuBLASLt's
/// first pick and the fastest of its TUNE_CANDIDATES candidates; per rows value, the layer.
fn tune(b: &Bench, blas: &CudaBlas, weights: &[Vec<CudaSlice<bf16>>], copy: f64) -> Res<()> {
    let Some(sizes) = env_rows("LINEAR_BENCH_TUNE_ROWS") else {
        return Ok(());
    };
    let lt = LtTuner::new(b.stream.clone())?;
    println!(
        "\n| rows | shape | cublas us | lt first us | lt best us | ran/listed | best # | best % copy |"
    );
    println!("|---|---|---|---|---|---|---|---|");
    let pct = |bytes: f64, us: f64| 100.0 * bytes / (us * 1e-6) / 1e9 / copy;
    let us_cell = |us: Option<f64>| us.map_or("-".to_string(), |t| format!("{t:.1}"));
    for rows in sizes {
        let x = b.random_bf16(rows * 14336, 11, 0.05)?;
        let mut layer = Vec::new();
        for (i, &(name, n, k)) in SHAPES[..LAYER].iter().enumerate() {
            let t = tune_shape(
                b,
                blas,
                &lt,
                &weights[i],
                &x.slice(..rows * k),
                rows,
                (n, k),
            )?;
            let (index, best_pct) = match t.best {
                Some((c, us)) => (
                    c.to_string(),
                    format!("{:.1}%", pct((n * k * 2) as f64, us)),
                ),
                None => ("-".to_string(), "-".to_string()),
            };
            println!(
                "| {rows} | {name} | {:.1} | {} | {} | {}/{} | {index} | {best_pct} |",
                t.cublas_us,
                us_cell(t.first_us),
                us_cell(t.best.map(|b| b.1)),
                t.ran,
                t.listed,
            );
            layer.push(t);
        }
        // A layer total only where every shape has a time.
        let bytes: f64 = SHAPES[..LAYER]
            .iter()
            .map(|&(_, n, k)| (n * k * 2) as f64)
            .sum();
        let cell = |us: Option<f64>| {
            us.map_or("-".to_string(), |t| {
                format!("{t:.1} ({:.1}%)", pct(bytes, t))
            })
        };
        let cublas: f64 = layer.iter().map(|t| t.cublas_us).sum();
        let first: Option<f64> = layer.iter().map(|t| t.first_us).sum();
        let best: Option<f64> = layer.iter().map(|t| t.best.map(|b| b.1)).sum();
        println!(
            "| {rows} | layer | {} | {} | {} | {}/{} | - | {} |",
            cell(Some(cublas)),
            cell(first),
            cell(best),
            layer.iter().map(|t| t.ran).sum::<usize>(),
            layer.iter().map(|t| t.listed).sum::<usize>(),
            best.map_or("-".to_string(), |t| format!("{:.1}%", pct(bytes, t))),
        );
    }
    Ok(())
}

/// Times cuBLAS and every usable cuBLASLt candidate for `y[rows, n] = x @ w^T`, rotating over
/// the weight copies like the other tables; a candidate first runs once on copy 0 and is
/// compared with cuBLAS's output there.
fn tune_shape(
    b: &Bench,
    blas: &CudaBlas,
    lt: &LtTuner,
    w: &[CudaSlice<bf16>],
    x: &CudaView<bf16>,
    rows: usize,
    (n, k): (usize, usize),
) -> Res<Tuned> {
    let mut y_ref = b.random_bf16(rows * n, 12, 0.05)?;
    // SAFETY: buffers sized for this shape.
    unsafe { blas.gemm(gemm_config(rows, n, k), &w[0], x, &mut y_ref) }?;
    let want = to_host(b, &y_ref)?;
    // Timed calls write here, so y_ref keeps the copy-0 reference.
    let mut y = b.random_bf16(rows * n, 13, 0.05)?;
    let cublas_ms = b.time(|call| {
        // SAFETY: buffers sized for this shape.
        unsafe { blas.gemm(gemm_config(rows, n, k), &w[call % COPIES], x, &mut y) }?;
        Ok(())
    })?;
    let problem = lt.problem(rows, n, k, TUNE_CANDIDATES)?;
    let mut t = Tuned {
        cublas_us: cublas_ms * 1e3,
        first_us: None,
        best: None,
        ran: 0,
        listed: problem.listed(),
    };
    for c in 0..problem.listed() {
        if !problem.usable(c) {
            continue;
        }
        // A candidate that fails to run or to match is skipped, not fatal: the point is to try
        // them all. A sticky CUDA error would still stop the bench at the next cuBLAS call.
        let timed = check(b, &problem, c, &w[0], x, &mut y, &want)
            .and_then(|()| b.time(|call| problem.run(c, &w[call % COPIES], x, &mut y)));
        let ms = match timed {
            Ok(ms) => ms,
            Err(why) => {
                eprintln!("{rows} rows, {n}x{k}: cuBLASLt candidate {c} skipped: {why}");
                continue;
            }
        };
        let us = ms * 1e3;
        t.ran += 1;
        if c == 0 {
            t.first_us = Some(us);
        }
        if t.best.is_none_or(|(_, best)| us < best) {
            t.best = Some((c, us));
        }
    }
    Ok(t)
}

/// Runs candidate `c` once on copy 0 (`w0`) and fails unless its output matches cuBLAS's
/// `want` within TUNE_MAX_REL_DIFF. `y` is zeroed first so a candidate that writes nothing fails.
fn check(
    b: &Bench,
    problem: &LtProblem,
    c: usize,
    w0: &CudaSlice<bf16>,
    x: &CudaView<bf16>,
    y: &mut CudaSlice<bf16>,
    want: &[bf16],
) -> Res<()> {
    b.stream.memset_zeros(y)?;
    problem.run(c, w0, x, y)?;
    let diff = rel_diff(&to_host(b, y)?, want);
    if diff > TUNE_MAX_REL_DIFF {
        return Err(format!("{diff:.1e} off cuBLAS's output").into());
    }
    Ok(())
}

/// `y` copied to the host, the stream synchronized so the copy is complete whatever the
/// driver does with pageable memory.
fn to_host(b: &Bench, y: &CudaSlice<bf16>) -> Res<Vec<bf16>> {
    let v = b.stream.clone_dtoh(y)?;
    b.stream.synchronize()?;
    Ok(v)
}

/// Largest |got - want| over the largest |want|; infinite where `got` is not finite (which
/// `f32::max` would otherwise pass over).
fn rel_diff(got: &[bf16], want: &[bf16]) -> f32 {
    let (mut diff, mut scale) = (0f32, 0f32);
    for (g, w) in got.iter().zip(want) {
        let (g, w) = (g.to_f32(), w.to_f32());
        if !g.is_finite() {
            return f32::INFINITY;
        }
        diff = diff.max((g - w).abs());
        scale = scale.max(w.abs());
    }
    diff / scale.max(f32::MIN_POSITIVE)
}
