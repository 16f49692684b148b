//! When each request is sent: vLLM's `get_request` sends the first at once and waits an
//! exponential gap (a Poisson process of `rate` requests/s) before each next one; an
//! infinite rate sends everything at time zero.

use std::time::Duration;

use rand::SeedableRng;
use rand::rngs::StdRng;
use rand_distr::{Distribution, Exp};

use crate::bench::error::{BenchError, Result};

/// Send times of `n` requests, relative to the start of the run.
pub fn arrival_offsets(n: usize, rate: f64, seed: u64) -> Result<Vec<Duration>> {
    if rate.is_nan() || rate <= 0.0 {
        return Err(BenchError::Usage(format!(
            "--request-rate must be a positive number or inf, got {rate}"
        )));
    }
    if rate.is_infinite() {
        return Ok(vec![Duration::ZERO; n]);
    }
    let gaps = Exp::new(rate).map_err(|e| BenchError::Usage(format!("--request-rate: {e}")))?;
    let mut rng = StdRng::seed_from_u64(seed);
    let mut at = 0.0f64;
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        out.push(Duration::from_secs_f64(at));
        at += gaps.sample(&mut rng);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn infinite_rate_sends_all_at_once() {
        let offsets = arrival_offsets(5, f64::INFINITY, 0).expect("valid");
        assert_eq!(offsets, vec![Duration::ZERO; 5]);
    }

    #[test]
    fn poisson_gaps_are_seeded_and_average_one_over_rate() {
        let a = arrival_offsets(4000, 4.0, 7).expect("valid");
        assert_eq!(
            a,
            arrival_offsets(4000, 4.0, 7).expect("valid"),
            "same seed"
        );
        assert_ne!(
            a,
            arrival_offsets(4000, 4.0, 8).expect("valid"),
            "other seed"
        );
        assert_eq!(a[0], Duration::ZERO, "first request goes at once");
        assert!(a.windows(2).all(|w| w[0] <= w[1]));
        let mean_gap = a[3999].as_secs_f64() / 3999.0;
        assert!((mean_gap - 0.25).abs() < 0.02, "mean gap {mean_gap}");
    }

    #[test]
    fn bad_rates_are_rejected() {
        for rate in [0.0, -1.0, f64::NAN] {
            assert!(arrival_offsets(1, rate, 0).is_err(), "{rate}");
        }
    }
}
