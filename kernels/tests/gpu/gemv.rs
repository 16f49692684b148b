//! The skinny decode GEMV against an f64 reference: every row count through the kernel `gemv`
//! picks, and every kernel forced (the warp kernel at 1 row, the tensor-core kernel with 16 and
//! 32 columns a block at 1..=32 rows: x in registers up to 16, through shared memory at 17-32),
//! bf16 and f32 outputs.

use crate::common::*;
use cudarc::driver::CudaSlice;
use half::bf16;
use pagedserve_kernels::{GEMV_MAX_ROWS, GemvOut, Kernels};

/// `kernel`: `None` for `gemv`'s own pick, else `Some(mma_cols)` for `gemv_with`.
type Pick = Option<Option<u32>>;

/// `d_x` holds at least `rows` rows of `k`; `d_w` is `[n, k]`.
type Dev<'a> = (&'a CudaSlice<bf16>, &'a CudaSlice<bf16>);

/// `y` of one GEMV launch (output type `O`), its buffer poisoned with `poison` first.
fn run<O: GemvOut>(
    g: &Gpu,
    (d_x, d_w): Dev<'_>,
    rows: usize,
    n: usize,
    k: usize,
    pick: Pick,
    poison: Vec<O>,
) -> Res<Vec<O>> {
    let mut d_y = up(g, &poison)?;
    let (mut yv, xv, wv) = (d_y.as_view_mut(), d_x.slice(..rows * k), d_w.as_view());
    match pick {
        None => g.k.gemv(&g.stream, &mut yv, &xv, &wv, n, k)?,
        Some(c) => g.k.gemv_with(&g.stream, &mut yv, &xv, &wv, n, k, c)?,
    }
    down(g, &d_y)
}

fn run_f32(g: &Gpu, dev: Dev<'_>, rows: usize, n: usize, k: usize, pick: Pick) -> Res<Vec<f64>> {
    let y = run(g, dev, rows, n, k, pick, poison_f32(rows * n))?;
    Ok(y.iter().map(|&v| v as f64).collect())
}

fn run_bf16(g: &Gpu, dev: Dev<'_>, rows: usize, n: usize, k: usize, pick: Pick) -> Res<Vec<bf16>> {
    run(g, dev, rows, n, k, pick, poison_bf16(rows * n))
}

type Res<T> = Result<T, Box<dyn std::error::Error>>;

#[test]
fn gemv_matches_reference_for_every_row_count() -> TestResult {
    let Some(g) = gpu() else { return Ok(()) };
    let mut rng = rng("gemv");
    // Llama-3-8B's o_proj and down_proj inner sizes, SmolLM2's; column counts that are not a
    // multiple of the 16 or 32 columns a block (577, 9, 33, 50); K that is not a multiple of
    // the tensor-core kernel's 64-wide steps (1000 = 15 steps + 40, 4104 = 64 steps + 8, 72 =
    // 1 + 8: the partial step is warp 7's second, warp 0's ninth, warp 1's only one). Every row
    // count 1..=32: 17-24 run gemv_*_m24 (3 x tiles; 17 and 24 its ends), 25-32 gemv_*_m32
    // (31: a partial last tile).
    for (n, k) in [
        (4096, 4096),
        (577, 14336),
        (1536, 576),
        (9, 64),
        (33, 1000),
        (50, 4104),
        (40, 72),
    ] {
        let w = to_bf16(&rand_vec(&mut rng, n * k, -1.0, 1.0));
        let x = to_bf16(&rand_vec(&mut rng, GEMV_MAX_ROWS * k, -1.0, 1.0));
        let (d_x, d_w) = (up(g, &x)?, up(g, &w)?);
        // Reference for all rows at once; a run of `rows` rows takes the first `rows` of x.
        let (wf, xf): (Vec<f64>, Vec<f64>) = (
            w.iter().map(|v| v.to_f64()).collect(),
            x.iter().map(|v| v.to_f64()).collect(),
        );
        let want_all: Vec<f64> = (0..GEMV_MAX_ROWS * n)
            .map(|i| {
                let (m, c) = (i / n, i % n);
                let (xr, wr) = (&xf[m * k..(m + 1) * k], &wf[c * k..(c + 1) * k]);
                xr.iter().zip(wr).map(|(a, b)| a * b).sum()
            })
            .collect();
        for rows in 1..=GEMV_MAX_ROWS {
            let want = &want_all[..rows * n];
            let mut picks: Vec<Pick> = vec![None, Some(Some(16)), Some(Some(32))];
            if rows == 1 {
                picks.push(Some(None));
            }
            for pick in picks {
                let what = match pick {
                    None => format!("auto {:?}", Kernels::gemv_mma_cols(rows, n)),
                    Some(c) => format!("forced {c:?}"),
                };
                let y = run_f32(g, (&d_x, &d_w), rows, n, k, pick)?;
                assert!(
                    y.iter().all(|v| v.is_finite()),
                    "f32 n={n} k={k} rows={rows} {what}: every element written"
                );
                let e = rel_l2(&y, want);
                assert!(e < 1e-5, "f32 n={n} k={k} rows={rows} {what}: rel err {e}");
                let yb = run_bf16(g, (&d_x, &d_w), rows, n, k, pick)?;
                assert!(
                    !yb.iter().any(|&v| is_poison_bf16(v)),
                    "bf16 n={n} k={k} rows={rows} {what}: every element written"
                );
                let yb: Vec<f64> = yb.iter().map(|v| v.to_f64()).collect();
                let e = rel_l2(&yb, want);
                // One bf16 rounding of each output: 2^-9 relative.
                assert!(e < 4e-3, "bf16 n={n} k={k} rows={rows} {what}: rel err {e}");
            }
        }
    }
    Ok(())
}

#[test]
fn gemv_rejects_bad_shapes() -> TestResult {
    let Some(g) = gpu() else { return Ok(()) };
    let max = GEMV_MAX_ROWS;
    let w = up(g, &to_bf16(&vec![0.5; 64 * 16]))?;
    let mut y = up(g, &poison_f32((max + 1) * 64))?;
    let x_rows = |rows: usize, k: usize| up(g, &to_bf16(&vec![0.5; rows * k]));
    // k = 12 is not a multiple of 8.
    let x = x_rows(9, 12)?;
    let r = g.k.gemv(
        &g.stream,
        &mut y.slice_mut(..9 * 64),
        &x.as_view(),
        &w.slice(..64 * 12),
        64,
        12,
    );
    assert!(r.is_err(), "k = 12 must be refused");
    // One row more than the limit.
    let x = x_rows(max + 1, 16)?;
    let r = g.k.gemv(
        &g.stream,
        &mut y.slice_mut(..(max + 1) * 64),
        &x.as_view(),
        &w.as_view(),
        64,
        16,
    );
    assert!(r.is_err(), "{} rows must be refused", max + 1);
    // The warp kernel takes one row; the tensor-core kernel 16 or 32 columns a block.
    let x = x_rows(2, 16)?;
    for cols in [None, Some(8), Some(64)] {
        let r = g.k.gemv_with(
            &g.stream,
            &mut y.slice_mut(..2 * 64),
            &x.as_view(),
            &w.as_view(),
            64,
            16,
            cols,
        );
        assert!(r.is_err(), "2 rows on {cols:?} must be refused");
    }
    Ok(())
}
