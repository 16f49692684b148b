//! The skinny decode GEMV against an f64 reference, for every row count and both outputs.

use crate::common::*;

#[test]
fn gemv_matches_reference_for_every_row_count() -> TestResult {
    let Some(g) = gpu() else { return Ok(()) };
    let mut rng = rng("gemv");
    // Llama-3-8B's o_proj and down_proj inner sizes, SmolLM2's, and odd column counts.
    for (n, k) in [(4096, 4096), (577, 14336), (1536, 576), (9, 64)] {
        let w = to_bf16(&rand_vec(&mut rng, n * k, -1.0, 1.0));
        let d_w = up(g, &w)?;
        for rows in 1..=pagedserve_kernels::GEMV_MAX_ROWS {
            let x = to_bf16(&rand_vec(&mut rng, rows * k, -1.0, 1.0));
            let d_x = up(g, &x)?;
            let want: Vec<f64> = (0..rows * n)
                .map(|i| {
                    let (m, c) = (i / n, i % n);
                    (0..k)
                        .map(|j| x[m * k + j].to_f64() * w[c * k + j].to_f64())
                        .sum()
                })
                .collect();
            let mut d_y = up(g, &poison_f32(rows * n))?;
            g.k.gemv(
                &g.stream,
                &mut d_y.as_view_mut(),
                &d_x.as_view(),
                &d_w.as_view(),
                n,
                k,
            )?;
            let y: Vec<f64> = down(g, &d_y)?.iter().map(|&v| v as f64).collect();
            assert!(
                y.iter().all(|v| v.is_finite()),
                "f32: every element written"
            );
            let e = rel_l2(&y, &want);
            assert!(e < 1e-5, "f32 n={n} k={k} rows={rows}: rel err {e}");
            let mut d_yb = up(g, &poison_bf16(rows * n))?;
            g.k.gemv(
                &g.stream,
                &mut d_yb.as_view_mut(),
                &d_x.as_view(),
                &d_w.as_view(),
                n,
                k,
            )?;
            let yb = down(g, &d_yb)?;
            assert!(
                !yb.iter().any(|&v| is_poison_bf16(v)),
                "bf16: every element written"
            );
            let yb: Vec<f64> = yb.iter().map(|v| v.to_f64()).collect();
            let e = rel_l2(&yb, &want);
            // One bf16 rounding of each output: 2^-9 relative.
            assert!(e < 4e-3, "bf16 n={n} k={k} rows={rows}: rel err {e}");
        }
    }
    Ok(())
}

#[test]
fn gemv_rejects_bad_shapes() -> TestResult {
    let Some(g) = gpu() else { return Ok(()) };
    let w = up(g, &to_bf16(&[0.5; 64 * 12]))?;
    let x = up(g, &to_bf16(&[0.5; 9 * 12]))?;
    let mut y = up(g, &poison_f32(9 * 64))?;
    // k = 12 is not a multiple of 8; 9 rows exceed the limit.
    assert!(
        g.k.gemv(
            &g.stream,
            &mut y.as_view_mut(),
            &x.as_view(),
            &w.as_view(),
            64,
            12
        )
        .is_err()
    );
    Ok(())
}
