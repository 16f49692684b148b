//! The tensor-core skinny GEMM (cuda/skinny.cu) against an f64 reference.

use crate::common::*;

#[test]
fn skinny_gemm_matches_reference_for_every_tile_count() -> TestResult {
    let Some(g) = gpu() else { return Ok(()) };
    let mut rng = rng("skinny");
    // A few blocks of a long K (Llama-3-8B's hidden and FFN sizes), SmolLM2's 576, K split
    // unevenly over the 8 warps (4096 / 32 = 128 chunks, 576 / 32 = 18), a K of 2 chunks.
    for (n, k) in [(96, 4096), (1536, 576), (64, 14336), (4096, 64)] {
        let w = to_bf16(&rand_vec(&mut rng, n * k, -1.0, 1.0));
        let d_w = up(g, &w)?;
        for rows in [1, 2, 3, 7, 8, 9, 16, 31, 32, 33, 63, 64] {
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
            g.k.skinny_gemm(
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
            g.k.skinny_gemm(
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
fn skinny_gemm_rejects_unsupported_shapes() -> TestResult {
    let Some(g) = gpu() else { return Ok(()) };
    for (rows, n, k) in [(65, 32, 32), (2, 48, 32), (2, 32, 48)] {
        let w = up(g, &to_bf16(&vec![0.5; n * k]))?;
        let x = up(g, &to_bf16(&vec![0.5; rows * k]))?;
        let mut y = up(g, &poison_f32(rows * n))?;
        let r = g.k.skinny_gemm(
            &g.stream,
            &mut y.as_view_mut(),
            &x.as_view(),
            &w.as_view(),
            n,
            k,
        );
        assert!(r.is_err(), "rows {rows} n {n} k {k} must be refused");
    }
    Ok(())
}
