//! The projection-bias add against an f64 reference.

use crate::common::*;

#[test]
fn add_bias_adds_the_row_bias_to_every_row() -> TestResult {
    let Some(g) = gpu() else { return Ok(()) };
    let mut rng = rng("add_bias");
    // Qwen2-7B's fused q/k/v width, and a small odd row count.
    for (rows, n) in [(3, 4608), (17, 640)] {
        let x = to_bf16(&rand_vec(&mut rng, rows * n, -2.0, 2.0));
        let b = rand_vec(&mut rng, n, -1.0, 1.0);
        let (mut d_x, d_b) = (up(g, &x)?, up(g, &b)?);
        g.k.add_bias(&g.stream, &mut d_x.as_view_mut(), &d_b.as_view())?;
        let out = down(g, &d_x)?;
        for (i, (o, xi)) in out.iter().zip(&x).enumerate() {
            let want = xi.to_f64() + b[i % n] as f64;
            let got = o.to_f64();
            // One bf16 rounding of a value below 4 in magnitude.
            assert!((got - want).abs() <= 4.0 / 256.0, "{i}: {got} vs {want}");
        }
    }
    let mut d_x = up(g, &to_bf16(&[1.0; 10]))?;
    let d_b = up(g, &[1.0f32; 3])?;
    assert!(
        g.k.add_bias(&g.stream, &mut d_x.as_view_mut(), &d_b.as_view())
            .is_err()
    );
    Ok(())
}
