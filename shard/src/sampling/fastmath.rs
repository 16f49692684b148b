//! Vectorizable kernels for the per-vocabulary passes: max and exp.
//!
//! `f32::exp` is a libm call per element (~4 ns), which dominated the sampler's O(V) passes;
//! this exp is branch-free arithmetic the compiler vectorizes (SSE2 baseline), accurate to
//! ~2 ulp, which is far below what sampling or logprobs can observe.

const LANES: usize = 16;

/// Largest value, ignoring NaN; -inf for an empty slice or one without anything larger.
pub(crate) fn max_value(values: &[f32]) -> f32 {
    let mut lanes = [f32::NEG_INFINITY; LANES];
    let chunks = values.chunks_exact(LANES);
    let rest = chunks.remainder();
    for chunk in chunks {
        for (m, &v) in lanes.iter_mut().zip(chunk) {
            // `v > m` is false for NaN, so NaN never enters (maxps semantics).
            *m = if v > *m { v } else { *m };
        }
    }
    // Tree reduction: each step is a vector max, unlike a scalar fold over the lanes.
    let mut width = LANES / 2;
    while width > 0 {
        for i in 0..width {
            let other = lanes[i + width];
            lanes[i] = if other > lanes[i] { other } else { lanes[i] };
        }
        width /= 2;
    }
    let mut max = lanes[0];
    for &v in rest {
        max = if v > max { v } else { max };
    }
    max
}

/// e^x for x <= 88; exactly 0 for x below -87.33 (under the smallest normal f32), for -inf
/// and for NaN, so tokens that must never be drawn get weight 0.
#[inline]
pub(crate) fn exp(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    // ln 2 split in two (Cody-Waite) so that n·ln2 is subtracted without rounding error.
    const LN2_HI: f32 = 0.693_359_4;
    const LN2_LO: f32 = -2.121_944_4e-4;
    // Adding 1.5·2^23 rounds to an integer n held in the low mantissa bits: no float->int
    // conversion (Rust's saturating `as` would block vectorization).
    const ROUND: f32 = 12_582_912.0;
    const LOWEST: f32 = -87.33;
    // Every step below is a select or plain arithmetic (NaN fails `>=` and takes LOWEST).
    let in_range = x >= LOWEST;
    let xc = if in_range { x } else { LOWEST };
    let xc = if xc > 88.0 { 88.0 } else { xc };
    let shifted = xc * LOG2E + ROUND;
    let n = shifted - ROUND;
    let r = xc - n * LN2_HI - n * LN2_LO;
    // Cephes expf minimax polynomial on [-ln2/2, ln2/2].
    let mut p = 1.987_569_1e-4f32;
    p = p * r + 1.398_199_9e-3;
    p = p * r + 8.333_452e-3;
    p = p * r + 4.166_579_6e-2;
    p = p * r + 1.666_666_5e-1;
    p = p * r + 0.5;
    let y = p * r * r + r + 1.0;
    // 2^n through the exponent bits; n is in [-126, 127] here.
    let n_bits = shifted.to_bits().wrapping_sub(ROUND.to_bits());
    let scale = f32::from_bits(n_bits.wrapping_add(127) << 23);
    if in_range { y * scale } else { 0.0 }
}

/// Σ f(v) in f64, vectorized: f32 partial sums per lane, flushed to f64 every 1024 values so
/// they never lose precision (each term is at most ~1 here).
#[inline]
pub(crate) fn lane_sum(values: &[f32], f: impl Fn(f32) -> f32) -> f64 {
    let mut total = 0.0f64;
    for block in values.chunks(LANES * 64) {
        let mut lanes = [0.0f32; LANES];
        let chunks = block.chunks_exact(LANES);
        let rest = chunks.remainder();
        for chunk in chunks {
            for (s, &v) in lanes.iter_mut().zip(chunk) {
                *s += f(v);
            }
        }
        total += lanes.iter().map(|&s| f64::from(s)).sum::<f64>();
        total += rest.iter().map(|&v| f64::from(f(v))).sum::<f64>();
    }
    total
}

/// Σ e^(v - max) over values that are at most `max` (no +inf).
pub(crate) fn sum_exp(values: &[f32], max: f32) -> f64 {
    lane_sum(values, |v| exp(v - max))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exp_is_accurate_over_the_sampling_range() {
        let mut worst = 0.0f64;
        let mut x = -87.0f32;
        while x <= 10.0 {
            let want = f64::from(x).exp();
            let got = f64::from(exp(x));
            worst = worst.max(((got - want) / want).abs());
            x += 0.001_37;
        }
        assert!(worst < 3e-7, "worst relative error {worst}");
        assert_eq!(exp(0.0), 1.0);
    }

    #[test]
    fn exp_is_zero_where_weights_must_be_zero() {
        for x in [f32::NEG_INFINITY, f32::NAN, -90.0, -1e30, -f32::MAX] {
            assert_eq!(exp(x), 0.0, "{x}");
        }
        assert!(exp(100.0).is_finite());
    }

    #[test]
    fn max_value_ignores_nan() {
        let mut v: Vec<f32> = (0..1000).map(|i| (i % 37) as f32).collect();
        v[500] = 99.0;
        v[3] = f32::NAN;
        v[999] = f32::NAN;
        assert_eq!(max_value(&v), 99.0);
        assert_eq!(max_value(&[f32::NAN, 1.0, f32::NAN]), 1.0);
        assert_eq!(max_value(&[]), f32::NEG_INFINITY);
        assert_eq!(max_value(&[f32::NAN; 40]), f32::NEG_INFINITY);
        assert_eq!(max_value(&[1.0, f32::INFINITY]), f32::INFINITY);
    }

    #[test]
    fn lane_sum_covers_every_value_once() {
        for len in [0usize, 1, 15, 16, 17, 1023, 1024, 1025, 5000] {
            let v: Vec<f32> = (0..len).map(|i| (i % 13) as f32).collect();
            let want: f64 = v.iter().map(|&x| f64::from(x) * 2.0).sum();
            assert_eq!(lane_sum(&v, |x| x * 2.0), want, "len {len}");
        }
    }

    #[test]
    fn sum_exp_matches_f64() {
        let v: Vec<f32> = (0..50_000)
            .map(|i| ((i * 7919 % 1000) as f32) * 0.01 - 10.0)
            .collect();
        let want: f64 = v.iter().map(|&x| (f64::from(x) - 0.5).exp()).sum();
        let got = sum_exp(&v, 0.5);
        assert!(((got - want) / want).abs() < 1e-6, "{got} vs {want}");
    }
}
