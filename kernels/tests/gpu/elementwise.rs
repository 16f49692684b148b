//! Embedding, RMSNorm, fused add + RMSNorm, SiLU-mul and the random fills.

use rand::Rng;

use crate::common::*;

#[test]
fn embedding_gathers_rows_and_zeroes_unknown_tokens() -> TestResult {
    let Some(g) = gpu() else { return Ok(()) };
    let mut rng = rng("embedding");
    for (vocab, hidden, t) in [(1000, 576, 7), (300, 4096, 3)] {
        let table = to_bf16(&rand_vec(&mut rng, vocab * hidden, -1.0, 1.0));
        let mut tokens: Vec<u32> = (0..t).map(|_| rng.random_range(0..vocab as u32)).collect();
        tokens[1] = vocab as u32 + 5; // out of range: a zero row, no out-of-bounds read
        let (d_table, d_tokens) = (up(g, &table)?, up(g, &tokens)?);
        let mut d_out = up(g, &poison_f32(t * hidden))?;
        g.k.embedding(
            &g.stream,
            &mut d_out.as_view_mut(),
            &d_table.as_view(),
            &d_tokens.as_view(),
            hidden,
        )?;
        let out = down(g, &d_out)?;
        for (r, &tok) in tokens.iter().enumerate() {
            for c in 0..hidden {
                let want = if (tok as usize) < vocab {
                    table[tok as usize * hidden + c].to_f32()
                } else {
                    0.0
                };
                assert_eq!(
                    out[r * hidden + c].to_bits(),
                    want.to_bits(),
                    "row {r} col {c}"
                );
            }
        }
    }
    Ok(())
}

fn rms_ref(x: &[f64], w: &[f32], eps: f32) -> Vec<f64> {
    let ms = x.iter().map(|v| v * v).sum::<f64>() / x.len() as f64;
    let r = 1.0 / (ms + eps as f64).sqrt();
    x.iter().zip(w).map(|(v, &g)| v * r * g as f64).collect()
}

/// bf16 output of an f32 computation: one rounding (2^-9 relative) plus f32 noise.
const BF16_REL: f64 = 1.0 / 128.0;

#[test]
fn rms_norm_matches_reference() -> TestResult {
    let Some(g) = gpu() else { return Ok(()) };
    let mut rng = rng("rms_norm");
    for (hidden, t) in [(576, 9), (4096, 4), (8192, 2)] {
        let x = rand_vec(&mut rng, t * hidden, -3.0, 3.0);
        let w = rand_vec(&mut rng, hidden, 0.5, 1.5);
        let (d_x, d_w) = (up(g, &x)?, up(g, &w)?);
        let mut d_out = up(g, &poison_bf16(t * hidden))?;
        g.k.rms_norm(
            &g.stream,
            &mut d_out.as_view_mut(),
            &d_x.as_view(),
            &d_w.as_view(),
            1e-5,
        )?;
        let out = from_bf16(&down(g, &d_out)?);
        let mut want = Vec::new();
        for r in 0..t {
            let row: Vec<f64> = x[r * hidden..(r + 1) * hidden]
                .iter()
                .map(|&v| v as f64)
                .collect();
            want.extend(rms_ref(&row, &w, 1e-5));
        }
        assert_close("rms_norm", &out, &want, BF16_REL, 1e-6);
    }
    Ok(())
}

#[test]
fn add_rms_norm_updates_residual_and_normalizes() -> TestResult {
    let Some(g) = gpu() else { return Ok(()) };
    let mut rng = rng("add_rms_norm");
    for (hidden, t) in [(576, 5), (4096, 3)] {
        let x = rand_vec(&mut rng, t * hidden, -3.0, 3.0);
        let delta = to_bf16(&rand_vec(&mut rng, t * hidden, -2.0, 2.0));
        let w = rand_vec(&mut rng, hidden, 0.5, 1.5);
        let (mut d_x, d_delta, d_w) = (up(g, &x)?, up(g, &delta)?, up(g, &w)?);
        let mut d_out = up(g, &poison_bf16(t * hidden))?;
        g.k.add_rms_norm(
            &g.stream,
            &mut d_x.as_view_mut(),
            &d_delta.as_view(),
            &mut d_out.as_view_mut(),
            &d_w.as_view(),
            1e-5,
        )?;
        let (x_new, out) = (down(g, &d_x)?, from_bf16(&down(g, &d_out)?));
        let sum: Vec<f32> = x.iter().zip(&delta).map(|(a, b)| a + b.to_f32()).collect();
        for (i, (a, b)) in x_new.iter().zip(&sum).enumerate() {
            assert_eq!(a.to_bits(), b.to_bits(), "x[{i}] after the residual add");
        }
        let mut want = Vec::new();
        for r in 0..t {
            let row: Vec<f64> = sum[r * hidden..(r + 1) * hidden]
                .iter()
                .map(|&v| v as f64)
                .collect();
            want.extend(rms_ref(&row, &w, 1e-5));
        }
        assert_close("add_rms_norm", &out, &want, BF16_REL, 1e-6);
    }
    Ok(())
}

#[test]
fn silu_mul_matches_reference() -> TestResult {
    let Some(g) = gpu() else { return Ok(()) };
    let mut rng = rng("silu_mul");
    // 8-element steps (1536, 14336) and the 2-element fallback (1538 is not a multiple of 8).
    for (inter, t) in [(1536, 5), (14336, 2), (1538, 3)] {
        let gu = to_bf16(&rand_vec(&mut rng, t * 2 * inter, -6.0, 6.0));
        let d_gu = up(g, &gu)?;
        let mut d_out = up(g, &poison_bf16(t * inter))?;
        g.k.silu_mul(&g.stream, &mut d_out.as_view_mut(), &d_gu.as_view(), inter)?;
        let out = from_bf16(&down(g, &d_out)?);
        let mut want = Vec::with_capacity(t * inter);
        for r in 0..t {
            for i in 0..inter {
                let a = gu[r * 2 * inter + i].to_f32() as f64;
                let b = gu[r * 2 * inter + inter + i].to_f32() as f64;
                want.push(a / (1.0 + (-a).exp()) * b);
            }
        }
        // __expf (fast math) adds ~1e-6 relative before the bf16 rounding.
        assert_close("silu_mul", &out, &want, BF16_REL, 1e-5);
    }
    Ok(())
}

#[test]
fn fill_random_is_uniform_nonzero_and_seeded() -> TestResult {
    let Some(g) = gpu() else { return Ok(()) };
    let n = (1 << 20) + 3;
    let scale = 0.05f32;
    let mut a = up(g, &poison_bf16(n))?;
    let mut b = up(g, &poison_bf16(n))?;
    let mut c = up(g, &poison_bf16(n))?;
    g.k.fill_random_bf16(&g.stream, &mut a.as_view_mut(), 7, scale)?;
    g.k.fill_random_bf16(&g.stream, &mut b.as_view_mut(), 7, scale)?;
    g.k.fill_random_bf16(&g.stream, &mut c.as_view_mut(), 8, scale)?;
    let (a, b, c) = (
        from_bf16(&down(g, &a)?),
        from_bf16(&down(g, &b)?),
        from_bf16(&down(g, &c)?),
    );
    assert_eq!(a, b, "same seed, same values");
    assert!(
        a.iter().zip(&c).filter(|(x, y)| x != y).count() > n / 2,
        "other seed, other values"
    );
    // bf16 rounding may land a value next to the edge on bf16(scale) itself.
    let edge = half::bf16::from_f32(scale).to_f32();
    assert!(
        a.iter().all(|&v| v != 0.0 && v.abs() <= edge),
        "all in [-scale, scale] up to bf16 rounding, none zero"
    );
    let mean = a.iter().map(|&v| v as f64).sum::<f64>() / n as f64;
    let var = a.iter().map(|&v| (v as f64 - mean).powi(2)).sum::<f64>() / n as f64;
    let sd_want = scale as f64 / 3f64.sqrt();
    // The mean's standard error is sd / sqrt(n) ~ 3e-5; 10 of them cannot fail by chance.
    assert!(
        mean.abs() < 10.0 * sd_want / (n as f64).sqrt(),
        "mean {mean}"
    );
    assert!(
        (var.sqrt() / sd_want - 1.0).abs() < 0.01,
        "sd {} want {sd_want}",
        var.sqrt()
    );

    let mut f = up(g, &poison_f32(n))?;
    g.k.fill_random_f32(&g.stream, &mut f.as_view_mut(), 3, 1.0, 0.1)?;
    let f = down(g, &f)?;
    assert!(
        f.iter().all(|&v| (0.9..1.1).contains(&v)),
        "f32 fill within [0.9, 1.1)"
    );
    Ok(())
}
