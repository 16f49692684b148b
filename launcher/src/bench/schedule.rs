//! When each request is sent: vLLM's `get_request` sends the first at once and waits an
//! exponential gap (a Poisson process of `rate` requests/s) before each next one; an
//! infinite rate sends everything at time zero.

use std::time::Duration;

use rand::SeedableRng;
use rand::rngs::StdRng;
use rand_distr::{Distribution, Exp};

use crate::bench::error::{BenchError, Result};

/// Latest send time of a schedule: later offsets are refused, not waited for.
const MAX_SCHEDULE: Duration = Duration::from_secs(365 * 24 * 3600);

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
    for i in 0..n {
        // A tiny rate (1e-300) made gaps past what a Duration or an Instant holds, and
        // `from_secs_f64` panicked; no benchmark waits a year for its next request anyway.
        let offset = Duration::try_from_secs_f64(at)
            .ok()
            .filter(|d| *d <= MAX_SCHEDULE)
            .ok_or_else(|| {
                BenchError::Usage(format!(
                    "--request-rate {rate:e} is too low: request {} of {n} would go out {at:.3e} \
                     s after the start, past the one-year limit",
                    i + 1
                ))
            })?;
        out.push(offset);
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
    fn a_rate_too_low_for_any_clock_is_an_error_not_a_panic() {
        assert_eq!(
            arrival_offsets(1, 1e-300, 0).expect("one request goes at once"),
            vec![Duration::ZERO]
        );
        let err = arrival_offsets(2, 1e-300, 0).expect_err("second request in 1e300 s");
        assert!(err.to_string().contains("--request-rate"), "{err}");
        assert!(arrival_offsets(3, 1e-4, 0).is_ok(), "hours apart is fine");
    }

    #[test]
    fn bad_rates_are_rejected() {
        for rate in [0.0, -1.0, f64::NAN] {
            assert!(arrival_offsets(1, rate, 0).is_err(), "{rate}");
        }
    }
}
