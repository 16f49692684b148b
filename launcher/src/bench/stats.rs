//! Summary statistics exactly as vLLM's benchmark computes them with numpy: mean, median,
//! population standard deviation and percentiles with linear interpolation
//! (`np.percentile`'s default). An empty sample summarises to zeros, as `np.mean(x or 0)`.

use serde::{Deserialize, Serialize};

/// Mean, median, std and p90/p99 of one metric, in the unit of the samples.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Summary {
    pub mean: f64,
    pub median: f64,
    pub std: f64,
    pub p90: f64,
    pub p99: f64,
}

impl Summary {
    pub fn of(samples: &[f64]) -> Summary {
        let mut sorted: Vec<f64> = samples.iter().copied().filter(|x| x.is_finite()).collect();
        sorted.sort_by(f64::total_cmp);
        Summary {
            mean: mean(&sorted),
            median: percentile_sorted(&sorted, 50.0),
            std: std_dev(&sorted),
            p90: percentile_sorted(&sorted, 90.0),
            p99: percentile_sorted(&sorted, 99.0),
        }
    }

    /// Every field multiplied by `factor` (seconds -> milliseconds).
    pub fn scaled(self, factor: f64) -> Summary {
        Summary {
            mean: self.mean * factor,
            median: self.median * factor,
            std: self.std * factor,
            p90: self.p90 * factor,
            p99: self.p99 * factor,
        }
    }
}

pub fn mean(xs: &[f64]) -> f64 {
    if xs.is_empty() {
        return 0.0;
    }
    xs.iter().sum::<f64>() / xs.len() as f64
}

/// numpy's `std` (ddof = 0).
pub fn std_dev(xs: &[f64]) -> f64 {
    if xs.is_empty() {
        return 0.0;
    }
    let m = mean(xs);
    (xs.iter().map(|x| (x - m) * (x - m)).sum::<f64>() / xs.len() as f64).sqrt()
}

/// `np.percentile(sorted, p)` with linear interpolation between the closest ranks.
pub fn percentile_sorted(sorted: &[f64], p: f64) -> f64 {
    let (Some(first), Some(last)) = (sorted.first(), sorted.last()) else {
        return 0.0;
    };
    let rank = p.clamp(0.0, 100.0) / 100.0 * (sorted.len() - 1) as f64;
    let lo = rank.floor() as usize;
    let hi = rank.ceil() as usize;
    let (Some(a), Some(b)) = (sorted.get(lo), sorted.get(hi)) else {
        return if p <= 0.0 { *first } else { *last };
    };
    a + (b - a) * (rank - lo as f64)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() < 1e-9
    }

    #[test]
    fn percentiles_interpolate_like_numpy() {
        // np.percentile([1, 2, 3, 4], [50, 90, 99]) == [2.5, 3.7, 3.97]
        let xs = [1.0, 2.0, 3.0, 4.0];
        assert!(close(percentile_sorted(&xs, 50.0), 2.5));
        assert!(close(percentile_sorted(&xs, 90.0), 3.7));
        assert!(close(percentile_sorted(&xs, 99.0), 3.97));
        assert!(close(percentile_sorted(&xs, 0.0), 1.0));
        assert!(close(percentile_sorted(&xs, 100.0), 4.0));
        // np.percentile([10, 20, 40], 75) == 30.0
        assert!(close(percentile_sorted(&[10.0, 20.0, 40.0], 75.0), 30.0));
        assert!(close(percentile_sorted(&[5.0], 99.0), 5.0));
    }

    #[test]
    fn summary_sorts_and_matches_numpy() {
        // np.mean/median/std of [4, 1, 3, 2, 10]: 4.0, 3.0, 3.1622776601683795
        let s = Summary::of(&[4.0, 1.0, 3.0, 2.0, 10.0]);
        assert!(close(s.mean, 4.0));
        assert!(close(s.median, 3.0));
        assert!(close(s.std, 10f64.sqrt()));
        // np.percentile([1,2,3,4,10], 90) == 7.6, 99 -> 9.76
        assert!(close(s.p90, 7.6));
        assert!(close(s.p99, 9.76));
        let ms = s.scaled(1000.0);
        assert!(close(ms.p90, 7600.0));
    }

    #[test]
    fn empty_sample_is_all_zero() {
        assert_eq!(Summary::of(&[]), Summary::default());
    }
}
