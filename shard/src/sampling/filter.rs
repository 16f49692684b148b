//! The support of the sampling distribution: top-k, then top-p, then min-p, over logits that
//! are already penalized, divided by the temperature and keyed (no NaN, no +inf).
//!
//! Probabilities are never normalized explicitly: a token's weight is exp(logit - max), and
//! each filter compares weights against the sum over what the previous filter kept (vLLM
//! renormalizes after top-k before applying top-p; min-p's ratio to the best token is
//! unaffected by normalization).

use super::config::SamplingConfig;
use super::fastmath::{exp, sum_exp};
use super::select::{Cand, best_first, collect_at_least, top_n};

/// Ranges at most this long are sorted rather than split further.
const SORT_BELOW: usize = 32;

/// Unnormalized probability of a logit relative to the maximum logit.
#[inline]
pub(crate) fn weight(v: f32, max: f32) -> f64 {
    f64::from(exp(v - max))
}

/// Restricts the support by the active filters. Returns `false` when none is active (the whole
/// vocabulary is the support and `cands` is untouched); otherwise `cands` holds the support,
/// never empty while `work` is not. `max` is the largest value in `work`.
pub(crate) fn restrict(
    work: &[f32],
    max: f32,
    config: &SamplingConfig,
    cands: &mut Vec<Cand>,
) -> bool {
    let top_k = config.top_k as usize;
    let top_k_on = top_k > 0 && top_k < work.len();
    let top_p_on = config.top_p < 1.0;
    let min_p_on = config.min_p > 0.0;
    let ln_min_p = config.min_p.ln();
    if top_k_on {
        top_n(work, top_k, cands);
        if top_p_on {
            let total: f64 = cands.iter().map(|c| weight(c.1, max)).sum();
            let keep = nucleus_len(cands, max, f64::from(config.top_p) * total);
            cands.truncate(keep.unwrap_or(cands.len()).max(1));
        }
    } else if top_p_on {
        nucleus_of_vocab(work, max, config.top_p, cands);
    } else if min_p_on {
        cands.clear();
        collect_at_least(work, max + ln_min_p, cands);
        return true;
    } else {
        return false;
    }
    if min_p_on {
        // The best token always survives: its ratio is 1 >= min_p.
        cands.retain(|c| c.1 - max >= ln_min_p);
    }
    true
}

/// Length of the shortest best-first prefix of `sorted` whose weight reaches `target`.
fn nucleus_len(sorted: &[Cand], max: f32, target: f64) -> Option<usize> {
    let mut cum = 0.0;
    for (i, c) in sorted.iter().enumerate() {
        cum += weight(c.1, max);
        if cum >= target {
            return Some(i + 1);
        }
    }
    None
}

/// Top-p over the whole vocabulary without sorting it; leaves the nucleus in `cands`, unordered.
///
/// Tokens with probability below (1 - top_p) / V cannot be in the nucleus: together they
/// weigh less than 1 - top_p, so the tokens above that bound already hold more than top_p, and
/// the nucleus is a prefix of them. Only those candidates enter the weighted quickselect.
fn nucleus_of_vocab(work: &[f32], max: f32, top_p: f32, cands: &mut Vec<Cand>) {
    let total = sum_exp(work, max);
    // Half the bound, so rounding cannot push a nucleus token below it.
    let bound = (1.0 - f64::from(top_p)) / work.len() as f64 * 0.5;
    let cutoff = (bound * total).ln() as f32;
    cands.clear();
    collect_at_least(work, max + cutoff, cands);
    nucleus_select(cands, max, f64::from(top_p) * total);
}

/// Truncates `cands` to the shortest best-first prefix whose weight reaches `target`, without
/// sorting it: a quickselect that halves the range holding the prefix's end and keeps the
/// weight `acc` of everything before the range. O(n) expected, whatever the distribution's
/// shape; the kept tokens end up in no particular order (the draw does not need one).
fn nucleus_select(cands: &mut Vec<Cand>, max: f32, target: f64) {
    let (mut lo, mut hi) = (0usize, cands.len());
    let mut acc = 0.0f64;
    // Invariant: cands[..lo] are the lo best, weigh acc < target; the prefix ends by hi.
    while hi - lo > SORT_BELOW {
        let mid = lo + (hi - lo) / 2;
        cands[lo..hi].select_nth_unstable_by(mid - lo, best_first);
        let upper: f64 = cands[lo..mid].iter().map(|c| weight(c.1, max)).sum();
        if acc + upper >= target {
            hi = mid;
        } else {
            acc += upper;
            lo = mid;
        }
    }
    cands[lo..hi].sort_unstable_by(best_first);
    let keep = nucleus_len(&cands[lo..hi], max, target - acc).map_or(hi, |k| lo + k);
    cands.truncate(keep.max(1));
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};

    fn config(top_k: u32, top_p: f32, min_p: f32) -> SamplingConfig {
        SamplingConfig {
            temperature: 1.0,
            top_k,
            top_p,
            min_p,
            ..SamplingConfig::greedy()
        }
    }

    fn support(work: &[f32], c: &SamplingConfig) -> Option<Vec<u32>> {
        let max = work.iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v));
        let mut cands = Vec::new();
        restrict(work, max, c, &mut cands).then(|| cands.iter().map(|c| c.0).collect())
    }

    fn sorted_ids(mut ids: Vec<u32>) -> Vec<u32> {
        ids.sort_unstable();
        ids
    }

    /// Probabilities 0.4, 0.3, 0.2, 0.1 at ids 2, 0, 3, 1.
    fn four() -> Vec<f32> {
        [0.3f32, 0.1, 0.4, 0.2].iter().map(|p| p.ln()).collect()
    }

    #[test]
    fn no_filter_means_whole_vocabulary() {
        assert_eq!(support(&four(), &config(0, 1.0, 0.0)), None);
        // top_k >= vocab is off too.
        assert_eq!(support(&four(), &config(4, 1.0, 0.0)), None);
    }

    #[test]
    fn top_k_keeps_the_k_best() {
        assert_eq!(support(&four(), &config(1, 1.0, 0.0)), Some(vec![2]));
        assert_eq!(support(&four(), &config(3, 1.0, 0.0)), Some(vec![2, 0, 3]));
    }

    #[test]
    fn top_p_keeps_the_smallest_prefix_reaching_the_mass() {
        assert_eq!(support(&four(), &config(0, 0.01, 0.0)), Some(vec![2]));
        assert_eq!(support(&four(), &config(0, 0.39, 0.0)), Some(vec![2]));
        assert_eq!(support(&four(), &config(0, 0.41, 0.0)), Some(vec![2, 0]));
        assert_eq!(support(&four(), &config(0, 0.85, 0.0)), Some(vec![2, 0, 3]));
        assert_eq!(
            support(&four(), &config(0, 0.95, 0.0)),
            Some(vec![2, 0, 3, 1])
        );
    }

    #[test]
    fn top_p_after_top_k_uses_the_renormalized_mass() {
        // Top-2 renormalized: 0.4/0.7 = 0.571, 0.3/0.7. top_p 0.6 needs both.
        assert_eq!(support(&four(), &config(2, 0.6, 0.0)), Some(vec![2, 0]));
        assert_eq!(support(&four(), &config(2, 0.55, 0.0)), Some(vec![2]));
    }

    #[test]
    fn min_p_drops_tokens_below_a_fraction_of_the_best() {
        // Ratios to the best: 0.75, 0.25, 1.0, 0.5 (boundaries avoided: rounding).
        let got = support(&four(), &config(0, 1.0, 0.45)).map(sorted_ids);
        assert_eq!(got, Some(vec![0, 2, 3]));
        let got = support(&four(), &config(0, 1.0, 0.8));
        assert_eq!(got, Some(vec![2]));
        // After top-p, which alone keeps all four here.
        let got = support(&four(), &config(0, 0.95, 0.3)).map(sorted_ids);
        assert_eq!(got, Some(vec![0, 2, 3]));
    }

    #[test]
    fn vocab_nucleus_matches_a_full_sort() {
        let mut rng = StdRng::seed_from_u64(3);
        let mut cands = Vec::new();
        for temp_spread in [0.5f32, 3.0, 12.0] {
            let work: Vec<f32> = (0..20_000)
                .map(|_| rng.random::<f32>() * temp_spread)
                .collect();
            let max = work.iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v));
            for top_p in [0.05f32, 0.5, 0.9, 0.99] {
                nucleus_of_vocab(&work, max, top_p, &mut cands);
                let got = sorted_ids(cands.iter().map(|c| c.0).collect());

                let mut all: Vec<(u32, f32)> = work
                    .iter()
                    .enumerate()
                    .map(|(i, &v)| (i as u32, v))
                    .collect();
                all.sort_by(best_first);
                let total = sum_exp(&work, max);
                let len = nucleus_len(&all, max, f64::from(top_p) * total);
                let want = all[..len.unwrap_or(all.len())].iter().map(|c| c.0);
                let want = sorted_ids(want.collect());
                assert_eq!(got, want, "spread {temp_spread} top_p {top_p}");
            }
        }
    }
}
