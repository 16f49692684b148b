//! Log-softmax of the raw model logits for the sampled token and the best alternatives.
//!
//! Like vLLM's default, these describe the model's distribution before penalties, temperature
//! and filters. NaN counts as -inf and +inf as `f32::MAX` (see `select::key`). When no logit is
//! above -inf the distribution is undefined and every reported logprob is -inf.

use super::TokenLogprobs;
use super::fastmath::{exp, lane_sum, max_value};
use super::select::{Cand, key, top_n};

/// The sampled token's logprob plus the `top` best tokens (best first, ties to the lower id;
/// `min(top, vocab)` entries). `buf` is scratch space reused between calls.
pub(crate) fn token_logprobs(
    logits: &[f32],
    chosen: u32,
    top: usize,
    buf: &mut Vec<Cand>,
) -> TokenLogprobs {
    top_n(logits, top, buf);
    let max = match buf.first() {
        Some(best) => best.1,
        None => key(max_value(logits)),
    };
    let lse = log_sum_exp(logits, max);
    let logprob_of = |v: f32| -> f32 {
        if lse == f64::NEG_INFINITY {
            f32::NEG_INFINITY
        } else {
            (f64::from(v) - lse) as f32
        }
    };
    let chosen_logit = logits
        .get(chosen as usize)
        .map_or(f32::NEG_INFINITY, |&v| key(v));
    TokenLogprobs {
        logprob: logprob_of(chosen_logit),
        top: buf.iter().map(|&(id, v)| (id, logprob_of(v))).collect(),
    }
}

/// ln Σ exp(v), stable: shifted by the (keyed) maximum and summed in f64.
/// -inf when `max` is -inf (nothing has finite weight).
fn log_sum_exp(logits: &[f32], max: f32) -> f64 {
    if max == f32::NEG_INFINITY {
        return f64::NEG_INFINITY;
    }
    // As `key`: +inf counts as f32::MAX; NaN needs no care (exp(NaN) is 0 here).
    let sum = lane_sum(logits, |v| {
        exp(if v > f32::MAX { f32::MAX } else { v } - max)
    });
    f64::from(max) + sum.ln()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn logprobs(logits: &[f32], chosen: u32, top: usize) -> TokenLogprobs {
        token_logprobs(logits, chosen, top, &mut Vec::new())
    }

    #[test]
    fn matches_a_hand_computed_log_softmax() {
        // softmax([ln 1, ln 2, ln 3, ln 4]) = [0.1, 0.2, 0.3, 0.4]
        let logits: Vec<f32> = [1.0f32, 2.0, 3.0, 4.0].iter().map(|p| p.ln()).collect();
        let lp = logprobs(&logits, 1, 2);
        assert!((lp.logprob - 0.2f32.ln()).abs() < 1e-6, "{}", lp.logprob);
        assert_eq!(lp.top.len(), 2);
        assert_eq!(lp.top[0].0, 3);
        assert!((lp.top[0].1 - 0.4f32.ln()).abs() < 1e-6);
        assert_eq!(lp.top[1].0, 2);
        assert!((lp.top[1].1 - 0.3f32.ln()).abs() < 1e-6);
    }

    #[test]
    fn exp_of_all_logprobs_sums_to_one_and_top_is_sorted() {
        let logits: Vec<f32> = (0..1000)
            .map(|i| ((i * 37 % 101) as f32) * 0.13 - 5.0)
            .collect();
        let lp = logprobs(&logits, 0, 1000);
        let total: f64 = lp.top.iter().map(|&(_, l)| f64::from(l).exp()).sum();
        assert!((total - 1.0).abs() < 1e-5, "{total}");
        assert!(lp.top.windows(2).all(|w| w[0].1 >= w[1].1));
        let chosen = lp.top.iter().find(|c| c.0 == 0).map(|c| c.1);
        assert_eq!(chosen, Some(lp.logprob));
    }

    #[test]
    fn huge_logits_do_not_overflow() {
        let lp = logprobs(&[1000.0, 1000.0, 0.0], 0, 3);
        assert!((lp.logprob - 0.5f32.ln()).abs() < 1e-6);
        assert!(lp.top[2].1 < -990.0);
    }

    #[test]
    fn nan_inf_and_empty_are_handled() {
        let lp = logprobs(&[f32::NAN, 0.0, 0.0], 0, 1);
        assert_eq!(lp.logprob, f32::NEG_INFINITY);
        assert!((lp.top[0].1 - 0.5f32.ln()).abs() < 1e-6);
        assert_eq!(lp.top[0].0, 1);

        let lp = logprobs(&[f32::INFINITY, 3.0], 0, 2);
        assert_eq!(lp.logprob, 0.0);
        assert!(lp.top[1].1 < -1e30, "{}", lp.top[1].1);

        let lp = logprobs(&[f32::NEG_INFINITY; 3], 2, 2);
        assert_eq!(lp.logprob, f32::NEG_INFINITY);
        assert_eq!(lp.top.len(), 2);
        assert!(lp.top.iter().all(|c| c.1 == f32::NEG_INFINITY));

        let lp = logprobs(&[], 0, 5);
        assert_eq!(lp.logprob, f32::NEG_INFINITY);
        assert!(lp.top.is_empty());

        // Top 0 still gives the chosen token's logprob.
        let lp = logprobs(&[0.0, 0.0], 1, 0);
        assert!((lp.logprob - 0.5f32.ln()).abs() < 1e-6);
        assert!(lp.top.is_empty());
    }
}
